//! Node and hub configuration. Each setting is declared once, in `NodeSettings` or
//! `HubSettings`, which the TOML file, the environment (`PENNINE_*`) and the flags all
//! fill (flags and environment over the file); `NodeConfig::load` and `HubConfig::load`
//! validate them once into typed configurations.

use crate::federation::Disclosure;
use crate::node::ServiceSettings;
use crate::tls::TlsFiles;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// How the web view shows other providers on a benchmark (`benchmark_labels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BenchmarkLabels {
    #[default]
    Named,
    Anonymous,
}

/// A region slug such as `nenc`: lower-case letters, digits and dashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Region(String);

impl Region {
    pub fn parse(s: &str) -> Result<Region, ConfigError> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Region(s.to_string()))
        } else {
            Err(ConfigError::Invalid(format!(
                "region '{s}' must be a slug: lower-case letters, digits and '-', starting with a letter (e.g. nenc)"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    Read { path: String, message: String },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Declares a settings struct once, with every field optional, and `over`, which
/// keeps `self`'s values where given and takes `under`'s elsewhere. The same
/// struct is filled by the config file (serde, snake_case keys), the environment
/// (`PENNINE_*`) and the flags (clap, `--kebab-case`): a setting is one field here.
macro_rules! layered_settings {
    ($(#[$m:meta])* pub struct $name:ident { $( $(#[$fm:meta])* pub $field:ident : Option<$ty:ty>, )* }) => {
        $(#[$m])*
        pub struct $name { $( $(#[$fm])* pub $field: Option<$ty>, )* }

        impl $name {
            /// `self`'s values where given, `under`'s elsewhere (flags and environment over the file).
            pub fn over(self, under: $name) -> $name {
                $name { $( $field: self.$field.or(under.$field), )* }
            }
        }
    };
}

layered_settings! {
    /// Every setting of `pennine node`.
    #[derive(Debug, Default, Clone, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct NodeSettings {
        /// Region slug (nenc, yh, gm, nwc, ...).
        #[arg(long, env = "PENNINE_REGION")]
        pub region: Option<String>,
        /// Address to listen on, host:port (port 0 picks a free port; default 127.0.0.1:8080).
        #[arg(long, env = "PENNINE_LISTEN")]
        pub listen: Option<String>,
        /// Data folder for the embedded store (and the token key, the record-key secret).
        #[arg(long, env = "PENNINE_DATA")]
        pub data: Option<PathBuf>,
        /// Public base URL when behind a proxy (links and Location headers use it).
        #[arg(long, env = "PENNINE_PUBLIC_URL")]
        pub public_url: Option<String>,
        /// Largest request body accepted, in bytes (default 64 MiB).
        #[arg(long, env = "PENNINE_MAX_BODY_BYTES")]
        pub max_body_bytes: Option<usize>,
        /// Bytes of open dead letters kept whole per sender (default 64 MiB); past them a
        /// letter keeps only its first 4 KiB.
        #[arg(long, env = "PENNINE_DEAD_LETTER_QUOTA_BYTES")]
        pub dead_letter_quota_bytes: Option<usize>,
        /// HTTP worker threads (default: one per core).
        #[arg(long, env = "PENNINE_WORKERS")]
        pub workers: Option<usize>,
        /// Page size when a search gives no _count (default 20).
        #[arg(long, env = "PENNINE_DEFAULT_COUNT")]
        pub default_count: Option<usize>,
        /// Largest page a client may ask for.
        #[arg(long, env = "PENNINE_MAX_COUNT")]
        pub max_count: Option<usize>,
        /// Most matches a search materialises for paging.
        #[arg(long, env = "PENNINE_MAX_RESULTS")]
        pub max_results: Option<usize>,
        /// Rows a view may produce over the node's data ($run, federated aggregates).
        #[arg(long, env = "PENNINE_MAX_VIEW_ROWS")]
        pub max_view_rows: Option<usize>,
        /// Seconds a view may take over the node's data.
        #[arg(long, env = "PENNINE_MAX_VIEW_SECONDS")]
        pub max_view_seconds: Option<u64>,
        /// Validate every written resource (true, the default, or false).
        #[arg(long, env = "PENNINE_STRUCTURAL_CHECK")]
        pub structural_check: Option<bool>,
        /// PostgreSQL URL (postgres://...); without it the node uses the embedded store in --data.
        #[arg(long, env = "PENNINE_DATABASE")]
        pub database: Option<String>,
        /// PostgreSQL schema for this node's tables (default pennine_<region>).
        #[arg(long, env = "PENNINE_DATABASE_SCHEMA")]
        pub database_schema: Option<String>,
        /// PostgreSQL connections in the pool (default 8, at least 2).
        #[arg(long, env = "PENNINE_DATABASE_POOL")]
        pub database_pool: Option<usize>,
        /// Folder written by `pennine dev-certs`: serve HTTPS with <region>.pem, <region>-key.pem and ca.pem.
        #[arg(long, env = "PENNINE_TLS_DIR")]
        pub tls_dir: Option<PathBuf>,
        /// Certificate chain (PEM) to serve HTTPS with.
        #[arg(long, env = "PENNINE_TLS_CERT")]
        pub tls_cert: Option<PathBuf>,
        /// Private key (PEM) of --tls-cert.
        #[arg(long, env = "PENNINE_TLS_KEY")]
        pub tls_key: Option<PathBuf>,
        /// CA certificate (PEM) that signs the hub's certificate.
        #[arg(long, env = "PENNINE_TLS_CA")]
        pub tls_ca: Option<PathBuf>,
        /// Smallest count this node lets the hub release (federation queries asking less are refused).
        #[arg(long, env = "PENNINE_MIN_CELL")]
        pub min_cell: Option<u64>,
        /// Rounding base for released counts that this node requires at least.
        #[arg(long, env = "PENNINE_ROUNDING")]
        pub rounding: Option<u64>,
        /// Least count perturbation this node requires of the hub (default 2; 0 allows exact counts).
        #[arg(long, env = "PENNINE_NOISE")]
        pub noise: Option<u64>,
        /// Registered clients (TOML); without it every protected route is closed.
        #[arg(long, env = "PENNINE_CLIENTS")]
        pub clients: Option<PathBuf>,
        /// Also accept HL7 v2 over MLLP on this address (host:port); each message is acknowledged after it is stored.
        #[arg(long, env = "PENNINE_MLLP")]
        pub mllp: Option<String>,
        /// Seconds an MLLP sender may take to finish a frame it started (default 30).
        #[arg(long, env = "PENNINE_MLLP_FRAME_SECONDS")]
        pub mllp_frame_seconds: Option<u64>,
        /// Seconds an MLLP connection may stay silent between messages (default 600).
        #[arg(long, env = "PENNINE_MLLP_IDLE_SECONDS")]
        pub mllp_idle_seconds: Option<u64>,
        /// MLLP connections open at once from one address (default 32).
        #[arg(long, env = "PENNINE_MLLP_PER_PEER")]
        pub mllp_per_peer: Option<usize>,
        /// Folder of regional profiles (StructureDefinitions, ValueSets, CodeSystems, a CapabilityStatement);
        /// default: the set built into the binary. A broken profile stops the node at start-up.
        #[arg(long, env = "PENNINE_PROFILES")]
        pub profiles: Option<PathBuf>,
        /// Folder of pathways (Measure + rules files and their valuesets.json); default: the
        /// set built into the binary. A broken pathway stops the node at start-up.
        #[arg(long, env = "PENNINE_PATHWAYS")]
        pub pathways: Option<PathBuf>,
        /// What errors against the regional profiles do: flag (accept and report; the default) or reject.
        #[arg(long, env = "PENNINE_PROFILE_POLICY")]
        pub profile_policy: Option<String>,
        /// Reject writes with errors against this profile (url, name or resource type); repeatable.
        #[arg(long = "reject-profile")]
        pub reject_profile: Option<Vec<String>>,
        /// Per-profile policy (config file only): profile url, name or resource type → "flag" | "reject".
        #[arg(skip)]
        pub profile_rules: Option<std::collections::HashMap<String, String>>,
    }
}

layered_settings! {
    /// Every setting of `pennine hub`.
    #[derive(Debug, Default, Clone, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct HubSettings {
        /// Address to listen on, host:port (default 127.0.0.1:8400).
        #[arg(long, env = "PENNINE_LISTEN")]
        pub listen: Option<String>,
        /// A regional node: region=url (repeat for each region), e.g. --node nenc=https://127.0.0.1:8443.
        #[arg(long = "node", value_name = "REGION=URL")]
        pub node: Option<Vec<String>>,
        /// Data folder for the hub's audit trail.
        #[arg(long, env = "PENNINE_DATA")]
        pub data: Option<PathBuf>,
        /// PostgreSQL URL: the audit trail and what several hub processes must agree on
        /// (rate limits, used assertion ids, failed secrets) go there instead of --data.
        #[arg(long, env = "PENNINE_DATABASE")]
        pub database: Option<String>,
        /// PostgreSQL schema for the hub (default pennine_hub; the trail is in <schema>_audit).
        #[arg(long, env = "PENNINE_DATABASE_SCHEMA")]
        pub database_schema: Option<String>,
        /// Public base URL when behind a proxy.
        #[arg(long, env = "PENNINE_PUBLIC_URL")]
        pub public_url: Option<String>,
        /// HTTP worker threads (default: one per core).
        #[arg(long, env = "PENNINE_WORKERS")]
        pub workers: Option<usize>,
        /// Deadline for each node call, in milliseconds (default 5000).
        #[arg(long, env = "PENNINE_DEADLINE_MS")]
        pub deadline_ms: Option<u64>,
        /// Counts from 1 to min-cell - 1 are withheld (default 10).
        #[arg(long, env = "PENNINE_MIN_CELL")]
        pub min_cell: Option<u64>,
        /// Released counts are rounded to the nearest multiple (default 5).
        #[arg(long, env = "PENNINE_ROUNDING")]
        pub rounding: Option<u64>,
        /// Largest perturbation of released counts, from each cell's own records (default 2; 0 switches noise off).
        #[arg(long, env = "PENNINE_NOISE")]
        pub noise: Option<u64>,
        /// Pooled rows need at least this many answering regions (default 3).
        #[arg(long, env = "PENNINE_MIN_REGIONS")]
        pub min_regions: Option<usize>,
        /// Folder written by `pennine dev-certs`: serve HTTPS with hub.pem, hub-key.pem and ca.pem.
        #[arg(long, env = "PENNINE_TLS_DIR")]
        pub tls_dir: Option<PathBuf>,
        /// Certificate chain (PEM) to serve HTTPS with (and present to the nodes).
        #[arg(long, env = "PENNINE_TLS_CERT")]
        pub tls_cert: Option<PathBuf>,
        /// Private key (PEM) of --tls-cert.
        #[arg(long, env = "PENNINE_TLS_KEY")]
        pub tls_key: Option<PathBuf>,
        /// CA certificate (PEM) that signs the nodes' certificates.
        #[arg(long, env = "PENNINE_TLS_CA")]
        pub tls_ca: Option<PathBuf>,
        /// Registered clients (TOML); without it every protected route is closed.
        #[arg(long, env = "PENNINE_CLIENTS")]
        pub clients: Option<PathBuf>,
        /// Aggregate questions per client per minute (default 30).
        #[arg(long, env = "PENNINE_AGGREGATE_RATE")]
        pub aggregate_rate: Option<u32>,
        /// How long an identical question gets the same released answer, in seconds (default 60).
        #[arg(long, env = "PENNINE_ANSWER_CACHE_SECONDS")]
        pub answer_cache_seconds: Option<u64>,
        /// Folder of pathways (default: the set built into the binary); every node must run
        /// the same versions.
        #[arg(long, env = "PENNINE_PATHWAYS")]
        pub pathways: Option<PathBuf>,
        /// How the web view shows other providers on a benchmark: named (default) or
        /// anonymous (letters; a clinician's own provider is always named).
        #[arg(long, env = "PENNINE_BENCHMARK_LABELS")]
        pub benchmark_labels: Option<String>,
        /// OpenID Connect sign-in for the web view: the identity provider's issuer URL
        /// (https://, or http:// on a loopback address for tests).
        #[arg(long, env = "PENNINE_OIDC_ISSUER")]
        pub oidc_issuer: Option<String>,
        /// The hub's client id at the identity provider.
        #[arg(long, env = "PENNINE_OIDC_CLIENT_ID")]
        pub oidc_client_id: Option<String>,
        /// The hub's client secret at the identity provider (prefer the environment to a flag).
        #[arg(long, env = "PENNINE_OIDC_CLIENT_SECRET", hide_env_values = true)]
        pub oidc_client_secret: Option<String>,
        /// Scopes asked for (default "openid profile").
        #[arg(long, env = "PENNINE_OIDC_SCOPES")]
        pub oidc_scopes: Option<String>,
        /// Claim holding the person's roles, a list or space-separated (default "roles";
        /// a dotted path such as realm_access.roles reaches into objects).
        #[arg(long, env = "PENNINE_OIDC_ROLES_CLAIM")]
        pub oidc_roles_claim: Option<String>,
        /// Claim holding the person's region (default "region").
        #[arg(long, env = "PENNINE_OIDC_REGION_CLAIM")]
        pub oidc_region_claim: Option<String>,
        /// Claim holding the ODS code of the person's provider (default "provider").
        #[arg(long, env = "PENNINE_OIDC_PROVIDER_CLAIM")]
        pub oidc_provider_claim: Option<String>,
        /// The sign-in button's wording (default "Sign in with your organisation").
        #[arg(long, env = "PENNINE_OIDC_LABEL")]
        pub oidc_label: Option<String>,
        /// CA certificate (PEM) to trust for the identity provider besides the public roots.
        #[arg(long, env = "PENNINE_OIDC_CA")]
        pub oidc_ca: Option<PathBuf>,
    }
}

/// The files to serve with, if any: explicit files win over a `dev-certs` folder
/// (where `name` picks `<name>.pem` and `<name>-key.pem`).
fn tls_files(
    dir: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    name: &str,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key, dir) {
        (Some(cert), Some(key), _) => Ok(Some(TlsFiles { cert, key, ca })),
        (Some(_), None, _) | (None, Some(_), _) => Err(ConfigError::Invalid(
            "tls_cert and tls_key go together: give both (or --tls-dir)".into(),
        )),
        (None, None, Some(dir)) => {
            let mut files = TlsFiles::in_dir(&dir, name);
            if ca.is_some() {
                files.ca = ca;
            }
            Ok(Some(files))
        }
        (None, None, None) if ca.is_some() => Err(ConfigError::Invalid(
            "tls_ca needs a certificate to serve with: give tls_cert and tls_key (or --tls-dir)".into(),
        )),
        (None, None, None) => Ok(None),
    }
}

/// Disclosure settings from flags or a file, over the defaults.
pub fn disclosure(
    min_cell: Option<u64>,
    rounding: Option<u64>,
    noise: Option<u64>,
    min_regions: Option<usize>,
) -> Result<Disclosure, ConfigError> {
    let d = Disclosure::default();
    let d = Disclosure {
        min_cell: min_cell.unwrap_or(d.min_cell),
        rounding: rounding.unwrap_or(d.rounding),
        noise: noise.unwrap_or(d.noise),
        min_regions: min_regions.unwrap_or(d.min_regions),
    };
    if d.noise >= d.min_cell.max(2) {
        return Err(ConfigError::Invalid(format!(
            "noise ({}) must be smaller than min_cell ({})",
            d.noise, d.min_cell
        )));
    }
    if d.min_cell == 0 || d.rounding == 0 || d.min_regions == 0 {
        return Err(ConfigError::Invalid(
            "min_cell, rounding and min_regions must be at least 1".into(),
        ));
    }
    Ok(d)
}

/// Where a node keeps its data.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// The embedded SQLite file in the data folder (the default).
    Embedded,
    /// A PostgreSQL database; `schema` holds the node's tables.
    Postgres { url: String, schema: String, pool: usize },
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub region: Region,
    pub listen: String,
    pub data: PathBuf,
    /// The public FHIR base URL, when the node sits behind a proxy.
    pub public_url: Option<String>,
    pub max_body_bytes: usize,
    /// Bytes of open dead letters kept whole per sender.
    pub dead_letter_quota: usize,
    pub workers: usize,
    pub storage: StorageConfig,
    pub service: ServiceSettings,
    /// HTTPS with these files; plain HTTP without.
    pub tls: Option<TlsFiles>,
    /// The node's own disclosure floor: it refuses federation queries asking for less.
    pub disclosure: Disclosure,
    /// The registered clients; without them every protected route is closed.
    pub clients: Option<PathBuf>,
    /// Where to listen for HL7 v2 over MLLP (host:port), if at all.
    pub mllp: Option<String>,
    /// How long MLLP senders may take and how many connections each may hold.
    pub mllp_limits: crate::feeds::mllp::Limits,
}

impl NodeConfig {
    /// A configuration for tests and the demo: everything default.
    pub fn local(region: &str, data: &Path) -> NodeConfig {
        NodeConfig {
            region: Region::parse(region).expect("a valid slug"),
            listen: "127.0.0.1:0".into(),
            data: data.to_path_buf(),
            public_url: None,
            max_body_bytes: 64 * 1024 * 1024,
            dead_letter_quota: crate::feeds::dead_letters::QUOTA_BYTES,
            workers: 2,
            storage: StorageConfig::Embedded,
            service: ServiceSettings::default(),
            tls: None,
            disclosure: Disclosure::default(),
            clients: None,
            mllp: None,
            mllp_limits: crate::feeds::mllp::Limits::default(),
        }
    }

    /// The settings given (flags and environment) over those of `file`, validated.
    pub fn load(file: Option<&Path>, given: NodeSettings) -> Result<NodeConfig, ConfigError> {
        let s = given.over(read_file(file)?);
        let region = s
            .region
            .ok_or_else(|| ConfigError::Invalid("a region is required: --region <slug> (e.g. nenc)".into()))?;
        let listen = s.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
        check_listen(&listen)?;
        let storage = storage(
            s.database,
            s.database_schema
                .unwrap_or_else(|| format!("pennine_{}", region.replace('-', "_"))),
            s.database_pool.unwrap_or(8).max(2),
        )?;
        let data = match (s.data, &storage) {
            (Some(d), _) => d,
            (None, StorageConfig::Postgres { .. }) => PathBuf::from("."),
            (None, StorageConfig::Embedded) => {
                return Err(ConfigError::Invalid("a data folder is required: --data <dir>".into()))
            }
        };
        let defaults = ServiceSettings::default();
        let service = ServiceSettings {
            default_count: s.default_count.unwrap_or(defaults.default_count),
            max_count: s.max_count.unwrap_or(defaults.max_count),
            max_results: s.max_results.unwrap_or(defaults.max_results),
            max_view_rows: s.max_view_rows.unwrap_or(defaults.max_view_rows).max(1),
            max_view_seconds: s.max_view_seconds.unwrap_or(defaults.max_view_seconds).max(1),
            structural_check: s.structural_check.unwrap_or(defaults.structural_check),
            profile_policy: {
                let mut p = crate::node::ProfilePolicy::default();
                if let Some(d) = s.profile_policy.as_deref() {
                    p.default = crate::node::PolicyMode::parse(d).map_err(ConfigError::Invalid)?;
                }
                for (k, v) in s.profile_rules.iter().flatten() {
                    p.rules.insert(
                        k.clone(),
                        crate::node::PolicyMode::parse(v).map_err(ConfigError::Invalid)?,
                    );
                }
                for k in s.reject_profile.iter().flatten() {
                    p.rules.insert(k.clone(), crate::node::PolicyMode::Reject);
                }
                p
            },
            profiles_dir: s.profiles,
            pathways_dir: s.pathways,
        };
        if service.default_count == 0 || service.default_count > service.max_count {
            return Err(ConfigError::Invalid(format!(
                "default_count ({}) must be between 1 and max_count ({})",
                service.default_count, service.max_count
            )));
        }
        let max_body_bytes = s.max_body_bytes.unwrap_or(64 * 1024 * 1024);
        if max_body_bytes < 1024 {
            return Err(ConfigError::Invalid("max_body_bytes must be at least 1024".into()));
        }
        let dead_letter_quota = s
            .dead_letter_quota_bytes
            .unwrap_or(crate::feeds::dead_letters::QUOTA_BYTES);
        let workers = s.workers.unwrap_or_else(default_workers);
        if workers == 0 {
            return Err(ConfigError::Invalid("workers must be at least 1".into()));
        }
        let public_url = s.public_url;
        if let Some(u) = &public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "public_url '{u}' must start with http:// or https://"
                )));
            }
        }
        let region = Region::parse(&region)?;
        let tls = tls_files(s.tls_dir, s.tls_cert, s.tls_key, s.tls_ca, region.as_str())?;
        let disclosure = disclosure(s.min_cell, s.rounding, s.noise, None)?;
        Ok(NodeConfig {
            region,
            listen,
            data,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_string()),
            max_body_bytes,
            dead_letter_quota,
            workers,
            storage,
            service,
            tls,
            disclosure,
            clients: s.clients,
            mllp: match s.mllp {
                Some(m) => {
                    check_listen(&m)?;
                    Some(m)
                }
                None => None,
            },
            mllp_limits: {
                let d = crate::feeds::mllp::Limits::default();
                let limits = crate::feeds::mllp::Limits {
                    frame: s.mllp_frame_seconds.map_or(d.frame, std::time::Duration::from_secs),
                    idle: s.mllp_idle_seconds.map_or(d.idle, std::time::Duration::from_secs),
                    per_peer: s.mllp_per_peer.unwrap_or(d.per_peer),
                };
                if limits.frame.is_zero() || limits.idle.is_zero() || limits.per_peer == 0 {
                    return Err(ConfigError::Invalid(
                        "mllp_frame_seconds, mllp_idle_seconds and mllp_per_peer must be at least 1".into(),
                    ));
                }
                limits
            },
        })
    }
}

