//! The FHIR RESTful API under `/fhir`.

use super::error::FHIR_JSON;
use super::AppState;
use crate::error::Error;
use crate::fhir::types::AUDIT_EVENT;
use crate::fhir::{outcome::operation_outcome, Id, Issue, IssueCode, ResourceType};
use crate::node::{self, Conditional, WriteOutcome, WriteResult};
use crate::search::{parse_query, SearchRequest};
use crate::store::{HistoryQuery, HistoryScope, Stored};
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::Value;

pub fn configure(cfg: &mut web::ServiceConfig) {
    use super::access::route;
    use crate::auth::NODE_ROUTES as T;
    route(cfg, T, "POST", "/fhir", web::post().to(bundle));
    route(cfg, T, "GET", "/fhir", web::get().to(system_get));
    route(cfg, T, "POST", "/fhir/", web::post().to(bundle));
    route(cfg, T, "GET", "/fhir/", web::get().to(system_get));
    route(cfg, T, "GET", "/fhir/metadata", web::get().to(metadata));
    route(cfg, T, "GET", "/fhir/_history", web::get().to(system_history));
    route(cfg, T, "GET", "/fhir/{type}", web::get().to(search_get));
    route(cfg, T, "POST", "/fhir/{type}", web::post().to(create));
    route(cfg, T, "PUT", "/fhir/{type}", web::put().to(conditional_update));
    route(cfg, T, "DELETE", "/fhir/{type}", web::delete().to(conditional_delete));
    route(cfg, T, "POST", "/fhir/{type}/_search", web::post().to(search_post));
    route(cfg, T, "GET", "/fhir/{type}/_history", web::get().to(type_history));
    route(cfg, T, "GET", "/fhir/{type}/{id}", web::get().to(read));
    route(cfg, T, "PUT", "/fhir/{type}/{id}", web::put().to(update));
    route(cfg, T, "DELETE", "/fhir/{type}/{id}", web::delete().to(delete));
    route(
        cfg,
        T,
        "PATCH",
        "/fhir/{type}/{id}",
        web::patch().to(patch_not_supported),
    );
    route(
        cfg,
        T,
        "GET",
        "/fhir/{type}/{id}/_history",
        web::get().to(instance_history),
    );
    route(cfg, T, "GET", "/fhir/{type}/{id}/_history/{vid}", web::get().to(vread));
}

/// What `Prefer` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

struct Prefer {
    ret: Return,
    strict: bool,
}

fn prefer(req: &HttpRequest) -> Prefer {
    let mut p = Prefer {
        ret: Return::Representation,
        strict: false,
    };
    for v in req.headers().get_all("prefer") {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split([',', ';']).map(str::trim) {
            match part {
                "return=minimal" => p.ret = Return::Minimal,
                "return=representation" => p.ret = Return::Representation,
                "return=OperationOutcome" => p.ret = Return::OperationOutcome,
                "handling=strict" => p.strict = true,
                "handling=lenient" => p.strict = false,
                _ => {}
            }
        }
    }
    p
}

pub(super) fn base_url(req: &HttpRequest, state: &AppState) -> String {
    match &state.config.public_url {
        Some(u) => format!("{u}/fhir"),
        None => {
            let ci = req.connection_info();
            format!("{}://{}/fhir", ci.scheme(), ci.host())
        }
    }
}

/// The resource type of a route's `{type}`: 404 for anything but a concrete R4 type.
pub(super) fn resource_type(name: &str) -> Result<ResourceType, Error> {
    ResourceType::parse(name).ok_or_else(|| Error::UnknownType(name.to_string()))
}

/// A route's `{id}`: 400 for anything but a FHIR id.
fn resource_id(id: &str) -> Result<Id, Error> {
    Id::parse(id).ok_or_else(|| {
        Error::invalid(Issue::error(
            IssueCode::Value,
            format!("'{id}' is not a valid resource id"),
        ))
    })
}

/// The one extractor of `{type}` routes: the handler gets a `ResourceType`.
pub(super) struct TypePath(pub ResourceType);

impl actix_web::FromRequest for TypePath {
    type Error = Error;
    type Future = std::future::Ready<Result<TypePath, Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(resource_type(req.match_info().get("type").unwrap_or_default()).map(TypePath))
    }
}

