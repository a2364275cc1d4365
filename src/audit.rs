//! The audit trail of a node or the hub: AuditEvent resources in a store of their
//! own (beside the clinical data, never mixed into its history or searches). The
//! events go to an `AuditSink`; the composition root (`startup`) gives the FHIR
//! service of the audit store, so they are written through the ordinary FHIR write
//! path and are indexed and searchable by administrators. Nothing in the API can
//! change or delete them. Neither the hub nor the HTTP layer needs `node/` for it.
//!
//! Access events are queued and written in batches by one thread (one commit
//! per batch, so auditing every read does not halve read throughput);
//! federated queries and denials that matter are written before the answer
//! goes out (`record_now`).
//!
//! The trail is tamper-evident: every event carries a link of a hash chain
//! (`CHAIN_URL`: a segment, its sequence number, the previous link's hash and its
//! own). A segment is one process's run; its first link points at the newest
//! link in the store when the process started, so a removed, altered or
//! inserted event breaks the chain where it happened, and `Verifier` (behind
//! `pennine audit verify`) names the first broken link. Only an external record
//! of the head (the last hash, printed by verify) protects the very end against
//! truncation by someone who can write the store.

use crate::error::Error;
use crate::fhir::time::format_instant;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// What happened, for one AuditEvent.
pub struct AuditRecord<'a> {
    /// Pennine's own code for the action (`read`, `search`, `create`, `aggregate`, `token`, ...).
    pub action: &'a str,
    /// Who asked: a client id and roles, `hub (mTLS)`, an address ...
    pub who: &'a str,
    /// Which server recorded it (`node nenc`, `hub`).
    pub observer: &'a str,
    /// Success, or the failure's description.
    pub outcome: Result<(), &'a str>,
    /// The request or query as asked (stored base64-encoded in `entity.query`, as R4 requires).
    pub query: &'a str,
    /// Free-text details: regions asked, what was released or withheld, the HTTP status.
    pub details: Vec<(&'a str, String)>,
}

pub const AUDIT_SYSTEM: &str = "https://pennine.nhs.example/fhir/CodeSystem/audit-action";

fn action_code(action: &str) -> &'static str {
    match action {
        "create" => "C",
        "read" | "search" | "history" | "vread" => "R",
        "update" => "U",
        "delete" => "D",
        _ => "E",
    }
}

pub fn audit_event(r: &AuditRecord) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let (outcome, desc) = match r.outcome {
        Ok(()) => ("0", None),
        Err(why) => ("4", Some(why)),
    };
    let event_type = match r.action {
        "aggregate" | "count" | "view-run" | "evaluate-measure" | "benchmark" => {
            json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110112", "display": "Query"})
        }
        "token" => {
            json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"})
        }
        _ => {
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"})
        }
    };
    let mut event = json!({
        "resourceType": "AuditEvent",
        "type": event_type,
        "subtype": [{"system": AUDIT_SYSTEM, "code": r.action}],
        "action": action_code(r.action),
        "recorded": format_instant(now),
        "outcome": outcome,
        "agent": [{"who": {"display": r.who}, "requestor": true}],
        "source": {"observer": {"display": r.observer}},
        "entity": [{
            "what": {"display": r.action},
            "query": base64::engine::general_purpose::STANDARD.encode(r.query),
            "detail": r.details.iter().map(|(k, v)| json!({"type": k, "valueString": v})).collect::<Vec<_>>()
        }]
    });
    if let Some(d) = desc {
        event["outcomeDesc"] = Value::String(d.to_string());
    }
    if r.details.is_empty() {
        if let Some(e) = event["entity"][0].as_object_mut() {
            e.remove("detail");
        }
    }
    event
}

/// Events queued before writers block.
const QUEUE: usize = 65_536;
/// Events written per commit.
const BATCH: usize = 500;

/// The extension that carries an event's link of the hash chain.
pub const CHAIN_URL: &str = "https://pennine.nhs.example/fhir/StructureDefinition/audit-chain";
/// The `previous` of the first link of an empty trail.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The head of this process's segment of the chain.
#[derive(Debug, Clone)]
struct Chain {
    segment: String,
    sequence: u64,
    previous: String,
}

