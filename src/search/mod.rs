//! FHIR search: the parameter registry, index extraction at write time, and
//! parsing of search queries into typed requests for the store.

pub mod index;
pub mod matcher;
pub mod params;
pub mod query;

pub use index::{extract, IndexRows};
pub use params::{ParamKind, Registry, SearchParam};
pub use query::{parse_query, Condition, QueryError, SearchRequest, Summary};
