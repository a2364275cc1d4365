//! The HTTP layer: the only code that knows actix-web. One file per API area,
//! each with `configure`; `start_node` builds the app that `main` and the tests share.

pub mod access;
pub mod error;
pub mod federation;
mod feeds;
pub mod fhir;
pub mod hub;
mod validate;
mod views;

use crate::auth::{Authority, Clients, Server, NODE_ROUTES};
use crate::config::{NodeConfig, StorageConfig};
use crate::node::audit::AuditLog;
use crate::node::FhirService;
use crate::search::Registry;
use crate::store::{postgres::PostgresStore, sqlite::SqliteStore, Store};
use actix_web::dev::{ServerHandle, Service};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use crate::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

/// What every handler can reach.
pub struct AppState {
    pub service: FhirService,
    pub config: Arc<NodeConfig>,
    /// The audit trail (a store of its own).
    pub audit: Arc<AuditLog>,
    /// The HL7 v2 and CSV feeds, with their dead letters (a store of their own).
    pub feeds: crate::feeds::Feeds,
    /// The last CapabilityStatement served, with the base URL it was built for.
    pub metadata: std::sync::Mutex<Option<(String, web::Bytes)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: String, message: String },
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("access control: {0}")]
    Access(String),
    #[error(transparent)]
    Profiles(#[from] crate::profiles::ProfileError),
    #[error("record-key secret {path}: {message}")]
    Secret { path: String, message: String },
}

/// A node serving HTTP. Dropping it does not stop it; call `stop`.
pub struct RunningNode {
    pub addr: SocketAddr,
    pub tls: bool,
    pub service: FhirService,
    pub audit: Arc<AuditLog>,
    /// The MLLP listener's address, when `--mllp` is set.
    pub mllp_addr: Option<SocketAddr>,
    handle: ServerHandle,
    store: Arc<dyn Store>,
    dead_letters: Arc<dyn Store>,
    mllp: Option<crate::feeds::mllp::MllpServer>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
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
        self.handle.stop(true).await;
        let _ = self.task.await;
        close_stores(self.audit, self.store).await;
        close_store(self.dead_letters).await;
    }

    /// Waits until the server stops by itself (e.g. on a signal).
    pub async fn wait(self) -> std::io::Result<()> {
        let r = self.task.await.unwrap_or(Ok(()));
        if let Some(m) = self.mllp {
            m.stop().await;
        }
        close_stores(self.audit, self.store).await;
        close_store(self.dead_letters).await;
        r
    }
}

