//! AuditEvent resources for federated queries and other access, written through
//! the node's normal write path (so they are indexed and searchable).

use super::{Error, FhirService};
use crate::fhir::time::format_instant;
use base64::Engine;
use serde_json::{json, Value};

/// What happened, for one AuditEvent.
pub struct AuditRecord<'a> {
    /// Pennine's own code for the action (`aggregate`, `count`, `view-run`, ...).
    pub action: &'a str,
    /// Who asked: a client id, `hub (mTLS)`, ...
    pub who: &'a str,
    /// Which server recorded it (`node nenc`, `hub`).
    pub observer: &'a str,
    /// Success, or the failure's description.
    pub outcome: Result<(), &'a str>,
    /// The query as asked (stored base64-encoded in `entity.query`, as R4 requires).
    pub query: &'a str,
    /// Free-text details: regions asked, what was released or withheld.
    pub details: Vec<(&'a str, String)>,
}

pub const AUDIT_SYSTEM: &str = "https://pennine.nhs.example/fhir/CodeSystem/audit-action";

pub fn audit_event(r: &AuditRecord) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let (outcome, desc) = match r.outcome {
        Ok(()) => ("0", None),
        Err(why) => ("4", Some(why)),
    };
    let mut event = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110112", "display": "Query"},
        "subtype": [{"system": AUDIT_SYSTEM, "code": r.action}],
        "action": "E",
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

impl FhirService {
    /// Stores an AuditEvent; the caller's answer waits for it to be durable.
    pub fn record_audit(&self, r: &AuditRecord) -> Result<(), Error> {
        self.create("AuditEvent", audit_event(r), None, super::Conditional::None)
            .map(|_| ())
    }
}
