//! CSV extracts into FHIR through declarative mappings (`profiles/mappings/csv/*.json`).
//!
//! A mapping names the resource type, how the id is made, and a list of
//! elements, each a path (`name[0].given[0]`) filled from a column, a constant
//! or a template (`Patient/{PATIENT}`), with a type (`string`, `code`, `date`,
//! `dateTime`, `decimal`, `integer`, `boolean`), an optional value map and an
//! optional condition on another column. Values are checked against their
//! type; a row with a bad value is refused with the column named, and empty
//! values leave their element out (never an empty element).
//!
//! A row may become several resources (`also`): a part is a resource of its own
//! (a Patient keyed on the NHS number), and a part with `each` is repeated for every
//! non-empty column of a list (one Condition per diagnosis position), with the
//! column's value as a virtual column (`each.as`) and its 1-based position in the
//! list as `<as>_POSITION`. Templates of parts and of the primary can name the
//! primary's id as `{@parent}`, a part's own id as `{@id}`, and the id of a single
//! (not repeated) part by its type, `{@Patient}`. A part's `link` appends an element
//! to an array of the primary (`Encounter.diagnosis`) for each of its resources.

use crate::fhir::{Issue, IssueCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

/// The mappings shipped in the binary (`profiles/mappings/csv/`).
const SHIPPED: [(&str, &str); 5] = [
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
    ("sus-apc", include_str!("../../profiles/mappings/csv/sus-apc.json")),
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
    /// Further resources made from the same row (see the module documentation).
    #[serde(default)]
    pub also: Vec<Part>,
}

/// A further resource made from a row.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Part {
    pub resource_type: String,
    pub id: IdRule,
    /// Repeat the part for each non-empty column of this list.
    #[serde(default)]
    pub each: Option<Each>,
    pub elements: Vec<Element>,
    /// What the primary resource gains for each of this part's resources.
    #[serde(default)]
    pub link: Option<Link>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Each {
    pub columns: Vec<String>,
    /// The virtual column that holds the value (and `<as>_POSITION` its position).
    #[serde(rename = "as")]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Link {
    /// An array element of the primary resource (`diagnosis`).
    pub path: String,
    /// The element appended to it, built like a resource's elements.
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

const TYPES: [&str; 9] = [
    "string",
    "code",
    "date",
    "dateTime",
    "decimal",
    "integer",
    "positiveInt",
    "boolean",
    "icd10",
];

/// Checks a list of elements (for the resource `what`).
fn check_elements(what: &str, elements: &[Element]) -> Result<(), String> {
    for e in elements {
        let sources = e.column.is_some() as u8 + e.value.is_some() as u8 + e.template.is_some() as u8;
        if sources != 1 {
            return Err(format!(
                "{what} element {}: needs exactly one of column, value, template",
                e.path
            ));
        }
        if let Some(k) = &e.kind {
            if !TYPES.contains(&k.as_str()) {
                return Err(format!(
                    "{what} element {}: unknown type '{k}' (known: {})",
                    e.path,
                    TYPES.join(", ")
                ));
            }
        }
        parse_path(&e.path).map_err(|err| format!("{what} element {}: {err}", e.path))?;
    }
    Ok(())
}

/// Whether `column` is one the engine provides rather than the CSV.
fn is_virtual(column: &str, parts: &[Part]) -> bool {
    column.starts_with('@')
        || parts
            .iter()
            .filter_map(|p| p.each.as_ref())
            .any(|e| column == e.name || column.strip_prefix(e.name.as_str()) == Some("_POSITION"))
}

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
        check_elements(&m.resource_type, &m.elements)?;
        let mut singles = std::collections::HashSet::new();
        for p in &m.also {
            if !crate::fhir::is_resource_type(&p.resource_type) {
                return Err(format!("part: '{}' is not a resource type", p.resource_type));
            }
            if p.id.hash.is_empty() || p.id.column.is_some() {
                return Err(format!("part {}: its id must be a hash of columns", p.resource_type));
            }
            if p.each.is_none() && !singles.insert(p.resource_type.clone()) {
                return Err(format!(
                    "part {}: two single parts of one type cannot be told apart in templates",
                    p.resource_type
                ));
            }
            if p.link.is_some() && p.each.is_none() {
                return Err(format!("part {}: a link needs each", p.resource_type));
            }
            check_elements(&p.resource_type, &p.elements)?;
            if let Some(l) = &p.link {
                parse_path(&l.path).map_err(|err| format!("link {}: {err}", l.path))?;
                check_elements(&format!("{} link", p.resource_type), &l.elements)?;
            }
        }
        Ok(m)
    }

    /// Every column the mapping reads from the CSV (virtual columns left out).
    fn columns(&self) -> Vec<String> {
        let mut out: Vec<String> = self.required.clone();
        out.extend(self.id.column.iter().cloned());
        out.extend(self.id.hash.iter().cloned());
        let mut lists: Vec<&Vec<Element>> = vec![&self.elements];
        for p in &self.also {
            out.extend(p.id.hash.iter().cloned());
            if let Some(e) = &p.each {
                out.extend(e.columns.iter().cloned());
            }
            lists.push(&p.elements);
            if let Some(l) = &p.link {
                lists.push(&l.elements);
            }
        }
        for e in lists.into_iter().flatten() {
            out.extend(e.column.iter().cloned());
            if let Some(w) = &e.when {
                out.push(w.column.clone());
            }
            if let Some(t) = &e.template {
                out.extend(template_columns(t));
            }
        }
        out.retain(|c| !is_virtual(c, &self.also));
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
        "positiveInt" => match raw.parse::<i32>() {
            Ok(n) if n > 0 => Ok(json!(n)),
            _ => Err(bad("positive integer")),
        },
        "icd10" => crate::fhir::icd10::normalise(raw)
            .map(Value::String)
            .ok_or_else(|| bad("ICD-10 code (such as J44.1, J441, J40, J40X or J40-)")),
        "boolean" => match raw {
            "true" | "TRUE" | "Y" | "1" => Ok(json!(true)),
            "false" | "FALSE" | "N" | "0" => Ok(json!(false)),
            _ => Err(bad("boolean")),
        },
        _ => Err(bad(kind)),
    }
}