impl Chain {
    /// A new segment that continues from `head` (the newest stored link's hash).
    fn starting_at(head: Option<String>) -> Chain {
        Chain {
            segment: uuid::Uuid::new_v4().to_string(),
            sequence: 0,
            previous: head.unwrap_or_else(|| GENESIS.to_string()),
        }
    }

    /// Adds the next link to `event` and advances.
    fn link(&mut self, event: &mut Value) {
        self.sequence += 1;
        let mut link = json!({"url": CHAIN_URL, "extension": [
            {"url": "segment", "valueString": self.segment},
            {"url": "sequence", "valueString": self.sequence.to_string()},
            {"url": "previous", "valueString": self.previous},
        ]});
        if let Some(obj) = event.as_object_mut() {
            obj.insert("extension".into(), Value::Array(vec![link.clone()]));
        }
        let hash = link_hash(event);
        link["extension"]
            .as_array_mut()
            .expect("built above")
            .push(json!({"url": "hash", "valueString": hash}));
        event["extension"] = Value::Array(vec![link]);
        self.previous = hash;
    }
}

/// SHA-256 (hex) of the event's canonical JSON: keys sorted, no whitespace,
/// without `id` and `meta` (the store assigns them) and without the link's own hash.
fn link_hash(event: &Value) -> String {
    let mut bytes = Vec::with_capacity(1024);
    canonical(event, &mut bytes, true);
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn canonical(v: &Value, out: &mut Vec<u8>, top: bool) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map
                .keys()
                .filter(|k| !(top && (k.as_str() == "id" || k.as_str() == "meta")))
                .collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                canonical(&map[k], out, false);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out, false);
            }
            out.push(b']');
        }
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// An event's link as stored: (segment, sequence, previous, hash), with the hash
/// taken out of `event` so that what is left is what was hashed.
fn take_link(event: &mut Value) -> Option<Result<(String, u64, String, String), String>> {
    let exts = event.get_mut("extension")?.as_array_mut()?;
    let link = exts
        .iter_mut()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(CHAIN_URL))?;
    let parts = link.get_mut("extension").and_then(Value::as_array_mut);
    let Some(parts) = parts else {
        return Some(Err("the chain link has no parts".into()));
    };
    let mut hash = None;
    parts.retain(|p| {
        if p.get("url").and_then(Value::as_str) == Some("hash") {
            hash = p.get("valueString").and_then(Value::as_str).map(str::to_string);
            false
        } else {
            true
        }
    });
    let part = |name: &str| {
        parts
            .iter()
            .find(|p| p.get("url").and_then(Value::as_str) == Some(name))
            .and_then(|p| p.get("valueString"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (Some(segment), Some(sequence), Some(previous), Some(hash)) =
        (part("segment"), part("sequence"), part("previous"), hash)
    else {
        return Some(Err(
            "the chain link lacks its segment, sequence, previous or hash".into()
        ));
    };
    let Ok(sequence) = sequence.parse::<u64>() else {
        return Some(Err(format!("the chain link's sequence '{sequence}' is not a number")));
    };
    Some(Ok((segment, sequence, previous, hash)))
}

/// The first broken link of a trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The AuditEvent's id.
    pub id: String,
    pub reason: String,
}

/// Walks a trail in the store's order (oldest first) and finds the first broken link.
#[derive(Default)]
pub struct Verifier {
    /// Events seen.
    pub events: u64,
    /// Events written before the chain existed (no link).
    pub unchained: u64,
    /// The hash of the last link seen (the head, to note down outside the store).
    pub head: Option<String>,
    /// The first broken link, once found.
    pub broken: Option<Broken>,
    known: HashSet<[u8; 32]>,
    /// Per segment: the last sequence number and hash seen.
    segments: HashMap<String, (u64, String)>,
}

fn hash_bytes(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Verifier {
    /// The number of segments (process runs) seen.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Checks the next event (its stored JSON); stops checking after the first break.
    pub fn check(&mut self, id: &str, json: &[u8]) {
        if self.broken.is_some() {
            return;
        }
        self.events += 1;
        let fail = |reason: String| {
            Some(Broken {
                id: id.to_string(),
                reason,
            })
        };
        let mut event: Value = match serde_json::from_slice(json) {
            Ok(v) => v,
            Err(e) => {
                self.broken = fail(format!("the stored event is not JSON: {e}"));
                return;
            }
        };
        let (segment, sequence, previous, hash) = match take_link(&mut event) {
            None if self.known.is_empty() => {
                self.unchained += 1;
                return;
            }
            None => {
                self.broken = fail("an event without a chain link after chained events (inserted?)".into());
                return;
            }
            Some(Err(why)) => {
                self.broken = fail(why);
                return;
            }
            Some(Ok(link)) => link,
        };
        let computed = link_hash(&event);
        if computed != hash {
            self.broken = fail(format!(
                "the content does not match its hash (segment {segment}, sequence {sequence}): altered after it was written"
            ));
            return;
        }
        match self.segments.get(&segment) {
            Some((last, last_hash)) => {
                if sequence != last + 1 {
                    self.broken = fail(format!(
                        "segment {segment} goes from sequence {last} to {sequence}: events are missing or out of place"
                    ));
                    return;
                }
                if &previous != last_hash {
                    self.broken = fail(format!(
                        "sequence {sequence} of segment {segment} does not point at sequence {last}"
                    ));
                    return;
                }
            }
            None => {
                let continues = hash_bytes(&previous).is_some_and(|p| self.known.contains(&p))
                    || (previous == GENESIS && self.known.is_empty());
                if sequence != 1 {
                    self.broken = fail(format!(
                        "segment {segment} starts at sequence {sequence}: its earlier events are missing"
                    ));
                    return;
                }
                if !continues {
                    self.broken = fail(format!(
                        "segment {segment} continues from a link that is not in the trail: events before it are missing"
                    ));
                    return;
                }
            }
        }
        if let Some(h) = hash_bytes(&hash) {
            self.known.insert(h);
        }
        self.segments.insert(segment, (sequence, hash.clone()));
        self.head = Some(hash);
    }
}

/// Where the events are written.
pub trait AuditSink: Send + Sync + 'static {
    /// The newest stored event, if any (its link is where this process's segment starts).
    fn newest(&self) -> Result<Option<Value>, Error>;
    /// Writes one event durably before returning.
    fn write_one(&self, event: Value) -> Result<(), Error>;
    /// Writes events in one commit.
    fn write_batch(&self, events: Vec<Value>) -> Result<(), Error>;
    /// Closes the sink's storage; called once, after the last write.
    fn close(&self);
}

/// A server's audit trail.
pub struct AuditLog {
    sink: Arc<dyn AuditSink>,
    /// This process's segment; held while a link is written, so links are stored in order.
    chain: Arc<Mutex<Chain>>,
    tx: Mutex<Option<SyncSender<Value>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditLog {
    /// Starts the trail's writer; this process's segment of the chain continues from
    /// the newest stored link.
    pub fn start(sink: Arc<dyn AuditSink>) -> Result<Arc<AuditLog>, Error> {
        let head = sink.newest()?.and_then(|mut newest| match take_link(&mut newest) {
            Some(Ok((_, _, _, hash))) => Some(hash),
            _ => None,
        });
        let chain = Arc::new(Mutex::new(Chain::starting_at(head)));
        let (tx, rx) = sync_channel::<Value>(QUEUE);
        let (batches, links) = (sink.clone(), chain.clone());
        let writer = std::thread::Builder::new()
            .name("pennine-audit".into())
            .spawn(move || write_batches(&*batches, &links, rx))
            .ok();
        Ok(Arc::new(AuditLog {
            sink,
            chain,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(writer),
        }))
    }

    /// Queues an event; it is written within moments, in a batch with others.
    pub fn record(&self, r: &AuditRecord) {
        let event = audit_event(r);
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let unsent = match tx {
            Some(tx) => match tx.try_send(event) {
                Ok(()) => None,
                Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) => Some(e),
            },
            None => Some(event),
        };
        // Never drop an event: when the queue is full or closed, write it here.
        if let Some(event) = unsent {
            if let Err(e) = self.write_one(event) {
                tracing::error!(error = %e, "audit event could not be written");
            }
        }
    }

    /// Writes an event durably before returning.
    pub fn record_now(&self, r: &AuditRecord) -> Result<(), Error> {
        self.write_one(audit_event(r))
    }

    fn write_one(&self, mut event: Value) -> Result<(), Error> {
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = chain.clone();
        next.link(&mut event);
        self.sink.write_one(event)?;
        *chain = next;
        Ok(())
    }

    /// Writes what is queued, stops the writer and closes the sink.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.join();
            self.sink.close();
        }
    }
}

