//! Index extraction: the search values of one resource, computed at write time
//! so that searches never scan JSON.

use super::params::{ParamKind, Registry, SearchParam};
use crate::fhir::{definitions, refs, time};
use crate::fhirpath::{self, Item};
use serde_json::Value;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    pub param: Arc<str>,
    pub system: Option<String>,
    pub code: Option<String>,
    /// Display text or CodeableConcept.text, normalised, for `:text`.
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StringRow {
    pub param: Arc<str>,
    pub norm: String,
    pub exact: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DateRow {
    pub param: Arc<str>,
    pub lo: i64,
    pub hi: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RefRow {
    pub param: Arc<str>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    /// The reference as written when it is absolute or not `Type/id`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuantityRow {
    pub param: Arc<str>,
    pub value: f64,
    pub system: Option<String>,
    pub code: Option<String>,
    pub unit: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UriRow {
    pub param: Arc<str>,
    pub value: String,
}

/// Everything one resource contributes to the search indexes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexRows {
    pub tokens: Vec<TokenRow>,
    pub strings: Vec<StringRow>,
    pub dates: Vec<DateRow>,
    pub refs: Vec<RefRow>,
    pub quantities: Vec<QuantityRow>,
    pub numbers: Vec<QuantityRow>,
    pub uris: Vec<UriRow>,
}

impl IndexRows {
    /// Rewrites reference rows after transaction processing resolved `urn:uuid:`
    /// or conditional references to real resources.
    pub fn rewrite_refs(&mut self, f: &mut dyn FnMut(&str) -> Option<String>) {
        for row in &mut self.refs {
            let Some(url) = &row.url else { continue };
            if let Some(new) = f(url) {
                *row = ref_row(row.param.clone(), &new);
            }
        }
    }
}

/// Lower-cases and strips common diacritics, as string search is
/// case- and accent-insensitive.
pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let base = match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => 'a',
            'ç' | 'Ç' => 'c',
            'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => 'i',
            'ñ' | 'Ñ' => 'n',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' | 'Ø' => 'o',
            'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => 'u',
            'ý' | 'ÿ' | 'Ý' => 'y',
            other => {
                out.extend(other.to_lowercase());
                continue;
            }
        };
        out.push(base);
    }
    out
}

fn ref_row(param: Arc<str>, reference: &str) -> RefRow {
    match refs::parse(reference) {
        refs::Target::Resource { rtype, id, base } => RefRow {
            param,
            target_type: Some(rtype.to_string()),
            target_id: Some(id.to_string()),
            url: base.map(|_| reference.to_string()),
        },
        _ => RefRow {
            param,
            target_type: None,
            target_id: None,
            url: Some(reference.to_string()),
        },
    }
}

fn str_field<'v>(v: &'v Value, name: &str) -> Option<&'v str> {
    v.get(name).and_then(Value::as_str)
}

fn strings_of<'v>(v: &'v Value, name: &str) -> impl Iterator<Item = &'v str> {
    let items: Vec<&str> = match v.get(name) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    items.into_iter()
}

const CONTACT_SYSTEMS: [&str; 7] = ["phone", "fax", "email", "pager", "url", "sms", "other"];

