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

pub fn write_csv_line<'a>(fields: impl Iterator<Item = &'a str>, out: &mut Vec<u8>) {
    for (i, f) in fields.enumerate() {
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
