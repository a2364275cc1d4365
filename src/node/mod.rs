//! The regional node's FHIR service: the interactions of the RESTful API
//! (create, read, update, delete, history, search, batch and transaction) on
//! top of any `Store`. It knows FHIR semantics and nothing about HTTP or SQL.

pub mod analytics;
pub mod audit;
mod bundle;
mod capability;
mod crud;
mod error;
mod prepare;
mod searchset;

pub use bundle::{response_bundle, BundleKind, BundleOutcome, Entry, EntryRequest, EntryResult};
pub use capability::capability_statement;
pub use crud::{Conditional, WriteOutcome, WriteResult};
pub use error::Error;
pub use prepare::Prepared;
pub use searchset::SearchContext;

use crate::search::Registry;
use crate::store::Store;
use std::sync::Arc;

/// Settings of the FHIR service (a part of the node's configuration).
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Page size when a search gives no `_count`.
    pub default_count: usize,
    /// Largest page a client may ask for.
    pub max_count: usize,
    /// Most matches a search materialises for paging (and counts exactly).
    pub max_results: usize,
    /// Check every written resource against the R4 structure model.
    pub structural_check: bool,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            default_count: 20,
            max_count: 1000,
            max_results: 100_000,
            structural_check: true,
        }
    }
}

/// One regional node's FHIR service. Cheap to share: everything inside is `Arc`.
#[derive(Clone)]
pub struct FhirService {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub settings: Arc<ServiceSettings>,
    pub views: Arc<analytics::ViewCache>,
}

impl FhirService {
    pub fn new(store: Arc<dyn Store>, registry: Arc<Registry>, settings: ServiceSettings) -> FhirService {
        FhirService {
            store,
            registry,
            settings: Arc::new(settings),
            views: Arc::default(),
        }
    }
}
