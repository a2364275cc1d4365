//! HL7 v2 messages into FHIR R4 resources: ADT (A01–A13, A28, A31, A40 and the
//! other ADT events that carry PID/PV1) and ORU^R01. Pure: no storage, no clock
//! except for `Provenance.recorded`.
//!
//! Identity is deterministic: every resource id is a hash of what identifies it
//! (the patient's MRN within its assigning authority or NHS number, the visit
//! number, the filler order number and observation code, ...), so translating
//! the same facts twice gives the same ids. The node then matches patients and
//! encounters already stored (`feeds::ingest`).
//!
//! Every field the mapping reads is recorded; non-empty fields and segments it
//! never read are reported as `information` findings, so nothing is dropped
//! without the sender hearing of it. An invalid date in a mapped field refuses
//! the whole message (AE) with the field named.
//!
//! This file holds the message-level work (header, unmapped content, the run);
//! the segment families are `reference` (organisations, clinicians, locations),
//! `adt` (patient, encounter and the other ADT segments) and `results` (ORU).

mod adt;
mod reference;
mod results;

use super::datatypes::{self as dt, comp, Cx};
use super::dtm::{self, Dtm};
use super::er7::{self, Message};
use crate::fhir::nhs;
use crate::fhir::{Identifier, Issue, IssueCode};
use serde_json::{Map, Value};
use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};

/// The acknowledgment code a message earns (MSA-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Accepted and stored.
    AA,
    /// Application error: understood but not usable (bad field, store failure).
    AE,
    /// Rejected: not a message this node can process at all.
    AR,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
        }
    }
}

/// Where in the message a finding is: segment name, its occurrence (1-based) and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub segment: String,
    pub sequence: usize,
    pub field: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field == 0 {
            write!(f, "{}[{}]", self.segment, self.sequence)
        } else {
            write!(f, "{}[{}]-{}", self.segment, self.sequence, self.field)
        }
    }
}

/// One finding: a FHIR issue plus, when it is about a field, where that field is.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub issue: Issue,
    pub location: Option<Location>,
}

impl Finding {
    /// The issue with its v2 location in front of the text (for OperationOutcomes).
    pub fn to_issue(&self) -> Issue {
        let mut issue = self.issue.clone();
        if let Some(l) = &self.location {
            issue.diagnostics = format!("{l}: {}", issue.diagnostics);
        }
        issue
    }
}

/// MSH, as the ACK and the Provenance need it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    pub control_id: String,
    pub message_code: String,
    pub trigger: String,
    pub version: String,
    pub processing_id: String,
    /// MSH-7 as a FHIR dateTime, when valid.
    pub time: Option<String>,
    pub delimiters: er7::Delimiters,
}

impl Header {
    /// The sender as the duplicate check knows it: MSH-3 and MSH-4.
    pub fn sender(&self) -> String {
        format!("{}|{}", self.sending_application, self.sending_facility)
    }

    /// The id of the Provenance that records this message (sender + control id).
    pub fn provenance_id(&self) -> String {
        hash_id(&["Provenance", &self.sender(), &self.control_id])
    }

    pub fn message_type(&self) -> String {
        format!("{}^{}", self.message_code, self.trigger)
    }
}

/// The identity facts of the message's patient, for matching stored patients.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientKey {
    /// The id the translation gave the patient.
    pub id: String,
    /// A valid NHS number, if the message has one.
    pub nhs_number: Option<String>,
    /// Other identifiers (MRNs first).
    pub others: Vec<Identifier>,
}

/// The identity facts of the message's encounter.
#[derive(Debug, Clone, PartialEq)]
pub struct EncounterKey {
    pub id: String,
    /// The visit number (PV1-19).
    pub visit: Option<Identifier>,
}