/// The one extractor of `{type}/{id}` routes: the handler gets a parsed type and id.
pub(super) struct InstancePath {
    pub rtype: ResourceType,
    pub id: Id,
}

impl actix_web::FromRequest for InstancePath {
    type Error = Error;
    type Future = std::future::Ready<Result<InstancePath, Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let m = req.match_info();
        std::future::ready((|| {
            Ok(InstancePath {
                rtype: resource_type(m.get("type").unwrap_or_default())?,
                id: resource_id(m.get("id").unwrap_or_default())?,
            })
        })())
    }
}

/// Rejects everything but FHIR JSON: a wrong body type is 415, not a parse error.
fn check_content_type(req: &HttpRequest) -> Result<(), Error> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/fhir+json" | "application/json" | "application/json+fhir" => Ok(()),
        "" => Err(Error::MediaType(
            "a Content-Type is required: application/fhir+json".into(),
        )),
        other => Err(Error::MediaType(format!(
            "Content-Type '{other}' is not supported; send application/fhir+json"
        ))),
    }
}

/// Refuses `_format` or `Accept` values other than JSON.
pub(super) fn check_accept(req: &HttpRequest) -> Result<(), Error> {
    let format = form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "_format")
        .map(|(_, v)| v.into_owned());
    if let Some(f) = format {
        if !matches!(
            f.as_str(),
            "json" | "application/json" | "application/fhir+json" | "application/json+fhir"
        ) {
            return Err(Error::NotAcceptable(format!(
                "_format '{f}' is not supported; this server speaks JSON"
            )));
        }
    }
    if let Some(accept) = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        let ok = accept.split(',').any(|a| {
            let m = a.split(';').next().unwrap_or("").trim();
            m.is_empty() || m == "*/*" || m.contains("json") || m == "application/*"
        });
        if !ok {
            return Err(Error::NotAcceptable(format!(
                "Accept '{accept}' is not supported; this server speaks JSON"
            )));
        }
    }
    Ok(())
}

/// Reads the body, refusing it as soon as it passes the configured limit.
pub(super) async fn read_body(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<web::Bytes, Error> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(Error::TooLarge { limit });
        }
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            Error::invalid(Issue::error(
                IssueCode::Incomplete,
                format!("reading the body failed: {e}"),
            ))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(Error::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

pub(super) async fn json_body(req: &HttpRequest, payload: web::Payload, state: &AppState) -> Result<web::Bytes, Error> {
    check_content_type(req)?;
    let body = read_body(req, payload, state.config.max_body_bytes).await?;
    if body.is_empty() {
        return Err(Error::invalid(Issue::error(
            IssueCode::Required,
            "the request has no body",
        )));
    }
    Ok(body)
}

/// The body as text, without a UTF-8 byte-order mark (some Windows senders add one).
fn body_text(body: &[u8]) -> Result<&str, Issue> {
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    std::str::from_utf8(body).map_err(|e| Issue::error(IssueCode::Structure, format!("the body is not UTF-8: {e}")))
}

pub(super) fn parse_json(body: &[u8]) -> Result<(Value, &str), Error> {
    let text = body_text(body).map_err(Error::invalid)?;
    let value = serde_json::from_str(text).map_err(Error::Json)?;
    if let Some(d) = crate::fhir::json::duplicate_key(text) {
        return Err(Error::invalid(Issue::error(
            IssueCode::Structure,
            format!(
                "the key '{}' is given twice in one object (line {}, column {}): JSON readers differ on which counts, so FHIR forbids it",
                d.key, d.line, d.column
            ),
        )));
    }
    Ok((value, text))
}

/// Runs blocking service work on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    match web::block(f).await {
        Ok(r) => r,
        Err(e) => Err(Error::Internal(e.to_string())),
    }
}

