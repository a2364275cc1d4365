//! The composition root: the one place that opens what a node or the hub runs on
//! (profiles, stores, the audit trail, the access authority, the record-key
//! secret, the feeds and their MLLP listener) and wires them together. The HTTP
//! layer only builds its app from what it is given here (`http::serve_node`,
//! `http::hub::serve_hub`); `main`, the demo, the benchmarks and the tests all start
//! servers through `start_node` and `start_hub`.

use crate::audit::AuditLog;
use crate::auth::{Authority, Clients};
use crate::config::{HubConfig, NodeConfig, StorageConfig};
use crate::feeds::{mllp::MllpServer, DeadLetters, Feeds};
use crate::hub::Hub;
use crate::node::FhirService;
use crate::search::Registry;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Serve(#[from] crate::http::ServeError),
    #[error("cannot listen for MLLP on {addr}: {message}")]
    Mllp { addr: String, message: String },
    #[error("access control: {0}")]
    Access(String),
    #[error(transparent)]
    Profiles(#[from] crate::profiles::ProfileError),
    #[error(transparent)]
    Pathways(#[from] crate::pathways::PathwayError),
    #[error("record-key secret {path}: {message}")]
    Secret { path: String, message: String },
    #[error("the hub's HTTPS client: {0}")]
    Client(String),
    #[error("the audit trail: {0}")]
    Audit(String),
}

/// A node serving HTTP (and MLLP when configured). Dropping it does not stop it; call `stop`.
pub struct RunningNode {
    pub addr: SocketAddr,
    pub tls: bool,
    pub service: FhirService,
    pub audit: Arc<AuditLog>,
    /// The MLLP listener's address, when `--mllp` is set.
    pub mllp_addr: Option<SocketAddr>,
    serving: crate::http::Serving,
    store: Arc<dyn Store>,
    dead_letters: Arc<dyn Store>,
    mllp: Option<MllpServer>,
}

impl RunningNode {
    pub fn base_url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Graceful stop: finish in-flight requests and MLLP messages, then write the
    /// audit queue and close the stores.
    pub async fn stop(self) {
        if let Some(m) = self.mllp {
            m.stop().await;
        }
        self.serving.stop().await;
        flush_quality(&self.service).await;
        close(self.audit, vec![self.store, self.dead_letters]).await;
    }

    /// Waits until the server stops by itself (e.g. on a signal).
    pub async fn wait(self) -> std::io::Result<()> {
        let r = self.serving.wait().await;
        if let Some(m) = self.mllp {
            m.stop().await;
        }
        flush_quality(&self.service).await;
        close(self.audit, vec![self.store, self.dead_letters]).await;
        r
    }
}

/// Stores the refusals still waiting for a unit of work, before the store closes.
async fn flush_quality(service: &FhirService) {
    let service = service.clone();
    let flushed = tokio::task::spawn_blocking(move || service.flush_quality()).await;
    if let Ok(Err(e)) = flushed {
        tracing::warn!(error = %e, "the waiting refusals' quality figures could not be stored");
    }
}

/// The hub serving HTTP. Dropping it does not stop it; call `stop`.
pub struct RunningHub {
    pub addr: SocketAddr,
    pub tls: bool,
    pub hub: Hub,
    /// Local accounts and web sessions (the web view).
    pub people: Arc<crate::auth::People>,
    serving: crate::http::Serving,
    audit: Arc<AuditLog>,
}

impl RunningHub {
    pub fn base_url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    pub async fn stop(self) {
        self.serving.stop().await;
        close(self.audit, Vec::new()).await;
    }

    /// A one-time sign-in link to the web view for the local account `name`.
    pub fn sign_in_link(&self, name: &str) -> Option<String> {
        let token = self.people.link_for(name)?;
        Some(format!("{}/app/login/once/{token}", self.base_url()))
    }

    pub async fn wait(self) -> std::io::Result<()> {
        let r = self.serving.wait().await;
        close(self.audit, Vec::new()).await;
        r
    }
}

/// Writes the audit queue, then closes the audit store and `stores`.
async fn close(audit: Arc<AuditLog>, stores: Vec<Arc<dyn Store>>) {
    let _ = tokio::task::spawn_blocking(move || {
        audit.close();
        for s in stores {
            s.close();
        }
    })
    .await;
}

/// Opens the node's profiles and stores, starts its feeds (and MLLP listener) and
/// serves HTTP on `config.listen`, on the current Tokio runtime.
pub async fn start_node(config: NodeConfig) -> Result<RunningNode, StartError> {
    // Profiles first: a broken one stops the node before it touches its data.
    let profiles = match &config.service.profiles_dir {
        Some(dir) => Arc::new(crate::profiles::ProfileSet::load_dir(dir)?),
        None => crate::node::built_in_profiles(),
    };
    tracing::info!(
        origin = %profiles.origin,
        definitions = profiles.len(),
        enforced = profiles.enforced_all().count(),
        policy = config.service.profile_policy.default.as_str(),
        "regional profiles loaded"
    );
    let pathways = match &config.service.pathways_dir {
        Some(dir) => Arc::new(crate::pathways::Library::load_dir(dir)?),
        None => crate::pathways::Library::built_in(),
    };
    tracing::info!(origin = %pathways.origin, pathways = pathways.all().len(), "pathways loaded");
    let store = open_store(config.storage.clone(), config.data.clone()).await?;
    let (audit, audit_events) = open_audit(&config.storage, &config.data).await?;
    let authority = open_authority(
        config.clients.as_deref(),
        format!("pennine:node:{}", config.region),
        &config.data,
        Some(Arc::new(StoreShared(store.clone()))),
    )?;
    let service = FhirService::new(store.clone(), Arc::new(Registry::r4()), config.service.clone())
        .with_profiles(profiles)
        .with_pathways(pathways)
        .with_record_keys(record_keys(&config.data)?);
    let dead_letters = open_store(beside(&config.storage, "deadletters"), config.data.join("dead-letters")).await?;
    let feeds = Feeds::new(
        service.clone(),
        DeadLetters::new(dead_letters.clone()).with_quota(config.dead_letter_quota),
    );
    let mllp = match &config.mllp {
        Some(listen) => Some(
            crate::feeds::mllp::start(listen, feeds.clone(), config.mllp_limits)
                .await
                .map_err(|e| StartError::Mllp {
                    addr: listen.clone(),
                    message: e.to_string(),
                })?,
        ),
        None => None,
    };
    let backend = match &config.storage {
        StorageConfig::Embedded => format!("sqlite:{}", config.data.join("pennine.db").display()),
        StorageConfig::Postgres { schema, .. } => format!("postgres schema {schema}"),
    };
    let config = Arc::new(config);
    let serving = crate::http::serve_node(crate::http::NodeParts {
        service: service.clone(),
        config: config.clone(),
        audit: audit.clone(),
        audit_events,
        feeds,
        authority,
    })?;
    tracing::info!(region = %config.region, addr = %serving.addr, storage = %backend, "node listening");
    // The first federated question after a start should not pay for building the
    // caches: build them now, in the background (`/ready` says how far it got).
    let warming = service.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("pennine-warm".into())
        .spawn(move || warming.warm())
    {
        tracing::warn!(error = %e, "the caches' warm-up could not start; questions build them when asked");
    }
    Ok(RunningNode {
        addr: serving.addr,
        tls: config.tls.is_some(),
        service,
        audit,
        mllp_addr: mllp.as_ref().map(|m| m.addr),
        serving,
        store,
        dead_letters,
        mllp,
    })
}

/// Opens the hub's audit store and its HTTPS client to the nodes, and serves HTTP
/// on `config.listen`.
pub async fn start_hub(config: HubConfig) -> Result<RunningHub, StartError> {
    let (audit, audit_events) = open_audit(&config.storage, &config.data).await?;
    // What several hub processes must agree on lives beside their audit trail on
    // PostgreSQL; one hub on its embedded store keeps it in memory (no fsync per question).
    let shared: Arc<dyn crate::auth::tokens::Shared> = match config.storage {
        StorageConfig::Postgres { .. } => Arc::new(StoreShared(audit_events.store.clone())),
        StorageConfig::Embedded => Arc::new(crate::auth::tokens::MemoryShared::default()),
    };
    let authority = open_authority(
        config.clients.as_deref(),
        "pennine:hub".into(),
        &config.data,
        Some(shared.clone()),
    )?;
    let config = Arc::new(config);
    let pathways = match &config.pathways_dir {
        Some(dir) => Arc::new(crate::pathways::Library::load_dir(dir)?),
        None => crate::pathways::Library::built_in(),
    };
    // The audit store's service also serves the pathways' Measures (it stores none).
    let audit_events = audit_events.with_pathways(pathways.clone());
    let hub = Hub::new(config.clone(), audit.clone())
        .map_err(|e| StartError::Client(e.to_string()))?
        .with_pathways(pathways)
        .with_shared(shared);
    let users = authority.clients.as_ref().map(|c| c.users.clone()).unwrap_or_default();
    let people = Arc::new(crate::auth::People::new(users));
    let oidc = match &config.oidc {
        Some(c) => Some(Arc::new(
            crate::hub::oidc::RelyingParty::new(c.clone()).map_err(StartError::Client)?,
        )),
        None => None,
    };
    let serving = crate::http::hub::serve_hub(
        hub.clone(),
        audit.clone(),
        audit_events,
        authority,
        crate::http::hub::WebParts {
            people: people.clone(),
            oidc,
        },
    )?;
    tracing::info!(addr = %serving.addr, regions = config.nodes.len(), "hub listening");
    Ok(RunningHub {
        addr: serving.addr,
        tls: config.tls.is_some(),
        hub,
        people,
        serving,
        audit,
    })
}

/// A store of its own beside the node's: `<schema>_<suffix>` on PostgreSQL (the
/// embedded store takes a folder of its own instead).
fn beside(storage: &StorageConfig, suffix: &str) -> StorageConfig {
    match storage {
        StorageConfig::Embedded => StorageConfig::Embedded,
        StorageConfig::Postgres { url, schema, .. } => StorageConfig::Postgres {
            url: url.clone(),
            schema: format!("{schema}_{suffix}"),
            pool: 2,
        },
    }
}

/// Opens a store on the blocking pool.
async fn open_store(storage: StorageConfig, data: std::path::PathBuf) -> Result<Arc<dyn Store>, StartError> {
    let opened = tokio::task::spawn_blocking(move || -> Result<Arc<dyn Store>, StoreError> {
        std::fs::create_dir_all(&data).map_err(|e| StoreError::Open {
            path: data.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(match storage {
            StorageConfig::Embedded => Arc::new(SqliteStore::open(&data)?),
            StorageConfig::Postgres { url, schema, pool } => Arc::new(PostgresStore::open(&url, &schema, pool)?),
        })
    })
    .await
    .map_err(|e| StoreError::Open {
        path: String::new(),
        message: e.to_string(),
    })??;
    Ok(opened)
}

/// The audit trail: `audit/` in the data folder, or `<schema>_audit` on PostgreSQL;
/// with the FHIR service that reads it (AuditEvent searches for administrators).
async fn open_audit(storage: &StorageConfig, data: &Path) -> Result<(Arc<AuditLog>, FhirService), StartError> {
    let store = open_store(beside(storage, "audit"), data.join("audit")).await?;
    let service = FhirService::new(store, Arc::new(Registry::r4()), Default::default());
    // The chain's head is read from the store (a blocking call on PostgreSQL).
    let sink = Arc::new(service.clone());
    let log = tokio::task::spawn_blocking(move || AuditLog::start(sink))
        .await
        .map_err(|e| StartError::Audit(e.to_string()))?
        .map_err(|e| StartError::Audit(e.to_string()))?;
    Ok((log, service))
}

/// The access authority: the clients file (if any) and the token key in `data`.
fn open_authority(
    clients: Option<&Path>,
    audience: String,
    data: &Path,
    shared: Option<Arc<dyn crate::auth::tokens::Shared>>,
) -> Result<Arc<Authority>, StartError> {
    let clients = match clients {
        Some(p) => Some(Clients::load(p).map_err(StartError::Access)?),
        None => {
            tracing::warn!(
                "no --clients file: every protected route answers 401. Register clients in a TOML file \
                 ([[client]] id, roles, region, secret_sha256 or jwks) and pass --clients <file>"
            );
            None
        }
    };
    std::fs::create_dir_all(data).map_err(|e| StartError::Access(format!("{}: {e}", data.display())))?;
    let authority = Authority::open(clients, audience, &data.join("token-key")).map_err(StartError::Access)?;
    Ok(Arc::new(match shared {
        Some(shared) => authority.with_shared(shared),
        None => authority,
    }))
}

/// `auth::Shared` in a node's store: every process on the store refuses the same
/// replayed assertions and counts the same failed secrets.
struct StoreShared(Arc<dyn Store>);

fn epoch_seconds() -> i64 {
    crate::fhir::time::now_millis() / 1000
}

impl crate::auth::tokens::Shared for StoreShared {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.shared_read(key, epoch_seconds()).map_err(|e| e.to_string())
    }

    fn update(&self, key: &str, f: crate::auth::tokens::Update) -> Result<Option<Vec<u8>>, String> {
        let key = key.to_string();
        crate::store::run_unit(&*self.0, move |txn| -> Result<Option<Vec<u8>>, StoreError> {
            let current = txn
                .shared_get(&key)?
                .filter(|(_, expires)| *expires >= epoch_seconds())
                .map(|(v, _)| v);
            let next = f(current.as_deref());
            txn.shared_put(&key, next.as_ref().map(|(v, e)| (v.as_slice(), *e)))?;
            Ok(current)
        })
        .map_err(|e| e.to_string())
    }
}

/// The node's record-key secret (`cell-key.secret` in the data folder), made on
/// first start. It must stay the same across restarts, so that the noise of a
/// figure does not change with the process; nodes sharing one PostgreSQL
/// database should share the file.
fn record_keys(data: &Path) -> Result<crate::federation::RecordKeys, StartError> {
    let path = data.join("cell-key.secret");
    let fail = |e: std::io::Error| StartError::Secret {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let hex = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data).map_err(fail)?;
            let secret: String = uuid::Uuid::new_v4()
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            std::fs::write(&path, &secret).map_err(fail)?;
            secret
        }
        Err(e) => return Err(fail(e)),
    };
    let mut secret = [0u8; 16];
    if hex.len() != 32 || !hex.is_ascii() {
        return Err(fail(std::io::Error::other("expected 32 hexadecimal digits")));
    }
    for (i, b) in secret.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| fail(std::io::Error::other(e.to_string())))?;
    }
    Ok(crate::federation::RecordKeys::from_secret(secret))
}

/// Walks the audit trail of the data folder `data` (or of `<schema>_audit` on
/// PostgreSQL) oldest first and checks its hash chain (`pennine audit verify`).
/// It reads only, so it may run beside the node that writes the trail.
pub fn verify_audit(storage: &StorageConfig, data: &Path) -> Result<crate::audit::Verifier, StartError> {
    let store: Arc<dyn Store> = match beside(storage, "audit") {
        StorageConfig::Embedded => Arc::new(SqliteStore::open_read_only(&data.join("audit"))?),
        StorageConfig::Postgres { url, schema, .. } => Arc::new(PostgresStore::open(&url, &schema, 1)?),
    };
    let mut verifier = crate::audit::Verifier::default();
    let mut after = 0;
    while verifier.broken.is_none() {
        let page = store.scan(crate::fhir::types::AUDIT_EVENT.as_str(), after, 2_000)?;
        let Some(last) = page.last() else { break };
        after = last.key;
        for event in &page {
            if let Some(json) = &event.json {
                verifier.check(&event.id, json);
            }
        }
    }
    store.close();
    Ok(verifier)
}
