//! The structural check: does a resource fit the R4 model? fhirbolt lives here and
//! nowhere else, so the rest of the code never depends on its quirks.

use super::{Issue, IssueCode};
use fhirbolt::model::r4::Resource;

/// Parses `json` (one resource) with the typed R4 model in strict mode: unknown
/// elements, wrong data types and malformed primitives are errors.
pub fn check_structure(json: &str) -> Result<(), Issue> {
    match fhirbolt::json::from_str::<Resource>(json, None) {
        Ok(_) => Ok(()),
        Err(e) => Err(structure_issue(&e.to_string())),
    }
}

fn structure_issue(message: &str) -> Issue {
    // fhirbolt reports e.g. "unknown field `foo`, expected one of ..." without a path;
    // name the field so the sender can find it.
    let issue = Issue::error(IssueCode::Structure, format!("Resource does not conform to FHIR R4: {message}"));
    match message.split('`').nth(1) {
        Some(field) if message.starts_with("unknown field") => issue.at(field.to_string()),
        _ => issue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_and_rejects_unknown_elements() {
        assert!(check_structure(r#"{"resourceType":"Patient","gender":"male","birthDate":"1970-01-01"}"#).is_ok());
        let e = check_structure(r#"{"resourceType":"Patient","colour":"blue"}"#).unwrap_err();
        assert_eq!(e.code, IssueCode::Structure);
        assert!(e.diagnostics.contains("colour"), "{}", e.diagnostics);
        assert!(check_structure(r#"{"resourceType":"Patient","active":"yes"}"#).is_err());
    }
}