pub(super) fn query_pairs(req: &HttpRequest) -> Vec<(String, String)> {
    form_urlencoded::parse(req.query_string().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

fn http_date(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    header::HttpDate::from(t).to_string()
}

pub(super) fn resource_response(s: &Stored) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .insert_header((header::ETAG, etag(s.version)))
        .insert_header((header::LAST_MODIFIED, http_date(s.last_updated)))
        .body(s.json.as_deref().unwrap_or(b"{}").to_vec())
}

/// Whether the client may read resources of `rtype`: a write-only client (a
/// vendor) gets no resource back, so that a conditional create that matched
/// cannot show it what is stored.
fn may_read(req: &HttpRequest, rtype: &str) -> bool {
    super::access::principal_of(req)
        .is_some_and(|p| p.scopes.iter().any(|s| s.allows(rtype, crate::auth::scopes::Perms::R)))
}

fn write_response(r: WriteResult, prefer: Return, base: &str, req: &HttpRequest) -> HttpResponse {
    let prefer = if prefer == Return::Representation && !may_read(req, &r.rtype) {
        Return::Minimal
    } else {
        prefer
    };
    let status = match r.outcome {
        WriteOutcome::Created => actix_web::http::StatusCode::CREATED,
        WriteOutcome::Updated | WriteOutcome::Existing => actix_web::http::StatusCode::OK,
        WriteOutcome::Deleted | WriteOutcome::NothingToDelete => {
            if prefer == Return::OperationOutcome {
                actix_web::http::StatusCode::OK
            } else {
                actix_web::http::StatusCode::NO_CONTENT
            }
        }
    };
    let mut b = HttpResponse::build(status);
    if !r.issues.is_empty() {
        // The body stays what the client asked for; the issues are one header away, or in
        // full with `Prefer: return=OperationOutcome`.
        let (errors, others) = (r.flagged, r.issues.len() - r.flagged);
        let text = format!(
            "{errors} flagged profile error(s), {others} warning(s) or note(s); send Prefer: return=OperationOutcome to see them"
        );
        if let Ok(v) = HeaderValue::from_str(&text) {
            b.insert_header(("X-Pennine-Validation", v));
        }
    }
    if r.version > 0 && !r.id.is_empty() {
        b.insert_header((header::ETAG, etag(r.version)));
        b.insert_header((header::LAST_MODIFIED, http_date(r.last_updated)));
        if matches!(
            r.outcome,
            WriteOutcome::Created | WriteOutcome::Updated | WriteOutcome::Existing
        ) {
            let loc = format!("{base}/{}/{}/_history/{}", r.rtype, r.id, r.version);
            if let Ok(v) = HeaderValue::from_str(&loc) {
                b.insert_header((header::LOCATION, v.clone()));
                b.insert_header((header::CONTENT_LOCATION, v));
            }
        }
    }
    match (prefer, r.outcome) {
        (Return::OperationOutcome, outcome) => {
            let msg = match outcome {
                WriteOutcome::Created => format!("created {}/{}", r.rtype, r.id),
                WriteOutcome::Updated => format!("updated {}/{} to version {}", r.rtype, r.id, r.version),
                WriteOutcome::Existing => format!("{}/{} already matches; nothing was created", r.rtype, r.id),
                WriteOutcome::Deleted => format!("deleted {}/{}", r.rtype, r.id),
                WriteOutcome::NothingToDelete => "nothing to delete".to_string(),
            };
            let mut issues = vec![Issue::information(IssueCode::Informational, msg)];
            issues.extend(r.issues.iter().cloned());
            b.content_type(FHIR_JSON).body(operation_outcome(&issues).to_string())
        }
        (_, WriteOutcome::Deleted | WriteOutcome::NothingToDelete) | (Return::Minimal, _) => b.finish(),
        (Return::Representation, _) => match r.json {
            Some(j) => b.content_type(FHIR_JSON).body(j.to_vec()),
            None => b.finish(),
        },
    }
}

/// PATCH is not in the CapabilityStatement; say so rather than "no route".
async fn patch_not_supported() -> Result<HttpResponse, Error> {
    Err(Error::MethodNotAllowed(
        "PATCH is not supported by this server; use PUT with the whole resource".into(),
    ))
}

async fn metadata(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    check_accept(&req)?;
    let base = base_url(&req, &state);
    // The statement only changes with the base URL: build it once per base, not per request.
    let mut cached = state.metadata.lock().unwrap_or_else(|e| e.into_inner());
    let body = match cached.as_ref() {
        Some((b, body)) if *b == base => body.clone(),
        _ => {
            let body =
                web::Bytes::from(node::capability_statement(&state.service.registry, &base, "Pennine").to_string());
            *cached = Some((base, body.clone()));
            body
        }
    };
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(body))
}