/// A validated hub configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub listen: String,
    /// Where the hub keeps its own audit trail.
    pub data: PathBuf,
    /// The embedded store in `data`, or PostgreSQL (shared by several hub processes).
    pub storage: StorageConfig,
    pub public_url: Option<String>,
    /// The regions and their node base URLs (without `/fhir`), in reply order.
    pub nodes: Vec<(Region, String)>,
    pub workers: usize,
    /// How long the hub waits for each node.
    pub deadline: std::time::Duration,
    pub disclosure: Disclosure,
    pub tls: Option<TlsFiles>,
    /// The registered clients; without them every protected route is closed.
    pub clients: Option<PathBuf>,
    /// Aggregate questions (and federated counts) per client per minute.
    pub aggregate_rate: u32,
    /// How long an identical question gets the same released answer.
    pub answer_cache: std::time::Duration,
    /// Where the pathways come from (None: the set built into the binary).
    pub pathways_dir: Option<PathBuf>,
    /// How the web view shows other providers on a benchmark.
    pub benchmark_labels: BenchmarkLabels,
    /// OpenID Connect sign-in for the web view, when configured.
    pub oidc: Option<OidcConfig>,
}

/// The hub's OpenID Connect relying party: who the identity provider is, how the
/// hub is known to it, and which claims say a person's roles, region and provider.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer exactly as its discovery document and ID tokens give it.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: String,
    pub roles_claim: String,
    pub region_claim: String,
    pub provider_claim: String,
    pub label: String,
    pub ca: Option<PathBuf>,
}

