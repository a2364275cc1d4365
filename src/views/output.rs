//! Writing view rows as JSON (an array of objects), NDJSON or CSV.

use super::{ColumnInfo, Row};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
    Csv,
}

impl Format {
    /// `_format` values as the `$run` operation and common MIME types spell them.
    pub fn parse(s: &str) -> Option<Format> {
        match s.trim() {
            "json" | "application/json" | "application/fhir+json" => Some(Format::Json),
            "ndjson" | "application/x-ndjson" | "application/ndjson" | "application/fhir+ndjson" => {
                Some(Format::Ndjson)
            }
            "csv" | "text/csv" => Some(Format::Csv),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

fn object(columns: &[ColumnInfo], row: &Row) -> Value {
    let mut m = Map::with_capacity(columns.len());
    for (c, v) in columns.iter().zip(row) {
        m.insert(c.name.clone(), v.clone());
    }
    Value::Object(m)
}

pub fn write_json(columns: &[ColumnInfo], rows: &[Row], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(object(columns, row).to_string().as_bytes());
    }
    out.push(b']');
}

pub fn write_ndjson(columns: &[ColumnInfo], rows: &[Row], out: &mut Vec<u8>) {
    for row in rows {
        out.extend_from_slice(object(columns, row).to_string().as_bytes());
        out.push(b'\n');
    }
}

/// RFC 4180 CSV with a header line; null is an empty field, and a complex value
/// (an object or a collection) is written as its JSON.
pub fn write_csv(columns: &[ColumnInfo], rows: &[Row], out: &mut Vec<u8>) {
    let header: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    write_csv_line(header.iter().map(String::as_str), out);
    for row in rows {
        let fields: Vec<String> = row.iter().map(csv_text).collect();
        write_csv_line(fields.iter().map(String::as_str), out);
    }
}

pub fn csv_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A field as a spreadsheet should read it: text that begins with `=`, `+`, `-`,
/// `@`, a tab or a carriage return would be run as a formula (`=HYPERLINK(...)` in a
/// family name), so it gets a leading `'`, as OWASP advises for CSV exports.
/// Numbers (`-3.5`, `+1e3`) are left as they are.
pub fn spreadsheet_safe(f: &str) -> std::borrow::Cow<'_, str> {
    let risky = f.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let number = f.len() > 1
        && f.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && f.parse::<f64>().is_ok();
    if risky && !number {
        std::borrow::Cow::Owned(format!("'{f}"))
    } else {
        std::borrow::Cow::Borrowed(f)
    }
}

pub fn write_csv_line<'a>(fields: impl Iterator<Item = &'a str>, out: &mut Vec<u8>) {
    for (i, f) in fields.enumerate() {
        let f = spreadsheet_safe(f);
        let f = f.as_ref();
        if i > 0 {
            out.push(b',');
        }
        if f.contains([',', '"', '\n', '\r']) {
            out.push(b'"');
            out.extend_from_slice(f.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(f.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formulas_are_neutralised_and_numbers_kept() {
        for (raw, safe) in [
            ("=HYPERLINK(\"http://x\",\"a\")", "'=HYPERLINK(\"http://x\",\"a\")"),
            ("+SUM(A1)", "'+SUM(A1)"),
            ("-2+3", "'-2+3"),
            ("@cmd", "'@cmd"),
            ("\t=1", "'\t=1"),
            ("-3.5", "-3.5"),
            ("+1e3", "+1e3"),
            ("-", "'-"),
            ("Smith", "Smith"),
            ("", ""),
        ] {
            assert_eq!(spreadsheet_safe(raw), safe, "{raw}");
        }
        let mut out = Vec::new();
        write_csv_line(["=1+1", "x,y"].into_iter(), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "'=1+1,\"x,y\"\r\n");
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let cols = vec![
            ColumnInfo {
                name: "a".into(),
                ty: None,
                collection: false,
                role: crate::views::ColumnRole::None,
            },
            ColumnInfo {
                name: "b".into(),
                ty: None,
                collection: true,
                role: crate::views::ColumnRole::None,
            },
        ];
        let mut out = Vec::new();
        write_csv(
            &cols,
            &[vec![json!("x,\"y\""), json!(["p", "q"])], vec![Value::Null, json!(1)]],
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a,b\r\n\"x,\"\"y\"\"\",\"[\"\"p\"\",\"\"q\"\"]\"\r\n,1\r\n"
        );
    }
}
