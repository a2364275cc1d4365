//! v2 data types into FHIR data types, following the HL7 V2-to-FHIR IG
//! (`../shared/corpora/hl7-v2-to-fhir-ig/mappings/datatypes`): CX → Identifier,
//! XPN → HumanName, XAD → Address, XTN → ContactPoint, CWE/CE/CNE → CodeableConcept,
//! HD → an organisation key, EI → Identifier.
//!
//! Every function takes one raw repetition (escapes still in place) and returns
//! `None` when the repetition holds nothing usable, so empty elements never appear.

use super::er7::Message;
use crate::fhir::nhs::{NHS_NUMBER_SYSTEM, ODS_SYSTEM};
use serde_json::{Map, Value};

/// Component `n` of a raw repetition, unescaped and trimmed.
pub fn comp(m: &Message, raw: &str, n: usize) -> String {
    m.unescape(m.component(raw, n)).trim().to_string()
}

/// Subcomponent `s` of component `n`, unescaped and trimmed.
pub fn sub(m: &Message, raw: &str, n: usize, s: usize) -> String {
    m.unescape(m.subcomponent(m.component(raw, n), s)).trim().to_string()
}

fn put(obj: &mut Map<String, Value>, key: &str, value: String) {
    if !value.is_empty() {
        obj.insert(key.to_string(), Value::String(value));
    }
}

/// The URL of a v2 coding-system name (HL7 table 0396), when it has a standard one.
pub fn code_system(name: &str) -> Option<String> {
    let upper = name.to_ascii_uppercase();
    Some(
        match upper.as_str() {
            "LN" | "LOINC" => "http://loinc.org",
            "SCT" | "SNM" | "SNOMED" | "SNOMEDCT" | "SNM3" | "SCT2" => "http://snomed.info/sct",
            "I10" | "ICD10" | "I10C" => "http://hl7.org/fhir/sid/icd-10",
            "I9" | "I9C" | "ICD9" => "http://hl7.org/fhir/sid/icd-9-cm",
            "UCUM" => "http://unitsofmeasure.org",
            "RXNORM" | "RXN" => "http://www.nlm.nih.gov/research/umls/rxnorm",
            "CVX" => "http://hl7.org/fhir/sid/cvx",
            "NDC" => "http://hl7.org/fhir/sid/ndc",
            "DMD" => "https://dmd.nhs.uk",
            "OPCS4" | "OPCS" => "http://www.datadictionary.nhs.uk/opcs-4",
            "READ" | "RD2" | "CTV3" => "http://read.info/ctv3",
            "ISO3166_1" | "ISO3166" => "urn:iso:std:iso:3166",
            "ISO+" | "ISO" => return None,
            _ => {
                if let Some(table) = upper.strip_prefix("HL7") {
                    if !table.is_empty() && table.bytes().all(|b| b.is_ascii_digit()) {
                        return Some(format!("http://terminology.hl7.org/CodeSystem/v2-{table:0>4}"));
                    }
                }
                return None;
            }
        }
        .to_string(),
    )
}

/// A Coding from code, display and coding-system name; `unknown` collects
/// coding-system names that have no URL (reported by the caller).
fn coding(code: String, display: String, system_name: &str, unknown: &mut Vec<String>) -> Option<Value> {
    if code.is_empty() && display.is_empty() {
        return None;
    }
    let mut c = Map::new();
    if !system_name.is_empty() {
        match code_system(system_name) {
            Some(url) => {
                c.insert("system".into(), Value::String(url));
            }
            None => unknown.push(system_name.to_string()),
        }
    }
    put(&mut c, "code", code);
    put(&mut c, "display", display);
    Some(Value::Object(c))
}

/// CWE/CE/CNE/CF → CodeableConcept (primary and alternate codings, original text).
pub fn cwe(m: &Message, raw: &str, unknown: &mut Vec<String>) -> Option<Value> {
    let mut codings = Vec::new();
    let primary_code = comp(m, raw, 1);
    if !primary_code.is_empty() {
        codings.extend(coding(primary_code, comp(m, raw, 2), &comp(m, raw, 3), unknown));
    }
    let alt_code = comp(m, raw, 4);
    if !alt_code.is_empty() {
        codings.extend(coding(alt_code, comp(m, raw, 5), &comp(m, raw, 6), unknown));
    }
    let mut cc = Map::new();
    if !codings.is_empty() {
        cc.insert("coding".into(), Value::Array(codings));
    }
    let text = comp(m, raw, 9);
    let text = if text.is_empty() && comp(m, raw, 1).is_empty() {
        comp(m, raw, 2)
    } else {
        text
    };
    put(&mut cc, "text", text);
    (!cc.is_empty()).then_some(Value::Object(cc))
}

