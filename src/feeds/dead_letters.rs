//! The dead-letter store: every message or CSV row a feed could not translate
//! or store, raw and with the reasons, kept until an operator replays it.
//!
//! A store of its own (like the audit trail), so that rejected input never mixes
//! with clinical data and a replay is an ordinary ingest. Each letter is a
//! versioned record: a replay writes a new version with its outcome.

use crate::fhir::time::{format_instant, now_millis};
use crate::fhir::Issue;
use crate::store::{Method, NewVersion, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

const TYPE: &str = "DeadLetter";

/// One rejected input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: String,
    /// When it arrived (FHIR instant).
    pub received: String,
    /// `http`, `mllp` or `replay`.
    pub transport: String,
    /// What it is: `hl7v2`, or `csv/<mapping>`.
    pub kind: String,
    /// The sender as the input names it (MSH-3|MSH-4), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The authenticated client or peer address it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The message control id (MSH-10) or CSV row number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// `open` until a replay stores it, then `replayed`.
    pub status: String,
    /// The OperationOutcome issues that explain the rejection.
    pub reasons: Vec<Value>,
    /// The raw input (for CSV: the header line and the row).
    pub content: String,
    /// Each replay attempt: when, and what came of it.
    #[serde(default)]
    pub replays: Vec<Value>,
}

impl DeadLetter {
    pub fn new(transport: &str, kind: &str, content: String, reasons: &[Issue]) -> DeadLetter {
        DeadLetter {
            id: uuid::Uuid::new_v4().to_string(),
            received: format_instant(now_millis()),
            transport: transport.to_string(),
            kind: kind.to_string(),
            sender: None,
            source: None,
            reference: None,
            status: "open".to_string(),
            reasons: reasons.iter().map(Issue::to_json).collect(),
            content,
            replays: Vec::new(),
        }
    }
}

/// Per sender (an authenticated client, or an MLLP peer's address), open letters are kept
/// up to this many bytes; past them a letter keeps only its first `TRUNCATED` bytes; past
/// `QUOTA_LETTERS` none is kept (the sender has its refusal and keeps its message).
pub const QUOTA_BYTES: usize = 64 << 20;
pub const QUOTA_LETTERS: u64 = 10_000;
pub const TRUNCATED: usize = 4096;

/// What became of a letter offered to `keep`.
#[derive(Debug, Clone, PartialEq)]
pub enum Kept {
    Whole(String),
    /// Kept with the first `TRUNCATED` bytes of its content.
    Truncated(String),
    /// Not kept: the sender's quota of letters is full.
    NotKept(String),
}

impl Kept {
    pub fn id(&self) -> Option<&str> {
        match self {
            Kept::Whole(id) | Kept::Truncated(id) => Some(id),
            Kept::NotKept(_) => None,
        }
    }
}

/// Open letters' bytes and count per sender, as counted by this process (loaded from the
/// store on first use; letters replayed since are still counted until a restart).
type Usage = std::collections::HashMap<String, (usize, u64)>;

#[derive(Clone)]
pub struct DeadLetters {
    store: Arc<dyn Store>,
    usage: Arc<std::sync::Mutex<Option<Usage>>>,
    quota: usize,
}

/// Whom a quota is for: an MLLP peer by its address without the port (each connection has
/// its own), anyone else as the source names them.
fn quota_key(source: Option<&str>) -> String {
    match source {
        Some(s) if s.starts_with("MLLP peer ") => {
            let peer = s.trim_start_matches("MLLP peer ");
            match peer.rsplit_once(':') {
                Some((host, _)) => format!("MLLP peer {host}"),
                None => s.to_string(),
            }
        }
        Some(s) => s.to_string(),
        None => "unknown".into(),
    }
}

impl DeadLetters {
    pub fn new(store: Arc<dyn Store>) -> DeadLetters {
        DeadLetters {
            store,
            usage: Arc::default(),
            quota: QUOTA_BYTES,
        }
    }

    /// The same store keeping `bytes` of open letters whole per sender.
    pub fn with_quota(mut self, bytes: usize) -> DeadLetters {
        self.quota = bytes;
        self
    }

    /// Keeps a new letter within its sender's quota (see `QUOTA_BYTES`).
    pub fn keep(&self, mut letter: DeadLetter) -> Result<Kept, StoreError> {
        let mut guard = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let mut usage = Usage::new();
            let (open, _) = self.list(Some("open"), usize::MAX)?;
            for l in open {
                let u = usage.entry(quota_key(l.source.as_deref())).or_default();
                u.0 += l.content.len();
                u.1 += 1;
            }
            *guard = Some(usage);
        }
        let key = quota_key(letter.source.as_deref());
        let usage = guard.get_or_insert_with(Usage::new).entry(key.clone()).or_default();
        if usage.1 >= QUOTA_LETTERS {
            return Ok(Kept::NotKept(format!(
                "not kept as a dead letter: {key} already has {QUOTA_LETTERS} open ones (an administrator replays or clears them); keep the message and send it again later"
            )));
        }
        let whole = letter.content.len();
        let truncated = usage.0 + whole > self.quota;
        if truncated {
            let mut cut = TRUNCATED.min(whole);
            while !letter.content.is_char_boundary(cut) {
                cut -= 1;
            }
            letter.content.truncate(cut);
            letter.reasons.push(
                crate::fhir::Issue::warning(
                    crate::fhir::IssueCode::TooLong,
                    format!(
                        "only the first {cut} of {whole} bytes are kept: {key}'s open dead letters already hold their quota of {} bytes",
                        self.quota
                    ),
                )
                .to_json(),
            );
        }
        self.put(&letter)?;
        usage.0 += letter.content.len();
        usage.1 += 1;
        Ok(if truncated {
            Kept::Truncated(letter.id)
        } else {
            Kept::Whole(letter.id)
        })
    }

    /// Writes a letter (new or changed) durably.
    pub fn put(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let json = serde_json::to_vec(letter).map_err(StoreError::Corrupt)?;
        let id = letter.id.clone();
        crate::store::run_unit(&*self.store, move |txn| -> Result<(), StoreError> {
            let current = txn.current(TYPE, &id)?;
            let now = txn.now();
            txn.write(&NewVersion {
                rtype: TYPE,
                id: &id,
                version: current.map(|c| c.version + 1).unwrap_or(1),
                last_updated: now,
                method: if current.is_some() {
                    Method::Update
                } else {
                    Method::Create
                },
                json: Some(&json),
                index: None,
                existed: current.is_some(),
            })
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let Some(stored) = self.store.read(TYPE, id)? else {
            return Ok(None);
        };
        Ok(stored.json.and_then(|j| serde_json::from_slice(&j).ok()))
    }

    /// Letters in arrival order, optionally only those with `status`, at most `limit`.
    pub fn list(&self, status: Option<&str>, limit: usize) -> Result<(Vec<DeadLetter>, usize), StoreError> {
        let mut out = Vec::new();
        let mut total = 0;
        let mut after = 0;
        loop {
            let batch = self.store.scan(TYPE, after, 1000)?;
            let Some(last) = batch.last() else { break };
            after = last.key;
            for s in batch {
                let Some(letter) = s.json.and_then(|j| serde_json::from_slice::<DeadLetter>(&j).ok()) else {
                    continue;
                };
                if status.is_some_and(|st| st != letter.status) {
                    continue;
                }
                total += 1;
                if out.len() < limit {
                    out.push(letter);
                }
            }
        }
        Ok((out, total))
    }
}
