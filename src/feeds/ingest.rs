//! The one ingest path of non-FHIR feeds: translate, match what is already
//! stored, write one transaction through the node's FHIR service, and answer.
//! HTTP (`POST /feeds/hl7v2`), MLLP and dead-letter replay all call
//! `Feeds::hl7v2`; CSV extracts call `Feeds::csv`.
//!
//! A message is applied at most once: its Provenance has an id derived from
//! sender and control id, and the transaction is guarded on that Provenance not
//! existing (checked inside the store's unit of work). An ACK `AA` is returned
//! only after the transaction committed. A message that cannot be translated or
//! stored goes to the dead-letter store, raw and with its reasons, before the
//! negative ACK is returned.

use super::dead_letters::{DeadLetter, DeadLetters, Kept};
use super::hl7v2::{self, ack, AckCode, Finding, Translation};
use crate::error::Error;
use crate::fhir::nhs::NHS_NUMBER_SYSTEM;
use crate::fhir::time::{format_instant, now_millis};
use crate::fhir::types::{ENCOUNTER, PATIENT};
use crate::fhir::{self, outcome::operation_outcome, Identifier, Issue, IssueCode, ResourceType};
use crate::node::{BundleKind, Entry, EntryRequest, FhirService, Found};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Where an input came from, for dead letters and logs.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// `http`, `mllp` or `replay`.
    pub transport: String,
    /// The authenticated client id or the peer address.
    pub who: Option<String>,
}

impl Source {
    pub fn new(transport: &str, who: Option<String>) -> Source {
        Source {
            transport: transport.to_string(),
            who,
        }
    }
}

/// What became of one message.
#[derive(Debug, Clone)]
pub struct MessageResult {
    pub code: AckCode,
    /// The ER7 acknowledgment.
    pub ack: String,
    pub control_id: Option<String>,
    pub message_type: Option<String>,
    /// MSH-3|MSH-4, when the header could be read.
    pub sender: Option<String>,
    /// Errors (when refused), warnings and information.
    pub issues: Vec<Issue>,
    /// `Type/id` of every resource written (empty for a duplicate or a refusal).
    pub stored: Vec<String>,
    /// The Provenance id, when the message was (or had been) applied.
    pub provenance: Option<String>,
    /// Whether it had been applied before (a resend).
    pub duplicate: bool,
    /// The dead letter it became, if refused.
    pub dead_letter: Option<String>,
}

impl MessageResult {
    /// HTTP-like status for the per-message entry of an HTTP reply.
    pub fn status(&self) -> &'static str {
        match (self.code, self.duplicate) {
            (AckCode::AA, true) => "200 OK",
            (AckCode::AA, false) => "201 Created",
            (AckCode::AR, _) => "400 Bad Request",
            (AckCode::AE, _) => {
                if self.issues.iter().any(|i| i.code == IssueCode::Exception) {
                    "500 Internal Server Error"
                } else {
                    "422 Unprocessable Entity"
                }
            }
        }
    }

    /// An entry of a `batch-response` Bundle: status, outcome, what was
    /// stored (Provenance reference) and the ACK as an extension.
    pub fn to_entry(&self) -> Value {
        let mut response = json!({
            "status": self.status(),
            "outcome": operation_outcome(&self.issues),
            "extension": [{
                "url": ACK_EXTENSION,
                "valueString": self.ack,
            }]
        });
        if let Some(p) = &self.provenance {
            response["location"] = json!(format!("Provenance/{p}"));
        }
        let mut entry = json!({ "response": response });
        if !self.stored.is_empty() {
            let mut parameters = vec![
                json!({"name": "messageControlId", "valueString": self.control_id.clone().unwrap_or_default()}),
                json!({"name": "messageType", "valueString": self.message_type.clone().unwrap_or_default()}),
            ];
            parameters.extend(
                self.stored
                    .iter()
                    .map(|s| json!({"name": "stored", "valueReference": {"reference": s}})),
            );
            entry["resource"] = json!({ "resourceType": "Parameters", "parameter": parameters });
        }
        if let Some(d) = &self.dead_letter {
            entry["response"]["extension"]
                .as_array_mut()
                .expect("built above")
                .push(json!({"url": DEAD_LETTER_EXTENSION, "valueString": d}));
        }
        entry
    }
}

