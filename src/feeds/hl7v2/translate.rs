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

use super::datatypes::{self as dt, comp, Cx};
use super::dtm::{self, Dtm};
use super::er7::{self, Message};
use crate::fhir::nhs;
use crate::fhir::{Identifier, Issue, IssueCode};
use serde_json::{json, Map, Value};
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
            &header.version[..3.min(header.version.len())],
            "2.3" | "2.4" | "2.5" | "2.6" | "2.7" | "2.8"
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
    Ok(t)
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
            for si in self.segments("DG1") {
                self.condition(&mut out, si, &patient_ref, &patient_key, encounter_ref.as_deref());
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

    fn facility_org(&self, out: &mut Out, si: usize, n: usize) -> Option<String> {
        let raw = self.raw(si, n);
        let ns = comp(self.m, raw, 1);
        let universal = comp(self.m, raw, 2);
        let ids = dt::organization_identifiers(&ns, &universal, &comp(self.m, raw, 3));
        if ids.is_empty() {
            return None;
        }
        let id = hash_id(&["Organization", &ns, &universal]);
        let mut org = json!({"resourceType": "Organization", "id": id, "identifier": ids});
        if !ns.is_empty() {
            org["name"] = json!(ns);
        }
        out.push(org);
        Some(format!("Organization/{id}"))
    }

    /// XON (organisation name^^id^^^assigning authority) → Organization.
    fn xon_org(&self, out: &mut Out, raw: &str) -> Option<String> {
        let name = comp(self.m, raw, 1);
        let code = {
            let c = comp(self.m, raw, 10);
            if c.is_empty() {
                comp(self.m, raw, 3)
            } else {
                c
            }
        };
        if name.is_empty() && code.is_empty() {
            return None;
        }
        let id = hash_id(&["Organization", &code, &name]);
        let mut org = json!({"resourceType": "Organization", "id": id});
        if !code.is_empty() {
            org["identifier"] = json!([{ "system": crate::fhir::nhs::ODS_SYSTEM, "value": code }]);
        }
        if !name.is_empty() {
            org["name"] = json!(name);
        }
        out.push(org);
        Some(format!("Organization/{id}"))
    }

    /// XCN → Practitioner; its reference.
    fn practitioner(&self, out: &mut Out, raw: &str) -> Option<String> {
        let m = self.m;
        let idv = comp(m, raw, 1);
        let authority = dt::sub(m, raw, 9, 1);
        let system = dt::authority_system(&authority, &dt::sub(m, raw, 9, 2), &dt::sub(m, raw, 9, 3));
        let name = dt::xpn_at(m, raw, 2);
        if idv.is_empty() && name.is_none() {
            return None;
        }
        let id = if idv.is_empty() {
            hash_id(&["Practitioner", "name", &m.unescape(raw)])
        } else {
            hash_id(&["Practitioner", system.as_deref().unwrap_or(""), &idv])
        };
        let mut p = json!({"resourceType": "Practitioner", "id": id});
        if !idv.is_empty() {
            let mut ident = Map::new();
            if let Some(s) = system {
                ident.insert("system".into(), json!(s));
            }
            ident.insert("value".into(), json!(idv));
            p["identifier"] = json!([ident]);
        }
        if let Some(n) = name {
            p["name"] = json!([n]);
        }
        out.push(p);
        Some(format!("Practitioner/{id}"))
    }

    /// PL → Location; its reference.
    fn location_ref(&self, out: &mut Out, raw: &str) -> Option<String> {
        let m = self.m;
        let parts: Vec<String> = [1, 2, 3, 7, 8].iter().map(|n| dt::sub(m, raw, *n, 1)).collect();
        let facility = dt::sub(m, raw, 4, 1);
        let description = comp(m, raw, 9);
        let labels = ["ward", "room", "bed", "building", "floor"];
        let named: Vec<String> = parts
            .iter()
            .zip(labels)
            .filter(|(p, _)| !p.is_empty())
            .map(|(p, l)| format!("{l} {p}"))
            .collect();
        if named.is_empty() && facility.is_empty() && description.is_empty() {
            return None;
        }
        let id = hash_id(&["Location", &facility, &parts.join("^")]);
        let mut loc = json!({"resourceType": "Location", "id": id, "mode": "instance"});
        let name = if named.is_empty() {
            if description.is_empty() {
                facility.clone()
            } else {
                description.clone()
            }
        } else {
            named.join(", ")
        };
        loc["name"] = json!(name);
        if !description.is_empty() {
            loc["description"] = json!(description);
        }
        let (code, display) = if !parts[2].is_empty() {
            ("bd", "Bed")
        } else if !parts[1].is_empty() {
            ("ro", "Room")
        } else if !parts[0].is_empty() {
            ("wa", "Ward")
        } else {
            ("si", "Site")
        };
        loc["physicalType"] = dt::coded(
            "http://terminology.hl7.org/CodeSystem/location-physical-type",
            code,
            Some(display),
        );
        if !facility.is_empty() {
            let org_id = hash_id(&["Organization", &facility, ""]);
            out.push(json!({
                "resourceType": "Organization", "id": org_id, "name": facility,
                "identifier": [{"system": crate::fhir::nhs::ODS_SYSTEM, "value": facility}]
            }));
            loc["managingOrganization"] = json!({ "reference": format!("Organization/{org_id}") });
        }
        out.push(loc);
        Some(format!("Location/{id}"))
    }

    fn patient(&self, out: &mut Out, si: usize) -> Option<PatientKey> {
        let m = self.m;
        let mut identifiers: Vec<Cx> = Vec::new();
        for n in [3, 2, 4] {
            for (i, rep) in self.reps(si, n).into_iter().enumerate() {
                let Some(c) = dt::cx(m, rep) else { continue };
                if c.is_nhs_number() {
                    match nhs::check(&c.value) {
                        Ok(digits) => {
                            let mut c = c;
                            c.value = digits.clone();
                            c.json["value"] = json!(digits);
                            identifiers.push(c);
                        }
                        Err(e) => self.warn(
                            si,
                            n,
                            IssueCode::Value,
                            format!("repetition {}: {e}; it is not used as the NHS number", i + 1),
                        ),
                    }
                } else {
                    identifiers.push(c);
                }
            }
        }
        if identifiers.is_empty() {
            self.errors.borrow_mut().push(self.error_at(
                si,
                3,
                IssueCode::Required,
                "PID-3 has no usable patient identifier: the patient cannot be identified",
            ));
            return None;
        }
        let nhs_number = identifiers.iter().find(|c| c.is_nhs_number()).map(|c| c.value.clone());
        let mut others: Vec<&Cx> = identifiers.iter().filter(|c| !c.is_nhs_number()).collect();
        others.sort_by_key(|c| c.type_code != "MR");
        // The id comes from the hospital number when there is one: messages from
        // one trust always carry it, while the NHS number may arrive later.
        let key = match (others.first(), &nhs_number) {
            (Some(c), _) => c.token(),
            (None, Some(n)) => format!("{}|{n}", nhs::NHS_NUMBER_SYSTEM),
            (None, None) => unreachable!("identifiers is not empty"),
        };
        let id = hash_id(&["Patient", &key]);
        let mut p = Map::new();
        p.insert("resourceType".into(), json!("Patient"));
        p.insert("id".into(), json!(id));
        let mut seen = HashSet::new();
        let ids: Vec<Value> = identifiers
            .iter()
            .filter(|c| seen.insert(c.token()))
            .map(|c| c.json.clone())
            .collect();
        p.insert("identifier".into(), Value::Array(ids));
        p.insert("active".into(), json!(true));
        let mut names: Vec<Value> = self.reps(si, 5).iter().filter_map(|r| dt::xpn(m, r)).collect();
        // PID-9: other names the patient is known by.
        names.extend(self.reps(si, 9).iter().filter_map(|r| {
            let mut n = dt::xpn(m, r)?;
            if n.get("use").is_none() {
                n["use"] = json!("usual");
            }
            Some(n)
        }));
        if !names.is_empty() {
            p.insert("name".into(), Value::Array(names));
        }
        let mut telecom: Vec<Value> = self
            .reps(si, 13)
            .iter()
            .filter_map(|r| dt::xtn(m, r, Some("home")))
            .collect();
        telecom.extend(self.reps(si, 14).iter().filter_map(|r| dt::xtn(m, r, Some("work"))));
        if !telecom.is_empty() {
            p.insert("telecom".into(), Value::Array(telecom));
        }
        let gender = self.v(si, 8);
        if !gender.is_empty() {
            let g = match gender.to_ascii_uppercase().as_str() {
                "M" => Some("male"),
                "F" => Some("female"),
                "O" | "A" | "N" | "X" => Some("other"),
                "U" => Some("unknown"),
                _ => None,
            };
            match g {
                Some(g) => {
                    p.insert("gender".into(), json!(g));
                }
                None => self.warn(
                    si,
                    8,
                    IssueCode::Value,
                    format!("PID-8 '{gender}' is not an administrative sex code (HL7 table 0001); not stored"),
                ),
            }
        }
        if let Some(b) = self.dtm(si, 7) {
            p.insert("birthDate".into(), json!(b.date()));
            if b.has_time {
                p.insert(
                    "_birthDate".into(),
                    json!({"extension": [{
                        "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                        "valueDateTime": b.fhir
                    }]}),
                );
            }
        }
        let deceased_time = self.dtm(si, 29);
        let deceased_flag = self.v(si, 30);
        if let Some(d) = deceased_time {
            p.insert("deceasedDateTime".into(), json!(d.fhir));
        } else if deceased_flag == "Y" || deceased_flag == "N" {
            p.insert("deceasedBoolean".into(), json!(deceased_flag == "Y"));
        }
        let addresses: Vec<Value> = self.reps(si, 11).iter().filter_map(|r| dt::xad(m, r)).collect();
        if !addresses.is_empty() {
            p.insert("address".into(), Value::Array(addresses));
        }
        if let Some(ms) = self.reps(si, 16).first() {
            let code = comp(m, ms, 1);
            let known = ["A", "D", "I", "L", "M", "P", "S", "T", "U", "W"];
            if known.contains(&code.as_str()) {
                let mut cc = dt::coded("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", &code, None);
                let text = comp(m, ms, 2);
                if !text.is_empty() {
                    cc["text"] = json!(text);
                }
                p.insert("maritalStatus".into(), cc);
            } else if let Some(cc) = self.cwe(ms) {
                p.insert("maritalStatus".into(), cc);
            }
        }
        let multiple = self.v(si, 24);
        let order = self.v(si, 25);
        if let Ok(n) = order.parse::<u32>() {
            p.insert("multipleBirthInteger".into(), json!(n));
        } else if multiple == "Y" || multiple == "N" {
            p.insert("multipleBirthBoolean".into(), json!(multiple == "Y"));
        }
        if let Some(lang) = self.cwe_field(si, 15) {
            p.insert("communication".into(), json!([{ "language": lang }]));
        }
        let mut gps = Vec::new();
        if let Some(pd1) = self.first("PD1") {
            for r in self.reps(pd1, 3) {
                if let Some(o) = self.xon_org(out, r) {
                    gps.push(json!({ "reference": o }));
                }
            }
            for r in self.reps(pd1, 4) {
                if let Some(pr) = self.practitioner(out, r) {
                    gps.push(json!({ "reference": pr }));
                }
            }
        }
        if !gps.is_empty() {
            p.insert("generalPractitioner".into(), Value::Array(gps));
        }
        out.push(Value::Object(p));
        Some(PatientKey {
            id,
            nhs_number,
            others: others.iter().map(|c| c.identifier()).collect(),
        })
    }

    fn encounter(
        &self,
        out: &mut Out,
        si: usize,
        trigger: &str,
        patient_ref: &str,
        patient_key: &str,
        service_provider: Option<&str>,
    ) -> Option<EncounterKey> {
        let m = self.m;
        let visit = self.reps(si, 19).first().and_then(|r| dt::cx(m, r));
        let start = self.dtm(si, 44);
        // A cancelled discharge (A13) or pending discharge (A25) leaves the encounter open.
        let end = self.dtm(si, 45).filter(|_| !matches!(trigger, "A13" | "A25"));
        let class_code = self.v(si, 2);
        let key = match &visit {
            Some(v) => v.token(),
            None => {
                let when = start.as_ref().map(|d| d.fhir.clone()).unwrap_or_default();
                if when.is_empty() {
                    self.warn(
                        si,
                        19,
                        IssueCode::Incomplete,
                        "no visit number (PV1-19) and no admit time (PV1-44): later messages cannot update this encounter",
                    );
                    format!("message|{}", self.v(0, 10))
                } else {
                    format!("admit|{class_code}|{when}")
                }
            }
        };
        let id = hash_id(&["Encounter", patient_key, &key]);
        let mut e = Map::new();
        e.insert("resourceType".into(), json!("Encounter"));
        e.insert("id".into(), json!(id));
        if let Some(v) = &visit {
            e.insert("identifier".into(), json!([v.json]));
        }
        let status = match trigger {
            "A05" | "A14" => "planned",
            "A11" | "A27" => "cancelled",
            "A03" => "finished",
            _ if end.is_some() && trigger != "A13" => "finished",
            _ => "in-progress",
        };
        e.insert("status".into(), json!(status));
        let class = match class_code.as_str() {
            "E" => Some(("EMER", "emergency")),
            "I" => Some(("IMP", "inpatient encounter")),
            "O" | "R" | "C" => Some(("AMB", "ambulatory")),
            "P" => Some(("PRENC", "pre-admission")),
            "B" => Some(("IMP", "inpatient encounter")),
            _ => None,
        };
        let class = match class {
            Some((code, display)) => json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code, "display": display
            }),
            None => {
                if !class_code.is_empty() && class_code != "U" && class_code != "N" {
                    self.warn(
                        si,
                        2,
                        IssueCode::Value,
                        format!(
                            "PV1-2 '{class_code}' is not a patient class (HL7 table 0004); class stored as unknown"
                        ),
                    );
                }
                json!({"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "code": "UNK", "display": "unknown"})
            }
        };
        e.insert("class".into(), class);
        let admission_type = self.v(si, 4);
        if !admission_type.is_empty() {
            e.insert(
                "type".into(),
                json!([dt::coded(
                    "http://terminology.hl7.org/CodeSystem/v2-0007",
                    &admission_type,
                    None
                )]),
            );
        }
        let service = self.v(si, 10);
        if !service.is_empty() {
            e.insert(
                "serviceType".into(),
                dt::coded("http://terminology.hl7.org/CodeSystem/v2-0069", &service, None),
            );
        }
        e.insert("subject".into(), json!({ "reference": patient_ref }));
        let mut participants = Vec::new();
        for (n, code, display) in [
            (7, "ATND", "attender"),
            (8, "REF", "referrer"),
            (9, "CON", "consultant"),
            (17, "ADM", "admitter"),
        ] {
            for r in self.reps(si, n) {
                if let Some(pr) = self.practitioner(out, r) {
                    participants.push(json!({
                        "type": [dt::coded("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", code, Some(display))],
                        "individual": { "reference": pr }
                    }));
                }
            }
        }
        if !participants.is_empty() {
            e.insert("participant".into(), Value::Array(participants));
        }
        let mut period = Map::new();
        if let Some(s) = &start {
            period.insert("start".into(), json!(s.fhir));
        }
        if let Some(x) = &end {
            period.insert("end".into(), json!(x.fhir));
        }
        if !period.is_empty() {
            e.insert("period".into(), Value::Object(period));
        }
        let mut locations = Vec::new();
        if let Some(raw) = self.reps(si, 3).first() {
            if let Some(l) = self.location_ref(out, raw) {
                let st = match status {
                    "planned" => "planned",
                    "finished" | "cancelled" => "completed",
                    _ => "active",
                };
                locations.push(json!({ "location": { "reference": l }, "status": st }));
            }
        }
        if let Some(raw) = self.reps(si, 6).first() {
            if let Some(l) = self.location_ref(out, raw) {
                locations.push(json!({ "location": { "reference": l }, "status": "completed" }));
            }
        }
        if !locations.is_empty() {
            e.insert("location".into(), Value::Array(locations));
        }
        let mut hosp = Map::new();
        if let Some(pre) = self.reps(si, 5).first().and_then(|r| dt::cx(m, r)) {
            hosp.insert("preAdmissionIdentifier".into(), pre.json);
        }
        let readmission = self.v(si, 13);
        if !readmission.is_empty() {
            hosp.insert(
                "reAdmission".into(),
                dt::coded("http://terminology.hl7.org/CodeSystem/v2-0092", &readmission, None),
            );
        }
        let source = self.v(si, 14);
        if !source.is_empty() {
            hosp.insert(
                "admitSource".into(),
                dt::coded("http://terminology.hl7.org/CodeSystem/v2-0023", &source, None),
            );
        }
        if let Some(dd) = self.cwe_field(si, 36) {
            hosp.insert("dischargeDisposition".into(), dd);
        }
        if !hosp.is_empty() {
            e.insert("hospitalization".into(), Value::Object(hosp));
        }
        if let Some(pv2) = self.first("PV2") {
            if let Some(reason) = self.cwe_field(pv2, 3) {
                e.insert("reasonCode".into(), json!([reason]));
            }
            // Expected admit and discharge times: the R5 planned dates, as the V2-to-FHIR IG maps them.
            let mut ext = Vec::new();
            for (n, url) in [
                (
                    8,
                    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedStartDate",
                ),
                (
                    9,
                    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedEndDate",
                ),
            ] {
                if let Some(d) = self.dtm(pv2, n) {
                    ext.push(json!({ "url": url, "valueDateTime": d.fhir }));
                }
            }
            if !ext.is_empty() {
                e.insert("extension".into(), Value::Array(ext));
            }
        }
        if let Some(sp) = service_provider {
            e.insert("serviceProvider".into(), json!({ "reference": sp }));
        }
        out.push(Value::Object(e));
        Some(EncounterKey {
            id,
            visit: visit.map(|v| v.identifier()),
        })
    }

    fn related_person(&self, out: &mut Out, si: usize, patient_ref: &str, patient_key: &str) {
        let m = self.m;
        let names: Vec<Value> = self.reps(si, 2).iter().filter_map(|r| dt::xpn(m, r)).collect();
        let relationship = self.cwe_field(si, 3);
        let set_id = self.v(si, 1);
        let id = hash_id(&[
            "RelatedPerson",
            patient_key,
            &self
                .reps(si, 2)
                .first()
                .map(|r| m.unescape(r).into_owned())
                .unwrap_or(set_id),
            &self.code_key(si, 3),
        ]);
        let mut r = json!({"resourceType": "RelatedPerson", "id": id, "patient": {"reference": patient_ref}});
        if !names.is_empty() {
            r["name"] = Value::Array(names);
        }
        if let Some(rel) = relationship {
            r["relationship"] = json!([rel]);
        }
        let addresses: Vec<Value> = self.reps(si, 4).iter().filter_map(|x| dt::xad(m, x)).collect();
        if !addresses.is_empty() {
            r["address"] = Value::Array(addresses);
        }
        let mut telecom: Vec<Value> = self
            .reps(si, 5)
            .iter()
            .filter_map(|x| dt::xtn(m, x, Some("home")))
            .collect();
        telecom.extend(self.reps(si, 6).iter().filter_map(|x| dt::xtn(m, x, Some("work"))));
        if !telecom.is_empty() {
            r["telecom"] = Value::Array(telecom);
        }
        match self.v(si, 15).as_str() {
            "M" => r["gender"] = json!("male"),
            "F" => r["gender"] = json!("female"),
            "O" | "A" | "N" => r["gender"] = json!("other"),
            "U" => r["gender"] = json!("unknown"),
            _ => {}
        }
        if let Some(b) = self.dtm(si, 16) {
            r["birthDate"] = json!(b.date());
        }
        out.push(r);
    }

    fn allergy(&self, out: &mut Out, si: usize, patient_ref: &str, patient_key: &str) {
        let Some(code) = self.cwe_field(si, 3) else {
            self.warn(
                si,
                3,
                IssueCode::Required,
                "AL1-3 (allergen) is empty; the allergy was not stored",
            );
            return;
        };
        let id = hash_id(&["AllergyIntolerance", patient_key, &self.code_key(si, 3)]);
        let mut a = json!({
            "resourceType": "AllergyIntolerance", "id": id,
            "clinicalStatus": dt::coded("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active", Some("Active")),
            "code": code, "patient": {"reference": patient_ref}
        });
        let category = match self.v(si, 2).as_str() {
            "DA" | "MA" => Some("medication"),
            "FA" => Some("food"),
            "EA" | "AA" | "PA" | "LA" => Some("environment"),
            _ => None,
        };
        if let Some(c) = category {
            a["category"] = json!([c]);
        }
        match self.v(si, 4).as_str() {
            "SV" => a["criticality"] = json!("high"),
            "MO" | "MI" => a["criticality"] = json!("low"),
            "U" => a["criticality"] = json!("unable-to-assess"),
            _ => {}
        }
        let reactions: Vec<Value> = self
            .reps(si, 5)
            .iter()
            .map(|r| {
                let text = comp(self.m, r, 1);
                json!({"manifestation": [{"text": text}]})
            })
            .collect();
        if !reactions.is_empty() {
            a["reaction"] = Value::Array(reactions);
        }
        if let Some(d) = self.dtm(si, 6) {
            a["onsetDateTime"] = json!(d.fhir);
        }
        out.push(a);
    }

    fn condition(&self, out: &mut Out, si: usize, patient_ref: &str, patient_key: &str, encounter: Option<&str>) {
        let code = self.cwe_field(si, 3).or_else(|| {
            let text = self.v(si, 4);
            (!text.is_empty()).then(|| json!({ "text": text }))
        });
        let Some(code) = code else {
            self.warn(
                si,
                3,
                IssueCode::Required,
                "DG1-3 and DG1-4 are empty; the diagnosis was not stored",
            );
            return;
        };
        let onset = self.dtm(si, 5);
        let ident = self.reps(si, 20).first().and_then(|r| dt::ei(self.m, r));
        let id = match &ident {
            Some(_) => hash_id(&["Condition", patient_key, "id", &self.ei_key(si, 20)]),
            None => hash_id(&[
                "Condition",
                patient_key,
                &format!("{}|{}", self.code_key(si, 3), self.v(si, 4)),
                onset.as_ref().map(|d| d.fhir.as_str()).unwrap_or(""),
            ]),
        };
        let mut c = json!({
            "resourceType": "Condition", "id": id,
            "category": [dt::coded("http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis", Some("Encounter Diagnosis"))],
            "code": code, "subject": {"reference": patient_ref}
        });
        if let Some(i) = ident {
            c["identifier"] = json!([i]);
        }
        match self.v(si, 6).as_str() {
            "F" => {
                c["verificationStatus"] = dt::coded(
                    "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "confirmed",
                    Some("Confirmed"),
                )
            }
            "W" | "A" => {
                c["verificationStatus"] = dt::coded(
                    "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "provisional",
                    Some("Provisional"),
                )
            }
            _ => {}
        }
        if let Some(e) = encounter {
            c["encounter"] = json!({ "reference": e });
        }
        if let Some(d) = onset {
            c["onsetDateTime"] = json!(d.fhir);
        }
        if let Some(d) = self.dtm(si, 19) {
            c["recordedDate"] = json!(d.fhir);
        }
        out.push(c);
    }

    fn coverage(&self, out: &mut Out, si: usize, patient_ref: &str, patient_key: &str) {
        let m = self.m;
        let payor = {
            let company_id = self.reps(si, 3).first().map(|r| comp(m, r, 1)).unwrap_or_default();
            let company_name = self.reps(si, 4).first().map(|r| comp(m, r, 1)).unwrap_or_default();
            if company_id.is_empty() && company_name.is_empty() {
                None
            } else {
                let id = hash_id(&["Organization", "payer", &company_id, &company_name]);
                let mut o = json!({"resourceType": "Organization", "id": id});
                if !company_id.is_empty() {
                    o["identifier"] = json!([{ "value": company_id }]);
                }
                if !company_name.is_empty() {
                    o["name"] = json!(company_name);
                }
                out.push(o);
                Some(format!("Organization/{id}"))
            }
        };
        let Some(payor) = payor else {
            self.warn(
                si,
                3,
                IssueCode::Required,
                "IN1-3 and IN1-4 (insurer) are empty; the coverage was not stored",
            );
            return;
        };
        let plan = self.v(si, 2);
        let policy = self.v(si, 36);
        let id = hash_id(&["Coverage", patient_key, &payor, &plan, &policy]);
        let mut c = json!({
            "resourceType": "Coverage", "id": id, "status": "active",
            "beneficiary": {"reference": patient_ref}, "payor": [{"reference": payor}]
        });
        if !policy.is_empty() {
            c["identifier"] = json!([{ "value": policy }]);
        }
        if !plan.is_empty() {
            c["class"] = json!([{
                "type": dt::coded("http://terminology.hl7.org/CodeSystem/coverage-class", "plan", Some("Plan")),
                "value": plan
            }]);
        }
        let mut period = Map::new();
        if let Some(d) = self.dtm(si, 12) {
            period.insert("start".into(), json!(d.fhir));
        }
        if let Some(d) = self.dtm(si, 13) {
            period.insert("end".into(), json!(d.fhir));
        }
        if !period.is_empty() {
            c["period"] = Value::Object(period);
        }
        if let Some(t) = self.cwe_field(si, 15) {
            c["type"] = t;
        }
        out.push(c);
    }

    fn merge(&self, si: usize) -> Vec<Identifier> {
        let mut out = Vec::new();
        for rep in self.reps(si, 1) {
            if let Some(c) = dt::cx(self.m, rep) {
                if c.is_nhs_number() && nhs::check(&c.value).is_err() {
                    self.warn(
                        si,
                        1,
                        IssueCode::Value,
                        format!("MRG-1 '{}' is not a valid NHS number", c.value),
                    );
                    continue;
                }
                out.push(c.identifier());
            }
        }
        out
    }

    /// ORU: each OBR is a DiagnosticReport, each OBX under it an Observation.
    fn results(&self, out: &mut Out, patient_ref: &str, patient_key: &str, encounter: Option<&str>) {
        let obrs = self.segments("OBR");
        if obrs.is_empty() {
            self.errors.borrow_mut().push(Finding {
                issue: Issue::error(IssueCode::Required, "an ORU^R01 message needs at least one OBR segment"),
                location: None,
            });
            return;
        }
        for (k, &obr) in obrs.iter().enumerate() {
            let next = obrs.get(k + 1).copied().unwrap_or(self.m.segments.len());
            self.report(out, obr, next, patient_ref, patient_key, encounter);
        }
    }

    fn report(
        &self,
        out: &mut Out,
        obr: usize,
        until: usize,
        patient_ref: &str,
        patient_key: &str,
        encounter: Option<&str>,
    ) {
        let m = self.m;
        let filler = self.reps(obr, 3).first().and_then(|r| dt::ei(m, r));
        let placer = self.reps(obr, 2).first().and_then(|r| dt::ei(m, r));
        let code = self.cwe_field(obr, 4);
        let effective = self.dtm(obr, 7);
        let issued = self.dtm(obr, 22);
        let order_key = match (&filler, &placer) {
            (Some(_), _) => format!("filler|{}", self.ei_key(obr, 3)),
            (None, Some(_)) => format!("placer|{}", self.ei_key(obr, 2)),
            (None, None) => format!(
                "obr|{}|{}",
                self.code_key(obr, 4),
                effective.as_ref().map(|d| d.fhir.as_str()).unwrap_or("")
            ),
        };
        let Some(code) = code else {
            self.errors.borrow_mut().push(self.error_at(
                obr,
                4,
                IssueCode::Required,
                "OBR-4 (universal service identifier) is empty: the report has no code",
            ));
            return;
        };
        let report_id = hash_id(&["DiagnosticReport", patient_key, &order_key]);
        let mut results = Vec::new();
        let mut used_keys: HashSet<String> = HashSet::new();
        let mut obx_statuses = Vec::new();
        let mut i = obr + 1;
        while i < until {
            if self.m.segments[i].name == "OBX" {
                let mut notes = Vec::new();
                let mut j = i + 1;
                while j < until && self.m.segments[j].name == "NTE" {
                    let text: Vec<String> = self.reps(j, 3).iter().map(|r| m.unescape(r).to_string()).collect();
                    if !text.is_empty() {
                        notes.push(json!({ "text": text.join("\n") }));
                    }
                    j += 1;
                }
                if let Some((reference, status)) = self.observation(
                    out,
                    i,
                    &order_key,
                    &mut used_keys,
                    patient_ref,
                    patient_key,
                    encounter,
                    effective.as_ref(),
                    notes,
                ) {
                    results.push(json!({ "reference": reference }));
                    obx_statuses.push(status);
                }
                i = j;
            } else {
                i += 1;
            }
        }
        let status = match self.v(obr, 25).as_str() {
            "F" => "final",
            "C" => "corrected",
            "P" => "preliminary",
            "A" => "partial",
            "X" => "cancelled",
            "R" | "I" | "O" | "S" => "registered",
            "" => {
                if !obx_statuses.is_empty() && obx_statuses.iter().all(|s| *s == "final") {
                    "final"
                } else {
                    "unknown"
                }
            }
            other => {
                self.warn(
                    obr,
                    25,
                    IssueCode::Value,
                    format!("OBR-25 '{other}' is not a result status (HL7 table 0123); report status unknown"),
                );
                "unknown"
            }
        };
        let mut r = json!({"resourceType": "DiagnosticReport", "id": report_id, "status": status});
        let ids: Vec<Value> = [placer, filler].into_iter().flatten().collect();
        if !ids.is_empty() {
            r["identifier"] = Value::Array(ids);
        }
        let section = self.v(obr, 24);
        if !section.is_empty() {
            r["category"] = json!([dt::coded(
                "http://terminology.hl7.org/CodeSystem/v2-0074",
                &section,
                None
            )]);
        }
        r["code"] = code;
        r["subject"] = json!({ "reference": patient_ref });
        if let Some(e) = encounter {
            r["encounter"] = json!({ "reference": e });
        }
        if let Some(d) = &effective {
            r["effectiveDateTime"] = json!(d.fhir);
        }
        if let Some(d) = issued.filter(|d| d.has_time) {
            r["issued"] = json!(instant(&d.fhir));
        }
        let interpreters: Vec<Value> = self
            .reps(obr, 32)
            .iter()
            .filter_map(|x| self.practitioner(out, x))
            .map(|p| json!({ "reference": p }))
            .collect();
        if !interpreters.is_empty() {
            r["resultsInterpreter"] = Value::Array(interpreters);
        }
        if !results.is_empty() {
            r["result"] = Value::Array(results);
        }
        out.push(r);
    }

    #[allow(clippy::too_many_arguments)]
    fn observation(
        &self,
        out: &mut Out,
        si: usize,
        order_key: &str,
        used_keys: &mut HashSet<String>,
        patient_ref: &str,
        patient_key: &str,
        encounter: Option<&str>,
        report_time: Option<&Dtm>,
        notes: Vec<Value>,
    ) -> Option<(String, &'static str)> {
        let m = self.m;
        let Some(code) = self.cwe_field(si, 3) else {
            self.errors.borrow_mut().push(self.error_at(
                si,
                3,
                IssueCode::Required,
                "OBX-3 (observation identifier) is empty",
            ));
            return None;
        };
        let sub_id = self.v(si, 4);
        let mut key = format!("{}|{sub_id}", self.code_key(si, 3));
        if !used_keys.insert(key.clone()) {
            key = format!("{key}|set{}", self.v(si, 1));
            used_keys.insert(key.clone());
        }
        let id = hash_id(&["Observation", patient_key, order_key, &key]);
        let status = match self.v(si, 11).as_str() {
            "F" => "final",
            "C" => "corrected",
            // R: entered, not verified; FHIR preliminary covers "data may be ... unverified".
            "P" | "S" | "R" => "preliminary",
            "X" => "cancelled",
            "D" | "W" => "entered-in-error",
            // I: specimen in lab, results pending; O: order detail only, no result.
            "I" | "O" => "registered",
            "A" => "amended",
            "" => "unknown",
            other => {
                self.warn(
                    si,
                    11,
                    IssueCode::Value,
                    format!("OBX-11 '{other}' is not an observation result status (HL7 table 0085); status unknown"),
                );
                "unknown"
            }
        };
        let mut o = Map::new();
        o.insert("resourceType".into(), json!("Observation"));
        o.insert("id".into(), json!(id));
        o.insert("status".into(), json!(status));
        o.insert("code".into(), code);
        o.insert("subject".into(), json!({ "reference": patient_ref }));
        if let Some(e) = encounter {
            o.insert("encounter".into(), json!({ "reference": e }));
        }
        let effective = self.dtm(si, 14);
        if let Some(d) = effective.as_ref().or(report_time) {
            o.insert("effectiveDateTime".into(), json!(d.fhir));
        }
        if let Some(d) = self.dtm(si, 19).filter(|d| d.has_time) {
            o.insert("issued".into(), json!(instant(&d.fhir)));
        }
        let units_raw = self.reps(si, 6).first().copied().unwrap_or("");
        let unit = Unit::from(m, units_raw);
        self.value(&mut o, si, &unit);
        let range = self.v(si, 7);
        if !range.is_empty() {
            o.insert("referenceRange".into(), json!([reference_range(&range, &unit)]));
        }
        let flags: Vec<Value> = self
            .reps(si, 8)
            .iter()
            .map(|r| comp(m, r, 1))
            .filter(|c| !c.is_empty())
            .map(|c| {
                dt::coded(
                    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    &c,
                    None,
                )
            })
            .collect();
        if !flags.is_empty() {
            o.insert("interpretation".into(), Value::Array(flags));
        }
        let performers: Vec<Value> = self
            .reps(si, 16)
            .iter()
            .filter_map(|x| self.practitioner(out, x))
            .map(|p| json!({ "reference": p }))
            .collect();
        if !performers.is_empty() {
            o.insert("performer".into(), Value::Array(performers));
        }
        if let Some(method) = self.cwe_field(si, 17) {
            o.insert("method".into(), method);
        }
        if !notes.is_empty() {
            o.insert("note".into(), Value::Array(notes));
        }
        out.push(Value::Object(o));
        Some((format!("Observation/{id}"), status))
    }

    /// OBX-5 by its type (OBX-2).
    fn value(&self, o: &mut Map<String, Value>, si: usize, unit: &Unit) {
        let m = self.m;
        let kind = self.v(si, 2).to_ascii_uppercase();
        let reps = self.reps(si, 5);
        let Some(first) = reps.first().copied() else {
            return;
        };
        if reps.len() > 1 && !matches!(kind.as_str(), "ST" | "TX" | "FT") {
            self.warn(
                si,
                5,
                IssueCode::Value,
                format!(
                    "OBX-5 repeats ({} values) for type {kind}; only the first is stored",
                    reps.len()
                ),
            );
        }
        match kind.as_str() {
            "NM" => {
                let text = m.unescape(first).trim().to_string();
                let (comparator, number) = split_comparator(&text);
                match decimal(number) {
                    Some(n) => {
                        let mut q = unit.quantity(n);
                        if let Some(c) = comparator {
                            q["comparator"] = json!(c);
                        }
                        o.insert("valueQuantity".into(), q);
                    }
                    None => self.errors.borrow_mut().push(self.error_at(
                        si,
                        5,
                        IssueCode::Value,
                        format!("OBX-5 '{text}' is not a number, but OBX-2 says NM"),
                    )),
                }
            }
            "SN" => {
                let cmp = comp(m, first, 1);
                let n1 = comp(m, first, 2);
                let sep = comp(m, first, 3);
                let n2 = comp(m, first, 4);
                let (Some(a), b) = (decimal(&n1), decimal(&n2)) else {
                    self.errors.borrow_mut().push(self.error_at(
                        si,
                        5,
                        IssueCode::Value,
                        format!("OBX-5 '{first}' is not a structured numeric value"),
                    ));
                    return;
                };
                match (sep.as_str(), b) {
                    ("-", Some(b)) => {
                        o.insert(
                            "valueRange".into(),
                            json!({ "low": unit.quantity(a), "high": unit.quantity(b) }),
                        );
                    }
                    (":" | "/", Some(b)) => {
                        o.insert(
                            "valueRatio".into(),
                            json!({ "numerator": {"value": a}, "denominator": {"value": b} }),
                        );
                    }
                    _ => {
                        let mut q = unit.quantity(a);
                        if matches!(cmp.as_str(), "<" | "<=" | ">=" | ">") {
                            q["comparator"] = json!(cmp);
                        }
                        o.insert("valueQuantity".into(), q);
                    }
                }
            }
            "CE" | "CWE" | "CNE" | "CF" | "CV" => {
                if let Some(cc) = self.cwe(first) {
                    o.insert("valueCodeableConcept".into(), cc);
                }
            }
            "DT" | "DTM" | "TS" => match dtm::parse(&comp(m, first, 1)) {
                Ok(d) => {
                    o.insert("valueDateTime".into(), json!(d.fhir));
                }
                Err(e) => self.errors.borrow_mut().push(self.error_at(
                    si,
                    5,
                    IssueCode::Value,
                    format!("OBX-5 is not a valid date/time: {e}"),
                )),
            },
            "TM" => {
                let t = comp(m, first, 1);
                let d: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
                if matches!(d.len(), 2 | 4 | 6) {
                    let h = &d[..2];
                    let mi = d.get(2..4).unwrap_or("00");
                    let s = d.get(4..6).unwrap_or("00");
                    o.insert("valueTime".into(), json!(format!("{h}:{mi}:{s}")));
                } else {
                    self.errors.borrow_mut().push(self.error_at(
                        si,
                        5,
                        IssueCode::Value,
                        format!("OBX-5 '{t}' is not a time"),
                    ));
                }
            }
            _ => {
                let text: Vec<String> = reps.iter().map(|r| m.unescape(r).to_string()).collect();
                let joined = text.join("\n");
                if !joined.trim().is_empty() {
                    o.insert("valueString".into(), json!(joined));
                }
                if !matches!(kind.as_str(), "ST" | "TX" | "FT" | "") {
                    self.warn(
                        si,
                        2,
                        IssueCode::NotSupported,
                        format!("OBX-2 value type {kind} is stored as text"),
                    );
                }
            }
        }
    }

    fn provenance(&self, header: &Header, recorded: &str, resources: &[Value], sender: Option<&str>) -> Value {
        let targets: Vec<Value> = resources
            .iter()
            .map(|r| json!({ "reference": format!("{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or("")) }))
            .collect();
        let mut agent = json!({
            "type": dt::coded("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "author", Some("Author")),
            "who": { "display": format!("{} at {}", header.sending_application, header.sending_facility) }
        });
        if let Some(s) = sender {
            agent["who"]["reference"] = json!(s);
        }
        let mut p = json!({
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
                        "value": header.control_id
                    },
                    "display": format!("HL7 v2 {} message {} (version {})", header.message_type(), header.control_id, header.version)
                }
            }]
        });
        if let Some(t) = &header.time {
            p["occurredDateTime"] = json!(t);
        }
        p
    }
}

/// A dateTime with full time and offset is also an instant.
fn instant(fhir: &str) -> String {
    fhir.to_string()
}

fn split_comparator(s: &str) -> (Option<&'static str>, &str) {
    for c in ["<=", ">=", "<", ">"] {
        if let Some(rest) = s.strip_prefix(c) {
            let c: &'static str = match c {
                "<=" => "<=",
                ">=" => ">=",
                "<" => "<",
                _ => ">",
            };
            return (Some(c), rest.trim());
        }
    }
    (None, s)
}