async fn read(req: HttpRequest, path: InstancePath, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let InstancePath { rtype, id } = path;
    check_accept(&req)?;
    let svc = service_for(&state, rtype);
    let s = blocking(move || svc.read(rtype, &id)).await?;
    if let Some(inm) = req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        if inm
            .split(',')
            .any(|t| t.trim() == etag(s.version) || t.trim() == format!("\"{}\"", s.version))
        {
            return Ok(HttpResponse::NotModified()
                .insert_header((header::ETAG, etag(s.version)))
                .finish());
        }
    }
    Ok(resource_response(&s))
}

async fn vread(req: HttpRequest, path: InstancePath, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let InstancePath { rtype, id } = path;
    let vid = req.match_info().get("vid").unwrap_or_default().to_string();
    check_accept(&req)?;
    let version: u64 = vid.parse().map_err(|_| {
        Error::invalid(Issue::error(
            IssueCode::Value,
            format!("'{vid}' is not a version number"),
        ))
    })?;
    let svc = service_for(&state, rtype);
    let s = blocking(move || svc.vread(rtype, &id, version)).await?;
    Ok(resource_response(&s))
}

fn if_none_exist(req: &HttpRequest, state: &AppState, rtype: &str) -> Result<Conditional, Error> {
    let Some(h) = req.headers().get("if-none-exist") else {
        return Ok(Conditional::None);
    };
    let q = h
        .to_str()
        .map_err(|_| Error::invalid(Issue::error(IssueCode::Invalid, "If-None-Exist is not readable")))?;
    let q = q.split_once('?').map_or(q, |(_, q)| q);
    let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs.is_empty() {
        return Err(Error::invalid(Issue::error(
            IssueCode::Invalid,
            "If-None-Exist has no search parameters",
        )));
    }
    Ok(Conditional::Search(parse_query(
        &state.service.registry,
        rtype,
        &pairs,
        true,
        usize::MAX,
    )?))
}

fn if_match(req: &HttpRequest) -> Result<Option<u64>, Error> {
    let Some(h) = req.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = h.to_str().unwrap_or("");
    let v = s.trim().trim_start_matches("W/").trim_matches('"');
    v.parse().map(Some).map_err(|_| {
        Error::invalid(Issue::error(
            IssueCode::Invalid,
            format!("If-Match '{s}' is not a version ETag such as W/\"3\""),
        ))
    })
}

async fn create(
    req: HttpRequest,
    TypePath(rtype): TypePath,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let body = json_body(&req, payload, &state).await?;
    let cond = if_none_exist(&req, &state, &rtype)?;
    let svc = state.service.for_source(&source_of(&req));
    let result = blocking(move || {
        let (value, _) = parse_json(&body)?;
        svc.create(rtype, value, cond)
    })
    .await?;
    Ok(write_response(result, prefer(&req).ret, &base_url(&req, &state), &req))
}

/// The source that quality figures attribute a REST write to: the client.
pub(super) fn source_of(req: &HttpRequest) -> String {
    match super::access::principal_of(req) {
        Some(p) => format!("client:{}", p.client_id),
        None => "client:anonymous".into(),
    }
}

async fn update(
    req: HttpRequest,
    path: InstancePath,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let InstancePath { rtype, id } = path;
    let body = json_body(&req, payload, &state).await?;
    let version = if_match(&req)?;
    let svc = state.service.for_source(&source_of(&req));
    let result = blocking(move || {
        let (value, _) = parse_json(&body)?;
        svc.update(rtype, &id, value, version)
    })
    .await?;
    Ok(write_response(result, prefer(&req).ret, &base_url(&req, &state), &req))
}

fn conditional_query(req: &HttpRequest, state: &AppState, rtype: &str) -> Result<SearchRequest, Error> {
    let pairs = query_pairs(req);
    if pairs.is_empty() {
        return Err(Error::invalid(Issue::error(
            IssueCode::Invalid,
            format!("a conditional interaction on {rtype} needs search parameters"),
        )));
    }
    Ok(parse_query(&state.service.registry, rtype, &pairs, true, usize::MAX)?)
}

