//! CSV extracts into FHIR through declarative mappings (`profiles/mappings/csv/*.json`).
//!
//! A mapping names the resource type, how the id is made, and a list of
//! elements, each a path (`name[0].given[0]`) filled from a column, a constant
//! or a template (`Patient/{PATIENT}`), with a type (`string`, `code`, `date`,
//! `dateTime`, `decimal`, `integer`, `boolean`), an optional value map and an
//! optional condition on another column. Values are checked against their
//! type; a row with a bad value is refused with the column named, and empty
//! values leave their element out (never an empty element).

use crate::fhir::{Issue, IssueCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

/// The mappings shipped in the binary (`profiles/mappings/csv/`).
const SHIPPED: [(&str, &str); 4] = [
    (
        "synthea-patients",
        include_str!("../../profiles/mappings/csv/synthea-patients.json"),
    ),
    (
        "synthea-encounters",
        include_str!("../../profiles/mappings/csv/synthea-encounters.json"),
    ),
    (
        "synthea-conditions",
        include_str!("../../profiles/mappings/csv/synthea-conditions.json"),
    ),
    (
        "synthea-observations",
        include_str!("../../profiles/mappings/csv/synthea-observations.json"),
    ),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mapping {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub resource_type: String,
    pub id: IdRule,
    /// Columns that must exist in the header and be non-empty in every row.
    #[serde(default)]
    pub required: Vec<String>,
    pub elements: Vec<Element>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdRule {
    /// The id is this column's value (it must be a valid FHIR id).
    #[serde(default)]
    pub column: Option<String>,
    /// The id is a hash of these columns' values.
    #[serde(default)]
    pub hash: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Element {
    pub path: String,
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub map: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub when: Option<When>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct When {
    pub column: String,
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub not_equals: Option<String>,
}

const TYPES: [&str; 7] = ["string", "code", "date", "dateTime", "decimal", "integer", "boolean"];

impl Mapping {
    /// Parses and checks a mapping file.
    pub fn parse(text: &str) -> Result<Mapping, String> {
        let m: Mapping = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if !crate::fhir::is_resource_type(&m.resource_type) {
            return Err(format!("'{}' is not a resource type", m.resource_type));
        }
        if m.id.column.is_none() == m.id.hash.is_empty() {
            return Err("id needs exactly one of column or hash".into());
        }
        for e in &m.elements {
            let sources = e.column.is_some() as u8 + e.value.is_some() as u8 + e.template.is_some() as u8;
            if sources != 1 {
                return Err(format!(
                    "element {}: needs exactly one of column, value, template",
                    e.path
                ));
            }
            if let Some(k) = &e.kind {
                if !TYPES.contains(&k.as_str()) {
                    return Err(format!(
                        "element {}: unknown type '{k}' (known: {})",
                        e.path,
                        TYPES.join(", ")
                    ));
                }
            }
            parse_path(&e.path).map_err(|err| format!("element {}: {err}", e.path))?;
        }
        Ok(m)
    }

    /// Every column the mapping reads.
    fn columns(&self) -> Vec<String> {
        let mut out: Vec<String> = self.required.clone();
        out.extend(self.id.column.iter().cloned());
        out.extend(self.id.hash.iter().cloned());
        for e in &self.elements {
            out.extend(e.column.iter().cloned());
            if let Some(w) = &e.when {
                out.push(w.column.clone());
            }
            if let Some(t) = &e.template {
                out.extend(template_columns(t));
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The shipped mapping called `name` (all are parsed once, on first use).
pub fn shipped(name: &str) -> Option<&'static Mapping> {
    static MAPPINGS: std::sync::OnceLock<Vec<Mapping>> = std::sync::OnceLock::new();
    MAPPINGS
        .get_or_init(|| {
            SHIPPED
                .iter()
                .map(|(_, text)| Mapping::parse(text).expect("shipped mappings are checked by a test"))
                .collect()
        })
        .iter()
        .find(|m| m.name == name)
}

pub fn shipped_names() -> Vec<&'static str> {
    SHIPPED.iter().map(|(n, _)| *n).collect()
}

fn template_columns(t: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(s) = rest.find('{') {
        let Some(e) = rest[s..].find('}') else { break };
        out.push(rest[s + 1..s + e].to_string());
        rest = &rest[s + e + 1..];
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("'{part}' is not an element name"));
        }
        steps.push(Step::Key(name.to_string()));
        let mut r = rest;
        while let Some(stripped) = r.strip_prefix('[') {
            let end = stripped.find(']').ok_or("unclosed [")?;
            let n: usize = stripped[..end]
                .parse()
                .map_err(|_| format!("'{part}': index must be a number"))?;
            steps.push(Step::Index(n));
            r = &stripped[end + 1..];
        }
        if !r.is_empty() {
            return Err(format!("'{part}' has text after an index"));
        }
    }
    Ok(steps)
}

fn set_path(root: &mut Value, steps: &[Step], v: Value) {
    let mut cur = root;
    for (i, step) in steps.iter().enumerate() {
        let last = i + 1 == steps.len();
        match step {
            Step::Key(k) => {
                if !cur.is_object() {
                    *cur = Value::Object(Map::new());
                }
                let obj = cur.as_object_mut().expect("made an object");
                if last {
                    obj.insert(k.clone(), v);
                    return;
                }
                let next_is_index = matches!(steps[i + 1], Step::Index(_));
                cur = obj.entry(k.clone()).or_insert_with(|| {
                    if next_is_index {
                        Value::Array(Vec::new())
                    } else {
                        Value::Object(Map::new())
                    }
                });
            }
            Step::Index(n) => {
                if !cur.is_array() {
                    *cur = Value::Array(Vec::new());
                }
                let arr = cur.as_array_mut().expect("made an array");
                while arr.len() <= *n {
                    arr.push(Value::Null);
                }
                if last {
                    arr[*n] = v;
                    return;
                }
                cur = &mut arr[*n];
            }
        }
    }
}

/// Removes nulls left by sparse indexes (`given[1]` without `given[0]`).
fn compact(v: &mut Value) {
    match v {
        Value::Array(a) => {
            a.retain(|x| !x.is_null());
            a.iter_mut().for_each(compact);
        }
        Value::Object(o) => o.values_mut().for_each(compact),
        _ => {}
    }
}

fn typed(kind: &str, raw: &str, column: &str) -> Result<Value, Issue> {
    let bad = |what: &str| {
        Issue::error(
            IssueCode::Value,
            format!("column {column}: '{raw}' is not a valid {what}"),
        )
    };
    match kind {
        "string" | "code" => Ok(Value::String(raw.to_string())),
        "date" => {
            let ok = crate::fhir::time::parse_range(raw).is_some() && !raw.contains('T') && raw.len() <= 10;
            if ok {
                Ok(json!(raw))
            } else {
                Err(bad("date (YYYY-MM-DD)"))
            }
        }
        "dateTime" => {
            let ok = crate::fhir::time::parse_range(raw).is_some()
                && (!raw.contains('T')
                    || raw.ends_with('Z')
                    || raw[raw.len().saturating_sub(6)..].starts_with(['+', '-']));
            if ok {
                Ok(json!(raw))
            } else {
                Err(bad("dateTime (with a time zone when it has a time)"))
            }
        }
        "decimal" => {
            let ok = raw.parse::<f64>().is_ok_and(f64::is_finite)
                && raw
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'+' || b == b'e' || b == b'E');
            if ok {
                serde_json::from_str::<Value>(raw.trim_start_matches('+')).map_err(|_| bad("decimal"))
            } else {
                Err(bad("decimal"))
            }
        }
        "integer" => raw.parse::<i32>().map(|n| json!(n)).map_err(|_| bad("integer")),
        "boolean" => match raw {
            "true" | "TRUE" | "Y" | "1" => Ok(json!(true)),
            "false" | "FALSE" | "N" | "0" => Ok(json!(false)),
            _ => Err(bad("boolean")),
        },
        _ => Err(bad(kind)),
    }
}

/// One row into a resource, or the reasons it cannot be one.
pub fn map_row(m: &Mapping, row: &HashMap<&str, &str>) -> Result<Value, Vec<Issue>> {
    let get = |c: &str| row.get(c).map(|v| v.trim()).unwrap_or("");
    let mut issues = Vec::new();
    for r in &m.required {
        if get(r).is_empty() {
            issues.push(Issue::error(IssueCode::Required, format!("column {r} is empty")));
        }
    }
    let id = match &m.id.column {
        Some(c) => get(c).to_string(),
        None => {
            let mut parts = vec!["csv", m.name.as_str()];
            parts.extend(m.id.hash.iter().map(|c| get(c)));
            super::hl7v2::translate::hash_id(&parts)
        }
    };
    if !crate::fhir::is_valid_id(&id) {
        issues.push(Issue::error(
            IssueCode::Value,
            format!("'{id}' is not a valid resource id"),
        ));
    }
    let mut out = json!({ "resourceType": m.resource_type, "id": id });
    for e in &m.elements {
        if let Some(w) = &e.when {
            let v = get(&w.column);
            if w.equals.as_ref().is_some_and(|x| x != v) || w.not_equals.as_ref().is_some_and(|x| x == v) {
                continue;
            }
        }
        let value = if let Some(c) = &e.column {
            let raw = get(c);
            if raw.is_empty() {
                continue;
            }
            let raw = match &e.map {
                Some(map) => match map.get(raw) {
                    Some(v) => v.as_str(),
                    None => {
                        issues.push(Issue::error(
                            IssueCode::Value,
                            format!(
                                "column {c}: '{raw}' is not one of {}",
                                map.keys().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        ));
                        continue;
                    }
                },
                None => raw,
            };
            match typed(e.kind.as_deref().unwrap_or("string"), raw, c) {
                Ok(v) => v,
                Err(i) => {
                    issues.push(i);
                    continue;
                }
            }
        } else if let Some(v) = &e.value {
            v.clone()
        } else {
            let t = e.template.as_deref().unwrap_or_default();
            let cols = template_columns(t);
            if cols.iter().any(|c| get(c).is_empty()) {
                continue;
            }
            let mut s = t.to_string();
            for c in cols {
                s = s.replace(&format!("{{{c}}}"), get(&c));
            }
            Value::String(s)
        };
        let steps = parse_path(&e.path).expect("checked when the mapping was parsed");
        set_path(&mut out, &steps, value);
    }
    compact(&mut out);
    if issues.is_empty() {
        Ok(out)
    } else {
        Err(issues)
    }
}

/// A parsed CSV body: header and rows (with their 1-based line numbers).
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<(usize, Vec<String>)>,
}

/// Parses CSV text; checks that the header has every column the mapping reads.
pub fn read_table(m: &Mapping, text: &str) -> Result<Table, Issue> {
    let mut reader = ::csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.trim_start_matches('\u{feff}').as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| Issue::error(IssueCode::Structure, format!("the CSV header cannot be read: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let missing: Vec<String> = m.columns().into_iter().filter(|c| !header.contains(c)).collect();
    if !missing.is_empty() {
        return Err(Issue::error(
            IssueCode::Structure,
            format!(
                "the CSV lacks column(s) {} that mapping {} reads",
                missing.join(", "),
                m.name
            ),
        ));
    }
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| {
            Issue::error(
                IssueCode::Structure,
                format!("CSV record {} cannot be read: {e}", i + 1),
            )
        })?;
        rows.push((i + 2, rec.iter().map(str::to_string).collect()));
    }
    Ok(Table { header, rows })
}

/// One row as a CSV document of its own (header and row), for a dead letter.
pub fn row_document(header: &[String], row: &[String]) -> String {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(header);
    let _ = w.write_record(row);
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_mappings_parse() {
        for name in shipped_names() {
            let m = shipped(name).unwrap();
            assert_eq!(m.name, name);
        }
    }

    #[test]
    fn maps_rows_and_names_bad_columns() {
        let m = shipped("synthea-observations").unwrap();
        let mut row: HashMap<&str, &str> = HashMap::new();
        row.insert("DATE", "2023-10-10T04:17:47Z");
        row.insert("PATIENT", "p1");
        row.insert("ENCOUNTER", "e1");
        row.insert("CATEGORY", "vital-signs");
        row.insert("CODE", "8302-2");
        row.insert("DESCRIPTION", "Body Height");
        row.insert("VALUE", "127.9");
        row.insert("UNITS", "cm");
        row.insert("TYPE", "numeric");
        let o = map_row(m, &row).unwrap();
        assert_eq!(o["valueQuantity"]["value"], json!(127.9));
        assert_eq!(o["subject"]["reference"], "Patient/p1");
        assert!(o.get("valueString").is_none());
        row.insert("VALUE", "tall");
        let e = map_row(m, &row).unwrap_err();
        assert!(e[0].diagnostics.contains("column VALUE"), "{e:?}");
        row.insert("TYPE", "text");
        assert_eq!(map_row(m, &row).unwrap()["valueString"], "tall");
        row.insert("DATE", "10/10/2023");
        assert!(map_row(m, &row).unwrap_err()[0].diagnostics.contains("column DATE"));
    }
}
