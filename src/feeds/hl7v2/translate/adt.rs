//! Patient administration (ADT): PID → Patient, PV1/PV2 → Encounter, NK1 →
//! RelatedPerson, AL1 → AllergyIntolerance, DG1 → Condition, IN1 → Coverage, and
//! MRG (A40 merges).

use super::*;

/// The admission methods of the NHS Data Dictionary (UK Core AdmissionMethodEngland).
const NHS_ADMISSION_METHODS: [&str; 20] = [
    "11", "12", "13", "21", "22", "23", "24", "25", "2A", "2B", "2C", "2D", "28", "31", "32", "81", "82", "83", "98",
    "99",
];

/// The NHS discharge method a PV1-36 value stands for: the Data Dictionary's own
/// one-digit codes (as NHS ITK senders use the field), or HL7 table 0112's `20`
/// (expired), which is method 4 (died).
fn nhs_discharge_method(v: &str) -> Option<&str> {
    match v {
        "1" | "2" | "3" | "4" | "5" | "8" | "9" => Some(v),
        "20" => Some("4"),
        _ => None,
    }
}

impl<'m, 'a> Ctx<'m, 'a> {
    pub(super) fn patient(&self, out: &mut Out, si: usize) -> Option<PatientKey> {
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
                            c.json["value"] = jv!(digits);
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
        p.insert("resourceType".into(), jv!("Patient"));
        p.insert("id".into(), jv!(id.as_str()));
        let mut seen = HashSet::new();
        let ids: Vec<Value> = identifiers
            .iter()
            .filter(|c| seen.insert(c.token()))
            .map(|c| c.json.clone())
            .collect();
        p.insert("identifier".into(), Value::Array(ids));
        p.insert("active".into(), jv!(true));
        let mut names: Vec<Value> = self.reps(si, 5).iter().filter_map(|r| dt::xpn(m, r)).collect();
        // PID-9: other names the patient is known by.
        names.extend(self.reps(si, 9).iter().filter_map(|r| {
            let mut n = dt::xpn(m, r)?;
            if n.get("use").is_none() {
                n["use"] = jv!("usual");
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
                    p.insert("gender".into(), jv!(g));
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
            p.insert("birthDate".into(), jv!(b.date()));
            if b.has_time {
                p.insert(
                    "_birthDate".into(),
                    jv!({"extension": [{
                        "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                        "valueDateTime": b.fhir
                    }]}),
                );
            }
        }
        let deceased_time = self.dtm(si, 29);
        let deceased_flag = self.v(si, 30);
        if let Some(d) = deceased_time {
            p.insert("deceasedDateTime".into(), jv!(d.fhir));
        } else if deceased_flag == "Y" || deceased_flag == "N" {
            p.insert("deceasedBoolean".into(), jv!(deceased_flag == "Y"));
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
                    cc["text"] = jv!(text);
                }
                p.insert("maritalStatus".into(), cc);
            } else if let Some(cc) = self.cwe(ms) {
                p.insert("maritalStatus".into(), cc);
            }
        }
        let multiple = self.v(si, 24);
        let order = self.v(si, 25);
        if let Ok(n) = order.parse::<u32>() {
            p.insert("multipleBirthInteger".into(), jv!(n));
        } else if multiple == "Y" || multiple == "N" {
            p.insert("multipleBirthBoolean".into(), jv!(multiple == "Y"));
        }
        if let Some(lang) = self.cwe_field(si, 15) {
            p.insert("communication".into(), jv!([{ "language": lang }]));
        }
        let mut gps = Vec::new();
        if let Some(pd1) = self.first("PD1") {
            for r in self.reps(pd1, 3) {
                if let Some(o) = self.xon_org(out, r) {
                    gps.push(jv!({ "reference": o }));
                }
            }
            for r in self.reps(pd1, 4) {
                if let Some(pr) = self.practitioner(out, r) {
                    gps.push(jv!({ "reference": pr }));
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

    pub(super) fn encounter(
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
        e.insert("resourceType".into(), jv!("Encounter"));
        e.insert("id".into(), jv!(id.as_str()));
        if let Some(v) = &visit {
            e.insert("identifier".into(), jv!([v.json.clone()]));
        }
        let status = match trigger {
            "A05" | "A14" => "planned",
            "A11" | "A27" => "cancelled",
            "A03" => "finished",
            _ if end.is_some() && trigger != "A13" => "finished",
            _ => "in-progress",
        };
        e.insert("status".into(), jv!(status));
        let class = match class_code.as_str() {
            "E" => Some(("EMER", "emergency")),
            "I" => Some(("IMP", "inpatient encounter")),
            "O" | "R" | "C" => Some(("AMB", "ambulatory")),
            "P" => Some(("PRENC", "pre-admission")),
            "B" => Some(("IMP", "inpatient encounter")),
            _ => None,
        };
        let class = match class {
            Some((code, display)) => jv!({
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
                jv!({"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "code": "UNK", "display": "unknown"})
            }
        };
        e.insert("class".into(), class);
        let admission_type = self.v(si, 4);
        if !admission_type.is_empty() {
            e.insert(
                "type".into(),
                jv!([dt::coded(
                    "http://terminology.hl7.org/CodeSystem/v2-0007",
                    &admission_type,
                    None
                )]),
            );
            // Senders on NHS codes put the admission method here (21 = emergency, A&E).
            if NHS_ADMISSION_METHODS.contains(&admission_type.as_str()) {
                e.insert(
                    "extension".into(),
                    jv!([{
                        "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-AdmissionMethod",
                        "valueCodeableConcept": dt::coded(
                            "https://fhir.hl7.org.uk/CodeSystem/UKCore-AdmissionMethodEngland",
                            &admission_type,
                            None
                        )
                    }]),
                );
            }
        }
        let service = self.v(si, 10);
        if !service.is_empty() {
            let mut service_type = dt::coded("http://terminology.hl7.org/CodeSystem/v2-0069", &service, None);
            // A three-digit NHS treatment function code is also coded as one.
            if service.len() == 3 && service.bytes().all(|b| b.is_ascii_digit()) {
                if let Some(codings) = service_type["coding"].as_array_mut() {
                    codings.push(jv!({
                        "system": "https://fhir.nhs.uk/CodeSystem/NHSDataModelAndDictionary-TreatmentFunction",
                        "code": service
                    }));
                }
            }
            e.insert("serviceType".into(), service_type);
        }
        e.insert("subject".into(), jv!({ "reference": patient_ref }));
        let mut participants = Vec::new();
        for (n, code, display) in [
            (7, "ATND", "attender"),
            (8, "REF", "referrer"),
            (9, "CON", "consultant"),
            (17, "ADM", "admitter"),
        ] {
            for r in self.reps(si, n) {
                if let Some(pr) = self.practitioner(out, r) {
                    participants.push(jv!({
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
            period.insert("start".into(), jv!(s.fhir.as_str()));
        }
        if let Some(x) = &end {
            period.insert("end".into(), jv!(x.fhir.as_str()));
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
                locations.push(jv!({ "location": { "reference": l }, "status": st }));
            }
        }
        if let Some(raw) = self.reps(si, 6).first() {
            if let Some(l) = self.location_ref(out, raw) {
                locations.push(jv!({ "location": { "reference": l }, "status": "completed" }));
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
        // The discharge method the pathways count deaths by, as a SUS extract carries it.
        if let Some(method) = nhs_discharge_method(&self.v(si, 36)) {
            let ext = jv!({
                "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-DischargeMethod",
                "valueCodeableConcept": dt::coded(
                    "https://fhir.hl7.org.uk/CodeSystem/UKCore-DischargeMethodEngland",
                    method,
                    None
                )
            });
            match e.get_mut("extension").and_then(Value::as_array_mut) {
                Some(list) => list.push(ext),
                None => {
                    e.insert("extension".into(), jv!([ext]));
                }
            }
        }
        if !hosp.is_empty() {
            e.insert("hospitalization".into(), Value::Object(hosp));
        }
        if let Some(pv2) = self.first("PV2") {
            if let Some(reason) = self.cwe_field(pv2, 3) {
                e.insert("reasonCode".into(), jv!([reason]));
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
                    ext.push(jv!({ "url": url, "valueDateTime": d.fhir }));
                }
            }
            if !ext.is_empty() {
                match e.get_mut("extension").and_then(Value::as_array_mut) {
                    Some(existing) => existing.extend(ext),
                    None => {
                        e.insert("extension".into(), Value::Array(ext));
                    }
                }
            }
        }
        if let Some(sp) = service_provider {
            e.insert("serviceProvider".into(), jv!({ "reference": sp }));
        }
        out.push(Value::Object(e));
        Some(EncounterKey {
            id,
            visit: visit.map(|v| v.identifier()),
        })
    }

    pub(super) fn related_person(&self, out: &mut Out, si: usize, patient_ref: &str, patient_key: &str) {
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
        let mut r = jv!({"resourceType": "RelatedPerson", "id": id, "patient": {"reference": patient_ref}});
        if !names.is_empty() {
            r["name"] = Value::Array(names);
        }
        if let Some(rel) = relationship {
            r["relationship"] = jv!([rel]);
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
            "M" => r["gender"] = jv!("male"),
            "F" => r["gender"] = jv!("female"),
            "O" | "A" | "N" => r["gender"] = jv!("other"),
            "U" => r["gender"] = jv!("unknown"),
            _ => {}
        }
        if let Some(b) = self.dtm(si, 16) {
            r["birthDate"] = jv!(b.date());
        }
        out.push(r);
    }

    pub(super) fn allergy(&self, out: &mut Out, si: usize, patient_ref: &str, patient_key: &str) {
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
        let mut a = jv!({
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
            a["category"] = jv!([c]);
        }
        match self.v(si, 4).as_str() {
            "SV" => a["criticality"] = jv!("high"),
            "MO" | "MI" => a["criticality"] = jv!("low"),
            "U" => a["criticality"] = jv!("unable-to-assess"),
            _ => {}
        }
        let reactions: Vec<Value> = self
            .reps(si, 5)
            .iter()
            .map(|r| {
                let text = comp(self.m, r, 1);
                jv!({"manifestation": [{"text": text}]})
            })
            .collect();
        if !reactions.is_empty() {
            a["reaction"] = Value::Array(reactions);
        }
        if let Some(d) = self.dtm(si, 6) {
            a["onsetDateTime"] = jv!(d.fhir);
        }
        out.push(a);
    }

    /// DG1 → Condition; its id, when one was made.
    pub(super) fn condition(
        &self,
        out: &mut Out,
        si: usize,
        patient_ref: &str,
        patient_key: &str,
        encounter: Option<&str>,
    ) -> Option<String> {
        let code = self.cwe_field(si, 3).or_else(|| {
            let text = self.v(si, 4);
            (!text.is_empty()).then(|| jv!({ "text": text }))
        });
        let Some(code) = code else {
            self.warn(
                si,
                3,
                IssueCode::Required,
                "DG1-3 and DG1-4 are empty; the diagnosis was not stored",
            );
            return None;
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
        let mut c = jv!({
            "resourceType": "Condition", "id": id.as_str(),
            "category": [dt::coded("http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis", Some("Encounter Diagnosis"))],
            "code": code, "subject": {"reference": patient_ref}
        });
        if let Some(i) = ident {
            c["identifier"] = jv!([i]);
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
            c["encounter"] = jv!({ "reference": e });
        }
        if let Some(d) = onset {
            c["onsetDateTime"] = jv!(d.fhir);
        }
        if let Some(d) = self.dtm(si, 19) {
            c["recordedDate"] = jv!(d.fhir);
        }
        out.push(c);
        Some(id)
    }

    pub(super) fn coverage(&self, out: &mut Out, si: usize, patient_ref: &str, patient_key: &str) {
        let m = self.m;
        let payor = {
            let company_id = self.reps(si, 3).first().map(|r| comp(m, r, 1)).unwrap_or_default();
            let company_name = self.reps(si, 4).first().map(|r| comp(m, r, 1)).unwrap_or_default();
            if company_id.is_empty() && company_name.is_empty() {
                None
            } else {
                let id = hash_id(&["Organization", "payer", &company_id, &company_name]);
                let mut o = jv!({"resourceType": "Organization", "id": id.as_str()});
                if !company_id.is_empty() {
                    o["identifier"] = jv!([{ "value": company_id }]);
                }
                if !company_name.is_empty() {
                    o["name"] = jv!(company_name);
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
        let mut c = jv!({
            "resourceType": "Coverage", "id": id, "status": "active",
            "beneficiary": {"reference": patient_ref}, "payor": [{"reference": payor}]
        });
        if !policy.is_empty() {
            c["identifier"] = jv!([{ "value": policy }]);
        }
        if !plan.is_empty() {
            c["class"] = jv!([{
                "type": dt::coded("http://terminology.hl7.org/CodeSystem/coverage-class", "plan", Some("Plan")),
                "value": plan
            }]);
        }
        let mut period = Map::new();
        if let Some(d) = self.dtm(si, 12) {
            period.insert("start".into(), jv!(d.fhir));
        }
        if let Some(d) = self.dtm(si, 13) {
            period.insert("end".into(), jv!(d.fhir));
        }
        if !period.is_empty() {
            c["period"] = Value::Object(period);
        }
        if let Some(t) = self.cwe_field(si, 15) {
            c["type"] = t;
        }
        out.push(c);
    }

    pub(super) fn merge(&self, si: usize) -> Vec<Identifier> {
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
}
