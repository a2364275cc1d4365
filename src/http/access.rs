//! Access control over HTTP: the token endpoint, the SMART configuration, route
//! registration through the access table, and the check every request passes
//! (401 with `WWW-Authenticate` without a valid token, 403 with an
//! OperationOutcome when the token does not allow the route).

use crate::audit::{AuditLog, AuditRecord};
use crate::auth::policy::{self, Facts, RouteRule, Rule, Server};
use crate::auth::tokens::{OAuthError, ASSERTION_TYPE, TOKEN_SECONDS};
use crate::auth::{Authority, Principal};
use crate::error::Error;
use actix_web::dev::{ResourceDef, ServiceRequest};
use actix_web::http::Method;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use base64::Engine;
use serde_json::json;
use std::sync::Arc;

/// Everything the access check needs, shared by all workers.
pub struct Access {
    pub authority: Arc<Authority>,
    pub server: Server,
    pub audit: Arc<AuditLog>,
    /// `node nenc` or `hub`, for audit records.
    pub observer: String,
    pub public_url: Option<String>,
    rules: Vec<(Method, ResourceDef, Rule)>,
}

impl Access {
    pub fn new(
        authority: Arc<Authority>,
        server: Server,
        table: &'static [RouteRule],
        audit: Arc<AuditLog>,
        observer: String,
        public_url: Option<String>,
    ) -> Access {
        let rules = table
            .iter()
            .map(|r| {
                (
                    Method::from_bytes(r.method.as_bytes()).expect("a valid method in the access table"),
                    ResourceDef::new(r.path),
                    r.rule,
                )
            })
            .collect();
        Access {
            authority,
            server,
            audit,
            observer,
            public_url,
            rules,
        }
    }

    /// The rule of the first table entry that matches, as the router would pick it, with its `{type}`.
    pub fn rule_for(&self, method: &Method, path: &str) -> Option<(Rule, Option<String>)> {
        for (m, def, rule) in &self.rules {
            if m != method {
                continue;
            }
            let mut p = actix_web::dev::Path::new(path.to_string());
            if def.capture_match_info(&mut p) {
                return Some((*rule, p.get("type").map(str::to_string)));
            }
        }
        None
    }
}

/// Registers `path` for `method`, refusing (at start-up) a route the access
/// table does not list: a route cannot exist without its rule.
pub fn route(cfg: &mut web::ServiceConfig, table: &[RouteRule], method: &str, path: &str, handler: actix_web::Route) {
    assert!(
        table.iter().any(|r| r.method == method && r.path == path),
        "route {method} {path} has no entry in the access table (src/auth/policy.rs)"
    );
    cfg.route(path, handler);
}

fn bearer(req: &ServiceRequest) -> Option<&str> {
    let h = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// What the check concluded: the route's rule and, for protected routes, who.
pub struct Checked {
    pub rule: Option<Rule>,
    pub principal: Option<Principal>,
}

/// The check every request passes before routing.
pub fn check(access: &Access, req: &ServiceRequest) -> Result<Checked, Error> {
    let Some((rule, rtype)) = access.rule_for(req.method(), req.path()) else {
        // No route: the router answers 404/405.
        return Ok(Checked {
            rule: None,
            principal: None,
        });
    };
    if matches!(rule, Rule::Public | Rule::HubCertificate | Rule::Page) {
        return Ok(Checked {
            rule: Some(rule),
            principal: None,
        });
    }
    let Some(token) = bearer(req) else {
        return Err(Error::Unauthorized(if access.authority.clients.is_none() {
            "this server has no registered clients, so every protected route is closed: start it with --clients <file> (see README, Access control)".into()
        } else {
            "an access token is required: get one from /auth/token (see /.well-known/smart-configuration)".into()
        }));
    };
    let principal = access.authority.verify(token).map_err(Error::Unauthorized)?;
    let summary_count =
        form_urlencoded::parse(req.query_string().as_bytes()).any(|(k, v)| k == "_summary" && v == "count");
    let facts = Facts {
        rtype: rtype.as_deref(),
        summary_count,
    };
    policy::decide(&access.server, rule, &principal, &facts).map_err(Error::forbidden)?;
    req.extensions_mut().insert(principal.clone());
    Ok(Checked {
        rule: Some(rule),
        principal: Some(principal),
    })
}

/// The audit action of a rule.
pub fn action(rule: Rule) -> &'static str {
    match rule {
        Rule::Public => "public",
        Rule::HubCertificate => "federation",
        Rule::Read => "read",
        Rule::Search => "search",
        Rule::History => "history",
        Rule::Create => "create",
        Rule::Update => "update",
        Rule::Delete => "delete",
        Rule::Bundle => "transaction",
        Rule::ViewRun => "view-run",
        Rule::Aggregate => "aggregate",
        Rule::EvaluateMeasure => "evaluate-measure",
        Rule::HubSearch => "count",
        Rule::Feed => "feed",
        Rule::FeedAdmin => "dead-letters",
        Rule::Validate => "validate",
        Rule::Quality | Rule::HubQuality => "quality",
        Rule::Page => "page",
    }
}

