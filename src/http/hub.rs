//! The hub's HTTP API: `$aggregate`, federated `_summary=count`, its own audit
//! trail, health and metadata. Nothing here returns a resource or a row of
//! patient data: the hub holds none.

use super::error::FHIR_JSON;
use super::fhir::{check_accept, query_pairs, read_body};
use super::regress::wants_csv;
use super::{ServeError, Serving};
use crate::audit::AuditLog;
use crate::auth::Authority;
use crate::auth::{Server, HUB_ROUTES};
use crate::error::Error;
use crate::federation::regress::RegressQuery;
use crate::federation::AggregateQuery;
use crate::fhir::{Issue, IssueCode};
use crate::hub::{Adjustment, Answer, Hub};
use crate::node::FhirService;
use crate::search::parse_query;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use std::sync::Arc;

/// The FHIR service over the hub's audit store (AuditEvent searches).
pub(super) struct AuditEvents(pub(super) FhirService);

/// `GET /fhir/Measure`: the pathways the hub runs, searched as a node searches
/// (the audit store's service serves them; it stores no Measure).
async fn measures(
    req: HttpRequest,
    hub: web::Data<Hub>,
    audit_events: web::Data<AuditEvents>,
) -> Result<HttpResponse, Error> {
    let svc = audit_events.0.clone();
    let parsed = parse_query(
        &svc.registry,
        "Measure",
        &query_pairs(&req),
        false,
        svc.settings.max_count,
    )?;
    let ctx = crate::node::SearchContext {
        base: hub_base(&req, &hub),
        self_query: format!("Measure?{}", req.query_string()),
        cancel: Default::default(),
    };
    let bytes = super::fhir::blocking(move || svc.search_bytes(parsed, &ctx)).await?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(bytes))
}

async fn measure(path: web::Path<String>, audit_events: web::Data<AuditEvents>) -> Result<HttpResponse, Error> {
    let raw = path.into_inner();
    let id = crate::fhir::Id::parse(&raw).ok_or_else(|| Error::NotFound("Measure".into(), raw.clone()))?;
    let svc = audit_events.0.clone();
    let s = super::fhir::blocking(move || svc.read(crate::fhir::types::MEASURE, &id)).await?;
    Ok(super::fhir::resource_response(&s))
}

fn hub_base(req: &HttpRequest, hub: &Hub) -> String {
    match &hub.config.public_url {
        Some(u) => format!("{u}/fhir"),
        None => {
            let ci = req.connection_info();
            format!("{}://{}/fhir", ci.scheme(), ci.host())
        }
    }
}

/// `Measure/{id}/$evaluate-measure` across the regions, through the gate.
async fn evaluate_measure(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    hub: web::Data<Hub>,
) -> Result<HttpResponse, Error> {
    let id = path.into_inner();
    if hub.pathways.get(&id).is_none() {
        return Err(Error::NotFound("Measure".into(), id));
    }
    let period = super::pathways::period_of_request(&query_pairs(&req), &body)?;
    admit(&hub, &req).await?;
    let raw = format!(
        "Measure/{id}/$evaluate-measure?periodStart={}&periodEnd={}",
        period.start, period.end
    );
    let report = hub
        .evaluate_measure(&id, &period.start, &period.end, &raw, &who(&req))
        .await?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(report.to_string()))
}