async fn conditional_update(
    req: HttpRequest,
    TypePath(rtype): TypePath,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let query = conditional_query(&req, &state, &rtype)?;
    let body = json_body(&req, payload, &state).await?;
    let version = if_match(&req)?;
    let svc = state.service.for_source(&source_of(&req));
    let result = blocking(move || {
        let (value, _) = parse_json(&body)?;
        svc.conditional_update(rtype, query, value, version)
    })
    .await?;
    Ok(write_response(result, prefer(&req).ret, &base_url(&req, &state), &req))
}

async fn delete(req: HttpRequest, path: InstancePath, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let InstancePath { rtype, id } = path;
    let svc = state.service.clone();
    let result = blocking(move || svc.delete(rtype, &id)).await?;
    Ok(write_response(result, prefer(&req).ret, &base_url(&req, &state), &req))
}

async fn conditional_delete(
    req: HttpRequest,
    TypePath(rtype): TypePath,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let query = conditional_query(&req, &state, &rtype)?;
    let svc = state.service.clone();
    let result = blocking(move || svc.conditional_delete(query)).await?;
    Ok(write_response(result, prefer(&req).ret, &base_url(&req, &state), &req))
}

fn self_query(rtype: &str, pairs: &[(String, String)], parsed: &SearchRequest) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !parsed.ignored.contains(k) && k != "_format" {
            ser.append_pair(k, v);
        }
    }
    let q = ser.finish();
    if q.is_empty() {
        rtype.to_string()
    } else {
        format!("{rtype}?{q}")
    }
}

async fn run_search(
    req: &HttpRequest,
    state: &AppState,
    rtype: ResourceType,
    pairs: Vec<(String, String)>,
) -> Result<HttpResponse, Error> {
    check_accept(req)?;
    let strict = prefer(req).strict;
    let parsed = parse_query(
        &state.service.registry,
        &rtype,
        &pairs,
        strict,
        state.service.settings.max_count,
    )?;
    let ctx = node::SearchContext {
        base: base_url(req, state),
        self_query: self_query(&rtype, &pairs, &parsed),
        cancel: super::cancel_on_disconnect(req),
    };
    let svc = service_for(state, rtype);
    let bytes = blocking(move || svc.search_bytes(parsed, &ctx)).await?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(bytes))
}

async fn search_get(req: HttpRequest, path: TypePath, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let pairs = query_pairs(&req);
    run_search(&req, &state, path.0, pairs).await
}

async fn search_post(
    req: HttpRequest,
    path: TypePath,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = read_body(&req, payload, state.config.max_body_bytes).await?;
    if !body.is_empty() && !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(Error::MediaType(
            "POST _search takes application/x-www-form-urlencoded parameters".into(),
        ));
    }
    let mut pairs = query_pairs(&req);
    pairs.extend(form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())));
    run_search(&req, &state, path.0, pairs).await
}

async fn system_get(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    check_accept(&req)?;
    let pairs = query_pairs(&req);
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(page) = get("_getpages") else {
        return Err(Error::invalid(Issue::error(
            IssueCode::NotSupported,
            "system-level search is not supported; search a resource type (GET /fhir/Patient?...)",
        )));
    };
    let offset: usize = get("_getpagesoffset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let count: Option<usize> = get("_count").and_then(|v| v.parse().ok());
    let ctx = node::SearchContext {
        base: base_url(&req, &state),
        self_query: String::new(),
        cancel: Default::default(),
    };
    let svc = state.service.clone();
    let bytes = blocking(move || svc.search_page(&page, offset, count, &ctx)).await?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(bytes))
}

/// The FHIR service that holds `rtype`: AuditEvents live in the audit trail's own store.
fn service_for(state: &AppState, rtype: ResourceType) -> node::FhirService {
    if rtype == AUDIT_EVENT {
        state.audit_events.clone()
    } else {
        state.service.clone()
    }
}

/// Every entry of a batch or transaction must be allowed to the client on its own:
/// a bundle is not a way around the access table.
fn entry_allowed(p: &crate::auth::Principal, i: usize, method: &str, url: &str) -> Result<(), Error> {
    crate::auth::policy::decide_entry(p, method, url).map_err(|why| {
        Error::Forbidden(Issue {
            expression: Some(format!("Bundle.entry[{i}].request")),
            ..Issue::error(IssueCode::Forbidden, why)
        })
    })
}