fn index_token(p: &SearchParam, item: &Item, out: &mut IndexRows) {
    let row = |system: Option<&str>, code: Option<&str>, text: Option<&str>| TokenRow {
        param: p.key.clone(),
        system: system.map(str::to_string),
        code: code.map(str::to_string),
        text: text.map(normalize),
    };
    match item {
        Item::Boolean(b) => out
            .tokens
            .push(row(None, Some(if *b { "true" } else { "false" }), None)),
        Item::String(s) => out.tokens.push(row(None, Some(s), None)),
        Item::Node { value, ty } => match value {
            Value::String(s) => out.tokens.push(row(None, Some(s), None)),
            Value::Bool(b) => out
                .tokens
                .push(row(None, Some(if *b { "true" } else { "false" }), None)),
            Value::Number(n) => out.tokens.push(row(None, Some(&n.to_string()), None)),
            Value::Object(_) => {
                let cc_text = str_field(value, "text");
                if let Some(Value::Array(codings)) = value.get("coding") {
                    for c in codings {
                        out.tokens.push(row(
                            str_field(c, "system"),
                            str_field(c, "code"),
                            str_field(c, "display").or(cc_text),
                        ));
                    }
                    if codings.is_empty() && cc_text.is_some() {
                        out.tokens.push(row(None, None, cc_text));
                    }
                } else if value.get("code").is_some() && *ty != Some("Quantity") {
                    // Coding
                    out.tokens.push(row(
                        str_field(value, "system"),
                        str_field(value, "code"),
                        str_field(value, "display"),
                    ));
                } else if let Some(v) = str_field(value, "value") {
                    let system = str_field(value, "system");
                    let contact = *ty == Some("ContactPoint")
                        || (system.is_some_and(|s| CONTACT_SYSTEMS.contains(&s)) && value.get("type").is_none());
                    if contact {
                        out.tokens.push(row(None, Some(v), None));
                    } else {
                        // Identifier: its type's text is searchable too.
                        let type_text = value.get("type").and_then(|t| str_field(t, "text"));
                        out.tokens.push(row(system, Some(v), type_text));
                    }
                } else if cc_text.is_some() {
                    out.tokens.push(row(None, None, cc_text));
                }
            }
            _ => {}
        },
        Item::Integer(i) => out.tokens.push(row(None, Some(&i.to_string()), None)),
        Item::Decimal(_) | Item::Resolved(_) => {}
    }
}

fn index_string(p: &SearchParam, item: &Item, out: &mut IndexRows) {
    let mut push = |s: &str| {
        if !s.is_empty() {
            out.strings.push(StringRow {
                param: p.key.clone(),
                norm: normalize(s),
                exact: s.to_string(),
            })
        }
    };
    match item {
        Item::String(s) => push(s),
        Item::Node { value, .. } => match value {
            Value::String(s) => push(s),
            Value::Object(_) => {
                // HumanName, Address and other complex strings: every string part.
                for part in [
                    "text",
                    "family",
                    "given",
                    "prefix",
                    "suffix",
                    "line",
                    "city",
                    "district",
                    "state",
                    "postalCode",
                    "country",
                ] {
                    for s in strings_of(value, part) {
                        push(s);
                    }
                }
            }
            _ => {}
        },
        _ => {}
    }
}

fn index_date(p: &SearchParam, item: &Item, out: &mut IndexRows) {
    let mut push = |lo: i64, hi: i64| {
        out.dates.push(DateRow {
            param: p.key.clone(),
            lo,
            hi,
        })
    };
    let Item::Node { value, .. } = item else {
        if let Item::String(s) = item {
            if let Some((lo, hi)) = time::parse_range(s) {
                push(lo, hi);
            }
        }
        return;
    };
    match value {
        Value::String(s) => {
            if let Some((lo, hi)) = time::parse_range(s) {
                push(lo, hi);
            }
        }
        Value::Object(_) => {
            if value.get("start").is_some() || value.get("end").is_some() {
                // Period: an open end is unbounded.
                let lo = str_field(value, "start")
                    .and_then(time::parse_range)
                    .map_or(i64::MIN, |r| r.0);
                let hi = str_field(value, "end")
                    .and_then(time::parse_range)
                    .map_or(i64::MAX, |r| r.1);
                push(lo, hi);
            } else if let Some(Value::Array(events)) = value.get("event") {
                // Timing
                for e in events.iter().filter_map(Value::as_str) {
                    if let Some((lo, hi)) = time::parse_range(e) {
                        push(lo, hi);
                    }
                }
            }
        }
        _ => {}
    }
}

fn index_reference(p: &SearchParam, item: &Item, out: &mut IndexRows) {
    let Some(value) = item.json() else { return };
    let reference = match value {
        Value::Object(_) => str_field(value, "reference"),
        Value::String(s) => Some(s.as_str()), // canonical or uri
        _ => None,
    };
    if let Some(r) = reference {
        if !r.starts_with('#') {
            out.refs.push(ref_row(p.key.clone(), r));
        }
    }
}