/// `Measure/{id}/$benchmark?periodStart=&periodEnd=&group=mortality` (`_format=csv`: the provider table).
async fn benchmark(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    hub: web::Data<Hub>,
) -> Result<HttpResponse, Error> {
    let id = path.into_inner();
    if hub.pathways.get(&id).is_none() {
        return Err(Error::NotFound("Measure".into(), id));
    }
    let mut pairs = query_pairs(&req);
    let take = |pairs: &mut Vec<(String, String)>, k: &str| {
        let v = pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        pairs.retain(|(n, _)| n != k);
        v
    };
    let format = take(&mut pairs, "_format");
    let group = take(&mut pairs, "group").unwrap_or_else(|| crate::pathways::MORTALITY.to_string());
    let predictors = take(&mut pairs, "predictors");
    let adjustment = match (take(&mut pairs, "adjustment").as_deref(), predictors) {
        (None | Some("indirect"), None) => Adjustment::Indirect,
        (Some("logistic"), p) => Adjustment::Logistic(
            p.as_deref()
                .unwrap_or("age,sex")
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        ),
        (None | Some("indirect"), Some(_)) => {
            return Err(Error::invalid(Issue::error(
                IssueCode::Invalid,
                "'predictors' is for adjustment=logistic",
            )))
        }
        (Some(other), _) => {
            return Err(Error::invalid(Issue::error(
                IssueCode::Invalid,
                format!("unknown adjustment '{other}' (indirect, logistic)"),
            )))
        }
    };
    let period = super::pathways::period_of_request(&pairs, &body)?;
    let csv = match format.as_deref() {
        None | Some("json") | Some("application/json") => false,
        Some("csv") | Some("text/csv") => true,
        Some(other) => {
            return Err(Error::NotAcceptable(format!(
                "_format '{other}': $benchmark answers json or csv"
            )))
        }
    };
    admit(&hub, &req).await?;
    let raw = format!(
        "Measure/{id}/$benchmark?periodStart={}&periodEnd={}&group={group}{}",
        period.start,
        period.end,
        match &adjustment {
            Adjustment::Indirect => String::new(),
            Adjustment::Logistic(p) => format!("&adjustment=logistic&predictors={}", p.join(",")),
        }
    );
    let (reply, release) = hub
        .benchmark(&id, &period.start, &period.end, &group, &adjustment, &raw, &who(&req))
        .await?;
    Ok(if csv {
        HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .body(release.csv())
    } else {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(reply.to_string())
    })
}

fn who(req: &HttpRequest) -> String {
    super::access::who(super::access::principal_of(req).as_ref(), req)
}

/// The rate limit, per client, on aggregate questions and federated counts.
/// On the blocking pool: the counts may be in PostgreSQL, shared by every hub process.
async fn admit(hub: &web::Data<Hub>, req: &HttpRequest) -> Result<(), Error> {
    let client = super::access::principal_of(req).map_or_else(|| who(req), |p| p.client_id);
    let (counter, asker) = (hub.clone(), client.clone());
    let admitted = web::block(move || counter.admit(&asker))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    admitted.map_err(|retry_after| Error::RateLimited {
        retry_after,
        message: format!(
            "client '{client}' asked more than {} aggregate questions in a minute; retry in {retry_after} s",
            hub.config.aggregate_rate
        ),
    })
}

async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

async fn ready(hub: web::Data<Hub>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "ready",
        "role": "hub",
        "regions": hub.config.nodes.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
    }))
}

/// The server's root URL as the client reached it.
fn root_of(req: &HttpRequest) -> String {
    let ci = req.connection_info();
    format!("{}://{}", ci.scheme(), ci.host())
}

async fn metadata(req: HttpRequest, hub: web::Data<Hub>) -> HttpResponse {
    let statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": crate::fhir::time::format_instant(0).get(..10).unwrap_or("1970-01-01"),
        "kind": "instance",
        "software": {"name": "Pennine hub", "version": env!("CARGO_PKG_VERSION")},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": format!(
                "Federates aggregate questions across {}; patient-level data never leaves a region. \
                 Searches answer only with _summary=count, pooled under disclosure control.",
                hub.config.nodes.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>().join(", ")
            ),
            "resource": [{"type": "AuditEvent", "interaction": [{"code": "search-type"}]}],
            "security": crate::node::smart_security(&root_of(&req)),
            "interaction": [{"code": "search-system"}],
            "operation": [{"name": "aggregate", "definition": "https://pennine.nhs.example/fhir/OperationDefinition/aggregate"}]
        }]
    });
    HttpResponse::Ok().content_type(FHIR_JSON).body(statement.to_string())
}

/// `GET /quality`: every region's data-quality figures per resource type, with each region's status.
async fn quality(hub: web::Data<Hub>) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(hub.quality().await?))
}

