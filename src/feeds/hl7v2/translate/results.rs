//! Results (ORU^R01): OBR → DiagnosticReport, OBX → Observation with its value,
//! units (UCUM when the code is UCUM), reference range and interpretation.

use super::*;

/// A dateTime with full time and offset is also an instant.
pub(super) fn instant(fhir: &str) -> String {
    fhir.to_string()
}

pub(super) fn split_comparator(s: &str) -> (Option<&'static str>, &str) {
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
pub(super) fn decimal(s: &str) -> Option<Value> {
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
pub(super) struct Unit {
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
        let mut q = jv!({ "value": value });
        let unit = if self.text.is_empty() { &self.code } else { &self.text };
        if !unit.is_empty() {
            q["unit"] = jv!(unit.as_str());
        }
        if self.ucum && !self.code.is_empty() {
            q["system"] = jv!("http://unitsofmeasure.org");
            q["code"] = jv!(self.code.as_str());
        }
        q
    }
}

/// Units that are valid UCUM as commonly sent by laboratories.
pub(super) fn looks_ucum(code: &str) -> bool {
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
pub(super) fn reference_range(text: &str, unit: &Unit) -> Value {
    let t = text.trim();
    if let (Some(c), rest) = split_comparator(t) {
        if let Some(n) = decimal(rest) {
            return match c {
                "<" | "<=" => jv!({ "high": unit.quantity(n), "text": t }),
                _ => jv!({ "low": unit.quantity(n), "text": t }),
            };
        }
    }
    // "low-high", where low may itself be negative ("-5-5").
    let split = t.char_indices().skip(1).find(|(_, c)| *c == '-').map(|(i, _)| i);
    if let Some(i) = split {
        if let (Some(lo), Some(hi)) = (decimal(&t[..i]), decimal(&t[i + 1..])) {
            return jv!({ "low": unit.quantity(lo), "high": unit.quantity(hi), "text": t });
        }
    }
    jv!({ "text": t })
}

impl<'m, 'a> Ctx<'m, 'a> {
    /// ORU: each OBR is a DiagnosticReport, each OBX under it an Observation.
    pub(super) fn results(&self, out: &mut Out, patient_ref: &str, patient_key: &str, encounter: Option<&str>) {
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

    pub(super) fn report(
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
                        notes.push(jv!({ "text": text.join("\n") }));
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
                    results.push(jv!({ "reference": reference }));
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
        let mut r = jv!({"resourceType": "DiagnosticReport", "id": report_id, "status": status});
        let ids: Vec<Value> = [placer, filler].into_iter().flatten().collect();
        if !ids.is_empty() {
            r["identifier"] = Value::Array(ids);
        }
        let section = self.v(obr, 24);
        if !section.is_empty() {
            r["category"] = jv!([dt::coded(
                "http://terminology.hl7.org/CodeSystem/v2-0074",
                &section,
                None
            )]);
        }
        r["code"] = code;
        r["subject"] = jv!({ "reference": patient_ref });
        if let Some(e) = encounter {
            r["encounter"] = jv!({ "reference": e });
        }
        if let Some(d) = &effective {
            r["effectiveDateTime"] = jv!(d.fhir.as_str());
        }
        if let Some(d) = issued.filter(|d| d.has_time) {
            r["issued"] = jv!(instant(&d.fhir));
        }
        let interpreters: Vec<Value> = self
            .reps(obr, 32)
            .iter()
            .filter_map(|x| self.practitioner(out, x))
            .map(|p| jv!({ "reference": p }))
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
    pub(super) fn observation(
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
        o.insert("resourceType".into(), jv!("Observation"));
        o.insert("id".into(), jv!(id.as_str()));
        o.insert("status".into(), jv!(status));
        o.insert("code".into(), code);
        o.insert("subject".into(), jv!({ "reference": patient_ref }));
        if let Some(e) = encounter {
            o.insert("encounter".into(), jv!({ "reference": e }));
        }
        let effective = self.dtm(si, 14);
        if let Some(d) = effective.as_ref().or(report_time) {
            o.insert("effectiveDateTime".into(), jv!(d.fhir.as_str()));
        }
        if let Some(d) = self.dtm(si, 19).filter(|d| d.has_time) {
            o.insert("issued".into(), jv!(instant(&d.fhir)));
        }
        let units_raw = self.reps(si, 6).first().copied().unwrap_or("");
        let unit = Unit::from(m, units_raw);
        self.value(&mut o, si, &unit);
        let range = self.v(si, 7);
        if !range.is_empty() {
            o.insert("referenceRange".into(), jv!([reference_range(&range, &unit)]));
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
            .map(|p| jv!({ "reference": p }))
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
    pub(super) fn value(&self, o: &mut Map<String, Value>, si: usize, unit: &Unit) {
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
                            q["comparator"] = jv!(c);
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
                            jv!({ "low": unit.quantity(a), "high": unit.quantity(b) }),
                        );
                    }
                    (":" | "/", Some(b)) => {
                        o.insert(
                            "valueRatio".into(),
                            jv!({ "numerator": {"value": a}, "denominator": {"value": b} }),
                        );
                    }
                    _ => {
                        let mut q = unit.quantity(a);
                        if matches!(cmp.as_str(), "<" | "<=" | ">=" | ">") {
                            q["comparator"] = jv!(cmp);
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
                    o.insert("valueDateTime".into(), jv!(d.fhir));
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
                    o.insert("valueTime".into(), jv!(format!("{h}:{mi}:{s}")));
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
                    o.insert("valueString".into(), jv!(joined));
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
}