impl OidcConfig {
    /// The configuration from the settings, if an issuer is given; every part checked.
    fn from_settings(s: &HubSettings) -> Result<Option<OidcConfig>, ConfigError> {
        let Some(issuer) = s.oidc_issuer.as_deref() else {
            if s.oidc_client_id.is_some() || s.oidc_client_secret.is_some() {
                return Err(ConfigError::Invalid(
                    "oidc_client_id and oidc_client_secret need oidc_issuer".into(),
                ));
            }
            return Ok(None);
        };
        let issuer = issuer.trim().to_string();
        if !secure_or_loopback(&issuer) {
            return Err(ConfigError::Invalid(format!(
                "oidc_issuer '{issuer}' must be an https:// URL (http:// only on a loopback address)"
            )));
        }
        let need = |v: &Option<String>, name: &str| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or_else(|| ConfigError::Invalid(format!("oidc_issuer is set: {name} is needed too")))
        };
        let scopes = s.oidc_scopes.clone().unwrap_or_else(|| "openid profile".into());
        if !scopes.split_whitespace().any(|x| x == "openid") {
            return Err(ConfigError::Invalid(format!(
                "oidc_scopes '{scopes}' must include openid"
            )));
        }
        Ok(Some(OidcConfig {
            issuer,
            client_id: need(&s.oidc_client_id, "oidc_client_id")?,
            client_secret: need(&s.oidc_client_secret, "oidc_client_secret")?,
            scopes,
            roles_claim: s.oidc_roles_claim.clone().unwrap_or_else(|| "roles".into()),
            region_claim: s.oidc_region_claim.clone().unwrap_or_else(|| "region".into()),
            provider_claim: s.oidc_provider_claim.clone().unwrap_or_else(|| "provider".into()),
            label: s
                .oidc_label
                .clone()
                .unwrap_or_else(|| "Sign in with your organisation".into()),
            ca: s.oidc_ca.clone(),
        }))
    }
}

