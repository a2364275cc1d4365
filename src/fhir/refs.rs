//! References inside resources: parsing `Type/id` and rewriting them in place
//! (transaction `urn:uuid:` resolution, conditional references).

use serde_json::Value;

/// A parsed literal reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// `Type/id` or `Type/id/_history/v`, relative or under some base URL.
    Resource {
        rtype: &'a str,
        id: &'a str,
        base: Option<&'a str>,
    },
    /// `#id`: a contained resource.
    Contained(&'a str),
    /// Anything else (`urn:uuid:...`, `urn:oid:...`, a non-FHIR URL).
    Other(&'a str),
}

pub fn parse(reference: &str) -> Target<'_> {
    if let Some(local) = reference.strip_prefix('#') {
        return Target::Contained(local);
    }
    if reference.starts_with("urn:") || reference.contains('?') {
        return Target::Other(reference);
    }
    let trimmed = match reference.find("/_history/") {
        Some(p) => &reference[..p],
        None => reference,
    };
    let mut it = trimmed.rsplitn(3, '/');
    let (Some(id), Some(rtype)) = (it.next(), it.next()) else {
        return Target::Other(reference);
    };
    if !super::is_valid_id(id) || !super::is_resource_type(rtype) {
        return Target::Other(reference);
    }
    Target::Resource {
        rtype,
        id,
        base: it.next(),
    }
}

/// Calls `f` on every `reference` string of every Reference in `value`; where
/// `f` returns a replacement, it is written back. Returns how many were replaced.
pub fn rewrite(value: &mut Value, f: &mut dyn FnMut(&str) -> Option<String>) -> usize {
    let mut n = 0;
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k == "reference" {
                    if let Value::String(s) = v {
                        if let Some(new) = f(s) {
                            *s = new;
                            n += 1;
                        }
                        continue;
                    }
                }
                n += rewrite(v, f);
            }
        }
        Value::Array(items) => {
            for v in items {
                n += rewrite(v, f);
            }
        }
        _ => {}
    }
    n
}

/// Every `reference` string in `value`, without changing it.
pub fn collect(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("reference", Value::String(s)) => out.push(s.clone()),
                    _ => collect(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reference_forms() {
        assert_eq!(
            parse("Patient/1"),
            Target::Resource {
                rtype: "Patient",
                id: "1",
                base: None
            }
        );
        assert_eq!(
            parse("http://x.org/fhir/Patient/1/_history/2"),
            Target::Resource {
                rtype: "Patient",
                id: "1",
                base: Some("http://x.org/fhir")
            }
        );
        assert_eq!(parse("#c1"), Target::Contained("c1"));
        assert_eq!(parse("urn:uuid:abc"), Target::Other("urn:uuid:abc"));
        assert_eq!(parse("Patient?identifier=x|1"), Target::Other("Patient?identifier=x|1"));
        assert_eq!(parse("Nonsense/1"), Target::Other("Nonsense/1"));
    }
}