fn number_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

fn index_quantity(p: &SearchParam, item: &Item, out: &mut IndexRows, number: bool) {
    let row = |value: f64, system: Option<&str>, code: Option<&str>, unit: Option<&str>| QuantityRow {
        param: p.key.clone(),
        value,
        system: system.map(str::to_string),
        code: code.map(str::to_string),
        unit: unit.map(str::to_string),
    };
    match item {
        Item::Integer(i) => out.numbers.push(row(*i as f64, None, None, None)),
        Item::Decimal(d) => out.numbers.push(row(*d, None, None, None)),
        Item::Node { value, .. } => match value {
            Value::Number(n) => {
                if let Some(v) = n.as_f64() {
                    let r = row(v, None, None, None);
                    if number {
                        out.numbers.push(r)
                    } else {
                        out.quantities.push(r)
                    }
                }
            }
            Value::Object(_) => {
                if let Some(v) = value.get("value").and_then(number_of) {
                    let code = str_field(value, "code").or(str_field(value, "currency"));
                    let r = row(v, str_field(value, "system"), code, str_field(value, "unit"));
                    if number {
                        out.numbers.push(r)
                    } else {
                        out.quantities.push(r)
                    }
                }
            }
            _ => {}
        },
        _ => {}
    }
}

fn index_uri(p: &SearchParam, item: &Item, out: &mut IndexRows) {
    let s = match item {
        Item::String(s) => Some(s.as_str()),
        Item::Node {
            value: Value::String(s),
            ..
        } => Some(s.as_str()),
        _ => None,
    };
    if let Some(s) = s {
        out.uris.push(UriRow {
            param: p.key.clone(),
            value: s.to_string(),
        });
    }
}