/// The elements of one resource (or link element) from a row, into `out`.
fn fill(out: &mut Value, elements: &[Element], get: &dyn Fn(&str) -> String, issues: &mut Vec<Issue>) {
    for e in elements {
        if let Some(w) = &e.when {
            let v = get(&w.column);
            if w.equals.as_ref().is_some_and(|x| *x != v) || w.not_equals.as_ref().is_some_and(|x| *x == v) {
                continue;
            }
        }
        let value = if let Some(c) = &e.column {
            let raw = get(c);
            if raw.is_empty() {
                continue;
            }
            // A virtual column is reported by the CSV column it came from.
            let shown = match get(&format!("#{c}")) {
                s if s.is_empty() => c.clone(),
                s => s,
            };
            let raw = match &e.map {
                Some(map) => match map.get(&raw) {
                    Some(v) => v.clone(),
                    None => {
                        issues.push(Issue::error(
                            IssueCode::Value,
                            format!(
                                "column {shown}: '{raw}' is not one of {}",
                                map.keys().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        ));
                        continue;
                    }
                },
                None => raw,
            };
            match typed(e.kind.as_deref().unwrap_or("string"), &raw, &shown) {
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
                s = s.replace(&format!("{{{c}}}"), &get(&c));
            }
            Value::String(s)
        };
        let steps = parse_path(&e.path).expect("checked when the mapping was parsed");
        set_path(out, &steps, value);
    }
}

/// The id of a resource from a hash of columns (`kind` keeps parts apart from the primary).
fn hash_of(m: &Mapping, kind: Option<&str>, columns: &[String], get: &dyn Fn(&str) -> String) -> String {
    let values: Vec<String> = columns.iter().map(|c| get(c)).collect();
    let mut parts = vec!["csv", m.name.as_str()];
    parts.extend(kind);
    parts.extend(values.iter().map(String::as_str));
    super::hl7v2::translate::hash_id(&parts)
}

/// One row into its resources (the primary first), or the reasons it cannot be.
pub fn map_row(m: &Mapping, row: &HashMap<&str, &str>) -> Result<Vec<Value>, Vec<Issue>> {
    let mut issues = Vec::new();
    for r in &m.required {
        if row.get(r.as_str()).map(|v| v.trim()).unwrap_or("").is_empty() {
            issues.push(Issue::error(IssueCode::Required, format!("column {r} is empty")));
        }
    }
    // Virtual columns: the ids of single parts, then the primary's.
    let mut virtuals: HashMap<String, String> = HashMap::new();
    {
        let get = |c: &str| row.get(c).map(|v| v.trim().to_string()).unwrap_or_default();
        for p in m.also.iter().filter(|p| p.each.is_none()) {
            virtuals.insert(
                format!("@{}", p.resource_type),
                hash_of(m, Some(&p.resource_type), &p.id.hash, &get),
            );
        }
    }
    let lookup = |c: &str, extra: &HashMap<String, String>| -> String {
        extra
            .get(c)
            .or_else(|| virtuals.get(c))
            .cloned()
            .unwrap_or_else(|| row.get(c).map(|v| v.trim().to_string()).unwrap_or_default())
    };
    let none = HashMap::new();
    let get = |c: &str| lookup(c, &none);
    let id = match &m.id.column {
        Some(c) => get(c),
        None => hash_of(m, None, &m.id.hash, &get),
    };
    if !crate::fhir::is_valid_id(&id) {
        issues.push(Issue::error(
            IssueCode::Value,
            format!("'{id}' is not a valid resource id"),
        ));
    }
    let mut primary = json!({ "resourceType": m.resource_type, "id": id });
    let primary_get = |c: &str| {
        if c == "@parent" || c == "@id" {
            id.clone()
        } else {
            get(c)
        }
    };
    fill(&mut primary, &m.elements, &primary_get, &mut issues);
    let mut out = vec![primary];
    for p in &m.also {
        // One context per resource of the part: each non-empty column of `each`, or the row once.
        let contexts: Vec<HashMap<String, String>> = match &p.each {
            None => vec![HashMap::new()],
            Some(each) => each
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| !get(c).is_empty())
                .map(|(i, c)| {
                    HashMap::from([
                        (each.name.clone(), get(c)),
                        (format!("#{}", each.name), c.clone()),
                        (format!("{}_POSITION", each.name), (i + 1).to_string()),
                    ])
                })
                .collect(),
        };
        for mut ctx in contexts {
            ctx.insert("@parent".into(), id.clone());
            let part_id = hash_of(m, Some(&p.resource_type), &p.id.hash, &|c: &str| lookup(c, &ctx));
            ctx.insert("@id".into(), part_id.clone());
            let part_get = |c: &str| lookup(c, &ctx);
            let mut resource = json!({ "resourceType": p.resource_type, "id": part_id });
            fill(&mut resource, &p.elements, &part_get, &mut issues);
            compact(&mut resource);
            if let Some(link) = &p.link {
                let mut element = json!({});
                fill(&mut element, &link.elements, &part_get, &mut issues);
                compact(&mut element);
                let steps = parse_path(&link.path).expect("checked when the mapping was parsed");
                append_at(&mut out[0], &steps, element);
            }
            out.push(resource);
        }
    }
    compact(&mut out[0]);
    if issues.is_empty() {
        Ok(out)
    } else {
        Err(issues)
    }
}