/// A CodeableConcept with one coding from a fixed system (for v2 tables whose
/// codes are sent bare, like PV1-2 or OBX-8).
pub fn coded(system: &str, code: &str, display: Option<&str>) -> Value {
    // Built by hand: `json!` would run every value through the serializer.
    let mut c = Map::new();
    c.insert("system".into(), Value::String(system.to_string()));
    c.insert("code".into(), Value::String(code.to_string()));
    if let Some(d) = display {
        c.insert("display".into(), Value::String(d.to_string()));
    }
    let mut cc = Map::new();
    cc.insert("coding".into(), Value::Array(vec![Value::Object(c)]));
    Value::Object(cc)
}

/// How an assigning authority (HD) names an identifier system.
pub fn authority_system(namespace: &str, universal: &str, universal_type: &str) -> Option<String> {
    if !universal.is_empty() {
        return Some(match universal_type.to_ascii_uppercase().as_str() {
            "ISO" => format!("urn:oid:{universal}"),
            "UUID" | "GUID" => format!("urn:uuid:{}", universal.to_ascii_lowercase()),
            "URI" | "URL" => universal.to_string(),
            _ if universal.bytes().all(|b| b.is_ascii_digit() || b == b'.') => format!("urn:oid:{universal}"),
            _ => format!("urn:pennine:id:{}", universal.replace(' ', "-")),
        });
    }
    if !namespace.is_empty() {
        return Some(format!("urn:pennine:id:{}", namespace.replace(' ', "-")));
    }
    None
}

/// The parts of a CX identifier the mapping and the identity rules use.
#[derive(Debug, Clone, PartialEq)]
pub struct Cx {
    pub value: String,
    /// The assigning authority's namespace (CX-4.1), e.g. `NHS` or an ODS code.
    pub authority: String,
    pub system: Option<String>,
    /// The identifier type code (CX-5), e.g. `NH`, `MR`.
    pub type_code: String,
    pub json: Value,
}

impl Cx {
    pub fn is_nhs_number(&self) -> bool {
        self.type_code.eq_ignore_ascii_case("NH") || self.authority.eq_ignore_ascii_case("NHS")
    }

    /// The identifier it carries, for matching stored resources.
    pub fn identifier(&self) -> crate::fhir::Identifier {
        crate::fhir::Identifier::new(self.system.as_deref(), &self.value)
    }

    /// `system|value`: the seed of deterministic resource ids (and a dedup key).
    pub fn token(&self) -> String {
        format!("{}|{}", self.system.as_deref().unwrap_or(""), self.value)
    }
}

/// CX → Identifier. An NHS number gets the NHS number system; the caller checks
/// its Modulus 11 digit.
pub fn cx(m: &Message, raw: &str) -> Option<Cx> {
    let value = comp(m, raw, 1);
    if value.is_empty() {
        return None;
    }
    let authority = sub(m, raw, 4, 1);
    let type_code = comp(m, raw, 5);
    let mut id = Map::new();
    let system = if type_code.eq_ignore_ascii_case("NH") || authority.eq_ignore_ascii_case("NHS") {
        Some(NHS_NUMBER_SYSTEM.to_string())
    } else {
        authority_system(&authority, &sub(m, raw, 4, 2), &sub(m, raw, 4, 3))
    };
    if !type_code.is_empty() {
        id.insert(
            "type".into(),
            coded("http://terminology.hl7.org/CodeSystem/v2-0203", &type_code, None),
        );
    }
    if let Some(s) = &system {
        id.insert("system".into(), jv!(s.as_str()));
    }
    id.insert("value".into(), jv!(value.as_str()));
    let period = period(m, &comp(m, raw, 7), &comp(m, raw, 8));
    if let Some(p) = period {
        id.insert("period".into(), p);
    }
    Some(Cx {
        value,
        authority,
        system,
        type_code,
        json: Value::Object(id),
    })
}

/// A Period from two v2 dates; unparseable dates are left out (identifier
/// periods are not among the fields whose dates must be valid).
fn period(_m: &Message, start: &str, end: &str) -> Option<Value> {
    if start.is_empty() && end.is_empty() {
        return None;
    }
    let mut p = Map::new();
    if let Ok(d) = super::dtm::parse(start) {
        p.insert("start".into(), jv!(d.fhir));
    }
    if let Ok(d) = super::dtm::parse(end) {
        p.insert("end".into(), jv!(d.fhir));
    }
    (!p.is_empty()).then_some(Value::Object(p))
}

