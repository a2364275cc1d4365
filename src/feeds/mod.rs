//! Regional feeds that are not FHIR: HL7 v2 (ER7 over HTTP and MLLP) and, later,
//! CSV extracts. Translation is pure; transports live beside it.
//!
//! Status: the ER7 parser and the MLLP frame decoder are in place and tested;
//! translation to FHIR, the transports and dead letters are not built yet (issue 3).

pub mod hl7v2;
pub mod mllp;