/// The JSON body of a hub operation (at most 1 MiB), as text and value.
async fn json_question(req: &HttpRequest, payload: web::Payload) -> Result<(String, Value), Error> {
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(ct.is_empty() || ct.starts_with("application/json") || ct.starts_with("application/fhir+json")) {
        return Err(Error::MediaType(format!(
            "Content-Type '{ct}' is not supported; send application/json"
        )));
    }
    let body = read_body(req, payload, 1024 * 1024).await?;
    let (value, text) = super::fhir::parse_json(&body)?;
    Ok((text.to_string(), value))
}

/// `POST /fhir/$regress`: a GLM fitted across the regions (`hub::regress`).
async fn regress(req: HttpRequest, payload: web::Payload, hub: web::Data<Hub>) -> Result<HttpResponse, Error> {
    let csv = wants_csv(&req)?;
    let (text, value) = json_question(&req, payload).await?;
    let q = RegressQuery::parse(&value).map_err(|p| {
        Error::invalid(Issue {
            expression: (!p.expression.is_empty()).then_some(p.expression),
            ..Issue::error(IssueCode::Invalid, p.message)
        })
    })?;
    // An identical question within the cache window gets the same model again.
    let key = format!("regress {q:?}");
    let reply = match hub.cached(&key) {
        Some(Answer::Regress(r)) => r,
        _ => {
            admit(&hub, &req).await?;
            let r = std::sync::Arc::new(hub.regress(q, &text, &who(&req)).await?);
            if r["status"] == "complete" {
                hub.remember(key, &Answer::Regress(r.clone()));
            }
            r
        }
    };
    Ok(if csv {
        HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .body(crate::federation::regress::coefficients_csv(&reply))
    } else {
        HttpResponse::Ok().json(&*reply)
    })
}

async fn aggregate(req: HttpRequest, payload: web::Payload, hub: web::Data<Hub>) -> Result<HttpResponse, Error> {
    let csv = wants_csv(&req)?;
    let (text, value) = json_question(&req, payload).await?;
    let text = text.as_str();
    let q = AggregateQuery::parse(&value).map_err(|p| {
        Error::invalid(Issue {
            expression: (!p.expression.is_empty()).then_some(p.expression),
            ..Issue::error(IssueCode::Invalid, p.message)
        })
    })?;
    // An identical question within the cache window gets the released answer again.
    let key = format!("aggregate {q:?}");
    let reply = match hub.cached(&key) {
        Some(Answer::Aggregate(r)) => r,
        _ => {
            admit(&hub, &req).await?;
            let r = std::sync::Arc::new(hub.aggregate(q, text, &who(&req)).await?);
            hub.remember(key, &Answer::Aggregate(r.clone()));
            r
        }
    };
    Ok(if csv {
        HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .body(reply.to_csv())
    } else {
        HttpResponse::Ok().json(reply.to_json())
    })
}

async fn search(
    req: HttpRequest,
    path: web::Path<String>,
    hub: web::Data<Hub>,
    audit_events: web::Data<AuditEvents>,
) -> Result<HttpResponse, Error> {
    let rtype = path.into_inner();
    let rtype = super::fhir::resource_type(&rtype)?;
    check_accept(&req)?;
    let pairs = query_pairs(&req);
    let summary_count = pairs.iter().any(|(k, v)| k == "_summary" && v == "count");
    if summary_count {
        let mut params: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| k != "_summary" && k != "_count" && k != "_format")
            .cloned()
            .collect();
        params.sort();
        let key = format!("count {rtype}?{params:?}");
        if let Some(Answer::Count(b)) = hub.cached(&key) {
            return Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(b.to_string()));
        }
        admit(&hub, &req).await?;
        let bundle = hub.count(&rtype, &params, &who(&req)).await?;
        hub.remember(key, &Answer::Count(bundle.clone()));
        return Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(bundle.to_string()));
    }
    if rtype == crate::fhir::types::AUDIT_EVENT {
        // The hub's own audit trail (administrators; access control guards it).
        let svc = audit_events.0.clone();
        let parsed = parse_query(&svc.registry, &rtype, &pairs, false, svc.settings.max_count)?;
        let ci = req.connection_info().clone();
        let ctx = crate::node::SearchContext {
            base: format!("{}://{}/fhir", ci.scheme(), ci.host()),
            self_query: format!("AuditEvent?{}", req.query_string()),
            cancel: Default::default(),
        };
        let bytes = super::fhir::blocking(move || svc.search_bytes(parsed, &ctx)).await?;
        return Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(bytes));
    }
    Err(Error::forbidden(format!(
        "the hub answers searches only with _summary=count ({rtype}?...&_summary=count): patient-level data never leaves a region"
    )))
}