/// Extracts the index rows of `resource` (of type `rtype`) for every parameter.
/// A parameter whose expression cannot be evaluated on this resource contributes
/// nothing; the expressions are the specification's and are tested to evaluate.
pub fn extract(registry: &Registry, rtype: &str, resource: &Value) -> IndexRows {
    let model = &definitions::get().choice;
    let mut out = IndexRows::default();
    for p in registry.indexed(rtype) {
        let Ok(items) = fhirpath::evaluate(&p.compiled, resource, model) else {
            continue;
        };
        for item in &items {
            match p.kind {
                ParamKind::Token => index_token(p, item, &mut out),
                ParamKind::String => index_string(p, item, &mut out),
                ParamKind::Date => index_date(p, item, &mut out),
                ParamKind::Reference => index_reference(p, item, &mut out),
                ParamKind::Quantity => index_quantity(p, item, &mut out, false),
                ParamKind::Number => index_quantity(p, item, &mut out, true),
                ParamKind::Uri => index_uri(p, item, &mut out),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn indexes_an_observation() {
        let reg = Registry::r4();
        let obs = json!({"resourceType":"Observation","status":"final",
            "code":{"coding":[{"system":"http://loinc.org","code":"29463-7","display":"Body Weight"}]},
            "subject":{"reference":"Patient/p1"},
            "effectiveDateTime":"2020-01-02T10:00:00Z",
            "valueQuantity":{"value":72.5,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}});
        let rows = extract(&reg, "Observation", &obs);
        assert!(rows
            .tokens
            .iter()
            .any(|t| &*t.param == "Observation.code" && t.code.as_deref() == Some("29463-7")));
        assert!(rows
            .tokens
            .iter()
            .any(|t| &*t.param == "Observation.status" && t.code.as_deref() == Some("final")));
        // `patient` is `subject` filtered to Patients: it reads `subject`'s rows.
        assert!(rows.refs.iter().any(|r| &*r.param == "Observation.subject"
            && r.target_type.as_deref() == Some("Patient")
            && r.target_id.as_deref() == Some("p1")));
        assert!(!rows.refs.iter().any(|r| &*r.param == "Observation.patient"));
        let patient = reg.get("Observation", "patient").unwrap();
        assert_eq!(
            patient.within.as_ref().map(|(k, t)| (&**k, t.as_str())),
            Some(("Observation.subject", "Patient"))
        );
        assert!(rows.dates.iter().any(|d| &*d.param == "Observation.date"));
        assert!(rows
            .quantities
            .iter()
            .any(|q| &*q.param == "Observation.value-quantity" && q.value == 72.5));
    }

    /// The rows a parameter stored within another's would have had (its own expression
    /// evaluated) are exactly the other's rows of its target type, on awkward references
    /// and on every resource of the R4 examples.
    #[test]
    fn a_parameter_within_another_has_exactly_its_rows_of_one_type() {
        let reg = Registry::r4();
        let model = &definitions::get().choice;
        let linked: usize = ["Observation", "Condition", "Encounter", "Procedure"]
            .iter()
            .map(|t| reg.for_type(t).filter(|p| p.within.is_some()).count())
            .sum();
        assert!(linked >= 4, "patient of each of those types is linked: {linked}");
        let check = |resource: &Value, failures: &mut Vec<String>| {
            let Some(rtype) = resource["resourceType"].as_str() else {
                return;
            };
            let rows = extract(&reg, rtype, resource);
            for p in reg.for_type(rtype) {
                let Some((base, only)) = &p.within else { continue };
                let mut own = IndexRows::default();
                for item in fhirpath::evaluate(&p.compiled, resource, model).unwrap_or_default() {
                    index_reference(p, &item, &mut own);
                }
                let key = |r: &RefRow| (r.target_type.clone(), r.target_id.clone(), r.url.clone());
                let mut want: Vec<_> = own.refs.iter().map(key).collect();
                let mut got: Vec<_> = rows
                    .refs
                    .iter()
                    .filter(|r| r.param == *base && r.target_type.as_ref() == Some(only))
                    .map(key)
                    .collect();
                want.sort();
                got.sort();
                if want != got {
                    failures.push(format!("{} of {}: own {want:?}, within {got:?}", p.key, resource["id"]));
                }
            }
        };
        let mut failures = Vec::new();
        for reference in [
            "Patient/p1",
            "Patient/p1/_history/2",
            "https://other.example/fhir/Patient/p1",
            "Group/g1",
            "patient/p1",
            "urn:uuid:4c1f2b36-1f9d-4c4c-9d1c-1b2b3c4d5e6f",
            "#p1",
            "Patient?identifier=x|1",
        ] {
            let obs = json!({"resourceType": "Observation", "id": reference, "status": "final",
                "code": {"text": "x"}, "subject": {"reference": reference}});
            check(&obs, &mut failures);
        }
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora/fhir-r4-examples");
        if !corpus.exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{} is missing",
                corpus.display()
            );
            println!("SKIPPED (the R4 examples part): {} is missing", corpus.display());
        }
        let mut seen = 0;
        for dir in ["fhir_models-r4-examples", "fhir-test-cases-r4-examples"] {
            for entry in std::fs::read_dir(corpus.join(dir)).into_iter().flatten().flatten() {
                let Ok(text) = std::fs::read_to_string(entry.path()) else {
                    continue;
                };
                let Ok(resource) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                check(&resource, &mut failures);
                seen += 1;
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {seen} differ: {:#?}",
            failures.len(),
            failures
        );
    }

    #[test]
    fn every_expression_for_core_types_evaluates() {
        let reg = Registry::r4();
        let model = &definitions::get().choice;
        let empty = json!({"resourceType":"Patient"});
        for t in &definitions::get().resource_type_list {
            for p in reg.for_type(t) {
                let r = json!({"resourceType": t});
                let res = if t == "Patient" { &empty } else { &r };
                assert!(
                    fhirpath::evaluate(&p.compiled, res, model).is_ok(),
                    "{} {}",
                    p.key,
                    p.expression
                );
            }
        }
    }

    #[test]
    fn normalizes_accents() {
        assert_eq!(normalize("Zoë ÅSE"), "zoe ase");
    }
}