pub const ACK_EXTENSION: &str = "https://pennine.nhs.uk/fhir/StructureDefinition/hl7v2-ack";
pub const DEAD_LETTER_EXTENSION: &str = "https://pennine.nhs.uk/fhir/StructureDefinition/dead-letter";

/// A node's feeds: its FHIR service and its dead letters.
#[derive(Clone)]
pub struct Feeds {
    pub service: FhirService,
    pub dead: DeadLetters,
}

/// How a refusal of a reused control id begins (told apart from other conflicts).
const REUSED: &str = "control id reused";

/// How often an optimistic update is retried when another writer got there first.
const RETRIES: usize = 4;

impl Feeds {
    /// Keeps input that is not an HL7 v2 message at all (a body without MSH, bytes outside an
    /// MLLP frame, an oversized frame's head), within the sender's quota; the reply names
    /// the letter.
    pub fn keep_garbage(&self, transport: &str, who: Option<String>, content: String, why: Issue) -> Issue {
        let mut l = DeadLetter::new(transport, "hl7v2", content, std::slice::from_ref(&why));
        l.source = who;
        match self.dead.keep(l) {
            Ok(Kept::Whole(id)) | Ok(Kept::Truncated(id)) => Issue {
                diagnostics: format!("{} (kept as dead letter {id})", why.diagnostics),
                ..why
            },
            Ok(Kept::NotKept(reason)) => Issue {
                diagnostics: format!("{} ({reason})", why.diagnostics),
                ..why
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot write a dead letter");
                why
            }
        }
    }

    pub fn new(service: FhirService, dead: DeadLetters) -> Feeds {
        Feeds { service, dead }
    }

    /// Ingests one ER7 message (blocking: call it on a blocking thread).
    pub fn hl7v2(&self, text: &str, source: &Source) -> MessageResult {
        self.hl7v2_inner(text, source, None)
    }

    fn hl7v2_inner(&self, text: &str, source: &Source, letter: Option<&mut DeadLetter>) -> MessageResult {
        let now = format_instant(now_millis());
        let mut outcome = match hl7v2::translate(text, &now) {
            Ok(t) => self.apply(t, &now),
            Err(refused) => {
                let issues: Vec<Issue> = refused.findings.iter().map(Finding::to_issue).collect();
                let text_msg = refused
                    .findings
                    .first()
                    .map(|f| f.to_issue().diagnostics)
                    .unwrap_or_default();
                MessageResult {
                    code: refused.ack,
                    ack: ack::ack(
                        refused.header.as_deref(),
                        refused.ack,
                        &refused.findings,
                        &text_msg,
                        &now,
                    ),
                    control_id: refused.header.as_ref().map(|h| h.control_id.clone()),
                    message_type: refused.header.as_ref().map(|h| h.message_type()),
                    sender: refused.header.as_ref().map(|h| h.sender()),
                    issues,
                    stored: Vec::new(),
                    provenance: None,
                    duplicate: false,
                    dead_letter: None,
                }
            }
        };
        if outcome.code != AckCode::AA {
            match letter {
                // A replay that failed again: the letter keeps its id and gains the new reasons.
                Some(l) => {
                    l.reasons = outcome.issues.iter().map(Issue::to_json).collect();
                    outcome.dead_letter = Some(l.id.clone());
                }
                None => {
                    let mut l = DeadLetter::new(&source.transport, "hl7v2", text.to_string(), &outcome.issues);
                    l.sender = outcome.sender.clone();
                    l.source = source.who.clone();
                    l.reference = outcome.control_id.clone();
                    match self.dead.keep(l) {
                        Ok(kept) => {
                            if let Kept::NotKept(why) = &kept {
                                outcome.issues.push(Issue::warning(IssueCode::TooCostly, why.clone()));
                            }
                            outcome.dead_letter = kept.id().map(str::to_string);
                        }
                        Err(e) => {
                            // The sender is told to keep the message: nothing is lost.
                            tracing::error!(error = %e, "cannot write a dead letter");
                            outcome.issues.push(Issue::error(
                                IssueCode::Exception,
                                "the message could not be kept as a dead letter either: resend it later",
                            ));
                        }
                    }
                }
            }
        }
        outcome
    }