/// EI → Identifier (entity identifier: value and namespace).
pub fn ei(m: &Message, raw: &str) -> Option<Value> {
    let value = comp(m, raw, 1);
    if value.is_empty() {
        return None;
    }
    let mut id = Map::new();
    if let Some(s) = authority_system(&comp(m, raw, 2), &comp(m, raw, 3), &comp(m, raw, 4)) {
        id.insert("system".into(), jv!(s));
    }
    id.insert("value".into(), jv!(value));
    Some(Value::Object(id))
}

fn name_use(code: &str) -> Option<&'static str> {
    Some(match code {
        "L" => "official",
        "D" | "A" => "usual",
        "M" => "maiden",
        "N" => "nickname",
        "S" => "anonymous",
        "B" | "BAD" => "old",
        "T" | "C" => "temp",
        _ => return None,
    })
}

/// XPN (or the name part of XCN, starting at component `first`) → HumanName.
pub fn xpn_at(m: &Message, raw: &str, first: usize) -> Option<Value> {
    let mut name = Map::new();
    let family = sub(m, raw, first, 1);
    put(&mut name, "family", family);
    let given: Vec<Value> = [comp(m, raw, first + 1), comp(m, raw, first + 2)]
        .into_iter()
        .filter(|g| !g.is_empty())
        .map(Value::String)
        .collect();
    if !given.is_empty() {
        name.insert("given".into(), Value::Array(given));
    }
    let prefix = comp(m, raw, first + 4);
    if !prefix.is_empty() {
        name.insert("prefix".into(), jv!([prefix]));
    }
    let suffix: Vec<Value> = [comp(m, raw, first + 3), comp(m, raw, first + 5)]
        .into_iter()
        .filter(|g| !g.is_empty())
        .map(Value::String)
        .collect();
    if !suffix.is_empty() {
        name.insert("suffix".into(), Value::Array(suffix));
    }
    if name.is_empty() {
        return None;
    }
    if first == 1 {
        if let Some(u) = name_use(&comp(m, raw, 7)) {
            name.insert("use".into(), jv!(u));
        }
    }
    Some(Value::Object(name))
}

pub fn xpn(m: &Message, raw: &str) -> Option<Value> {
    xpn_at(m, raw, 1)
}

/// XAD → Address.
pub fn xad(m: &Message, raw: &str) -> Option<Value> {
    let mut a = Map::new();
    let lines: Vec<Value> = [sub(m, raw, 1, 1), comp(m, raw, 2)]
        .into_iter()
        .filter(|l| !l.is_empty())
        .map(Value::String)
        .collect();
    if !lines.is_empty() {
        a.insert("line".into(), Value::Array(lines));
    }
    put(&mut a, "city", comp(m, raw, 3));
    put(&mut a, "state", comp(m, raw, 4));
    put(&mut a, "postalCode", comp(m, raw, 5));
    put(&mut a, "country", comp(m, raw, 6));
    put(&mut a, "district", comp(m, raw, 9));
    if a.is_empty() {
        return None;
    }
    match comp(m, raw, 7).as_str() {
        "H" | "P" => {
            a.insert("use".into(), jv!("home"));
        }
        "B" | "O" => {
            a.insert("use".into(), jv!("work"));
        }
        "C" => {
            a.insert("use".into(), jv!("temp"));
        }
        "BA" => {
            a.insert("use".into(), jv!("old"));
        }
        "M" => {
            a.insert("type".into(), jv!("postal"));
        }
        _ => {}
    }
    Some(Value::Object(a))
}