/// A translated message.
#[derive(Debug, Clone)]
pub struct Translation {
    pub header: Header,
    /// Every resource, each with its id; the Provenance last.
    pub resources: Vec<Value>,
    pub patient: Option<PatientKey>,
    pub encounter: Option<EncounterKey>,
    /// A40: identifiers of the patient merged into `patient`.
    pub merged: Vec<Identifier>,
    /// Information and warnings (never errors).
    pub findings: Vec<Finding>,
}

/// A message that cannot be translated.
#[derive(Debug, Clone)]
pub struct Refused {
    pub header: Option<Box<Header>>,
    pub ack: AckCode,
    pub findings: Vec<Finding>,
}

/// A stable id from parts: a SHA-256 prefix, formatted as a UUID.
pub fn hash_id(parts: &[&str]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p.as_bytes());
        ctx.update(&[0x1f]);
    }
    let d = ctx.finish();
    let mut out = String::with_capacity(36);
    for (i, b) in d.as_ref()[..16].iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xf) as usize] as char);
    }
    out
}

/// Message types this translator handles.
fn supported(code: &str, trigger: &str) -> bool {
    match code {
        "ADT" => matches!(
            trigger,
            "A01"
                | "A02"
                | "A03"
                | "A04"
                | "A05"
                | "A06"
                | "A07"
                | "A08"
                | "A09"
                | "A10"
                | "A11"
                | "A12"
                | "A13"
                | "A14"
                | "A15"
                | "A16"
                | "A25"
                | "A26"
                | "A27"
                | "A28"
                | "A31"
                | "A40"
        ),
        "ORU" => trigger == "R01",
        _ => false,
    }
}

/// Translates one ER7 message.
pub fn translate(text: &str, recorded: &str) -> Result<Translation, Refused> {
    let msg = er7::parse(text).map_err(|e| Refused {
        header: None,
        ack: AckCode::AR,
        findings: vec![Finding {
            issue: Issue::error(IssueCode::Structure, format!("not an HL7 v2 message: {e}")),
            location: e.segment.map(|_| Location {
                segment: "MSH".into(),
                sequence: 1,
                field: 0,
            }),
        }],
    })?;
    let cx = Ctx::new(&msg);
    let header = cx.header();
    let refuse = |ack: AckCode, findings: Vec<Finding>| Refused {
        header: Some(Box::new(header.clone())),
        ack,
        findings,
    };
    if header.control_id.is_empty() {
        return Err(refuse(
            AckCode::AR,
            vec![cx.error_at(0, 10, IssueCode::Required, "MSH-10 (message control id) is empty")],
        ));
    }
    if !(header.version.starts_with("2."))
        || !matches!(
            header.version.get(..3),
            Some("2.3" | "2.4" | "2.5" | "2.6" | "2.7" | "2.8")
        )
    {
        return Err(refuse(
            AckCode::AR,
            vec![cx.error_at(
                0,
                12,
                IssueCode::NotSupported,
                format!("version '{}' is not supported (2.3 to 2.8 are)", header.version),
            )],
        ));
    }
    if !supported(&header.message_code, &header.trigger) {
        return Err(refuse(
            AckCode::AR,
            vec![cx.error_at(
                0,
                9,
                IssueCode::NotSupported,
                format!(
                    "message type {} is not translated by this node (ADT A01-A16, A25-A28, A31, A40 and ORU^R01 are)",
                    header.message_type()
                ),
            )],
        ));
    }
    let mut t = cx.run(&header, recorded);
    let errors: Vec<Finding> = std::mem::take(&mut *cx.errors.borrow_mut());
    if !errors.is_empty() {
        return Err(refuse(AckCode::AE, errors));
    }
    t.findings.extend(cx.unmapped());
    // The message's content digest beside its control id in the Provenance: a resend (the
    // same content) is a duplicate; another message with a used control id is not.
    if let Some(p) = t.resources.last_mut().filter(|r| r["resourceType"] == "Provenance") {
        if let Some(entities) = p["entity"].as_array_mut() {
            entities.push(jv!({
                "role": "source",
                "what": {"identifier": {"system": DIGEST_SYSTEM, "value": content_digest(text)}}
            }));
        }
    }
    Ok(t)
}

