//! Pennine: a FHIR R4 interoperability gateway for a federated learning health system.
//!
//! See ARCHITECTURE.md for the map of modules and the invariants between them.

pub mod fhir;
pub mod fhirpath;
pub mod search;
pub mod node;
pub mod store;
pub mod cli;
pub mod config;
pub mod http;