/// XTN → ContactPoint. `default_use` applies when XTN-2 says nothing
/// (PID-13 is home, PID-14 business).
pub fn xtn(m: &Message, raw: &str, default_use: Option<&str>) -> Option<Value> {
    let equipment = comp(m, raw, 3);
    let email = comp(m, raw, 4);
    let mut value = comp(m, raw, 1);
    if value.is_empty() {
        value = comp(m, raw, 12);
    }
    if value.is_empty() {
        let (country, area, local, ext) = (comp(m, raw, 5), comp(m, raw, 6), comp(m, raw, 7), comp(m, raw, 8));
        if !local.is_empty() {
            let mut v = String::new();
            if !country.is_empty() {
                v.push_str(&format!("+{country} "));
            }
            if !area.is_empty() {
                v.push_str(&format!("({area}) "));
            }
            v.push_str(&local);
            if !ext.is_empty() {
                v.push_str(&format!(" ext. {ext}"));
            }
            value = v;
        }
    }
    let (system, value) = match equipment.to_ascii_uppercase().as_str() {
        "INTERNET" | "X.400" if !email.is_empty() => ("email", email),
        _ if value.is_empty() && !email.is_empty() => ("email", email),
        "FX" => ("fax", value),
        "BP" => ("pager", value),
        "INTERNET" | "X.400" => ("email", value),
        _ => ("phone", value),
    };
    if value.is_empty() {
        return None;
    }
    let mut c = Map::new();
    c.insert("system".into(), jv!(system));
    c.insert("value".into(), jv!(value));
    let use_ = match comp(m, raw, 2).as_str() {
        "PRN" | "ORN" | "VHN" => Some("home"),
        "WPN" => Some("work"),
        "PRS" => Some("mobile"),
        "EMR" | "NET" | "ASN" | "BPN" => None,
        _ => default_use,
    };
    let use_ = if equipment.eq_ignore_ascii_case("CP") {
        Some("mobile")
    } else {
        use_
    };
    if let Some(u) = use_ {
        c.insert("use".into(), jv!(u));
    }
    Some(Value::Object(c))
}

/// An organisation from an HD (namespace^universal id^type) or XON: its ODS
/// code (the namespace, as NHS systems send it) and any universal id.
pub fn organization_identifiers(namespace: &str, universal: &str, universal_type: &str) -> Vec<Value> {
    let mut ids = Vec::new();
    if !namespace.is_empty() {
        ids.push(jv!({ "system": ODS_SYSTEM, "value": namespace }));
    }
    if !universal.is_empty() {
        if let Some(system) = authority_system("", universal, universal_type) {
            ids.push(jv!({ "system": "urn:ietf:rfc:3986", "value": system }));
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feeds::hl7v2::er7::parse;

    #[test]
    fn maps_the_common_data_types() {
        let m = parse(
            "MSH|^~\\&|A|B|C|D|20230101||ADT^A01|1|P|2.5\r\
             PID|1||9434765919^^^NHS^NH~RTD123^^^RTD^MR||Smith^Ann^May^^Mrs^^L||19700517|F|||1 High St^Flat 2^Leeds^W Yorks^LS1 1AA^GBR^H||0113 496 0000^PRN^PH~^NET^Internet^ann@example.org|^WPN^PH^^44^113^4960001\r\
             OBX|1|CWE|8867-4^Heart rate^LN^HR^Heart rate^L||",
        )
        .unwrap();
        let pid = m.segment("PID").unwrap();
        let ids: Vec<Cx> = m.repetitions(pid.field(3)).filter_map(|r| cx(&m, r)).collect();
        assert!(ids[0].is_nhs_number());
        assert_eq!(ids[0].json["system"], NHS_NUMBER_SYSTEM);
        assert_eq!(ids[1].json["system"], "urn:pennine:id:RTD");
        assert_eq!(ids[1].json["type"]["coding"][0]["code"], "MR");
        let name = xpn(&m, pid.field(5)).unwrap();
        assert_eq!(
            name,
            jv!({"family": "Smith", "given": ["Ann", "May"], "prefix": ["Mrs"], "use": "official"})
        );
        let addr = xad(&m, pid.field(11)).unwrap();
        assert_eq!(addr["line"], jv!(["1 High St", "Flat 2"]));
        assert_eq!(addr["postalCode"], "LS1 1AA");
        assert_eq!(addr["use"], "home");
        let phones: Vec<Value> = m
            .repetitions(pid.field(13))
            .filter_map(|r| xtn(&m, r, Some("home")))
            .collect();
        assert_eq!(
            phones[0],
            jv!({"system": "phone", "value": "0113 496 0000", "use": "home"})
        );
        assert_eq!(phones[1]["system"], "email");
        assert_eq!(phones[1]["value"], "ann@example.org");
        let work = xtn(&m, pid.field(14), Some("work")).unwrap();
        assert_eq!(work["value"], "+44 (113) 4960001");
        assert_eq!(work["use"], "work");
        let mut unknown = Vec::new();
        let cc = cwe(&m, m.segment("OBX").unwrap().field(3), &mut unknown).unwrap();
        assert_eq!(cc["coding"][0]["system"], "http://loinc.org");
        assert_eq!(cc["coding"][1]["code"], "HR");
        assert_eq!(unknown, vec!["L".to_string()]);
        assert_eq!(xpn(&m, ""), None);
    }
}
