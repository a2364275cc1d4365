//! Regional feeds that are not FHIR: HL7 v2 (ER7 over HTTP and MLLP) and CSV
//! extracts. Translation (`hl7v2`, `csv`) is pure; `ingest` is the one path
//! that stores what they produce through the node's FHIR service, and
//! `dead_letters` keeps what could not be stored. `mllp` is the TCP listener's
//! framing.

pub mod csv;
pub mod dead_letters;
pub mod hl7v2;
pub mod ingest;
pub mod mllp;

pub use dead_letters::{DeadLetter, DeadLetters};
pub use ingest::{Feeds, MessageResult, Source};

/// Text from bytes: UTF-8 (without a byte-order mark), or else ISO 8859-1, the
/// default character set of HL7 v2 in the UK (every byte is a character).
pub fn decode_text(body: &[u8]) -> String {
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    match std::str::from_utf8(body) {
        Ok(s) => s.to_string(),
        Err(_) => body.iter().map(|&b| b as char).collect(),
    }
}