    /// Replays a dead letter; on success it is marked `replayed`.
    pub fn replay(&self, id: &str, who: Option<String>) -> Result<Option<(DeadLetter, Value)>, Error> {
        let Some(mut letter) = self.dead.get(id).map_err(Error::Store)? else {
            return Ok(None);
        };
        let source = Source::new("replay", who);
        let (ok, outcome) = if letter.kind == "hl7v2" {
            let content = letter.content.clone();
            let r = self.hl7v2_inner(&content, &source, Some(&mut letter));
            (r.code == AckCode::AA, r.to_entry())
        } else if let Some(mapping) = letter.kind.strip_prefix("csv/") {
            let mapping = mapping.to_string();
            let content = letter.content.clone();
            let r = self.csv_replay(&mapping, &content, &source);
            match r {
                Ok(summary) => {
                    let ok = summary.rejected.is_empty();
                    if !ok {
                        letter.reasons = summary.rejected[0].issues.iter().map(Issue::to_json).collect();
                    }
                    (ok, summary.to_json())
                }
                Err(e) => {
                    letter.reasons = e.issues().iter().map(Issue::to_json).collect();
                    (false, operation_outcome(&e.issues()))
                }
            }
        } else {
            return Err(Error::NotSupported(format!("replaying '{}' letters", letter.kind)));
        };
        if ok {
            letter.status = "replayed".into();
        }
        letter.replays.push(json!({
            "at": format_instant(now_millis()),
            "by": source.who,
            "succeeded": ok,
        }));
        self.dead.put(&letter).map_err(Error::Store)?;
        Ok(Some((letter, outcome)))
    }