/// A FHIR decimal from v2 text, kept exactly as written (`arbitrary_precision`).
fn decimal(s: &str) -> Option<Value> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let ok = !(int.is_empty() && frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return None;
    }
    let normal = match (int.is_empty(), s.starts_with('-')) {
        (true, true) => format!("-0{body}"),
        (true, false) => format!("0{body}"),
        _ => s.to_string(),
    };
    let normal = normal.strip_suffix('.').map(str::to_string).unwrap_or(normal);
    serde_json::from_str::<Value>(&normal).ok()
}

/// OBX-6 units: UCUM when the sender says so or the code is a UCUM unit we know.
struct Unit {
    code: String,
    text: String,
    ucum: bool,
}

impl Unit {
    fn from(m: &Message, raw: &str) -> Unit {
        let code = comp(m, raw, 1);
        let text = comp(m, raw, 2);
        let system = comp(m, raw, 3).to_ascii_uppercase();
        let ucum = system == "UCUM" || (system.is_empty() || system == "ISO+" || system == "ANSI") && looks_ucum(&code);
        Unit { code, text, ucum }
    }

    fn quantity(&self, value: Value) -> Value {
        let mut q = json!({ "value": value });
        let unit = if self.text.is_empty() { &self.code } else { &self.text };
        if !unit.is_empty() {
            q["unit"] = json!(unit);
        }
        if self.ucum && !self.code.is_empty() {
            q["system"] = json!("http://unitsofmeasure.org");
            q["code"] = json!(self.code);
        }
        q
    }
}

