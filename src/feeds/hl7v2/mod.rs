//! HL7 v2: parsing (ER7) now; translation into FHIR R4 to follow.

pub mod er7;