fn write_batches(sink: &dyn AuditSink, chain: &Mutex<Chain>, rx: Receiver<Value>) {
    while let Ok(first) = rx.recv() {
        let mut events = vec![first];
        while events.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        let n = events.len();
        // The links advance only when the batch is stored.
        let mut chain = chain.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = chain.clone();
        for e in &mut events {
            next.link(e);
        }
        match sink.write_batch(events) {
            Ok(()) => *chain = next,
            Err(e) => tracing::error!(error = %e, events = n, "audit batch could not be written"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(segments: &[usize]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut head = None;
        for (s, n) in segments.iter().enumerate() {
            let mut chain = Chain::starting_at(head.clone());
            for i in 0..*n {
                let mut e = json!({"resourceType": "AuditEvent", "outcome": "0", "n": format!("{s}-{i}")});
                chain.link(&mut e);
                // The store puts id and meta first; the hash leaves them out.
                let mut stored = json!({"id": format!("e{s}-{i}"), "meta": {"versionId": "1"}});
                for (k, v) in e.as_object().unwrap() {
                    stored[k] = v.clone();
                }
                out.push((format!("e{s}-{i}"), serde_json::to_vec(&stored).unwrap()));
            }
            head = Some(chain.previous.clone());
        }
        out
    }

    fn verify(events: &[(String, Vec<u8>)]) -> Verifier {
        let mut v = Verifier::default();
        for (id, json) in events {
            v.check(id, json);
        }
        v
    }

    #[test]
    fn an_intact_trail_of_several_segments_verifies() {
        let v = verify(&trail(&[3, 4, 2]));
        assert_eq!(v.broken, None);
        assert_eq!((v.events, v.segments()), (9, 3));
    }

    #[test]
    fn alteration_removal_reordering_and_insertion_are_each_found_where_they_are() {
        let events = trail(&[4, 4]);
        let mut altered = events.clone();
        altered[2].1 = String::from_utf8(altered[2].1.clone())
            .unwrap()
            .replace("\"outcome\":\"0\"", "\"outcome\":\"4\"")
            .into_bytes();
        assert_eq!(verify(&altered).broken.unwrap().id, "e0-2");

        let mut removed = events.clone();
        removed.remove(1);
        assert_eq!(verify(&removed).broken.unwrap().id, "e0-2");

        // The whole first segment's tail gone: the second segment points at nothing.
        let mut cut = events.clone();
        cut.remove(3);
        assert_eq!(verify(&cut).broken.unwrap().id, "e1-0");

        let mut swapped = events.clone();
        swapped.swap(5, 6);
        assert_eq!(verify(&swapped).broken.unwrap().id, "e1-2");

        let mut inserted = events.clone();
        inserted.insert(5, ("x".into(), br#"{"resourceType":"AuditEvent"}"#.to_vec()));
        assert_eq!(verify(&inserted).broken.unwrap().id, "x");

        // Events from before the chain existed are counted, not failed.
        let mut legacy = vec![("old".to_string(), br#"{"resourceType":"AuditEvent"}"#.to_vec())];
        legacy.extend(events);
        let v = verify(&legacy);
        assert_eq!((v.broken, v.unchained), (None, 1));
    }
}
