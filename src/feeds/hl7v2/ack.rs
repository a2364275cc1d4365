//! Acknowledgments (ACK) in original mode: MSH, MSA and one ERR per finding
//! that the sender should act on (errors and warnings).

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
    let mut out = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{}||ACK^{}^ACK|{}|P|{}\r",
        escape(if h.receiving_application.is_empty() {
            "PENNINE"
        } else {
            &h.receiving_application
        }),
        escape(&h.receiving_facility),
        escape(&h.sending_application),
        escape(&h.sending_facility),
        v2_now(now_instant),
        escape(trigger),
        ack_id,
        escape(version),
    );
    out.push_str(&format!(
        "MSA|{}|{}|{}\r",
        code.as_str(),
        escape(&h.control_id),
        escape(&text.chars().take(80).collect::<String>())
    ));
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
            None => (String::new(), String::new()),
        };
        out.push_str(&format!(
            "ERR|{eld}|{erl}|{code}^{}^HL70357|{severity}||||{}\r",
            escape(name),
            escape(&f.issue.diagnostics)
        ));
    }
    out
}
