//! Node configuration: one struct, loaded from a TOML file, then environment
//! variables, then command-line flags (each overriding the one before), and
//! validated once at start-up.

use crate::federation::Disclosure;
use crate::node::ServiceSettings;
use crate::tls::TlsFiles;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

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

/// The `[node]`-level keys of a config file; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub region: Option<String>,
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub public_url: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub workers: Option<usize>,
    pub default_count: Option<usize>,
    pub max_count: Option<usize>,
    pub max_results: Option<usize>,
    pub max_view_rows: Option<usize>,
    pub max_view_seconds: Option<u64>,
    pub structural_check: Option<bool>,
    pub database: Option<String>,
    pub database_schema: Option<String>,
    pub database_pool: Option<usize>,
    pub tls_dir: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub min_cell: Option<u64>,
    pub rounding: Option<u64>,
    /// Largest perturbation of released counts (cell-key noise); 0 switches it off.
    pub noise: Option<u64>,
    pub clients: Option<PathBuf>,
    pub mllp: Option<String>,
    /// Folder of regional profiles (default: the set built into the binary).
    pub profiles: Option<PathBuf>,
    /// What profile errors do: "flag" (accept and report, the default) or "reject".
    pub profile_policy: Option<String>,
    /// Per-profile policy: profile url, name or resource type → "flag" | "reject".
    #[serde(default)]
    pub profile_rules: std::collections::HashMap<String, String>,
}

/// Values from flags or the environment (clap merges those two).
#[derive(Debug, Default, Clone)]
pub struct NodeOverrides {
    pub region: Option<String>,
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub public_url: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub workers: Option<usize>,
    pub database: Option<String>,
    pub database_schema: Option<String>,
    pub tls: TlsOverrides,
    pub min_cell: Option<u64>,
    pub rounding: Option<u64>,
    /// Largest perturbation of released counts (cell-key noise); 0 switches it off.
    pub noise: Option<u64>,
    pub clients: Option<PathBuf>,
    pub mllp: Option<String>,
    pub profiles: Option<PathBuf>,
    pub profile_policy: Option<String>,
    /// Profiles (url, name or resource type) whose errors reject writes.
    pub reject_profiles: Vec<String>,
}

/// TLS flags, shared by `pennine node` and `pennine hub`.
#[derive(Debug, Default, Clone)]
pub struct TlsOverrides {
    pub dir: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

impl TlsOverrides {
    /// The files to serve with, if any: explicit files win over a `dev-certs` folder
    /// (where `name` picks `<name>.pem` and `<name>-key.pem`).
    pub fn resolve(self, file: TlsOverrides, name: &str) -> Result<Option<TlsFiles>, ConfigError> {
        let dir = self.dir.or(file.dir);
        let cert = self.cert.or(file.cert);
        let key = self.key.or(file.key);
        let ca = self.ca.or(file.ca);
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
            workers: 2,
            storage: StorageConfig::Embedded,
            service: ServiceSettings::default(),
            tls: None,
            disclosure: Disclosure::default(),
            clients: None,
            mllp: None,
        }
    }

