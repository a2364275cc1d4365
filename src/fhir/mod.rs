//! The FHIR R4 domain: definitions the node carries, resource identity,
//! OperationOutcome, FHIR date arithmetic and the structural check. No I/O.

pub mod choice;
pub mod definitions;
pub mod icd10;
pub mod json;
pub mod model;
pub mod nhs;
pub mod outcome;
pub mod refs;
pub mod time;
pub mod types;

pub use outcome::{Issue, IssueCode, Severity};
pub use types::{Id, Identifier, ResourceType};

/// The FHIR version this node speaks.
pub const FHIR_VERSION: &str = "4.0.1";

/// Whether `id` matches the FHIR `id` datatype: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Whether `name` is a concrete R4 resource type.
pub fn is_resource_type(name: &str) -> bool {
    definitions::get().resource_types.contains(name)
}