async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let store = state.service.store.clone();
    match web::block(move || store.ready()).await {
        Ok(Ok(())) => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(format!(r#"{{"status":"ready","region":"{}"}}"#, state.config.region))),
        Ok(Err(e)) => Err(Error::Unavailable(format!("storage is not reachable: {e}"))),
        Err(e) => Err(Error::Internal(e.to_string())),
    }
}

async fn no_route(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    Error::NoRoute(format!("no route for {} {}", req.method(), req.path())).error_response()
}

/// Marks connections whose client presented a certificate the TLS layer verified.
pub fn note_client_certificate(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    use actix_tls::accept::rustls_0_23::TlsStream;
    if let Some(tls) = conn.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>() {
        let (_, session) = tls.get_ref();
        if session.peer_certificates().is_some_and(|c| !c.is_empty()) {
            ext.insert(federation::VerifiedClientCert);
        }
    }
}

/// Binds `listen` on an `HttpServer`, with TLS when `tls` is given. (A macro:
/// the server's generic parameters are not nameable outside actix.)
macro_rules! bind_server {
    ($server:expr, $listen:expr, $tls:expr) => {{
        let listen: &str = $listen;
        let bound = match $tls {
            Some(files) => match crate::tls::server_config(files) {
                Ok(tls) => $server.bind_rustls_0_23(listen, tls),
                Err(e) => return Err(StartError::Tls(e)),
            },
            None => $server.bind(listen),
        };
        bound.map_err(|e| StartError::Bind {
            addr: listen.to_string(),
            message: e.to_string(),
        })?
    }};
}
pub(crate) use bind_server;

async fn close_stores(audit: Arc<AuditLog>, store: Arc<dyn Store>) {
    let _ = tokio::task::spawn_blocking(move || {
        audit.close();
        audit.service.store.close();
        store.close();
    })
    .await;
}

async fn close_store(store: Arc<dyn Store>) {
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
}

/// The dead-letter store of a node's feeds: beside the clinical store, never in it.
async fn open_dead_letters(storage: &StorageConfig, data: &std::path::Path) -> Result<Arc<dyn Store>, StartError> {
    let storage = match storage {
        StorageConfig::Embedded => StorageConfig::Embedded,
        StorageConfig::Postgres { url, schema, .. } => StorageConfig::Postgres {
            url: url.clone(),
            schema: format!("{schema}_deadletters"),
            pool: 2,
        },
    };
    open_store(storage, data.join("dead-letters")).await
}

/// Opens a store on the blocking pool.
async fn open_store(storage: StorageConfig, data: std::path::PathBuf) -> Result<Arc<dyn Store>, StartError> {
    Ok(
        tokio::task::spawn_blocking(move || -> Result<Arc<dyn Store>, crate::store::StoreError> {
            std::fs::create_dir_all(&data).map_err(|e| crate::store::StoreError::Open {
                path: data.display().to_string(),
                message: e.to_string(),
            })?;
            Ok(match storage {
                StorageConfig::Embedded => Arc::new(SqliteStore::open(&data)?),
                StorageConfig::Postgres { url, schema, pool } => Arc::new(PostgresStore::open(&url, &schema, pool)?),
            })
        })
        .await
        .map_err(|e| crate::store::StoreError::Open {
            path: String::new(),
            message: e.to_string(),
        })??,
    )
}

/// The audit trail's store: `audit/` in the data folder, or `<schema>_audit` on PostgreSQL.
pub(crate) async fn open_audit(storage: &StorageConfig, data: &std::path::Path) -> Result<Arc<AuditLog>, StartError> {
    let storage = match storage {
        StorageConfig::Embedded => StorageConfig::Embedded,
        StorageConfig::Postgres { url, schema, .. } => StorageConfig::Postgres {
            url: url.clone(),
            schema: format!("{schema}_audit"),
            pool: 2,
        },
    };
    let store = open_store(storage, data.join("audit")).await?;
    let service = FhirService::new(store, Arc::new(Registry::r4()), Default::default());
    Ok(AuditLog::start(service))
}

/// The access authority: the clients file (if any) and the token key in `data`.
pub(crate) fn open_authority(
    clients: Option<&std::path::Path>,
    audience: String,
    data: &std::path::Path,
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
    Ok(Arc::new(
        Authority::open(clients, audience, &data.join("token-key")).map_err(StartError::Access)?,
    ))
}

/// Runs a request through the access check, then the app, logging it and
/// auditing every protected access (allowed or refused).
pub(crate) fn guard<S, B>(
    access: web::Data<access::Access>,
    req: actix_web::dev::ServiceRequest,
    srv: &S,
    checked: Result<access::Checked, Error>,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>>
where
    S: Service<actix_web::dev::ServiceRequest, Response = actix_web::dev::ServiceResponse<B>, Error = actix_web::Error>,
{
    let method = req.method().to_string();
    let path = req.path().to_string();
    let target = match req.query_string() {
        "" => path.clone(),
        q => format!("{path}?{q}"),
    };
    let peer = req.peer_addr().map(|a| a.ip().to_string());
    let started = std::time::Instant::now();
    let (rule, principal, denied) = match checked {
        Ok(c) => (c.rule, c.principal, None),
        Err(e) => (None, None, Some(e)),
    };
    let fut = denied.is_none().then(|| srv.call(req));
    async move {
        let who = match (&principal, &peer) {
            (Some(p), _) => format!("{} ({})", p.client_id, p.roles_text()),
            (None, Some(ip)) => format!("unauthenticated client at {ip}"),
            (None, None) => "unauthenticated client".into(),
        };
        let Some(fut) = fut else {
            let e = denied.unwrap_or_else(|| Error::Internal("no decision".into()));
            let status = actix_web::ResponseError::status_code(&e).as_u16();
            access::audit_access(&access, &who, "denied", &method, &target, status);
            tracing::info!(%method, %path, status, %who, "refused");
            return Err(e.into());
        };
        let res = fut.await;
        if let Ok(r) = &res {
            let status = r.status().as_u16();
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if status >= 500 {
                tracing::error!(%method, %path, status, ms, "request");
            } else {
                tracing::debug!(%method, %path, status, ms, "request");
            }
            if let Some(rule) =
                rule.filter(|r| !matches!(r, crate::auth::Rule::Public | crate::auth::Rule::HubCertificate))
            {
                access::audit_access(&access, &who, access::action(rule), &method, &target, status);
            }
        }
        res
    }
}

/// The node's record-key secret (`cell-key.secret` in the data folder), made on
/// first start. It must stay the same across restarts, so that the noise of a
/// figure does not change with the process; nodes sharing one PostgreSQL
/// database should share the file.
fn record_keys(data: &std::path::Path) -> Result<crate::federation::RecordKeys, StartError> {
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

/// Opens the store, binds `config.listen` and starts serving on the current Tokio runtime.
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
    let store = open_store(config.storage.clone(), config.data.clone()).await?;
    let audit = open_audit(&config.storage, &config.data).await?;
    let authority = open_authority(
        config.clients.as_deref(),
        format!("pennine:node:{}", config.region),
        &config.data,
    )?;
    let registry = Arc::new(Registry::r4());
    let service = FhirService::new(store.clone(), registry, config.service.clone())
        .with_profiles(profiles)
        .with_record_keys(record_keys(&config.data)?);
    let dead_letters = open_dead_letters(&config.storage, &config.data).await?;
    let feeds = crate::feeds::Feeds::new(service.clone(), crate::feeds::DeadLetters::new(dead_letters.clone()));
    let mllp = match &config.mllp {
        Some(listen) => Some(
            crate::feeds::mllp::start(listen, feeds.clone())
                .await
                .map_err(|e| StartError::Bind {
                    addr: listen.clone(),
                    message: e.to_string(),
                })?,
        ),
        None => None,
    };
    let config = Arc::new(config);
    let access = web::Data::new(access::Access::new(
        authority,
        Server::Node {
            region: config.region.to_string(),
        },
        NODE_ROUTES,
        audit.clone(),
        format!("node {}", config.region),
        config.public_url.clone(),
    ));
    let state = web::Data::new(AppState {
        service: service.clone(),
        config: config.clone(),
        audit: audit.clone(),
        feeds,
        metadata: std::sync::Mutex::new(None),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PathConfig::default().error_handler(|e, _| {
                Error::invalid(crate::fhir::Issue::error(
                    crate::fhir::IssueCode::Invalid,
                    e.to_string(),
                ))
                .into()
            }))
            .app_data(access.clone())
            .wrap_fn({
                let access = access.clone();
                move |req, srv| {
                    let path = req.path().to_string();
                    // The hub's certificate opens the federation API and nothing else.
                    let hub_elsewhere =
                        req.conn_data::<federation::VerifiedClientCert>().is_some() && !federation::open_to_hub(&path);
                    let checked = if hub_elsewhere {
                        Err(Error::forbidden(format!(
                            "the hub's certificate may use only the federation API, not {} {path}",
                            req.method()
                        )))
                    } else {
                        access::check(&access, &req)
                    };
                    guard(access.clone(), req, srv, checked)
                }
            })
            .configure(|cfg| {
                use access::route;
                route(cfg, NODE_ROUTES, "GET", "/health", web::get().to(health));
                route(cfg, NODE_ROUTES, "GET", "/ready", web::get().to(ready));
                route(
                    cfg,
                    NODE_ROUTES,
                    "GET",
                    "/.well-known/smart-configuration",
                    web::get().to(access::smart_configuration),
                );
                route(cfg, NODE_ROUTES, "POST", "/auth/token", web::post().to(access::token));
            })
            .configure(views::configure)
            .configure(feeds::configure)
            .configure(validate::configure)
            .configure(federation::configure)
            .configure(fhir::configure)
            .default_service(web::to(no_route))
    })
    .workers(config.workers)
    .disable_signals()
    .shutdown_timeout(10)
    .on_connect(note_client_certificate);
    let server = bind_server!(server, &config.listen, config.tls.as_ref());
    let addr = *server.addrs().first().ok_or_else(|| StartError::Bind {
        addr: config.listen.clone(),
        message: "no address bound".into(),
    })?;
    let server = server.run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    let backend = match &config.storage {
        StorageConfig::Embedded => format!("sqlite:{}", config.data.join("pennine.db").display()),
        StorageConfig::Postgres { schema, .. } => format!("postgres schema {schema}"),
    };
    tracing::info!(region = %config.region, %addr, storage = %backend, "node listening");
    Ok(RunningNode {
        addr,
        tls: config.tls.is_some(),
        service,
        audit,
        mllp_addr: mllp.as_ref().map(|m| m.addr),
        handle,
        store,
        dead_letters,
        mllp,
        task,
    })
}
