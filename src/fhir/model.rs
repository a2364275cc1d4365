//! The structural check: does a resource fit the R4 model? fhirbolt lives here and
//! nowhere else, so the rest of the code never depends on its quirks.

use super::{Issue, IssueCode};
use fhirbolt::model::r4::Resource;

/// Parses `json` (one resource) with the typed R4 model in strict mode: unknown
/// elements, wrong data types and malformed primitives are errors.
///
/// A missing required element is returned as a warning, not an error: it is a
/// cardinality rule, which the profile validator owns and a node's policy may
/// accept (HAPI and Blaze store such resources too; one of the official R4
/// examples, `bundle-questionnaire`, lacks a required `linkId`).
pub fn check_structure(json: &str) -> Result<Option<Issue>, Issue> {
    // fhirbolt 0.4 panics on some malformed primitives (e.g. a month of 13);
    // a panic here must become a clear error, never a failed worker.
    let parsed = std::panic::catch_unwind(|| fhirbolt::json::from_str::<Resource>(json, None));
    match parsed {
        Ok(Ok(_)) => Ok(None),
        Ok(Err(e)) => {
            let message = e.to_string();
            if message.starts_with("missing field") {
                let mut issue = structure_issue(&message);
                issue.severity = super::Severity::Warning;
                issue.code = IssueCode::Required;
                issue.expression = None;
                Ok(Some(issue))
            } else {
                Err(structure_issue(&message))
            }
        }
        Err(_) => Err(Issue::error(
            IssueCode::Value,
            "Resource does not conform to FHIR R4: a primitive value is malformed (for example a date or time out of range)",
        )),
    }
}

fn structure_issue(message: &str) -> Issue {
    // fhirbolt reports e.g. "unknown field `foo`, expected one of ..." without a path;
    // name the field so the sender can find it.
    let issue = Issue::error(
        IssueCode::Structure,
        format!("Resource does not conform to FHIR R4: {message}"),
    );
    match message.split('`').nth(1) {
        Some(field) if message.starts_with("unknown field") => issue.at(field.to_string()),
        _ => issue,
    }
}

/// Converts one resource in FHIR XML to FHIR JSON (through the typed R4 model,
/// which knows which elements repeat and which primitives are numbers).
pub fn xml_to_json(xml: &str) -> Result<serde_json::Value, String> {
    // The declaration says nothing a &str does not (fhirbolt refuses `encoding="utf-8"` in lower case).
    let xml = xml.trim_start_matches('\u{feff}').trim_start();
    let xml = match xml.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map(|(_, body)| body).unwrap_or(rest),
        None => xml,
    };
    let parsed = std::panic::catch_unwind(|| fhirbolt::xml::from_str::<Resource>(xml, None));
    let resource = match parsed {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("a primitive value is malformed".into()),
    };
    let json = fhirbolt::json::to_string(&resource, None).map_err(|e| e.to_string())?;
    serde_json::from_str(&json).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_and_rejects_unknown_elements() {
        assert_eq!(
            check_structure(r#"{"resourceType":"Patient","gender":"male","birthDate":"1970-01-01"}"#),
            Ok(None)
        );
        let w = check_structure(r#"{"resourceType":"Observation","code":{"text":"x"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(w.severity, crate::fhir::Severity::Warning);
        let e = check_structure(r#"{"resourceType":"Patient","colour":"blue"}"#).unwrap_err();
        assert_eq!(e.code, IssueCode::Structure);
        assert!(e.diagnostics.contains("colour"), "{}", e.diagnostics);
        assert!(check_structure(r#"{"resourceType":"Patient","active":"yes"}"#).is_err());
    }
}