/// Records one access (allowed or refused) in the audit trail.
pub fn audit_access(access: &Access, who: &str, action: &str, method: &str, target: &str, status: u16) {
    let outcome = match status {
        200..=399 => Ok(()),
        401 => Err("refused: no valid access token"),
        403 => Err("refused: not allowed"),
        429 => Err("refused: rate limit"),
        _ => Err("failed"),
    };
    access.audit.record(&AuditRecord {
        action,
        who,
        observer: &access.observer,
        outcome,
        query: &format!("{method} {target}"),
        details: vec![("status", status.to_string())],
    });
}

pub fn principal_of(req: &HttpRequest) -> Option<Principal> {
    req.extensions().get::<Principal>().cloned()
}

pub fn who(p: Option<&Principal>, req: &HttpRequest) -> String {
    match p {
        Some(p) => format!("{} ({})", p.client_id, p.roles_text()),
        None => match req.peer_addr() {
            Some(a) => format!("unauthenticated client at {}", a.ip()),
            None => "unauthenticated client".into(),
        },
    }
}

fn base(req: &HttpRequest, access: &Access) -> String {
    match &access.public_url {
        Some(u) => u.clone(),
        None => {
            let ci = req.connection_info();
            format!("{}://{}", ci.scheme(), ci.host())
        }
    }
}

