//! The HTTP layer: the only code that knows actix-web. One file per API area,
//! each with `configure`; `serve_node` (and `hub::serve_hub`) build the app from
//! the parts the composition root (`crate::startup`) opened, and serve it.

pub mod access;
mod app;
pub mod error;
pub mod federation;
mod feeds;
pub mod fhir;
pub mod hub;
pub mod pathways;
mod regress;
mod validate;
mod views;

use crate::audit::AuditLog;
use crate::auth::{Authority, Server, NODE_ROUTES};
use crate::config::NodeConfig;
use crate::error::Error;
use crate::node::FhirService;
use actix_web::dev::{ServerHandle, Service};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use std::net::SocketAddr;
use std::sync::Arc;

/// What every handler can reach.
pub struct AppState {
    pub service: FhirService,
    pub config: Arc<NodeConfig>,
    /// The audit trail (a store of its own).
    pub audit: Arc<AuditLog>,
    /// The FHIR service over the audit trail's store (AuditEvent searches).
    pub audit_events: FhirService,
    /// The HL7 v2 and CSV feeds, with their dead letters (a store of their own).
    pub feeds: crate::feeds::Feeds,
    /// The last CapabilityStatement served, with the base URL it was built for.
    pub metadata: std::sync::Mutex<Option<(String, web::Bytes)>>,
}

/// What a node's app is built from: everything the composition root opened.
pub struct NodeParts {
    pub service: FhirService,
    pub config: Arc<NodeConfig>,
    pub audit: Arc<AuditLog>,
    pub audit_events: FhirService,
    pub feeds: crate::feeds::Feeds,
    pub authority: Arc<Authority>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: String, message: String },
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// An HTTP server running on the current Tokio runtime.
pub struct Serving {
    pub addr: SocketAddr,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Serving {
    /// Starts `server` (already bound) on the current runtime.
    fn start(server: actix_web::dev::Server, addr: SocketAddr) -> Serving {
        let handle = server.handle();
        let task = tokio::spawn(server);
        Serving { addr, handle, task }
    }

    /// Graceful stop: in-flight requests finish.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }

    /// Waits until the server stops by itself.
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.unwrap_or(Ok(()))
    }
}

async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

/// `GET /ready`: the store answers. `caches` says how far the warm-up of the view
/// rows and episodes got (a node answers while warming, only the first questions
/// are slower).
async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let store = state.service.store.clone();
    match web::block(move || store.ready()).await {
        Ok(Ok(())) => Ok(HttpResponse::Ok().json(serde_json::json!({
            "status": "ready",
            "region": state.config.region.as_str(),
            "caches": state.service.warm_state(),
        }))),
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
    use std::os::fd::AsFd;
    let mut socket = None;
    if let Some(tls) = conn.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>() {
        let (tcp, session) = tls.get_ref();
        if session.peer_certificates().is_some_and(|c| !c.is_empty()) {
            ext.insert(federation::VerifiedClientCert);
        }
        socket = tcp.as_fd().try_clone_to_owned().ok();
    } else if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        socket = tcp.as_fd().try_clone_to_owned().ok();
    }
    if let Some(fd) = socket {
        ext.insert(ClientSocket(std::sync::Arc::new(fd)));
    }
}

/// A duplicate of the connection's socket, to see whether the client has gone while
/// its request is worked on (actix does not drop a handler when the peer closes).
#[derive(Clone)]
struct ClientSocket(std::sync::Arc<std::os::fd::OwnedFd>);

impl ClientSocket {
    /// Whether the peer has closed its side (or the connection failed).
    fn gone(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut poll = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, timeout 0 (never blocks); the fd is ours until dropped.
        let n = unsafe { libc::poll(&mut poll, 1, 0) };
        n > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }
}