async fn bundle(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let body = json_body(&req, payload, &state).await?;
    // Resources come back in the response only to clients who may read every type.
    let representation =
        prefer(&req).ret == Return::Representation && req.headers().contains_key("prefer") && may_read(&req, "*");
    let svc = state.service.for_source(&source_of(&req));
    let principal = super::access::principal_of(&req);
    let outcome = blocking(move || {
        let text = body_text(&body).map_err(Error::invalid)?;
        match &principal {
            Some(p) => svc.process_bundle_checked(text, &|i, m, u| entry_allowed(p, i, m, u)),
            None => svc.process_bundle(text),
        }
    })
    .await?;
    let reply = node::response_bundle(&outcome, representation);
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(reply.to_string()))
}

fn history_query(req: &HttpRequest, state: &AppState, scope: HistoryScope) -> Result<HistoryQuery, Error> {
    let pairs = query_pairs(req);
    let mut q = HistoryQuery {
        scope,
        since: None,
        at_or_before: None,
        limit: state.service.settings.default_count,
        offset: 0,
    };
    for (k, v) in &pairs {
        let bad = |what: &str| Error::invalid(Issue::error(IssueCode::Value, format!("{k}: {what}")));
        match k.as_str() {
            "_count" => {
                q.limit = v
                    .parse::<usize>()
                    .map_err(|_| bad("not a number"))?
                    .clamp(1, state.service.settings.max_count)
            }
            "_since" => {
                q.since = Some(
                    crate::fhir::time::parse_range(v)
                        .ok_or_else(|| bad("not an instant"))?
                        .0,
                )
            }
            "_at" => q.at_or_before = Some(crate::fhir::time::parse_range(v).ok_or_else(|| bad("not a date"))?.1),
            "_getpagesoffset" => q.offset = v.parse().map_err(|_| bad("not a number"))?,
            "_getpagesbefore" => q.at_or_before = Some(v.parse().map_err(|_| bad("not a number"))?),
            "_format" | "_pretty" => {}
            other => {
                if prefer(req).strict {
                    return Err(Error::invalid(Issue::error(
                        IssueCode::NotSupported,
                        format!("unknown history parameter '{other}'"),
                    )));
                }
            }
        }
    }
    Ok(q)
}

async fn history(req: HttpRequest, state: &AppState, scope: HistoryScope, path: String) -> Result<HttpResponse, Error> {
    check_accept(&req)?;
    let q = history_query(&req, state, scope)?;
    let ctx = node::SearchContext {
        base: base_url(&req, state),
        self_query: String::new(),
        cancel: Default::default(),
    };
    let self_q = if req.query_string().is_empty() {
        path
    } else {
        format!("{path}?{}", req.query_string())
    };
    let svc = match &q.scope {
        HistoryScope::Type(t) | HistoryScope::Instance(t, _) if t == AUDIT_EVENT.as_str() => state.audit_events.clone(),
        HistoryScope::Type(_) | HistoryScope::Instance(..) => state.service.clone(),
        HistoryScope::System => state.service.clone(),
    };
    let bytes = blocking(move || svc.history(q, &ctx, &self_q)).await?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(bytes))
}

async fn system_history(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    history(req, &state, HistoryScope::System, "_history".into()).await
}

async fn type_history(req: HttpRequest, path: TypePath, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let rtype = path.0;
    let p = format!("{rtype}/_history");
    history(req, &state, HistoryScope::Type(rtype.to_string()), p).await
}

async fn instance_history(
    req: HttpRequest,
    path: InstancePath,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let InstancePath { rtype, id } = path;
    let svc = state.service.clone();
    let i2 = id.clone();
    // History of something never written is a 404, as for read.
    let exists = blocking(move || Ok(svc.store.read(&rtype, &i2)?.is_some())).await?;
    if !exists {
        return Err(Error::NotFound(rtype.to_string(), id.to_string()));
    }
    let p = format!("{rtype}/{id}/_history");
    history(
        req,
        &state,
        HistoryScope::Instance(rtype.to_string(), id.to_string()),
        p,
    )
    .await
}
