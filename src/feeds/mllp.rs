//! MLLP framing: `<VT> message <FS><CR>`. A decoder that takes bytes as they
//! arrive and yields whole frames, so a sender that stops mid-frame leaves only
//! its own partial frame behind.

const START: u8 = 0x0b;
const END: [u8; 2] = [0x1c, 0x0d];

/// What the decoder found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One message's bytes, without the framing.
    Message(Vec<u8>),
    /// Bytes outside any frame (a sender's noise); reported, not parsed.
    Garbage(Vec<u8>),
}

/// An incremental MLLP decoder with a limit on one frame's size.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max_frame: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an MLLP frame exceeded {limit} bytes")]
pub struct FrameTooLarge {
    pub limit: usize,
    /// The frame's first bytes, for the dead letter.
    pub head: Vec<u8>,
}

impl Decoder {
    pub fn new(max_frame: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            max_frame,
        }
    }

    /// Adds bytes and returns every frame they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Frame>, FrameTooLarge> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let Some(start) = self.buf.iter().position(|b| *b == START) else {
                // No frame has started: everything but whitespace is garbage.
                let junk: Vec<u8> = std::mem::take(&mut self.buf);
                if junk.iter().any(|b| !b.is_ascii_whitespace()) {
                    out.push(Frame::Garbage(junk));
                }
                break;
            };
            if start > 0 {
                let junk: Vec<u8> = self.buf.drain(..start).collect();
                if junk.iter().any(|b| !b.is_ascii_whitespace()) {
                    out.push(Frame::Garbage(junk));
                }
            }
            match self.buf[1..].windows(2).position(|w| w == END) {
                Some(end) => {
                    let frame: Vec<u8> = self.buf[1..1 + end].to_vec();
                    self.buf.drain(..end + 3);
                    out.push(Frame::Message(frame));
                }
                None => {
                    if self.buf.len() > self.max_frame {
                        let head = self.buf[1..]
                            .iter()
                            .take(super::dead_letters::TRUNCATED)
                            .copied()
                            .collect();
                        self.buf.clear();
                        return Err(FrameTooLarge {
                            limit: self.max_frame,
                            head,
                        });
                    }
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Bytes of an unfinished frame (for a sender that disconnected mid-frame).
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

/// Wraps a message in an MLLP frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(START);
    out.extend_from_slice(message);
    out.extend_from_slice(&END);
    out
}

/// Largest frame the listener accepts (a message with embedded documents can be large).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Most connections served at once; past it a new connection is closed at once (a sender
/// retries), so that held connections never stop the listener from accepting.
const MAX_CONNECTIONS: usize = 512;

/// How long a sender may take and how many connections one address may hold, so that
/// silent or half-sent connections cannot keep real senders out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From a frame's first byte to its end.
    pub frame: std::time::Duration,
    /// Silence between messages.
    pub idle: std::time::Duration,
    /// Connections open at once from one IP address.
    pub per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame: std::time::Duration::from_secs(30),
            idle: std::time::Duration::from_secs(600),
            per_peer: 32,
        }
    }
}