/// Whether `url` is https://, or http:// to a loopback host (tests, a provider on the same machine).
pub fn secure_or_loopback(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl HubConfig {
    /// A configuration for tests and the demo.
    pub fn local(data: &Path, nodes: Vec<(Region, String)>, tls: Option<TlsFiles>) -> HubConfig {
        HubConfig {
            listen: "127.0.0.1:0".into(),
            data: data.to_path_buf(),
            storage: StorageConfig::Embedded,
            public_url: None,
            nodes,
            workers: 2,
            deadline: std::time::Duration::from_secs(5),
            disclosure: Disclosure::default(),
            tls,
            clients: None,
            aggregate_rate: 30,
            answer_cache: std::time::Duration::from_secs(60),
            pathways_dir: None,
            benchmark_labels: BenchmarkLabels::Named,
            oidc: None,
        }
    }
}

/// The embedded store, or PostgreSQL at `database` in `schema`.
fn storage(database: Option<String>, schema: String, pool: usize) -> Result<StorageConfig, ConfigError> {
    match database {
        None => Ok(StorageConfig::Embedded),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            if !crate::store::postgres::valid_schema(&schema) {
                return Err(ConfigError::Invalid(format!(
                    "database_schema '{schema}' must be lower-case letters, digits and '_'"
                )));
            }
            Ok(StorageConfig::Postgres { url, schema, pool })
        }
        Some(_) => Err(ConfigError::Invalid(
            "database must be a postgres:// URL (leave it out for the embedded store)".into(),
        )),
    }
}

