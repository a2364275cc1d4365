//! The HTTP layer: the only code that knows actix-web. One file per API area,
//! each with `configure`; `start_node` builds the app that `main` and the tests share.

pub mod error;
pub mod federation;
pub mod fhir;
pub mod hub;
mod views;

use crate::config::{NodeConfig, StorageConfig};
use crate::node::FhirService;
use crate::search::Registry;
use crate::store::{postgres::PostgresStore, sqlite::SqliteStore, Store};
use actix_web::dev::{ServerHandle, Service};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use error::ApiError;
use std::net::SocketAddr;
use std::sync::Arc;

/// What every handler can reach.
pub struct AppState {
    pub service: FhirService,
    pub config: Arc<NodeConfig>,
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
}

/// A node serving HTTP. Dropping it does not stop it; call `stop`.
pub struct RunningNode {
    pub addr: SocketAddr,
    pub tls: bool,
    pub service: FhirService,
    handle: ServerHandle,
    store: Arc<dyn Store>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningNode {
    pub fn base_url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Graceful stop: finish in-flight requests, then close the store.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }

    /// Waits until the server stops by itself (e.g. on a signal).
    pub async fn wait(self) -> std::io::Result<()> {
        let r = self.task.await.unwrap_or(Ok(()));
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        r
    }
}

async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.service.store.clone();
    match web::block(move || store.ready()).await {
        Ok(Ok(())) => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(format!(r#"{{"status":"ready","region":"{}"}}"#, state.config.region))),
        Ok(Err(e)) => Err(ApiError::Unavailable(format!("storage is not reachable: {e}"))),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

async fn no_route(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    ApiError::NoRoute(format!("no route for {} {}", req.method(), req.path())).error_response()
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

/// Opens the store, binds `config.listen` and starts serving on the current Tokio runtime.
pub async fn start_node(config: NodeConfig) -> Result<RunningNode, StartError> {
    let (data, storage) = (config.data.clone(), config.storage.clone());
    let store = tokio::task::spawn_blocking(move || -> Result<Arc<dyn Store>, crate::store::StoreError> {
        Ok(match storage {
            StorageConfig::Embedded => Arc::new(SqliteStore::open(&data)?),
            StorageConfig::Postgres { url, schema, pool } => Arc::new(PostgresStore::open(&url, &schema, pool)?),
        })
    })
    .await
    .map_err(|e| crate::store::StoreError::Open {
        path: String::new(),
        message: e.to_string(),
    })??;
    let registry = Arc::new(Registry::r4());
    let service = FhirService::new(store.clone(), registry, config.service.clone());
    let config = Arc::new(config);
    let state = web::Data::new(AppState {
        service: service.clone(),
        config: config.clone(),
        metadata: std::sync::Mutex::new(None),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PathConfig::default().error_handler(|e, _| {
                ApiError::Invalid(crate::fhir::Issue::error(
                    crate::fhir::IssueCode::Invalid,
                    e.to_string(),
                ))
                .into()
            }))
            .wrap_fn(|req, srv| {
                let method = req.method().to_string();
                let path = req.path().to_string();
                let started = std::time::Instant::now();
                // The hub's certificate opens the federation API and nothing else.
                let hub_elsewhere =
                    req.conn_data::<federation::VerifiedClientCert>().is_some() && !federation::open_to_hub(&path);
                let fut = (!hub_elsewhere).then(|| srv.call(req));
                async move {
                    let Some(fut) = fut else {
                        return Err(ApiError::Forbidden(format!(
                            "the hub's certificate may use only the federation API, not {method} {path}"
                        ))
                        .into());
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
                    }
                    res
                }
            })
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready))
            .configure(views::configure)
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
        handle,
        store,
        task,
    })
}