/// Stops a request's work once its client has gone: polled at most every 20 ms.
pub(crate) fn cancel_on_disconnect(req: &actix_web::HttpRequest) -> crate::store::Cancel {
    let Some(socket) = req.conn_data::<ClientSocket>().cloned() else {
        return crate::store::Cancel::default();
    };
    let started = std::time::Instant::now();
    let last = std::sync::atomic::AtomicU64::new(0);
    let gone = std::sync::atomic::AtomicBool::new(false);
    crate::store::Cancel::new(move || {
        use std::sync::atomic::Ordering::Relaxed;
        if gone.load(Relaxed) {
            return true;
        }
        let now = started.elapsed().as_millis() as u64;
        if now.saturating_sub(last.load(Relaxed)) < 20 {
            return false;
        }
        last.store(now, Relaxed);
        let is_gone = socket.gone();
        gone.store(is_gone, Relaxed);
        is_gone
    })
}

/// Binds `listen` on an `HttpServer`, with TLS when `tls` is given, and gives the
/// address bound. (A macro: the server's generic parameters are not nameable outside actix.)
macro_rules! bind_server {
    ($server:expr, $listen:expr, $tls:expr) => {{
        let listen: &str = $listen;
        let bound = match $tls {
            Some(files) => $server.bind_rustls_0_23(listen, crate::tls::server_config(files)?),
            None => $server.bind(listen),
        };
        let bound = bound.map_err(|e| ServeError::Bind {
            addr: listen.to_string(),
            message: e.to_string(),
        })?;
        let addr = *bound.addrs().first().ok_or_else(|| ServeError::Bind {
            addr: listen.to_string(),
            message: "no address bound".into(),
        })?;
        (bound, addr)
    }};
}
pub(crate) use bind_server;

/// Runs a request through the access check, then the app, logging it and
/// auditing every protected access (allowed or refused).
/// A body at least this large (by its Content-Length) waits for one of `LARGE_BODIES`.
const LARGE_BODY: usize = 8 * 1024 * 1024;
/// Requests with large bodies handled at once: parsing a body takes several times its
/// size, so eight 60 MB bundles at once would take gigabytes. The others wait (their
/// bodies unread, held back by TCP) instead of all being read and parsed together.
static LARGE_BODIES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

fn large_body(req: &actix_web::dev::ServiceRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n >= LARGE_BODY)
}

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
    let large = large_body(&req);
    let (rule, principal, denied) = match checked {
        Ok(c) => (c.rule, c.principal, None),
        Err(e) => (None, None, Some(e)),
    };
    // The handler does nothing (reads no body) until it is polled, below.
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
        let permit = if large { LARGE_BODIES.acquire().await.ok() } else { None };
        let res = fut.await;
        drop(permit);
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

/// Builds the node's app from `parts` and serves it on `config.listen`.
pub fn serve_node(parts: NodeParts) -> Result<Serving, ServeError> {
    let NodeParts {
        service,
        config,
        audit,
        audit_events,
        feeds,
        authority,
    } = parts;
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
        service,
        config: config.clone(),
        audit,
        audit_events,
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
                // SMART's discovery document, at the server root and at the FHIR base (where the
                // specification and its test kits look: `[base]/.well-known/smart-configuration`).
                for path in [
                    "/.well-known/smart-configuration",
                    "/fhir/.well-known/smart-configuration",
                ] {
                    route(
                        cfg,
                        NODE_ROUTES,
                        "GET",
                        path,
                        web::get().to(access::smart_configuration),
                    );
                }
                route(cfg, NODE_ROUTES, "POST", "/auth/token", web::post().to(access::token));
            })
            .configure(views::configure)
            .configure(regress::configure)
            .configure(pathways::configure)
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
    let (server, addr) = bind_server!(server, &config.listen, config.tls.as_ref());
    Ok(Serving::start(server.run(), addr))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_closed_client_socket_reads_as_gone_and_an_open_one_does_not() {
        use std::os::fd::AsFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let socket = super::ClientSocket(std::sync::Arc::new(server.as_fd().try_clone_to_owned().unwrap()));
        // A request's bytes waiting unread do not make the client gone.
        std::io::Write::write_all(&mut &client, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(!socket.gone());
        drop(client);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !socket.gone() {
            assert!(std::time::Instant::now() < deadline, "the close was never seen");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