    pub fn load(file: Option<&Path>, overrides: NodeOverrides) -> Result<NodeConfig, ConfigError> {
        let from_file: NodeFile = read_file(file)?;
        let region = overrides
            .region
            .or(from_file.region)
            .ok_or_else(|| ConfigError::Invalid("a region is required: --region <slug> (e.g. nenc)".into()))?;
        let listen = overrides
            .listen
            .or(from_file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        check_listen(&listen)?;
        let database = overrides.database.or(from_file.database);
        let storage = match database {
            None => StorageConfig::Embedded,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let schema = overrides
                    .database_schema
                    .or(from_file.database_schema)
                    .unwrap_or_else(|| format!("pennine_{}", region.replace('-', "_")));
                if !crate::store::postgres::valid_schema(&schema) {
                    return Err(ConfigError::Invalid(format!(
                        "database_schema '{schema}' must be lower-case letters, digits and '_'"
                    )));
                }
                StorageConfig::Postgres {
                    url,
                    schema,
                    pool: from_file.database_pool.unwrap_or(8).max(2),
                }
            }
            Some(_) => {
                return Err(ConfigError::Invalid(
                    "database must be a postgres:// URL (leave it out for the embedded store)".into(),
                ))
            }
        };
        let data = match (overrides.data.or(from_file.data), &storage) {
            (Some(d), _) => d,
            (None, StorageConfig::Postgres { .. }) => PathBuf::from("."),
            (None, StorageConfig::Embedded) => {
                return Err(ConfigError::Invalid("a data folder is required: --data <dir>".into()))
            }
        };
        let defaults = ServiceSettings::default();
        let service = ServiceSettings {
            default_count: from_file.default_count.unwrap_or(defaults.default_count),
            max_count: from_file.max_count.unwrap_or(defaults.max_count),
            max_results: from_file.max_results.unwrap_or(defaults.max_results),
            max_view_rows: from_file.max_view_rows.unwrap_or(defaults.max_view_rows).max(1),
            max_view_seconds: from_file.max_view_seconds.unwrap_or(defaults.max_view_seconds).max(1),
            structural_check: from_file.structural_check.unwrap_or(defaults.structural_check),
            profile_policy: {
                let mut p = crate::node::ProfilePolicy::default();
                if let Some(d) = overrides
                    .profile_policy
                    .as_deref()
                    .or(from_file.profile_policy.as_deref())
                {
                    p.default = crate::node::PolicyMode::parse(d).map_err(ConfigError::Invalid)?;
                }
                for (k, v) in &from_file.profile_rules {
                    p.rules.insert(
                        k.clone(),
                        crate::node::PolicyMode::parse(v).map_err(ConfigError::Invalid)?,
                    );
                }
                for k in &overrides.reject_profiles {
                    p.rules.insert(k.clone(), crate::node::PolicyMode::Reject);
                }
                p
            },
            profiles_dir: overrides.profiles.clone().or(from_file.profiles.clone()),
        };
        if service.default_count == 0 || service.default_count > service.max_count {
            return Err(ConfigError::Invalid(format!(
                "default_count ({}) must be between 1 and max_count ({})",
                service.default_count, service.max_count
            )));
        }
        let max_body_bytes = overrides
            .max_body_bytes
            .or(from_file.max_body_bytes)
            .unwrap_or(64 * 1024 * 1024);
        if max_body_bytes < 1024 {
            return Err(ConfigError::Invalid("max_body_bytes must be at least 1024".into()));
        }
        let workers = overrides
            .workers
            .or(from_file.workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        if workers == 0 {
            return Err(ConfigError::Invalid("workers must be at least 1".into()));
        }
        let public_url = overrides.public_url.or(from_file.public_url);
        if let Some(u) = &public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "public_url '{u}' must start with http:// or https://"
                )));
            }
        }
        let region = Region::parse(&region)?;
        let tls = overrides.tls.resolve(
            TlsOverrides {
                dir: from_file.tls_dir,
                cert: from_file.tls_cert,
                key: from_file.tls_key,
                ca: from_file.tls_ca,
            },
            region.as_str(),
        )?;
        let disclosure = disclosure(
            overrides.min_cell.or(from_file.min_cell),
            overrides.rounding.or(from_file.rounding),
            overrides.noise.or(from_file.noise),
            None,
        )?;
        Ok(NodeConfig {
            region,
            listen,
            data,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_string()),
            max_body_bytes,
            workers,
            storage,
            service,
            tls,
            disclosure,
            clients: overrides.clients.or(from_file.clients),
            mllp: match overrides.mllp.or(from_file.mllp) {
                Some(m) => {
                    check_listen(&m)?;
                    Some(m)
                }
                None => None,
            },
        })
    }
}

/// The `pennine hub` keys of a config file; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubFile {
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub public_url: Option<String>,
    /// `region=url`, as the `--node` flag takes them.
    pub node: Option<Vec<String>>,
    pub workers: Option<usize>,
    pub deadline_ms: Option<u64>,
    pub min_cell: Option<u64>,
    pub rounding: Option<u64>,
    /// Largest perturbation of released counts (cell-key noise); 0 switches it off.
    pub noise: Option<u64>,
    pub min_regions: Option<usize>,
    pub tls_dir: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub clients: Option<PathBuf>,
    pub aggregate_rate: Option<u32>,
    pub answer_cache_seconds: Option<u64>,
}

