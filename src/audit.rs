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

use crate::error::Error;
use crate::fhir::time::format_instant;
use base64::Engine;
use serde_json::{json, Value};
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

/// Where the events are written.
pub trait AuditSink: Send + Sync + 'static {
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
    tx: Mutex<Option<SyncSender<Value>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditLog {
    pub fn start(sink: Arc<dyn AuditSink>) -> Arc<AuditLog> {
        let (tx, rx) = sync_channel::<Value>(QUEUE);
        let batches = sink.clone();
        let writer = std::thread::Builder::new()
            .name("pennine-audit".into())
            .spawn(move || write_batches(&*batches, rx))
            .ok();
        Arc::new(AuditLog {
            sink,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(writer),
        })
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

    fn write_one(&self, event: Value) -> Result<(), Error> {
        self.sink.write_one(event)
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

fn write_batches(sink: &dyn AuditSink, rx: Receiver<Value>) {
    while let Ok(first) = rx.recv() {
        let mut events = vec![first];
        while events.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        let n = events.len();
        if let Err(e) = sink.write_batch(events) {
            tracing::error!(error = %e, events = n, "audit batch could not be written");
        }
    }
}
