//! Acknowledgments (ACK) in original mode: MSH, MSA and one ERR per finding
//! that the sender should act on (errors and warnings), in the sender's version
//! with the fields that version has: MSH-9's third component (message structure)
//! from v2.3.1; ERR-2 to ERR-8 from v2.5, ERR-1 until v2.6; MSA-3 until v2.6
//! (withdrawn in v2.7, where the text travels in ERR-8 only). Strict parsers
//! (hl7apy) refuse fields a version does not define.

use super::translate::{AckCode, Finding, Header};
use crate::fhir::{IssueCode, Severity};

/// Escapes text for a field, using the standard encoding characters.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\E\\"),
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            '\r' | '\n' => out.push_str("\\.br\\"),
            c => out.push(c),
        }
    }
    out
}

/// HL7 table 0357 (message error condition codes) for an issue.
fn error_code(code: IssueCode, field: Option<(&str, usize)>) -> (&'static str, &'static str) {
    match (code, field) {
        (IssueCode::NotSupported, Some(("MSH", 12))) => ("203", "Unsupported version id"),
        (IssueCode::NotSupported, Some(("MSH", 9))) => ("200", "Unsupported message type"),
        (IssueCode::Required, _) => ("101", "Required field missing"),
        (IssueCode::Value, _) => ("102", "Data type error"),
        (IssueCode::Structure, _) => ("100", "Segment sequence error"),
        (IssueCode::MultipleMatches, _) => ("204", "Unknown key identifier"),
        (IssueCode::Duplicate, _) => ("205", "Duplicate key identifier"),
        _ => ("207", "Application internal error"),
    }
}

/// A v2 timestamp (UTC) for MSH-7 of the ACK.
fn v2_now(now_instant: &str) -> String {
    // 2024-01-02T03:04:05.678Z -> 20240102030405+0000
    let digits: String = now_instant.chars().take(19).filter(|c| c.is_ascii_digit()).collect();
    format!("{digits}+0000")
}

/// A version id (`2.3.1`) as numbers, for comparison; unknown parts are 0.
fn version_number(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.trim().parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Builds the ACK for a message. `header` is `None` when the message could not
/// even be parsed (then MSA-2 is empty).
pub fn ack(header: Option<&Header>, code: AckCode, findings: &[Finding], text: &str, now_instant: &str) -> String {
    let empty = Header::default();
    let h = header.unwrap_or(&empty);
    let version = if h.version.is_empty() {
        "2.5"
    } else {
        h.version.as_str()
    };
    let trigger = if h.trigger.is_empty() { "" } else { h.trigger.as_str() };
    let ack_id = format!(
        "ACK{}",
        now_instant.chars().filter(|c| c.is_ascii_digit()).collect::<String>()
    );
    let v = version_number(version);
    let message_type = if v >= (2, 3, 1) {
        format!("ACK^{}^ACK", escape(trigger))
    } else {
        format!("ACK^{}", escape(trigger))
    };
    let mut out = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{}||{}|{}|P|{}\r",
        escape(if h.receiving_application.is_empty() {
            "PENNINE"
        } else {
            &h.receiving_application
        }),
        escape(&h.receiving_facility),
        escape(&h.sending_application),
        escape(&h.sending_facility),
        v2_now(now_instant),
        message_type,
        ack_id,
        escape(version),
    );
    if v >= (2, 7, 0) {
        out.push_str(&format!("MSA|{}|{}\r", code.as_str(), escape(&h.control_id)));
    } else {
        out.push_str(&format!(
            "MSA|{}|{}|{}\r",
            code.as_str(),
            escape(&h.control_id),
            escape(&text.chars().take(80).collect::<String>())
        ));
    }
    for f in findings {
        let severity = match f.issue.severity {
            Severity::Fatal | Severity::Error => "E",
            Severity::Warning => "W",
            Severity::Information => continue,
        };
        let loc = f.location.as_ref();
        let (code, name) = error_code(f.issue.code, loc.map(|l| (l.segment.as_str(), l.field)));
        let (eld, erl) = match loc {
            Some(l) => (
                format!("{}^{}^{}^{code}&{}", l.segment, l.sequence, l.field, escape(name)),
                format!("{}^{}^{}", l.segment, l.sequence, l.field),
            ),
            // No place: ELD still carries the condition code (before v2.5, its only home).
            None => (format!("^^^{code}&{}", escape(name)), String::new()),
        };
        let eld = if v >= (2, 7, 0) { String::new() } else { eld };
        if v < (2, 5, 0) {
            // ERR-1 is the whole segment before v2.5.
            out.push_str(&format!("ERR|{eld}\r"));
            continue;
        }
        out.push_str(&format!(
            "ERR|{eld}|{erl}|{code}^{}^HL70357|{severity}||||{}\r",
            escape(name),
            escape(&f.issue.diagnostics)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::Issue;

    fn header(version: &str) -> Header {
        Header {
            version: version.into(),
            trigger: "A01".into(),
            control_id: "MSG1".into(),
            ..Header::default()
        }
    }

    fn finding() -> Finding {
        Finding {
            issue: Issue::error(IssueCode::Required, "PID-3 is missing"),
            location: None,
        }
    }

    #[test]
    fn each_version_gets_the_fields_it_defines() {
        let now = "2026-01-02T03:04:05Z";
        let seg = |ack: &str, id: &str| ack.split('\r').find(|s| s.starts_with(id)).unwrap_or("").to_string();
        // v2.3: two-part MSH-9, MSA-3, ERR-1 only.
        let a = ack(Some(&header("2.3")), AckCode::AE, &[finding()], "refused", now);
        assert!(seg(&a, "MSH").contains("|ACK^A01|"), "{a}");
        assert_eq!(seg(&a, "MSA"), "MSA|AE|MSG1|refused");
        assert_eq!(seg(&a, "ERR"), "ERR|^^^101&Required field missing", "{a}");
        // v2.5: three-part MSH-9, MSA-3, full ERR.
        let a = ack(Some(&header("2.5.1")), AckCode::AE, &[finding()], "refused", now);
        assert!(seg(&a, "MSH").contains("|ACK^A01^ACK|"), "{a}");
        assert_eq!(seg(&a, "MSA"), "MSA|AE|MSG1|refused");
        assert!(seg(&a, "ERR").contains("101^Required field missing^HL70357|E|"), "{a}");
        // v2.8: no MSA-3, no ERR-1; the text is in ERR-8.
        let a = ack(Some(&header("2.8")), AckCode::AE, &[finding()], "refused", now);
        assert_eq!(seg(&a, "MSA"), "MSA|AE|MSG1");
        assert!(
            seg(&a, "ERR").starts_with("ERR||") && seg(&a, "ERR").ends_with("PID-3 is missing"),
            "{a}"
        );
        assert!(version_number("2.3.1") > version_number("2.3") && version_number("2.10") > version_number("2.9"));
    }
}
