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

#[derive(Clone)]
pub struct DeadLetters {
    store: Arc<dyn Store>,
}

impl DeadLetters {
    pub fn new(store: Arc<dyn Store>) -> DeadLetters {
        DeadLetters { store }
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
