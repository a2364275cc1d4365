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
                        self.buf.clear();
                        return Err(FrameTooLarge { limit: self.max_frame });
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
        assert_eq!(d.push(&[b'x'; 20]), Err(FrameTooLarge { limit: 16 }));
        assert!(d.pending().is_empty());
        // An FS without CR does not end a frame.
        let mut d = Decoder::new(1024);
        assert!(d.push(b"\x0babc\x1cdef").unwrap().is_empty());
        assert_eq!(d.push(b"\x1c\r").unwrap(), vec![Frame::Message(b"abc\x1cdef".to_vec())]);
    }
}