    /// Matches the translation against what is stored, then writes it.
    fn apply(&self, t: Translation, now: &str) -> MessageResult {
        let header = t.header.clone();
        let mut last_error = None;
        for attempt in 0..RETRIES {
            match self.try_apply(&t) {
                Ok((stored, duplicate, mut notes)) => {
                    let mut findings = t.findings.clone();
                    findings.append(&mut notes);
                    let text = if duplicate {
                        "duplicate: this message was applied before; nothing was written again"
                    } else {
                        "stored"
                    };
                    let mut issues: Vec<Issue> = findings.iter().map(Finding::to_issue).collect();
                    if duplicate {
                        issues.insert(
                            0,
                            Issue::information(
                                IssueCode::Duplicate,
                                format!(
                                    "message {} from {} was applied before; nothing was written again",
                                    header.control_id,
                                    header.sender()
                                ),
                            ),
                        );
                    }
                    return MessageResult {
                        code: AckCode::AA,
                        ack: ack::ack(Some(&header), AckCode::AA, &findings, text, now),
                        control_id: Some(header.control_id.clone()),
                        message_type: Some(header.message_type()),
                        sender: Some(header.sender()),
                        issues,
                        stored,
                        provenance: Some(header.provenance_id()),
                        duplicate,
                        dead_letter: None,
                    };
                }
                // Another writer changed a matched resource between our read and our write.
                Err(e @ Error::VersionConflict { .. }) => {
                    last_error = Some(e);
                    continue;
                }
                // Concurrent messages writing the same shared resources (an organisation, a
                // location) can collide in the store. Each attempt is atomic and guarded by the
                // message's Provenance, so trying again is safe.
                Err(e @ Error::Store(crate::store::StoreError::Conflict(_))) => {
                    tracing::debug!(error = %e, control_id = %header.control_id, "retrying a message after a store conflict");
                    last_error = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(5 * (attempt as u64 + 1)));
                    continue;
                }
                Err(e) => {
                    last_error = Some(e);
                    break;
                }
            }
        }
        let e = last_error.unwrap_or_else(|| Error::Conflict("too many concurrent changes".into()));
        if let Error::Conflict(why) = &e {
            if why.starts_with(REUSED) {
                // Not a passing failure: resending the same message cannot succeed (AR).
                let findings = vec![Finding {
                    issue: Issue::error(IssueCode::Duplicate, why.clone()),
                    location: Some(hl7v2::translate::Location {
                        segment: "MSH".into(),
                        sequence: 1,
                        field: 10,
                    }),
                }];
                return MessageResult {
                    code: AckCode::AR,
                    ack: ack::ack(Some(&header), AckCode::AR, &findings, why, now),
                    control_id: Some(header.control_id.clone()),
                    message_type: Some(header.message_type()),
                    sender: Some(header.sender()),
                    issues: findings.iter().map(Finding::to_issue).collect(),
                    stored: Vec::new(),
                    provenance: None,
                    duplicate: false,
                    dead_letter: None,
                };
            }
        }
        let mut findings: Vec<Finding> = e
            .issues()
            .into_iter()
            .map(|issue| Finding {
                issue: match e {
                    Error::Store(_) => issue,
                    _ => Issue {
                        diagnostics: format!("the translated resources could not be stored: {}", issue.diagnostics),
                        ..issue
                    },
                },
                location: None,
            })
            .collect();
        if let Error::Store(inner) = &e {
            tracing::error!(error = %inner, control_id = %header.control_id, "storing an HL7 v2 message failed");
        }
        findings.extend(t.findings.iter().cloned());
        let text = findings
            .first()
            .map(|f| f.issue.diagnostics.clone())
            .unwrap_or_default();
        MessageResult {
            code: AckCode::AE,
            ack: ack::ack(Some(&header), AckCode::AE, &findings, &text, now),
            control_id: Some(header.control_id.clone()),
            message_type: Some(header.message_type()),
            sender: Some(header.sender()),
            issues: findings.iter().map(Finding::to_issue).collect(),
            stored: Vec::new(),
            provenance: None,
            duplicate: false,
            dead_letter: None,
        }
    }

    /// One attempt: resolve identities, build the guarded transaction, run it.
    #[allow(clippy::type_complexity)]
    fn try_apply(&self, t: &Translation) -> Result<(Vec<String>, bool, Vec<Finding>), Error> {
        let mut resources = t.resources.clone();
        let mut if_match: HashMap<String, u64> = HashMap::new();
        let mut notes = Vec::new();
        let mut renames: HashMap<String, String> = HashMap::new();
        let mut extra: Vec<Value> = Vec::new();

        if let Some(pk) = &t.patient {
            let found = self.find_patient(pk)?;
            let survivor_id = match &found {
                Some(f) => f.stored.id.clone(),
                None => pk.id.clone(),
            };
            if survivor_id != pk.id {
                renames.insert(format!("Patient/{}", pk.id), format!("Patient/{survivor_id}"));
            }
            let idx = position(&resources, "Patient", &pk.id);
            if let (Some(existing), Some(i)) = (&found, idx) {
                resources[i] = merge_resource(&existing.json, &resources[i], "Patient");
                resources[i]["id"] = json!(survivor_id);
                if_match.insert(format!("Patient/{survivor_id}"), existing.stored.version);
            }
            if !t.merged.is_empty() {
                let prior = self.find_one(PATIENT, &t.merged, Some(&survivor_id))?;
                if let Some(i) = idx {
                    let mut old_ids: Vec<Value> = Vec::new();
                    match &prior {
                        Some(p) => {
                            let mut pj = p.json.clone();
                            for id in pj["identifier"].as_array().cloned().unwrap_or_default() {
                                old_ids.push(id);
                            }
                            pj.as_object_mut().map(|o| o.remove("meta"));
                            pj["active"] = json!(false);
                            push_link(&mut pj, &format!("Patient/{survivor_id}"), "replaced-by");
                            if_match.insert(format!("Patient/{}", p.stored.id), p.stored.version);
                            extra.push(pj);
                            push_link(&mut resources[i], &format!("Patient/{}", p.stored.id), "replaces");
                        }
                        None => {
                            notes.push(Finding {
                                issue: Issue::warning(
                                    IssueCode::NotFound,
                                    format!(
                                        "no stored patient has the prior identifier(s) {}; their identifiers are added to the surviving patient",
                                        t.merged.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                                    ),
                                ),
                                location: None,
                            });
                            old_ids.extend(t.merged.iter().map(Identifier::to_json));
                        }
                    }
                    let ids = resources[i]["identifier"].as_array_mut();
                    if let Some(ids) = ids {
                        for mut id in old_ids {
                            if !ids.iter().any(|x| same_identifier(x, &id)) {
                                if let Some(o) = id.as_object_mut() {
                                    o.insert("use".into(), json!("old"));
                                }
                                ids.push(id);
                            }
                        }
                    }
                }
            }
        }
        if let Some(ek) = &t.encounter {
            let found = match &ek.visit {
                Some(v) => self.find_one(ENCOUNTER, std::slice::from_ref(v), None)?,
                None => None,
            };
            if let Some(existing) = found {
                let idx = position(&resources, "Encounter", &ek.id);
                if existing.stored.id != ek.id {
                    renames.insert(
                        format!("Encounter/{}", ek.id),
                        format!("Encounter/{}", existing.stored.id),
                    );
                }
                if let Some(i) = idx {
                    let cancel_discharge = t.header.trigger == "A13";
                    let mut merged = merge_resource(&existing.json, &resources[i], "Encounter");
                    if cancel_discharge {
                        if let Some(p) = merged.get_mut("period").and_then(Value::as_object_mut) {
                            p.remove("end");
                        }
                    }
                    merged["id"] = json!(existing.stored.id);
                    resources[i] = merged;
                    if_match.insert(format!("Encounter/{}", existing.stored.id), existing.stored.version);
                }
            }
        }
        resources.extend(extra);
        if !renames.is_empty() {
            for r in resources.iter_mut() {
                fhir::refs::rewrite(r, &mut |s| renames.get(s).cloned());
            }
        }
        // Reference data most messages repeat (the sending organisation, wards, clinicians)
        // is written only when it changed: rewriting identical content would add a version
        // per message and most of the write cost. The Provenance still names them.
        resources.retain(|r| !self.unchanged_reference_data(r));
        let provenance_id = t.header.provenance_id();
        let stored: Vec<String> = resources.iter().map(reference_of).collect();
        let entries = resources
            .into_iter()
            .map(|r| {
                let version = if_match.get(&reference_of(&r)).copied();
                put_entry(r, version)
            })
            .collect();
        let source = format!("hl7v2:{}|{}", t.header.sending_application, t.header.sending_facility);
        let applied = self.service.for_source(&source).process_entries(
            BundleKind::Transaction,
            entries,
            Some(("Provenance".into(), provenance_id)),
        );
        match applied {
            Ok(outcome) => {
                // What validation accepted with the write (warnings, flagged profile errors) goes
                // back to the sender too, as ERR segments after the AA.
                let mut notes = notes;
                for e in &outcome.entries {
                    if let crate::node::EntryResult::Written(w) = e {
                        for i in &w.issues {
                            let mut issue = i.clone();
                            issue.diagnostics = format!("{}/{}: {}", w.rtype, w.id, issue.diagnostics);
                            notes.push(Finding { issue, location: None });
                        }
                    }
                }
                Ok((stored, false, notes))
            }
            Err(Error::AlreadyApplied(_)) => match self.reused_control_id(t)? {
                None => Ok((Vec::new(), true, notes)),
                Some(when) => Err(Error::Conflict(format!(
                    "{REUSED}: message {} from {} was applied on {when} with other content; this one is refused and kept as a dead letter — send it with a control id (MSH-10) of its own",
                    t.header.control_id,
                    t.header.sender()
                ))),
            },
            Err(e) => Err(e),
        }
    }

    /// When the message applied under this one's control id had another content digest, the
    /// time it was recorded (`None`: the same message again, or one kept before digests were).
    fn reused_control_id(&self, t: &Translation) -> Result<Option<String>, Error> {
        let digest_of = |p: &Value| {
            p["entity"].as_array().and_then(|es| {
                es.iter()
                    .find(|e| e["what"]["identifier"]["system"] == hl7v2::translate::DIGEST_SYSTEM)
                    .and_then(|e| e["what"]["identifier"]["value"].as_str().map(str::to_string))
            })
        };
        let ours = t.resources.last().and_then(digest_of);
        let Some(stored) = self.service.store.read("Provenance", &t.header.provenance_id())? else {
            return Ok(None);
        };
        let Some(Ok(prior)) = stored.json.as_ref().map(|j| serde_json::from_slice::<Value>(j)) else {
            return Ok(None);
        };
        Ok(match (digest_of(&prior), ours) {
            (Some(a), Some(b)) if a != b => Some(prior["recorded"].as_str().unwrap_or("an earlier date").to_string()),
            _ => None,
        })
    }

    /// Whether `r` is an Organization, Location or Practitioner stored with exactly this content.
    fn unchanged_reference_data(&self, r: &Value) -> bool {
        let rtype = r["resourceType"].as_str().unwrap_or_default();
        matches!(rtype, "Organization" | "Location" | "Practitioner") && self.unchanged(r)
    }

    /// Whether `r` is stored with exactly this content (meta aside).
    fn unchanged(&self, r: &Value) -> bool {
        let rtype = r["resourceType"].as_str().unwrap_or_default();
        let Ok(Some(stored)) = self.service.store.read(rtype, r["id"].as_str().unwrap_or_default()) else {
            return false;
        };
        let Some(Ok(mut current)) = stored.json.as_ref().map(|j| serde_json::from_slice::<Value>(j)) else {
            return false;
        };
        current.as_object_mut().map(|o| o.remove("meta"));
        &current == r
    }

    /// The stored patient: by NHS number first, then by each other identifier
    /// (hospital numbers first). Inactive (merged) patients are passed over.
    fn find_patient(&self, pk: &hl7v2::translate::PatientKey) -> Result<Option<Found>, Error> {
        if let Some(n) = &pk.nhs_number {
            let nhs = Identifier::new(Some(NHS_NUMBER_SYSTEM), n);
            if let Some(found) = self.find_one(PATIENT, &[nhs], None)? {
                return Ok(Some(found));
            }
        }
        for other in &pk.others {
            if let Some(found) = self.find_one(PATIENT, std::slice::from_ref(other), None)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The one active resource with any of `identifiers`; several are an error.
    /// (`except`: a resource to pass over; with it, an inactive match is returned
    /// when there is no active one.)
    fn find_one(
        &self,
        rtype: ResourceType,
        identifiers: &[Identifier],
        except: Option<&str>,
    ) -> Result<Option<Found>, Error> {
        let found = self.service.find_by_identifiers(rtype, identifiers, 20)?;
        let (inactive, mut active): (Vec<Found>, Vec<Found>) = found
            .into_iter()
            .filter(|f| except != Some(f.stored.id.as_str()))
            .partition(|f| f.json["active"] == json!(false));
        match active.len() {
            0 => Ok(inactive.into_iter().next().filter(|_| except.is_some())),
            1 => Ok(active.pop()),
            n => {
                Err(Error::MultipleMatches(format!(
                "{n} stored {rtype} resources ({}) have the identifier(s) {}: merge them (ADT^A40) before sending more",
                active.iter().map(|f| f.stored.id.as_str()).collect::<Vec<_>>().join(", "),
                identifiers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )))
            }
        }
    }
}

/// `Type/id` of a resource.
fn reference_of(r: &Value) -> String {
    format!(
        "{}/{}",
        r["resourceType"].as_str().unwrap_or_default(),
        r["id"].as_str().unwrap_or_default()
    )
}

/// A PUT of `r` to its own id, with `ifMatch` when the write depends on the version read.
fn put_entry(r: Value, if_match: Option<u64>) -> Entry {
    let url = reference_of(&r);
    Entry {
        full_url: Some(url.clone()),
        resource: Some(Ok(r)),
        request: Some(EntryRequest {
            method: Some("PUT".into()),
            url: Some(url),
            if_match: if_match.map(|v| format!("W/\"{v}\"")),
            if_none_exist: None,
        }),
    }
}

/// The transaction Bundle that stores `resources` (a PUT per resource), as
/// `pennine translate` prints it; the node builds the same entries directly.
pub fn transaction(resources: &[Value]) -> Value {
    let entries: Vec<Value> = resources
        .iter()
        .map(|r| {
            let url = reference_of(r);
            json!({ "fullUrl": url, "resource": r, "request": { "method": "PUT", "url": url } })
        })
        .collect();
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries })
}

