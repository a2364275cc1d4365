//! The regional node's FHIR service: the interactions of the RESTful API
//! (create, read, update, delete, history, search, batch and transaction) on
//! top of any `Store`. It knows FHIR semantics and nothing about HTTP or SQL.

pub mod analytics;
mod builtin;
mod bundle;
mod capability;
mod crud;
pub mod pathways;
mod prepare;
pub mod quality;
pub mod regress;
mod searchset;

use crate::error::Error;
pub use bundle::{response_bundle, BundleKind, BundleOutcome, Entry, EntryRequest, EntryResult};
pub use capability::{capability_statement, smart_security};
pub use crud::{Conditional, Found, WriteOutcome, WriteResult};
pub use prepare::{Checked, Prepared};
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
    /// Validate every written resource (R4 base definitions and regional profiles).
    pub structural_check: bool,
    /// What errors against the regional profiles do.
    pub profile_policy: ProfilePolicy,
    /// Where the regional profiles come from (None: the set built into the binary).
    pub profiles_dir: Option<std::path::PathBuf>,
    /// Where the pathways come from (None: the set built into the binary).
    pub pathways_dir: Option<std::path::PathBuf>,
    /// The evaluation budget of a view (`$run`, federated aggregates): rows it
    /// may produce over the node's data, and seconds it may take.
    pub max_view_rows: usize,
    pub max_view_seconds: u64,
}

/// Whether a profile's errors reject a write or are accepted and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    Flag,
    Reject,
}

impl PolicyMode {
    pub fn parse(s: &str) -> Result<PolicyMode, String> {
        match s {
            "flag" => Ok(PolicyMode::Flag),
            "reject" => Ok(PolicyMode::Reject),
            other => Err(format!("profile policy '{other}' must be 'flag' or 'reject'")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Flag => "flag",
            PolicyMode::Reject => "reject",
        }
    }
}

/// The node's policy per profile: rules by profile url, name or resource type, else the default.
#[derive(Debug, Clone)]
pub struct ProfilePolicy {
    pub default: PolicyMode,
    pub rules: std::collections::HashMap<String, PolicyMode>,
}

impl Default for ProfilePolicy {
    fn default() -> Self {
        ProfilePolicy {
            default: PolicyMode::Flag,
            rules: Default::default(),
        }
    }
}

impl ProfilePolicy {
    pub fn mode(&self, p: &crate::profiles::Profile) -> PolicyMode {
        [p.url.as_str(), p.name.as_str(), p.type_name.as_str()]
            .iter()
            .find_map(|k| self.rules.get(*k).copied())
            .unwrap_or(self.default)
    }
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            default_count: 20,
            max_count: 1000,
            max_results: 100_000,
            max_view_rows: 10_000_000,
            max_view_seconds: 60,
            structural_check: true,
            profile_policy: ProfilePolicy::default(),
            profiles_dir: None,
            pathways_dir: None,
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
    /// The regional profiles this node enforces.
    pub profiles: Arc<crate::profiles::ProfileSet>,
    /// Data-quality figures, updated as data arrives.
    pub quality: Arc<quality::Book>,
    /// The secret behind the record keys of federated answers (cell-key noise).
    pub record_keys: Arc<crate::federation::RecordKeys>,
    /// The pathways this node runs (`profiles/pathways`, or `--pathways`).
    pub pathways: Arc<crate::pathways::Library>,
    /// The node's episodes as of a store change marker (`pathways::episodes`).
    episodes: Arc<std::sync::Mutex<Option<pathways::CachedEpisodes>>>,
    /// Regressions being fitted here (their rows held for the rounds) and recent fits' rows.
    pub regressions: Arc<regress::Sessions>,
    /// What the node serves without storing it: the pathways' Measures.
    builtins: Arc<builtin::Builtins>,
    /// Who writes through this handle (a client, a feed's sender), for the quality
    /// figures: the write context, set with `for_source`.
    source: Option<Arc<str>>,
}

impl FhirService {
    /// This service, writing on behalf of `source` (`client:<id>`, `hl7v2:<app>|<facility>`, `csv:<mapping>`).
    pub fn for_source(&self, source: &str) -> FhirService {
        FhirService {
            source: Some(source.into()),
            ..self.clone()
        }
    }

    /// Who writes through this handle (`unattributed` when nobody said).
    pub fn source(&self) -> &str {
        self.source.as_deref().unwrap_or("unattributed")
    }

    pub fn new(store: Arc<dyn Store>, registry: Arc<Registry>, settings: ServiceSettings) -> FhirService {
        let pathways = crate::pathways::Library::built_in();
        FhirService {
            builtins: Arc::new(builtin::Builtins::of_pathways(&pathways, &registry)),
            store,
            registry,
            settings: Arc::new(settings),
            views: Arc::default(),
            profiles: built_in_profiles(),
            quality: Arc::default(),
            record_keys: Arc::new(crate::federation::RecordKeys::random()),
            pathways,
            episodes: Arc::default(),
            regressions: Arc::default(),
            source: None,
        }
    }

    /// The same service running these pathways.
    pub fn with_pathways(mut self, pathways: Arc<crate::pathways::Library>) -> FhirService {
        self.builtins = Arc::new(builtin::Builtins::of_pathways(&pathways, &self.registry));
        self.pathways = pathways;
        self
    }

    /// The same service with the node's persistent record-key secret.
    pub fn with_record_keys(mut self, keys: crate::federation::RecordKeys) -> FhirService {
        self.record_keys = Arc::new(keys);
        self
    }

    /// The same service enforcing `profiles` instead of the built-in set.
    pub fn with_profiles(mut self, profiles: Arc<crate::profiles::ProfileSet>) -> FhirService {
        self.profiles = profiles;
        self
    }
}

/// The profile set compiled into the binary, loaded once per process.
pub fn built_in_profiles() -> Arc<crate::profiles::ProfileSet> {
    static SET: std::sync::OnceLock<Arc<crate::profiles::ProfileSet>> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        Arc::new(crate::profiles::ProfileSet::built_in().expect("the built-in profiles load (checked by a test)"))
    })
    .clone()
}

/// The audit trail's store is a FHIR service of its own: events are written
/// through the ordinary write path, so they are indexed and searchable.
impl crate::audit::AuditSink for FhirService {
    fn newest(&self) -> Result<Option<serde_json::Value>, Error> {
        let Some(stored) = self.store.last(crate::fhir::types::AUDIT_EVENT.as_str())? else {
            return Ok(None);
        };
        let Some(json) = stored.json else { return Ok(None) };
        Ok(Some(
            serde_json::from_slice(&json).map_err(crate::store::StoreError::Corrupt)?,
        ))
    }

    fn write_one(&self, event: serde_json::Value) -> Result<(), Error> {
        self.create(crate::fhir::types::AUDIT_EVENT, event, Conditional::None)
            .map(|_| ())
    }

    fn write_batch(&self, events: Vec<serde_json::Value>) -> Result<(), Error> {
        let entries: Vec<serde_json::Value> = events
            .into_iter()
            .map(|e| serde_json::json!({"resource": e, "request": {"method": "POST", "url": "AuditEvent"}}))
            .collect();
        let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        self.process_bundle(&bundle.to_string()).map(|_| ())
    }

    fn close(&self) {
        self.store.close();
    }
}