/// Units that are valid UCUM as commonly sent by laboratories.
fn looks_ucum(code: &str) -> bool {
    const COMMON: [&str; 40] = [
        "mmol/L",
        "umol/L",
        "nmol/L",
        "pmol/L",
        "mol/L",
        "g/L",
        "mg/L",
        "ug/L",
        "ng/L",
        "g/dL",
        "mg/dL",
        "ug/dL",
        "U/L",
        "[IU]/L",
        "mU/L",
        "m[IU]/L",
        "10*9/L",
        "10*12/L",
        "10*6/L",
        "%",
        "fL",
        "pg",
        "mm[Hg]",
        "kg",
        "g",
        "cm",
        "m",
        "mm",
        "kg/m2",
        "/min",
        "{beats}/min",
        "Cel",
        "[degF]",
        "mL",
        "L",
        "s",
        "min",
        "h",
        "mL/min",
        "mL/min/{1.73_m2}",
    ];
    COMMON.contains(&code)
}

/// OBX-7: `low-high`, `<high`, `>low`, or text.
fn reference_range(text: &str, unit: &Unit) -> Value {
    let t = text.trim();
    if let (Some(c), rest) = split_comparator(t) {
        if let Some(n) = decimal(rest) {
            return match c {
                "<" | "<=" => json!({ "high": unit.quantity(n), "text": t }),
                _ => json!({ "low": unit.quantity(n), "text": t }),
            };
        }
    }
    // "low-high", where low may itself be negative ("-5-5").
    let split = t.char_indices().skip(1).find(|(_, c)| *c == '-').map(|(i, _)| i);
    if let Some(i) = split {
        if let (Some(lo), Some(hi)) = (decimal(&t[..i]), decimal(&t[i + 1..])) {
            return json!({ "low": unit.quantity(lo), "high": unit.quantity(hi), "text": t });
        }
    }
    json!({ "text": t })
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
}