/// A running MLLP listener.
pub struct MllpServer {
    pub addr: std::net::SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MllpServer {
    /// Stops accepting, lets every connection finish the message it is
    /// storing (and send its ACK), then returns.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds `listen` and serves MLLP: each frame is ingested through `feeds` and
/// answered with its ACK once the data is committed.
pub async fn start(listen: &str, feeds: super::Feeds, limits: Limits) -> std::io::Result<MllpServer> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, feeds, stopped, limits));
    tracing::info!(%addr, "MLLP listening");
    Ok(MllpServer { addr, stop, task })
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    feeds: super::Feeds,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    limits: Limits,
) {
    type Peers = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;
    let peers: Peers = Default::default();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.changed() => break,
        };
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                let ip = peer.ip();
                {
                    let mut open = peers.lock().unwrap_or_else(|p| p.into_inner());
                    let mine = open.get(&ip).copied().unwrap_or(0);
                    if mine >= limits.per_peer || connections.len() >= MAX_CONNECTIONS {
                        tracing::warn!(%peer, open_from_peer = mine, open = connections.len(),
                            "MLLP connection refused: too many open connections from this address (or in all)");
                        drop(stream);
                        continue;
                    }
                    open.insert(ip, mine + 1);
                }
                let feeds = feeds.clone();
                let stopped = stopped.clone();
                let peers = peers.clone();
                connections.spawn(async move {
                    if let Err(e) = connection(stream, peer, feeds, stopped, limits).await {
                        tracing::debug!(%peer, error = %e, "MLLP connection ended");
                    }
                    let mut open = peers.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(n) = open.get_mut(&ip) {
                        *n -= 1;
                        if *n == 0 {
                            open.remove(&ip);
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "MLLP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    while connections.join_next().await.is_some() {}
}

async fn connection(
    mut stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    feeds: super::Feeds,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    limits: Limits,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.set_nodelay(true);
    let mut decoder = Decoder::new(MAX_FRAME);
    let mut buf = vec![0u8; 64 * 1024];
    let source = super::Source::new("mllp", Some(format!("MLLP peer {peer}")));
    // A frame must end within `limits.frame` of its first byte; between frames a sender
    // may stay silent for `limits.idle`.
    let mut frame_started: Option<tokio::time::Instant> = None;
    loop {
        let deadline = match frame_started {
            Some(t) => t + limits.frame,
            None => tokio::time::Instant::now() + limits.idle,
        };
        let n = tokio::select! {
            r = stream.read(&mut buf) => r?,
            _ = tokio::time::sleep_until(deadline) => {
                if frame_started.is_some() {
                    tracing::warn!(%peer, bytes = decoder.pending().len(), seconds = limits.frame.as_secs(),
                        "MLLP frame not finished in time: the connection is closed, the partial message not acknowledged");
                } else {
                    tracing::info!(%peer, seconds = limits.idle.as_secs(), "idle MLLP connection closed");
                }
                return Ok(());
            }
            _ = stopped.changed() => return Ok(()),
        };
        if n == 0 {
            if !decoder.pending().is_empty() {
                tracing::warn!(%peer, bytes = decoder.pending().len(),
                    "MLLP sender disconnected mid-frame; the partial message was not acknowledged and not stored");
            }
            return Ok(());
        }
        let frames = match decoder.push(&buf[..n]) {
            Ok(f) => f,
            Err(e) => {
                let now = crate::fhir::time::format_instant(crate::fhir::time::now_millis());
                let why = crate::fhir::Issue::error(crate::fhir::IssueCode::TooLong, e.to_string());
                let issue = keep_garbage(&feeds, &source, &e.head, why).await;
                let finding = super::hl7v2::Finding { issue, location: None };
                let ack = super::hl7v2::ack::ack(None, super::hl7v2::AckCode::AR, &[finding], &e.to_string(), &now);
                stream.write_all(&frame(ack.as_bytes())).await?;
                return Ok(());
            }
        };
        // The clock runs from the start of the frame still pending (one that began after a
        // frame completed in this read starts now).
        frame_started = if decoder.pending().is_empty() {
            None
        } else if frames.is_empty() {
            frame_started.or_else(|| Some(tokio::time::Instant::now()))
        } else {
            Some(tokio::time::Instant::now())
        };
        for f in frames {
            match f {
                Frame::Garbage(g) => {
                    tracing::warn!(%peer, bytes = g.len(), "bytes outside an MLLP frame: kept as a dead letter, not parsed");
                    let why = crate::fhir::Issue::error(
                        crate::fhir::IssueCode::Structure,
                        format!("{} bytes outside an MLLP frame", g.len()),
                    );
                    keep_garbage(&feeds, &source, &g, why).await;
                }
                Frame::Message(bytes) => {
                    let text = super::decode_text(&bytes);
                    let feeds = feeds.clone();
                    let source = source.clone();
                    let acks = tokio::task::spawn_blocking(move || {
                        let messages = super::hl7v2::split_messages(&text);
                        if messages.is_empty() {
                            // Not even an MSH: answer with a reject the sender can log.
                            return vec![feeds.hl7v2(&text, &source).ack];
                        }
                        messages.iter().map(|m| feeds.hl7v2(m, &source).ack).collect::<Vec<_>>()
                    })
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                    for ack in acks {
                        stream.write_all(&frame(ack.as_bytes())).await?;
                    }
                }
            }
        }
    }
}

/// Keeps bytes that are no message as a dead letter, off the async threads.
async fn keep_garbage(
    feeds: &super::Feeds,
    source: &super::Source,
    bytes: &[u8],
    why: crate::fhir::Issue,
) -> crate::fhir::Issue {
    let (feeds, who, text) = (feeds.clone(), source.who.clone(), super::decode_text(bytes));
    let fallback = why.clone();
    tokio::task::spawn_blocking(move || feeds.keep_garbage("mllp", who, text, why))
        .await
        .unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_and_several_per_read() {
        let mut d = Decoder::new(1 << 20);
        let mut stream = frame(b"MSH|one");
        stream.extend(frame(b"MSH|two"));
        stream.extend(b"noise");
        stream.extend(frame(b"MSH|three"));
        let mut got = Vec::new();
        for chunk in stream.chunks(3) {
            got.extend(d.push(chunk).unwrap());
        }
        let messages: Vec<_> = got
            .iter()
            .filter_map(|f| match f {
                Frame::Message(m) => Some(String::from_utf8_lossy(m).into_owned()),
                Frame::Garbage(_) => None,
            })
            .collect();
        assert_eq!(messages, ["MSH|one", "MSH|two", "MSH|three"]);
        let garbage: Vec<u8> = got
            .iter()
            .flat_map(|f| match f {
                Frame::Garbage(g) => g.clone(),
                Frame::Message(_) => vec![],
            })
            .collect();
        assert_eq!(
            garbage, b"noise",
            "noise may arrive in pieces, but all of it is reported"
        );
        assert!(d.pending().is_empty());
    }

    #[test]
    fn a_half_sent_frame_stays_pending_and_a_huge_one_is_refused() {
        let mut d = Decoder::new(16);
        assert!(d.push(b"\x0bMSH|half").unwrap().is_empty());
        assert_eq!(d.pending(), b"\x0bMSH|half");
        let mut head = b"MSH|half".to_vec();
        head.extend([b'x'; 20]);
        assert_eq!(d.push(&[b'x'; 20]), Err(FrameTooLarge { limit: 16, head }));
        assert!(d.pending().is_empty());
        // An FS without CR does not end a frame.
        let mut d = Decoder::new(1024);
        assert!(d.push(b"\x0babc\x1cdef").unwrap().is_empty());
        assert_eq!(d.push(b"\x1c\r").unwrap(), vec![Frame::Message(b"abc\x1cdef".to_vec())]);
    }
}