/// The identifier system of a message's content digest in its Provenance.
pub const DIGEST_SYSTEM: &str = "urn:pennine:hl7v2:message-sha256";

/// SHA-256 of a message's segments (line ends and blank lines aside) without MSH-7, the
/// time a sender may stamp again when it resends.
pub fn content_digest(text: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for seg in text.split(['\r', '\n']).filter(|s| !s.trim().is_empty()) {
        // "MSH" is ASCII, so slicing after it is safe; the next character separates fields.
        if let Some(sep) = seg.strip_prefix("MSH").and_then(|rest| rest.chars().next()) {
            for (i, f) in seg.split(sep).enumerate() {
                // Field 0 is "MSH"; the separator itself is MSH-1, so MSH-7 is the 6th piece.
                if i != 6 {
                    ctx.update(f.as_bytes());
                }
                ctx.update(b"|");
            }
        } else {
            ctx.update(seg.as_bytes());
        }
        ctx.update(b"\r");
    }
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The state of one translation: the message, which fields were read, and the
/// resources made so far.
struct Ctx<'m, 'a> {
    m: &'m Message<'a>,
    used: Vec<Cell<u64>>,
    seen: Vec<Cell<bool>>,
    errors: std::cell::RefCell<Vec<Finding>>,
    warnings: std::cell::RefCell<Vec<Finding>>,
    unknown_systems: std::cell::RefCell<Vec<String>>,
}

impl<'m, 'a> Ctx<'m, 'a> {
    fn new(m: &'m Message<'a>) -> Self {
        Ctx {
            m,
            used: m.segments.iter().map(|_| Cell::new(0)).collect(),
            seen: m.segments.iter().map(|_| Cell::new(false)).collect(),
            errors: Default::default(),
            warnings: Default::default(),
            unknown_systems: Default::default(),
        }
    }

    fn location(&self, si: usize, field: usize) -> Location {
        let name = self.m.segments[si].name;
        let sequence = self.m.segments[..=si].iter().filter(|s| s.name == name).count();
        Location {
            segment: name.to_string(),
            sequence,
            field,
        }
    }

    fn error_at(&self, si: usize, field: usize, code: IssueCode, text: impl Into<String>) -> Finding {
        Finding {
            issue: Issue::error(code, text),
            location: Some(self.location(si, field)),
        }
    }

    fn warn(&self, si: usize, field: usize, code: IssueCode, text: impl Into<String>) {
        let f = Finding {
            issue: Issue::warning(code, text),
            location: Some(self.location(si, field)),
        };
        self.warnings.borrow_mut().push(f);
    }

    /// Raw field `n` of segment `si`, recorded as used.
    fn raw(&self, si: usize, n: usize) -> &'a str {
        self.seen[si].set(true);
        if n < 64 {
            let c = &self.used[si];
            c.set(c.get() | (1 << n));
        }
        self.m.segments[si].field(n)
    }

    /// Repetitions of field `n` that are not empty.
    fn reps(&self, si: usize, n: usize) -> Vec<&'a str> {
        let raw = self.raw(si, n);
        if raw.is_empty() {
            return Vec::new();
        }
        self.m.repetitions(raw).filter(|r| !r.trim().is_empty()).collect()
    }

    /// Component `c` of the first repetition of field `n`, unescaped.
    fn c(&self, si: usize, n: usize, c: usize) -> String {
        let raw = self.raw(si, n);
        let rep = self.m.repetitions(raw).next().unwrap_or("");
        comp(self.m, rep, c)
    }

    /// Component 1 of field `n` (most simple fields).
    fn v(&self, si: usize, n: usize) -> String {
        self.c(si, n, 1)
    }

    /// A date/time field: `None` when empty; an invalid value is an error that
    /// refuses the message.
    fn dtm(&self, si: usize, n: usize) -> Option<Dtm> {
        let value = self.v(si, n);
        if value.is_empty() {
            return None;
        }
        match dtm::parse(&value) {
            Ok(d) => Some(d),
            Err(e) => {
                let name = self.m.segments[si].name;
                self.errors.borrow_mut().push(self.error_at(
                    si,
                    n,
                    IssueCode::Value,
                    format!("{name}-{n} is not a valid date/time: {e}"),
                ));
                None
            }
        }
    }

    /// What identifies a coded field (CWE) for the deterministic ids: code and
    /// coding system, or the text when there is no code. The display text may
    /// change between messages without changing what the field identifies.
    fn code_key(&self, si: usize, n: usize) -> String {
        let rep = self.reps(si, n).first().copied().unwrap_or("");
        let code = comp(self.m, rep, 1);
        if code.is_empty() {
            comp(self.m, rep, 2)
        } else {
            format!("{code}|{}", comp(self.m, rep, 3))
        }
    }

    /// What identifies an entity identifier (EI): value, namespace and universal id.
    fn ei_key(&self, si: usize, n: usize) -> String {
        let rep = self.reps(si, n).first().copied().unwrap_or("");
        format!(
            "{}|{}|{}",
            comp(self.m, rep, 1),
            comp(self.m, rep, 2),
            comp(self.m, rep, 3)
        )
    }

    fn cwe(&self, raw: &str) -> Option<Value> {
        dt::cwe(self.m, raw, &mut self.unknown_systems.borrow_mut())
    }

    fn cwe_field(&self, si: usize, n: usize) -> Option<Value> {
        self.reps(si, n).first().and_then(|r| self.cwe(r))
    }

    fn segments(&self, name: &str) -> Vec<usize> {
        self.m
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.name == name)
            .map(|(i, _)| i)
            .collect()
    }

    fn first(&self, name: &str) -> Option<usize> {
        self.m.segments.iter().position(|s| s.name == name)
    }

    fn header(&self) -> Header {
        let si = 0;
        self.seen[0].set(true);
        let time = dtm::parse(&self.v(si, 7)).ok().map(|d| d.fhir);
        Header {
            sending_application: self.v(si, 3),
            sending_facility: self.v(si, 4),
            receiving_application: self.v(si, 5),
            receiving_facility: self.v(si, 6),
            control_id: self.v(si, 10),
            message_code: self.c(si, 9, 1),
            trigger: self.c(si, 9, 2),
            version: self.v(si, 12),
            processing_id: self.v(si, 11),
            time,
            delimiters: self.m.delimiters,
        }
    }

    /// Fields present but never read, and segments never looked at.
    fn unmapped(&self) -> Vec<Finding> {
        // Grouped by segment name, so a message with many unused fields gets one
        // line per segment rather than one per field.
        let mut fields: BTreeMap<&str, std::collections::BTreeSet<usize>> = BTreeMap::new();
        let mut segments: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, s) in self.m.segments.iter().enumerate() {
            if !self.seen[i].get() {
                *segments.entry(s.name).or_default() += 1;
                continue;
            }
            let used = self.used[i].get();
            // MSH-1/2 are the encoding characters; field 1 of these segments is a
            // set id (a sequence number), not data.
            let first = match s.name {
                "MSH" => 3,
                "PID" | "PV1" | "NK1" | "AL1" | "DG1" | "IN1" | "OBR" | "OBX" | "NTE" => 2,
                _ => 1,
            };
            for n in first..=s.field_count() {
                if (n >= 64 || used & (1 << n) == 0) && !s.field(n).trim().is_empty() {
                    fields.entry(s.name).or_default().insert(n);
                }
            }
        }
        let mut out = Vec::new();
        for (name, count) in segments {
            out.push(Finding {
                issue: Issue::information(
                    IssueCode::Informational,
                    format!("segment {name} is not mapped ({count} in the message); its content was not stored"),
                ),
                location: None,
            });
        }
        for (name, numbers) in fields {
            let list: Vec<String> = numbers.iter().map(|n| format!("{name}-{n}")).collect();
            let (verb, pronoun) = if list.len() == 1 {
                ("is", "its value was")
            } else {
                ("are", "their values were")
            };
            out.push(Finding {
                issue: Issue::information(
                    IssueCode::Informational,
                    format!("{} {verb} not mapped; {pronoun} not stored", list.join(", ")),
                ),
                location: None,
            });
        }
        let mut unknown: Vec<String> = self.unknown_systems.borrow().clone();
        unknown.sort();
        unknown.dedup();
        for u in unknown {
            out.push(Finding {
                issue: Issue::information(
                    IssueCode::Informational,
                    format!("coding system '{u}' has no known URL; its codes were stored without a system"),
                ),
                location: None,
            });
        }
        out
    }

    fn run(&self, header: &Header, recorded: &str) -> Translation {
        let mut out = Out::default();
        let sender_org = self.facility_org(&mut out, 0, 4);
        let mut patient = None;
        let mut encounter = None;
        let mut merged = Vec::new();
        if let Some(pid) = self.first("PID") {
            patient = self.patient(&mut out, pid);
        } else {
            self.errors.borrow_mut().push(Finding {
                issue: Issue::error(
                    IssueCode::Required,
                    "the message has no PID segment: there is no patient",
                ),
                location: None,
            });
        }
        let Some(pk) = patient.clone() else {
            return Translation {
                header: header.clone(),
                resources: Vec::new(),
                patient: None,
                encounter: None,
                merged,
                findings: Vec::new(),
            };
        };
        let patient_ref = format!("Patient/{}", pk.id);
        let patient_key = pk.id.clone();
        let trigger = header.trigger.as_str();
        if let Some(pv1) = self.first("PV1") {
            if !matches!(trigger, "A28" | "A31" | "A40") || header.message_code == "ORU" {
                encounter = self.encounter(
                    &mut out,
                    pv1,
                    trigger,
                    &patient_ref,
                    &patient_key,
                    sender_org.as_deref(),
                );
            }
        }
        let encounter_ref = encounter.as_ref().map(|e: &EncounterKey| format!("Encounter/{}", e.id));
        if header.message_code == "ADT" {
            for si in self.segments("NK1") {
                self.related_person(&mut out, si, &patient_ref, &patient_key);
            }
            for si in self.segments("AL1") {
                self.allergy(&mut out, si, &patient_ref, &patient_key);
            }
            // Diagnoses keep their position: DG1-15 (priority) where sent, else DG1 order.
            let mut ranked: Vec<(u64, String)> = Vec::new();
            for (order, si) in self.segments("DG1").into_iter().enumerate() {
                let priority = self.v(si, 15).parse::<u64>().ok().filter(|p| *p > 0);
                if let Some(id) = self.condition(&mut out, si, &patient_ref, &patient_key, encounter_ref.as_deref()) {
                    ranked.push((priority.unwrap_or(order as u64 + 1), id));
                }
            }
            if let (Some(e), false) = (&encounter, ranked.is_empty()) {
                ranked.sort();
                ranked.dedup_by_key(|(rank, _)| *rank);
                let diagnosis: Vec<Value> = ranked
                    .iter()
                    .map(|(rank, id)| jv!({"condition": {"reference": format!("Condition/{id}")}, "rank": *rank}))
                    .collect();
                if let Some(r) = out
                    .resources
                    .iter_mut()
                    .find(|r| r["resourceType"] == "Encounter" && r["id"] == e.id.as_str())
                {
                    r["diagnosis"] = Value::Array(diagnosis);
                }
            }
            for si in self.segments("IN1") {
                self.coverage(&mut out, si, &patient_ref, &patient_key);
            }
            if trigger == "A40" {
                if let Some(mrg) = self.first("MRG") {
                    merged = self.merge(mrg);
                    if merged.is_empty() {
                        self.errors.borrow_mut().push(self.error_at(
                            mrg,
                            1,
                            IssueCode::Required,
                            "MRG-1 (prior patient identifier) is empty: there is no patient to merge",
                        ));
                    }
                } else {
                    self.errors.borrow_mut().push(Finding {
                        issue: Issue::error(IssueCode::Required, "an A40 merge needs an MRG segment"),
                        location: None,
                    });
                }
            }
        } else {
            self.results(&mut out, &patient_ref, &patient_key, encounter_ref.as_deref());
        }
        out.push(self.provenance(header, recorded, &out.resources, sender_org.as_deref()));
        let mut findings = std::mem::take(&mut *self.warnings.borrow_mut());
        findings.append(&mut out.findings);
        Translation {
            header: header.clone(),
            resources: out.resources,
            patient,
            encounter,
            merged,
            findings,
        }
    }

    fn provenance(&self, header: &Header, recorded: &str, resources: &[Value], sender: Option<&str>) -> Value {
        let targets: Vec<Value> = resources
            .iter()
            .map(|r| jv!({ "reference": format!("{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or("")) }))
            .collect();
        let mut agent = jv!({
            "type": dt::coded("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "author", Some("Author")),
            "who": { "display": format!("{} at {}", header.sending_application, header.sending_facility) }
        });
        if let Some(s) = sender {
            agent["who"]["reference"] = jv!(s);
        }
        let mut p = jv!({
            "resourceType": "Provenance",
            "id": header.provenance_id(),
            "target": targets,
            "recorded": recorded,
            "activity": dt::coded("http://terminology.hl7.org/CodeSystem/v2-0003", &header.trigger, None),
            "agent": [agent],
            "entity": [{
                "role": "source",
                "what": {
                    "identifier": {
                        "system": format!("urn:pennine:hl7v2:control-id:{}", header.sender().replace(['|', ' '], "/")),
                        "value": header.control_id.as_str()
                    },
                    "display": format!("HL7 v2 {} message {} (version {})", header.message_type(), header.control_id, header.version)
                }
            }]
        });
        if let Some(t) = &header.time {
            p["occurredDateTime"] = jv!(t.as_str());
        }
        p
    }
}

/// The resources of one translation, each id once (a practitioner named in
/// several fields is one resource).
#[derive(Default)]
struct Out {
    resources: Vec<Value>,
    ids: HashSet<String>,
    findings: Vec<Finding>,
}

impl Out {
    fn push(&mut self, r: Value) {
        // Ids are hashes that include the resource type, so the id alone is the key.
        let id = r["id"].as_str().unwrap_or_default();
        if !self.ids.contains(id) {
            self.ids.insert(id.to_string());
            self.resources.push(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hash_id;

    #[test]
    fn ids_are_stable_across_releases() {
        // Stored resources carry these ids: the function may never change its output.
        // (Python: sha256(b"Patient\x1furn:x|1\x1f").hexdigest()[:32], dashed as a UUID.)
        assert_eq!(hash_id(&["Patient", "urn:x|1"]), "d9243fd5-b62a-917c-8998-1b259f3a66ec");
    }

    #[test]
    fn a_version_with_a_multi_byte_character_is_refused_not_a_panic() {
        // The shape of the hl7v2 fuzz target's crash input: MSH-12 "2." and a two-byte character.
        let msg = "MSH|^~\\&|LAB|GHH|OE|BLDG4|200202150930||ORU^R01|CNTRL-3456|P|2.\u{203}\rPID|||555-44-4444||EVE^E\r";
        assert!(super::translate(msg, "2025-01-01T00:00:00Z").is_err());
    }
}