/// Hub values from flags or the environment.
#[derive(Debug, Default, Clone)]
pub struct HubOverrides {
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub public_url: Option<String>,
    pub nodes: Vec<String>,
    pub workers: Option<usize>,
    pub deadline_ms: Option<u64>,
    pub min_cell: Option<u64>,
    pub rounding: Option<u64>,
    /// Largest perturbation of released counts (cell-key noise); 0 switches it off.
    pub noise: Option<u64>,
    pub min_regions: Option<usize>,
    pub tls: TlsOverrides,
    pub clients: Option<PathBuf>,
    pub aggregate_rate: Option<u32>,
}

/// A validated hub configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub listen: String,
    /// Where the hub keeps its own audit trail.
    pub data: PathBuf,
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
}

impl HubConfig {
    /// A configuration for tests and the demo.
    pub fn local(data: &Path, nodes: Vec<(Region, String)>, tls: Option<TlsFiles>) -> HubConfig {
        HubConfig {
            listen: "127.0.0.1:0".into(),
            data: data.to_path_buf(),
            public_url: None,
            nodes,
            workers: 2,
            deadline: std::time::Duration::from_secs(5),
            disclosure: Disclosure::default(),
            tls,
            clients: None,
            aggregate_rate: 30,
            answer_cache: std::time::Duration::from_secs(60),
        }
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
    pub fn load(file: Option<&Path>, o: HubOverrides) -> Result<HubConfig, ConfigError> {
        let f: HubFile = read_file(file)?;
        let listen = o.listen.or(f.listen).unwrap_or_else(|| "127.0.0.1:8400".into());
        check_listen(&listen)?;
        let specs = if o.nodes.is_empty() {
            f.node.unwrap_or_default()
        } else {
            o.nodes
        };
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
        let tls = o.tls.resolve(
            TlsOverrides {
                dir: f.tls_dir,
                cert: f.tls_cert,
                key: f.tls_key,
                ca: f.tls_ca,
            },
            "hub",
        )?;
        if tls.is_none() && nodes.iter().any(|(_, u)| u.starts_with("https://")) {
            return Err(ConfigError::Invalid(
                "the nodes are https:// but the hub has no certificate to authenticate with: give --tls-dir (or --tls-cert, --tls-key, --tls-ca)".into(),
            ));
        }
        let deadline_ms = o.deadline_ms.or(f.deadline_ms).unwrap_or(5000);
        if deadline_ms == 0 {
            return Err(ConfigError::Invalid("deadline_ms must be at least 1".into()));
        }
        let workers = o
            .workers
            .or(f.workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let data = o.data.or(f.data).ok_or_else(|| {
            ConfigError::Invalid("a data folder for the hub's audit trail is required: --data <dir>".into())
        })?;
        Ok(HubConfig {
            listen,
            data,
            public_url: o
                .public_url
                .or(f.public_url)
                .map(|u| u.trim_end_matches('/').to_string()),
            nodes,
            workers: workers.max(1),
            deadline: std::time::Duration::from_millis(deadline_ms),
            disclosure: disclosure(
                o.min_cell.or(f.min_cell),
                o.rounding.or(f.rounding),
                o.noise.or(f.noise),
                o.min_regions.or(f.min_regions),
            )?,
            tls,
            clients: o.clients.or(f.clients),
            aggregate_rate: match o.aggregate_rate.or(f.aggregate_rate).unwrap_or(30) {
                0 => {
                    return Err(ConfigError::Invalid(
                        "aggregate_rate must be at least 1 per minute".into(),
                    ))
                }
                n => n,
            },
            answer_cache: std::time::Duration::from_secs(f.answer_cache_seconds.unwrap_or(60)),
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
            NodeOverrides {
                region: Some("gm".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.region.as_str(), "gm");
        assert_eq!(c.listen, "127.0.0.1:9000");
        std::fs::write(&file, "region = \"yh\"\nbogus = 1\n").unwrap();
        let e = NodeConfig::load(Some(&file), NodeOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(Region::parse("North East").is_err());
        let e = NodeConfig::load(
            None,
            NodeOverrides {
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
            NodeOverrides {
                reject_profiles: vec!["Encounter".into()],
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
        let e = NodeConfig::load(Some(&file), NodeOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("'maybe'"), "{e}");
    }
}