pub async fn smart_configuration(req: HttpRequest, access: web::Data<Access>) -> HttpResponse {
    let base = base(&req, &access);
    let mut scopes: Vec<String> = vec!["system/*.cruds".into()];
    for role in [
        crate::auth::Role::Vendor,
        crate::auth::Role::Analyst,
        crate::auth::Role::Partner,
        crate::auth::Role::Admin,
    ] {
        for s in role.allowed_scopes() {
            let s = s.to_string();
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
    }
    HttpResponse::Ok().json(json!({
        "token_endpoint": format!("{base}/auth/token"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": scopes,
        "capabilities": ["client-confidential-asymmetric", "permission-v2"],
    }))
}

fn oauth_error(e: &OAuthError, basic: bool) -> HttpResponse {
    let mut res = HttpResponse::build(
        actix_web::http::StatusCode::from_u16(e.status).unwrap_or(actix_web::http::StatusCode::BAD_REQUEST),
    );
    res.insert_header(("cache-control", "no-store"));
    if e.status == 401 && basic {
        res.insert_header(("www-authenticate", "Basic realm=\"pennine\""));
    }
    if e.status == 429 {
        let secs = e
            .description
            .split_whitespace()
            .find_map(|w| w.parse::<u64>().ok())
            .unwrap_or(1);
        res.insert_header(("retry-after", secs.to_string()));
    }
    res.json(json!({"error": e.error, "error_description": e.description}))
}

/// `POST /auth/token`: OAuth 2.0 client credentials.
pub async fn token(req: HttpRequest, body: web::Bytes, access: web::Data<Access>) -> HttpResponse {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let basic = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic ").or_else(|| h.strip_prefix("basic ")))
        .map(str::to_string);
    let token_url = format!("{}/auth/token", base(&req, &access));
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let peer = req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    // On the blocking pool: signatures are checked there, and replayed assertions and
    // failed secrets are kept in the node's store (shared by its processes).
    let authority = access.clone();
    let used_basic = basic.is_some();
    let result = web::block(move || -> Result<_, OAuthError> {
        let access = authority;
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if !ct.starts_with("application/x-www-form-urlencoded") {
            return Err(OAuthError {
                status: 400,
                error: "invalid_request",
                description: "send the token request as application/x-www-form-urlencoded".into(),
            });
        }
        if get("grant_type") != Some("client_credentials") {
            return Err(OAuthError {
                status: 400,
                error: "unsupported_grant_type",
                description: "only grant_type=client_credentials is supported".into(),
            });
        }
        let client = match (get("client_assertion_type"), get("client_assertion"), &basic) {
            (Some(ASSERTION_TYPE), Some(assertion), None) => access.authority.client_from_assertion(assertion, &token_url)?,
            (Some(t), Some(_), None) => {
                return Err(OAuthError {
                    status: 400,
                    error: "invalid_request",
                    description: format!("client_assertion_type must be {ASSERTION_TYPE}, not {t}"),
                })
            }
            (None, None, Some(b)) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok())
                    .ok_or_else(|| OAuthError {
                        status: 401,
                        error: "invalid_client",
                        description: "the Basic credentials are not base64 of id:secret".into(),
                    })?;
                let (id, secret) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
                let id: String = form_urlencoded::parse(format!("x={id}").as_bytes()).map(|(_, v)| v.into_owned()).next().unwrap_or_default();
                let secret: String = form_urlencoded::parse(format!("x={secret}").as_bytes())
                    .map(|(_, v)| v.into_owned())
                    .next()
                    .unwrap_or_default();
                // Guessing is slowed per client id and per address, before any check.
                let keys = vec![
                    format!("client:{}", id.chars().take(128).collect::<String>()),
                    format!("addr:{peer}"),
                ];
                let throttle = &access.authority.throttle;
                if let Err(wait) = throttle.check(&keys) {
                    return Err(OAuthError {
                        status: 429,
                        error: "invalid_client",
                        description: format!(
                            "too many failed attempts: try again in {} s",
                            wait.as_secs().max(1)
                        ),
                    });
                }
                match access.authority.client_from_secret(&id, &secret) {
                    Ok(c) => {
                        throttle.succeeded(&keys);
                        c
                    }
                    Err(e) => {
                        throttle.failed(&keys);
                        return Err(e);
                    }
                }
            }
            _ => {
                return Err(OAuthError {
                    status: 401,
                    error: "invalid_client",
                    description: "authenticate with a signed client_assertion (private_key_jwt) or HTTP Basic (client_secret_basic), exactly one".into(),
                })
            }
        };
        access.authority.issue(client, get("scope"))
    })
    .await
    .unwrap_or_else(|e| {
        Err(OAuthError {
            status: 500,
            error: "server_error",
            description: format!("the token request could not be handled: {e}"),
        })
    });
    let who = match &result {
        Ok((_, claims)) => claims.sub.clone(),
        Err(_) => who(None, &req),
    };
    match result {
        Ok((token, claims)) => {
            access.audit.record(&AuditRecord {
                action: "token",
                who: &who,
                observer: &access.observer,
                outcome: Ok(()),
                query: "POST /auth/token",
                details: vec![("scope", claims.scope.clone())],
            });
            HttpResponse::Ok()
                .insert_header(("cache-control", "no-store"))
                .insert_header(("pragma", "no-cache"))
                .json(json!({"access_token": token, "token_type": "bearer", "expires_in": TOKEN_SECONDS, "scope": claims.scope}))
        }
        Err(e) => {
            access.audit.record(&AuditRecord {
                action: "token",
                who: &who,
                observer: &access.observer,
                outcome: Err(&e.description),
                query: "POST /auth/token",
                details: vec![("error", e.error.to_string())],
            });
            oauth_error(&e, used_basic)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rule_for_captures_the_type() {
        let dir = tempfile::tempdir().unwrap();
        let auth = crate::auth::Authority::open(None, "x".into(), &dir.path().join("k")).unwrap();
        let svc = crate::node::FhirService::new(
            std::sync::Arc::new(crate::store::sqlite::SqliteStore::open(dir.path()).unwrap()),
            std::sync::Arc::new(crate::search::Registry::r4()),
            Default::default(),
        );
        let access = super::Access::new(
            std::sync::Arc::new(auth),
            crate::auth::Server::Hub,
            crate::auth::NODE_ROUTES,
            crate::audit::AuditLog::start(std::sync::Arc::new(svc)).unwrap(),
            "t".into(),
            None,
        );
        let (rule, ty) = access
            .rule_for(&actix_web::http::Method::GET, "/fhir/Observation")
            .unwrap();
        assert_eq!(rule, crate::auth::Rule::Search);
        assert_eq!(ty.as_deref(), Some("Observation"));
    }
}
