//! HL7 v2: ER7 parsing, v2 data types and date/times, translation into FHIR
//! R4 resources, and acknowledgments.

/// JSON built by moving values in. `serde_json::json!` serialises every
/// interpolated expression into a new `Value` (a deep copy when it already is
/// one: a resource's identifiers, codings, a Provenance's targets), which was
/// about a tenth of translation. Same syntax for what translation writes:
/// objects with literal keys, arrays, `null`, and expressions that convert with
/// `Value::from` (a `&Value` does not: clone it where a copy is meant).
macro_rules! jv {
    (null) => {
        serde_json::Value::Null
    };
    ([ $($tt:tt)* ]) => {{
        #[allow(unused_mut)]
        let mut items = $crate::feeds::hl7v2::json_items();
        jv_items!(items; $($tt)*);
        serde_json::Value::Array(items)
    }};
    ({ $($tt:tt)* }) => {{
        #[allow(unused_mut)]
        let mut members = serde_json::Map::new();
        jv_members!(members; $($tt)*);
        serde_json::Value::Object(members)
    }};
    ($e:expr) => {
        serde_json::Value::from($e)
    };
}

macro_rules! jv_members {
    ($m:ident;) => {};
    ($m:ident; $k:literal : null $(, $($rest:tt)*)?) => {
        $m.insert($k.into(), serde_json::Value::Null);
        jv_members!($m; $($($rest)*)?);
    };
    ($m:ident; $k:literal : { $($v:tt)* } $(, $($rest:tt)*)?) => {
        $m.insert($k.into(), jv!({ $($v)* }));
        jv_members!($m; $($($rest)*)?);
    };
    ($m:ident; $k:literal : [ $($v:tt)* ] $(, $($rest:tt)*)?) => {
        $m.insert($k.into(), jv!([ $($v)* ]));
        jv_members!($m; $($($rest)*)?);
    };
    ($m:ident; $k:literal : $v:expr $(, $($rest:tt)*)?) => {
        $m.insert($k.into(), serde_json::Value::from($v));
        jv_members!($m; $($($rest)*)?);
    };
}

macro_rules! jv_items {
    ($a:ident;) => {};
    ($a:ident; null $(, $($rest:tt)*)?) => {
        $a.push(serde_json::Value::Null);
        jv_items!($a; $($($rest)*)?);
    };
    ($a:ident; { $($v:tt)* } $(, $($rest:tt)*)?) => {
        $a.push(jv!({ $($v)* }));
        jv_items!($a; $($($rest)*)?);
    };
    ($a:ident; [ $($v:tt)* ] $(, $($rest:tt)*)?) => {
        $a.push(jv!([ $($v)* ]));
        jv_items!($a; $($($rest)*)?);
    };
    ($a:ident; $v:expr $(, $($rest:tt)*)?) => {
        $a.push(serde_json::Value::from($v));
        jv_items!($a; $($($rest)*)?);
    };
}

/// An empty array for `jv!` to fill (a function, so that Clippy does not ask for `vec![]`,
/// which cannot take `jv!`'s object and array items).
pub(crate) fn json_items() -> Vec<serde_json::Value> {
    Vec::new()
}

pub mod ack;
pub mod datatypes;
pub mod dtm;
pub mod er7;
pub mod translate;

pub use translate::{translate, AckCode, Finding, Header, Refused, Translation};

/// Splits a body holding one or more ER7 messages at each `MSH` segment.
/// Batch envelope segments (FHS, BHS, BTS, FTS) are dropped.
pub fn split_messages(text: &str) -> Vec<&str> {
    let text = er7::trim_envelope(text);
    let mut starts = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("MSH") {
        let at = i + pos;
        let line_start = at == 0 || matches!(bytes[at - 1], b'\r' | b'\n' | 0x0b);
        if line_start && bytes.len() > at + 3 && !bytes[at + 3].is_ascii_alphanumeric() {
            starts.push(at);
        }
        i = at + 3;
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(text.len());
        let mut chunk = &text[s..end];
        // Drop trailing batch trailers and MLLP bytes.
        for trailer in ["\rBTS", "\nBTS", "\rFTS", "\nFTS"] {
            if let Some(p) = chunk.find(trailer) {
                chunk = &chunk[..p];
            }
        }
        let chunk = er7::trim_envelope(chunk);
        if !chunk.is_empty() {
            out.push(chunk);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::split_messages;

    #[test]
    fn splits_batches_and_ignores_envelopes() {
        let body = "FHS|^~\\&|X\rBHS|^~\\&|X\rMSH|^~\\&|A|B|C|D|2023||ADT^A01|1|P|2.5\rPID|1||1^^^X^MR\n\
                    MSH|^~\\&|A|B|C|D|2023||ADT^A08|2|P|2.5\r\nPID|1||1^^^X^MR\rBTS|2\rFTS|1\r";
        let msgs = split_messages(body);
        assert_eq!(msgs.len(), 2);
        assert!(msgs[0].ends_with("1^^^X^MR"));
        assert!(msgs[1].contains("ADT^A08") && !msgs[1].contains("BTS"));
        assert!(split_messages("hello").is_empty());
    }
}