async fn no_route(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    Error::NoRoute(format!(
        "no route for {} {} on the hub (POST /fhir/$aggregate, GET /fhir/<type>?_summary=count)",
        req.method(),
        req.path()
    ))
    .error_response()
}

/// What the web view signs people in with: local accounts and sessions, and the
/// identity provider when one is configured.
pub struct WebParts {
    pub people: Arc<crate::auth::People>,
    pub oidc: Option<Arc<crate::hub::oidc::RelyingParty>>,
}

/// Builds the hub's app and serves it on its configured address.
pub fn serve_hub(
    hub: Hub,
    audit: Arc<AuditLog>,
    audit_events: FhirService,
    authority: Arc<Authority>,
    parts: WebParts,
) -> Result<Serving, ServeError> {
    let config = hub.config.clone();
    let web_state = web::Data::new(super::app::WebState {
        people: parts.people,
        oidc: parts.oidc,
        labels: config.benchmark_labels,
    });
    let access = web::Data::new(super::access::Access::new(
        authority,
        Server::Hub,
        HUB_ROUTES,
        audit,
        "hub".into(),
        config.public_url.clone(),
    ));
    let audit_events = web::Data::new(AuditEvents(audit_events));
    let data = web::Data::new(hub.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(audit_events.clone())
            .app_data(web_state.clone())
            .app_data(access.clone())
            .wrap_fn({
                let access = access.clone();
                move |req, srv| {
                    let checked = super::access::check(&access, &req);
                    super::guard(access.clone(), req, srv, checked)
                }
            })
            .configure(|cfg| {
                use super::access::{route, smart_configuration, token};
                let t = HUB_ROUTES;
                route(cfg, t, "GET", "/health", web::get().to(health));
                route(cfg, t, "GET", "/ready", web::get().to(ready));
                for path in [
                    "/.well-known/smart-configuration",
                    "/fhir/.well-known/smart-configuration",
                ] {
                    route(cfg, t, "GET", path, web::get().to(smart_configuration));
                }
                route(cfg, t, "POST", "/auth/token", web::post().to(token));
                route(cfg, t, "GET", "/fhir/metadata", web::get().to(metadata));
                route(cfg, t, "POST", "/fhir/$aggregate", web::post().to(aggregate));
                route(cfg, t, "POST", "/fhir/$regress", web::post().to(regress));
                route(cfg, t, "GET", "/fhir/Measure", web::get().to(measures));
                route(cfg, t, "GET", "/fhir/Measure/{id}", web::get().to(measure));
                route(
                    cfg,
                    t,
                    "GET",
                    "/fhir/Measure/{id}/$evaluate-measure",
                    web::get().to(evaluate_measure),
                );
                route(
                    cfg,
                    t,
                    "POST",
                    "/fhir/Measure/{id}/$evaluate-measure",
                    web::post().to(evaluate_measure),
                );
                route(cfg, t, "GET", "/fhir/Measure/{id}/$benchmark", web::get().to(benchmark));
                route(
                    cfg,
                    t,
                    "POST",
                    "/fhir/Measure/{id}/$benchmark",
                    web::post().to(benchmark),
                );
                route(cfg, t, "GET", "/quality", web::get().to(quality));
                route(cfg, t, "GET", "/fhir/{type}", web::get().to(search));
                super::app::configure(cfg);
            })
            .default_service(web::to(no_route))
    })
    .workers(config.workers)
    .disable_signals()
    .shutdown_timeout(10);
    let (server, addr) = super::bind_server!(server, &config.listen, config.tls.as_ref());
    Ok(Serving::start(server.run(), addr))
}