/// A config file's keys, or all defaults without a file.
fn read_file<T: serde::de::DeserializeOwned + Default>(file: Option<&Path>) -> Result<T, ConfigError> {
    let Some(p) = file else { return Ok(T::default()) };
    let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
        path: p.display().to_string(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: p.display().to_string(),
        message: e.to_string(),
    })
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn check_listen(listen: &str) -> Result<(), ConfigError> {
    if listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        return Err(ConfigError::Invalid(format!(
            "listen address '{listen}' must be host:port"
        )));
    }
    Ok(())
}

/// Parses `region=url`.
pub fn parse_node(spec: &str) -> Result<(Region, String), ConfigError> {
    let (region, url) = spec.split_once('=').ok_or_else(|| {
        ConfigError::Invalid(format!(
            "--node '{spec}' must be region=url (e.g. nenc=https://127.0.0.1:8443)"
        ))
    })?;
    let region = Region::parse(region.trim())?;
    let url = url.trim().trim_end_matches('/');
    let url = url.strip_suffix("/fhir").unwrap_or(url);
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::Invalid(format!(
            "node URL '{url}' for {region} must start with https:// (or http://)"
        )));
    }
    Ok((region, url.to_string()))
}

impl HubConfig {
    /// The settings given (flags and environment) over those of `file`, validated.
    pub fn load(file: Option<&Path>, given: HubSettings) -> Result<HubConfig, ConfigError> {
        let s = given.over(read_file(file)?);
        let oidc = OidcConfig::from_settings(&s)?;
        let listen = s.listen.unwrap_or_else(|| "127.0.0.1:8400".into());
        check_listen(&listen)?;
        let specs = s.node.unwrap_or_default();
        let mut nodes: Vec<(Region, String)> = Vec::new();
        for spec in &specs {
            let (region, url) = parse_node(spec)?;
            if nodes.iter().any(|(r, _)| *r == region) {
                return Err(ConfigError::Invalid(format!("region {region} is given twice")));
            }
            nodes.push((region, url));
        }
        if nodes.is_empty() {
            return Err(ConfigError::Invalid(
                "the hub needs its nodes: --node nenc=https://... --node yh=https://... (one per region)".into(),
            ));
        }
        let tls = tls_files(s.tls_dir, s.tls_cert, s.tls_key, s.tls_ca, "hub")?;
        if tls.is_none() && nodes.iter().any(|(_, u)| u.starts_with("https://")) {
            return Err(ConfigError::Invalid(
                "the nodes are https:// but the hub has no certificate to authenticate with: give --tls-dir (or --tls-cert, --tls-key, --tls-ca)".into(),
            ));
        }
        let deadline_ms = s.deadline_ms.unwrap_or(5000);
        if deadline_ms == 0 {
            return Err(ConfigError::Invalid("deadline_ms must be at least 1".into()));
        }
        let workers = s.workers.unwrap_or_else(default_workers);
        let data = s.data.ok_or_else(|| {
            ConfigError::Invalid("a data folder for the hub's audit trail is required: --data <dir>".into())
        })?;
        let storage = storage(s.database, s.database_schema.unwrap_or_else(|| "pennine_hub".into()), 2)?;
        Ok(HubConfig {
            listen,
            data,
            storage,
            public_url: s.public_url.map(|u| u.trim_end_matches('/').to_string()),
            nodes,
            workers: workers.max(1),
            deadline: std::time::Duration::from_millis(deadline_ms),
            disclosure: disclosure(s.min_cell, s.rounding, s.noise, s.min_regions)?,
            tls,
            clients: s.clients,
            aggregate_rate: match s.aggregate_rate.unwrap_or(30) {
                0 => {
                    return Err(ConfigError::Invalid(
                        "aggregate_rate must be at least 1 per minute".into(),
                    ))
                }
                n => n,
            },
            answer_cache: std::time::Duration::from_secs(s.answer_cache_seconds.unwrap_or(60)),
            pathways_dir: s.pathways,
            benchmark_labels: match s.benchmark_labels.as_deref() {
                None | Some("named") => BenchmarkLabels::Named,
                Some("anonymous") => BenchmarkLabels::Anonymous,
                Some(other) => {
                    return Err(ConfigError::Invalid(format!(
                        "benchmark_labels '{other}': give named or anonymous"
                    )))
                }
            },
            oidc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_bad_values_fail() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "region = \"yh\"\nlisten = \"127.0.0.1:9000\"\ndata = \"/tmp/x\"\n",
        )
        .unwrap();
        let c = NodeConfig::load(
            Some(&file),
            NodeSettings {
                region: Some("gm".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.region.as_str(), "gm");
        assert_eq!(c.listen, "127.0.0.1:9000");
        std::fs::write(&file, "region = \"yh\"\nbogus = 1\n").unwrap();
        let e = NodeConfig::load(Some(&file), NodeSettings::default()).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(Region::parse("North East").is_err());
        let e = NodeConfig::load(
            None,
            NodeSettings {
                region: Some("nenc".into()),
                data: Some("/tmp/x".into()),
                listen: Some("nowhere".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("host:port"));
    }

    #[test]
    fn profile_policy_from_file_and_flags() {
        use crate::node::PolicyMode;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "region = \"yh\"\ndata = \"/tmp/x\"\nprofiles = \"/etc/pennine/profiles\"\nprofile_policy = \"reject\"\n\
             [profile_rules]\nPennineObservation = \"flag\"\n",
        )
        .unwrap();
        let c = NodeConfig::load(
            Some(&file),
            NodeSettings {
                reject_profile: Some(vec!["Encounter".into()]),
                ..Default::default()
            },
        )
        .unwrap();
        let p = &c.service.profile_policy;
        assert_eq!(p.default, PolicyMode::Reject);
        assert_eq!(p.rules["PennineObservation"], PolicyMode::Flag);
        assert_eq!(p.rules["Encounter"], PolicyMode::Reject);
        assert_eq!(
            c.service.profiles_dir.as_deref(),
            Some(Path::new("/etc/pennine/profiles"))
        );
        std::fs::write(
            &file,
            "region = \"yh\"\ndata = \"/tmp/x\"\nprofile_policy = \"maybe\"\n",
        )
        .unwrap();
        let e = NodeConfig::load(Some(&file), NodeSettings::default()).unwrap_err();
        assert!(e.to_string().contains("'maybe'"), "{e}");
    }
}