fn position(resources: &[Value], rtype: &str, id: &str) -> Option<usize> {
    resources
        .iter()
        .position(|r| r["resourceType"] == rtype && r["id"] == id)
}

fn same_identifier(a: &Value, b: &Value) -> bool {
    a.get("system") == b.get("system") && a.get("value") == b.get("value")
}

fn push_link(patient: &mut Value, other: &str, kind: &str) {
    let link = json!({ "other": { "reference": other }, "type": kind });
    match patient.get_mut("link").and_then(Value::as_array_mut) {
        Some(links) => {
            if !links.iter().any(|l| l["other"]["reference"] == other) {
                links.push(link);
            }
        }
        None => patient["link"] = json!([link]),
    }
}

/// A later message updates what is stored: its elements win, elements it does
/// not mention are kept, identifiers and links accumulate, and an encounter's
/// period and locations carry their history.
pub fn merge_resource(old: &Value, new: &Value, rtype: &str) -> Value {
    let mut out = old.clone();
    let Some(o) = out.as_object_mut() else {
        return new.clone();
    };
    o.remove("meta");
    o.remove("text");
    for (k, v) in new.as_object().into_iter().flatten() {
        match k.as_str() {
            "identifier" | "link" => {
                let mut list = o.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
                for item in v.as_array().into_iter().flatten() {
                    let dup = list.iter().any(|x| {
                        if k == "identifier" {
                            same_identifier(x, item)
                        } else {
                            x["other"] == item["other"]
                        }
                    });
                    if !dup {
                        list.push(item.clone());
                    }
                }
                o.insert(k.clone(), Value::Array(list));
            }
            "period" if rtype == "Encounter" => {
                let mut p = o.get(k).cloned().unwrap_or_else(|| json!({}));
                for (pk, pv) in v.as_object().into_iter().flatten() {
                    p[pk] = pv.clone();
                }
                o.insert(k.clone(), p);
            }
            "location" if rtype == "Encounter" => {
                let mut list: Vec<Value> = v.as_array().cloned().unwrap_or_default();
                for prev in o.get(k).and_then(Value::as_array).into_iter().flatten() {
                    if !list.iter().any(|x| x["location"] == prev["location"]) {
                        let mut prev = prev.clone();
                        if prev["status"] == "active" || prev["status"] == "planned" {
                            prev["status"] = json!("completed");
                        }
                        list.push(prev);
                    }
                }
                o.insert(k.clone(), Value::Array(list));
            }
            "participant" if rtype == "Encounter" => {
                let mut list: Vec<Value> = v.as_array().cloned().unwrap_or_default();
                for prev in o.get(k).and_then(Value::as_array).into_iter().flatten() {
                    if !list
                        .iter()
                        .any(|x| x["individual"] == prev["individual"] && x["type"] == prev["type"])
                    {
                        list.push(prev.clone());
                    }
                }
                o.insert(k.clone(), Value::Array(list));
            }
            _ => {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// A CSV row that was not stored.
#[derive(Debug, Clone)]
pub struct RowRejection {
    /// The line of the row in the upload (the header is line 1).
    pub line: usize,
    pub issues: Vec<Issue>,
    pub dead_letter: Option<String>,
}

/// What became of a CSV upload.
#[derive(Debug, Clone)]
pub struct CsvSummary {
    pub mapping: String,
    pub rows: usize,
    pub stored: usize,
    pub rejected: Vec<RowRejection>,
}

impl CsvSummary {
    pub fn to_json(&self) -> Value {
        json!({
            "mapping": self.mapping,
            "rows": self.rows,
            "stored": self.stored,
            "rejected": self.rejected.iter().map(|r| {
                let mut v = json!({
                    "line": r.line,
                    "outcome": operation_outcome(&r.issues),
                });
                if let Some(d) = &r.dead_letter {
                    v["deadLetter"] = json!(d);
                }
                v
            }).collect::<Vec<_>>(),
        })
    }
}

/// Rows per batch written in one unit of work.
const CSV_CHUNK: usize = 500;

impl Feeds {
    /// Ingests a CSV extract with a shipped mapping. Whole-upload problems
    /// (unknown mapping, missing columns, unreadable CSV) are errors; a bad row
    /// is rejected on its own and kept as a dead letter.
    pub fn csv(&self, mapping: &str, text: &str, source: &Source) -> Result<CsvSummary, Error> {
        self.csv_inner(mapping, text, source, true)
    }

    fn csv_replay(&self, mapping: &str, text: &str, source: &Source) -> Result<CsvSummary, Error> {
        self.csv_inner(mapping, text, source, false)
    }

    fn csv_inner(&self, mapping: &str, text: &str, source: &Source, keep: bool) -> Result<CsvSummary, Error> {
        use super::csv as c;
        let m = c::shipped(mapping).ok_or_else(|| {
            Error::NotFound(
                "mapping".into(),
                format!("{mapping} (known: {})", c::shipped_names().join(", ")),
            )
        })?;
        let table = c::read_table(m, text).map_err(Error::invalid)?;
        let mut summary = CsvSummary {
            mapping: mapping.to_string(),
            rows: table.rows.len(),
            stored: 0,
            rejected: Vec::new(),
        };
        let header: Vec<&str> = table.header.iter().map(String::as_str).collect();
        let writer = self.service.for_source(&format!("csv:{mapping}"));
        for chunk in table.rows.chunks(CSV_CHUNK) {
            // Each row is a group stored whole or not at all; a chunk of rows is one
            // commit. A row stored before with the same content is left as it is (no
            // new versions).
            let mut groups = Vec::new();
            let mut lines = Vec::new();
            for (line, row) in chunk {
                let fields: HashMap<&str, &str> = header.iter().copied().zip(row.iter().map(String::as_str)).collect();
                match c::map_row(m, &fields) {
                    Ok(resources) => {
                        let changed: Vec<Value> = resources.into_iter().filter(|r| !self.unchanged(r)).collect();
                        if changed.is_empty() {
                            summary.stored += 1;
                            continue;
                        }
                        groups.push(changed);
                        lines.push(*line);
                    }
                    Err(issues) => summary.rejected.push(RowRejection {
                        line: *line,
                        issues,
                        dead_letter: None,
                    }),
                }
            }
            if groups.is_empty() {
                continue;
            }
            for (result, line) in writer.put_groups(groups)?.into_iter().zip(lines) {
                match result {
                    Ok(_) => summary.stored += 1,
                    Err(e) => summary.rejected.push(RowRejection {
                        line,
                        issues: e.issues(),
                        dead_letter: None,
                    }),
                }
            }
        }
        summary.rejected.sort_by_key(|r| r.line);
        if keep {
            let rows: HashMap<usize, &Vec<String>> = table.rows.iter().map(|(l, r)| (*l, r)).collect();
            for r in summary.rejected.iter_mut() {
                let content = c::row_document(&table.header, rows.get(&r.line).map(|v| v.as_slice()).unwrap_or(&[]));
                let mut l = DeadLetter::new(&source.transport, &format!("csv/{mapping}"), content, &r.issues);
                l.source = source.who.clone();
                l.reference = Some(format!("line {}", r.line));
                match self.dead.keep(l) {
                    Ok(kept) => {
                        if let Kept::NotKept(why) = &kept {
                            r.issues.push(Issue::warning(IssueCode::TooCostly, why.clone()));
                        }
                        r.dead_letter = kept.id().map(str::to_string);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot write a dead letter");
                        r.issues.push(Issue::error(
                            IssueCode::Exception,
                            "the row could not be kept as a dead letter either: send it again later",
                        ));
                    }
                }
            }
        }
        Ok(summary)
    }
}
