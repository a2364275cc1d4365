//! Pennine: a FHIR R4 interoperability gateway for a federated learning health system.
//!
//! See ARCHITECTURE.md for the map of modules and the invariants between them.

pub mod audit;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod federation;
pub mod feeds;
pub mod fhir;
pub mod fhirpath;
pub mod http;
pub mod hub;
pub mod node;
pub mod pathways;
pub mod profiles;
pub mod search;
pub mod startup;
pub mod store;
pub mod tls;
pub mod validation;
pub mod views;
pub mod web;