/// Appends `v` to the array at `steps` (made when absent).
fn append_at(root: &mut Value, steps: &[Step], v: Value) {
    let mut cur = root;
    for step in steps {
        cur = match step {
            Step::Key(k) => {
                if !cur.is_object() {
                    *cur = Value::Object(Map::new());
                }
                cur.as_object_mut()
                    .expect("made an object")
                    .entry(k.clone())
                    .or_insert(Value::Null)
            }
            Step::Index(n) => {
                if !cur.is_array() {
                    *cur = Value::Array(Vec::new());
                }
                let arr = cur.as_array_mut().expect("made an array");
                while arr.len() <= *n {
                    arr.push(Value::Null);
                }
                &mut arr[*n]
            }
        };
    }
    match cur {
        Value::Array(a) => a.push(v),
        other => *other = Value::Array(vec![v]),
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

    fn sus_row<'a>(diags: &[(&'a str, &'a str)]) -> HashMap<&'a str, &'a str> {
        let mut row: HashMap<&str, &str> = HashMap::from([
            ("spell_id", "S1"),
            ("episode_number", "2"),
            ("last_episode_in_spell", "1"),
            ("nhs_number", "9434765870"),
            ("sex", "2"),
            ("age_on_admission", "71"),
            ("provider_code", "RTD"),
            ("admission_method", "21"),
            ("treatment_function_code", "340"),
            ("admission_date", "2025-03-01"),
            ("discharge_date", "2025-03-09"),
            ("episode_start_date", "2025-03-02"),
            ("episode_end_date", "2025-03-09"),
            ("discharge_method", "4"),
        ]);
        for (k, v) in diags {
            row.insert(k, v);
        }
        row
    }

    #[test]
    fn a_sus_episode_becomes_an_encounter_with_ranked_diagnoses() {
        let m = shipped("sus-apc").unwrap();
        let row = sus_row(&[("diag_01", "J44.1"), ("diag_02", ""), ("diag_03", "J40")]);
        let out = map_row(m, &row).unwrap();
        let (enc, patient) = (&out[0], &out[1]);
        assert_eq!(enc["resourceType"], "Encounter");
        assert_eq!(patient["resourceType"], "Patient");
        assert_eq!(patient["gender"], "female");
        assert_eq!(
            enc["subject"]["reference"],
            format!("Patient/{}", patient["id"].as_str().unwrap())
        );
        let conditions: Vec<&Value> = out.iter().filter(|r| r["resourceType"] == "Condition").collect();
        assert_eq!(conditions.len(), 2, "empty positions make no Condition");
        let dx = enc["diagnosis"].as_array().unwrap();
        assert_eq!(dx.len(), 2);
        // Position 2 was empty: the second diagnosis keeps rank 3.
        assert_eq!(dx[0]["rank"], json!(1));
        assert_eq!(dx[1]["rank"], json!(3));
        let third = conditions
            .iter()
            .find(|c| format!("Condition/{}", c["id"].as_str().unwrap()) == dx[1]["condition"]["reference"])
            .unwrap();
        assert_eq!(third["code"]["coding"][0]["code"], "J40X");
        assert_eq!(third["code"]["text"], "J40", "the code as sent is kept");
        assert_eq!(
            third["encounter"]["reference"],
            format!("Encounter/{}", enc["id"].as_str().unwrap())
        );
        let ext = |url: &str| {
            enc["extension"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["url"].as_str().unwrap().ends_with(url))
                .cloned()
        };
        assert_eq!(
            ext("AdmissionMethod").unwrap()["valueCodeableConcept"]["coding"][0]["code"],
            "21"
        );
        assert_eq!(
            ext("DischargeMethod").unwrap()["valueCodeableConcept"]["coding"][0]["code"],
            "4"
        );
        assert_eq!(ext("last-episode-in-spell").unwrap()["valueBoolean"], json!(true));
        assert_eq!(ext("age-on-admission").unwrap()["valueInteger"], json!(71));
        assert_eq!(enc["serviceProvider"]["identifier"]["value"], "RTD");
        // Same row, same ids: re-sending changes nothing.
        let again = map_row(m, &row).unwrap();
        assert_eq!(out, again);
        // An unreadable code is a row error naming its column.
        let bad = map_row(m, &sus_row(&[("diag_01", "J44.1"), ("diag_04", "44J")])).unwrap_err();
        assert!(bad.iter().any(|i| i.diagnostics.contains("column diag_04")), "{bad:?}");
        // No discharge method on an episode that is not the last: no empty extension.
        let mut mid = sus_row(&[("diag_01", "J441")]);
        mid.insert("discharge_method", "");
        mid.insert("last_episode_in_spell", "2");
        let enc = map_row(m, &mid).unwrap().remove(0);
        assert!(enc["extension"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e["url"].as_str().unwrap().ends_with("DischargeMethod")));
        assert!(enc["extension"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e.as_object().unwrap().len() == 2));
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
        let o = map_row(m, &row).unwrap().remove(0);
        assert_eq!(o["valueQuantity"]["value"], json!(127.9));
        assert_eq!(o["subject"]["reference"], "Patient/p1");
        assert!(o.get("valueString").is_none());
        row.insert("VALUE", "tall");
        let e = map_row(m, &row).unwrap_err();
        assert!(e[0].diagnostics.contains("column VALUE"), "{e:?}");
        row.insert("TYPE", "text");
        assert_eq!(map_row(m, &row).unwrap()[0]["valueString"], "tall");
        row.insert("DATE", "10/10/2023");
        assert!(map_row(m, &row).unwrap_err()[0].diagnostics.contains("column DATE"));
    }
}
