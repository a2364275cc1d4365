//! Checks on JSON text that a parsed `Value` can no longer show. A JSON object
//! with the same key twice is parsed as the last one (RFC 8259 leaves it to the
//! reader), so `{"resourceType": "Patient", ..., "resourceType": "Observation"}`
//! would be stored as something other than what a second reader may see. FHIR
//! JSON forbids it; this finds it in the text.

use std::borrow::Cow;

/// A key given twice in one object: the key and its line and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    pub key: String,
    pub line: usize,
    pub column: usize,
}

enum Frame<'a> {
    Object { keys: Vec<Cow<'a, str>>, expect_key: bool },
    Array,
}

/// The first duplicate key in `text`, which must already be valid JSON.
pub fn duplicate_key(text: &str) -> Option<DuplicateKey> {
    let bytes = text.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => stack.push(Frame::Object {
                keys: Vec::new(),
                expect_key: true,
            }),
            b'[' => stack.push(Frame::Array),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => {
                if let Some(Frame::Object { expect_key, .. }) = stack.last_mut() {
                    *expect_key = true;
                }
            }
            b':' => {
                if let Some(Frame::Object { expect_key, .. }) = stack.last_mut() {
                    *expect_key = false;
                }
            }
            b'"' => {
                let start = i;
                let mut escaped = false;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        escaped = true;
                        i += 1;
                    }
                    i += 1;
                }
                if let Some(Frame::Object { keys, expect_key: true }) = stack.last_mut() {
                    let key: Cow<str> = if escaped {
                        Cow::Owned(serde_json::from_str(&text[start..=i.min(bytes.len() - 1)]).unwrap_or_default())
                    } else {
                        Cow::Borrowed(&text[start + 1..i.min(bytes.len())])
                    };
                    if keys.contains(&key) {
                        let before = &text[..start];
                        let line = before.matches('\n').count() + 1;
                        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                        return Some(DuplicateKey {
                            key: key.into_owned(),
                            line,
                            column,
                        });
                    }
                    keys.push(key);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_key_given_twice_in_one_object_only() {
        assert_eq!(
            duplicate_key(r#"{"a": 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]}"#),
            None
        );
        let d = duplicate_key("{\"resourceType\": \"Patient\",\n \"id\": \"x\", \"resourceType\": \"Observation\"}")
            .unwrap();
        assert_eq!((d.key.as_str(), d.line, d.column), ("resourceType", 2, 13));
        // Escapes are compared as the text they stand for; strings with braces are only text.
        assert_eq!(
            duplicate_key(r#"{"a\u0062": 1, "ab": 2}"#).map(|d| d.key),
            Some("ab".into())
        );
        assert_eq!(duplicate_key(r#"{"x": "{\"a\": 1, \"a\": 2}", "y": "\\"}"#), None);
        assert_eq!(
            duplicate_key(r#"{"n": {"v": 1, "w": [1, {"v": 2}], "v": 3}}"#).map(|d| d.key),
            Some("v".into())
        );
    }
}
