//! The hub's web view over HTTP: sign-in with local accounts (and one-time
//! links), server-side sessions in an `HttpOnly; Secure; SameSite=Lax` cookie,
//! CSRF tokens on every form, security headers on every page, and the pages of
//! `web::pages` built from what the gate released. Every sign-in, failure,
//! sign-out and page of results is an AuditEvent.

use super::access::{route, Access};
use crate::audit::AuditRecord;
use crate::auth::policy::{decide_page, PageKind};
use crate::auth::sessions::{random_token, same_secret, Session};
use crate::auth::users::SignInError;
use crate::auth::{People, HUB_ROUTES as T};
use crate::error::Error;
use crate::hub::Hub;
use crate::web::{self, pages, Chrome};
use actix_web::http::header;
use actix_web::{web as aw, HttpRequest, HttpResponse};
use maud::Markup;
use serde_json::Value;
use std::sync::Arc;

pub const SESSION_COOKIE: &str = "pennine_session";
const LOGIN_COOKIE: &str = "pennine_login";
/// Binds an OpenID Connect sign-in to the browser that started it (its `state`).
const OIDC_COOKIE: &str = "pennine_oidc";
const OIDC_PATH: &str = "/app/login/oidc";
/// The failed sign-in's delay: guessing costs time even before the lock-out.
const FAILURE_DELAY: std::time::Duration = std::time::Duration::from_millis(750);
/// Questions shown on the transparency page.
const TRANSPARENCY_ROWS: usize = 100;

/// What the pages need besides the hub.
pub struct WebState {
    pub people: Arc<People>,
    /// Sign-in through the organisation's identity provider, when configured.
    pub oidc: Option<Arc<crate::hub::oidc::RelyingParty>>,
    pub labels: pages::Labels,
}

pub fn configure(cfg: &mut aw::ServiceConfig) {
    route(cfg, T, "GET", "/app", aw::get().to(to_app));
    route(cfg, T, "GET", "/app/static/pennine.css", aw::get().to(css));
    route(cfg, T, "GET", "/app/static/pennine.svg", aw::get().to(icon));
    route(cfg, T, "GET", "/app/login", aw::get().to(login_form));
    route(cfg, T, "POST", "/app/login", aw::post().to(login));
    route(cfg, T, "GET", "/app/login/once/{token}", aw::get().to(login_once));
    route(cfg, T, "GET", "/app/login/oidc", aw::get().to(oidc_start));
    route(cfg, T, "GET", "/app/login/oidc/callback", aw::get().to(oidc_callback));
    route(cfg, T, "POST", "/app/logout", aw::post().to(logout));
    route(cfg, T, "GET", "/app/", aw::get().to(overview));
    route(cfg, T, "GET", "/app/pathways/{measure}", aw::get().to(pathway));
    route(
        cfg,
        T,
        "GET",
        "/app/pathways/{measure}/benchmark.csv",
        aw::get().to(pathway_csv),
    );
    route(cfg, T, "GET", "/app/providers/{ods}", aw::get().to(provider));
    route(cfg, T, "GET", "/app/quality", aw::get().to(quality));
    route(cfg, T, "GET", "/transparency", aw::get().to(transparency));
}

/// The headers every page carries: no inline script or style, no framing, no sniffing.
fn secure(mut b: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    b.insert_header((
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ))
    .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
    .insert_header((header::X_FRAME_OPTIONS, "DENY"))
    .insert_header((header::REFERRER_POLICY, "same-origin"))
    .insert_header((header::CACHE_CONTROL, "no-store"));
    b
}

fn page(status: actix_web::http::StatusCode, m: Markup) -> HttpResponse {
    secure(HttpResponse::build(status))
        .content_type("text/html; charset=utf-8")
        .body(m.into_string())
}

fn ok(m: Markup) -> HttpResponse {
    page(actix_web::http::StatusCode::OK, m)
}

fn redirect(to: &str) -> HttpResponse {
    secure(HttpResponse::SeeOther())
        .insert_header((header::LOCATION, to.to_string()))
        .finish()
}

/// A cookie of this view: `HttpOnly; Secure; SameSite`, for `path`.
fn cookie(name: &str, value: &str, path: &str, same_site: &str, max_age: Option<u64>) -> String {
    let age = max_age.map(|a| format!("; Max-Age={a}")).unwrap_or_default();
    format!("{name}={value}; Path={path}; HttpOnly; Secure; SameSite={same_site}{age}")
}

fn cookie_value(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn session_of(req: &HttpRequest, state: &WebState) -> Option<(String, Session)> {
    let id = cookie_value(req, SESSION_COOKIE)?;
    let s = state.people.sessions.get(&id)?;
    Some((id, s))
}

/// Where a sign-in may send the browser afterwards: a page of this view only.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/app/") && !n.starts_with("//") && !n.contains('\\') && !n.contains("://") => {
            n.to_string()
        }
        _ => "/app/".into(),
    }
}

fn to_login(req: &HttpRequest) -> HttpResponse {
    let here = match req.query_string() {
        "" => req.path().to_string(),
        q => format!("{}?{q}", req.path()),
    };
    redirect(&format!("/app/login?next={}", pages::urlencode(&here)))
}

/// Records a person's sign-in, failure, sign-out or page view before the answer goes
/// out: people act at a human pace, so nothing is gained by queueing, and the trail
/// holds the event by the time the person (or an auditor) can look for it.
fn record(access: &Access, action: &str, who: &str, outcome: Result<(), &str>, query: &str) {
    let event = AuditRecord {
        action,
        who,
        observer: &access.observer,
        outcome,
        query,
        details: vec![],
    };
    if let Err(e) = access.audit.record_now(&event) {
        tracing::error!(error = %e, action, "audit event could not be written");
    }
}

fn person_label(s: &Session) -> String {
    format!(
        "person:{} ({}, {})",
        s.person.name,
        s.person.public_label(),
        s.person.via
    )
}

/// The signed-in session of someone who may see results, or the answer instead:
/// the way to sign in, or a refusal.
fn reader(req: &HttpRequest, state: &WebState) -> Result<Session, Box<HttpResponse>> {
    let (_, s) = session_of(req, state).ok_or_else(|| Box::new(to_login(req)))?;
    decide_page(&s.person, PageKind::Results).map_err(|why| Box::new(refused(&s, &why)))?;
    Ok(s)
}

/// `reader`, with the period the page asks about.
fn asking(req: &HttpRequest, state: &WebState) -> Result<(Session, String, String), Box<HttpResponse>> {
    let s = reader(req, state)?;
    match period(req) {
        Ok((start, end)) => Ok((s, start, end)),
        Err(e) => Err(Box::new(failed(&s, &e))),
    }
}

fn chrome<'a>(title: &'a str, s: &'a Session) -> Chrome<'a> {
    Chrome {
        title,
        person: Some(&s.person),
        csrf: Some(&s.csrf),
    }
}

fn refused(s: &Session, why: &str) -> HttpResponse {
    page(
        actix_web::http::StatusCode::FORBIDDEN,
        web::problem(&chrome("Not allowed", s), "Not allowed", why),
    )
}

fn failed(s: &Session, e: &Error) -> HttpResponse {
    let status =
        actix_web::http::StatusCode::from_u16(e.status()).unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let text = e
        .issues()
        .first()
        .map(|i| i.diagnostics.clone())
        .unwrap_or_else(|| "the question could not be answered".into());
    page(
        status,
        web::problem(&chrome("Problem", s), "The figures could not be shown", &text),
    )
}

async fn to_app() -> HttpResponse {
    redirect("/app/")
}

async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(web::CSS)
}

async fn icon() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("image/svg+xml")
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
        .body(web::ICON)
}

fn query_value(req: &HttpRequest, k: &str) -> Option<String> {
    form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.into_owned())
}

fn login_page(state: &WebState, status: actix_web::http::StatusCode, error: Option<&str>, next: &str) -> HttpResponse {
    let token = random_token();
    let oidc = state.oidc.as_ref().map(|o| o.config.label.as_str());
    let mut r = page(status, pages::login(error, &token, next, oidc));
    if let Ok(v) = header::HeaderValue::from_str(&cookie(LOGIN_COOKIE, &token, "/app/login", "Strict", Some(900))) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login_form(req: HttpRequest, state: aw::Data<WebState>) -> HttpResponse {
    let next = safe_next(query_value(&req, "next").as_deref());
    login_page(&state, actix_web::http::StatusCode::OK, None, &next)
}

#[derive(serde::Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    csrf: String,
    #[serde(default)]
    next: Option<String>,
}

fn start_session(state: &WebState, person: crate::auth::Person, next: &str) -> HttpResponse {
    let (id, _) = state.people.sessions.start(person);
    let mut r = redirect(next);
    for c in [
        cookie(OIDC_COOKIE, "", OIDC_PATH, "Lax", Some(0)),
        cookie(
            SESSION_COOKIE,
            &id,
            "/",
            "Lax",
            Some(crate::auth::sessions::ABSOLUTE.as_secs()),
        ),
        cookie(LOGIN_COOKIE, "", "/app/login", "Strict", Some(0)),
    ] {
        if let Ok(v) = header::HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

async fn login(
    req: HttpRequest,
    form: aw::Form<LoginForm>,
    state: aw::Data<WebState>,
    access: aw::Data<Access>,
) -> HttpResponse {
    let form = form.into_inner();
    let next = safe_next(form.next.as_deref());
    let expected = cookie_value(&req, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_secret(&expected, &form.csrf) {
        record(
            &access,
            "sign-in",
            "unknown person",
            Err("refused: the form's CSRF token is missing or wrong"),
            "POST /app/login",
        );
        return login_page(
            &state,
            actix_web::http::StatusCode::BAD_REQUEST,
            Some("The sign-in form had expired or did not come from this site. Please try again."),
            &next,
        );
    }
    let name = form.username.chars().take(128).collect::<String>();
    let people = state.people.clone();
    let (n, pw) = (name.clone(), form.password);
    let result = aw::block(move || people.accounts.sign_in(&n, &pw)).await;
    match result {
        Ok(Ok(person)) => {
            record(
                &access,
                "sign-in",
                &format!("person:{} ({}, local)", person.name, person.public_label()),
                Ok(()),
                "POST /app/login",
            );
            start_session(&state, person, &next)
        }
        Ok(Err(e)) => {
            let why = match e {
                SignInError::Invalid => "refused: wrong name or password",
                SignInError::Locked(_) => "refused: account locked after repeated failures",
            };
            record(
                &access,
                "sign-in",
                &format!("person:{name}"),
                Err(why),
                "POST /app/login",
            );
            tokio::time::sleep(FAILURE_DELAY).await;
            let text = match e {
                SignInError::Invalid => "That name and password do not match an account.".to_string(),
                SignInError::Locked(d) => format!(
                    "Too many failed attempts: this account is locked for {} more minute(s).",
                    d.as_secs().div_ceil(60)
                ),
            };
            login_page(&state, actix_web::http::StatusCode::UNAUTHORIZED, Some(&text), &next)
        }
        Err(_) => login_page(
            &state,
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            Some("Signing in is not possible just now; please try again."),
            &next,
        ),
    }
}

async fn login_once(path: aw::Path<String>, state: aw::Data<WebState>, access: aw::Data<Access>) -> HttpResponse {
    match state.people.sessions.redeem(&path.into_inner()) {
        Some(person) => {
            record(
                &access,
                "sign-in",
                &format!("person:{} ({}, one-time link)", person.name, person.public_label()),
                Ok(()),
                "GET /app/login/once",
            );
            start_session(&state, person, "/app/")
        }
        None => {
            record(
                &access,
                "sign-in",
                "unknown person",
                Err("refused: unknown or used sign-in link"),
                "GET /app/login/once",
            );
            login_page(
                &state,
                actix_web::http::StatusCode::UNAUTHORIZED,
                Some("That sign-in link is unknown, used or expired."),
                "/app/",
            )
        }
    }
}

/// Sends the browser to the organisation's identity provider (authorization code
/// with PKCE); the `state` goes with it and into a cookie of this browser.
async fn oidc_start(req: HttpRequest, state: aw::Data<WebState>, hub: aw::Data<Hub>) -> HttpResponse {
    let next = safe_next(query_value(&req, "next").as_deref());
    let Some(rp) = state.oidc.clone() else {
        return login_page(
            &state,
            actix_web::http::StatusCode::NOT_FOUND,
            Some("This hub has no identity provider configured: sign in with a Pennine account."),
            &next,
        );
    };
    let base = match &hub.config.public_url {
        Some(u) => u.clone(),
        None => {
            let info = req.connection_info();
            format!("{}://{}", info.scheme(), info.host())
        }
    };
    match rp.start(format!("{base}{OIDC_PATH}/callback"), next.clone()).await {
        Ok((st, url)) => {
            let mut r = redirect(&url);
            let age = crate::auth::oidc::PENDING_LIFETIME.as_secs();
            if let Ok(v) = header::HeaderValue::from_str(&cookie(OIDC_COOKIE, &st, OIDC_PATH, "Lax", Some(age))) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "OpenID Connect sign-in could not start");
            login_page(
                &state,
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                Some("Your organisation's sign-in cannot be reached just now. Please try again, or use a Pennine account."),
                &next,
            )
        }
    }
}

/// The identity provider's answer: checks `state` against this browser's cookie
/// and the pending sign-in, exchanges the code, checks the ID token, and starts
/// a session for the person the claims describe.
async fn oidc_callback(req: HttpRequest, state: aw::Data<WebState>, access: aw::Data<Access>) -> HttpResponse {
    let Some(rp) = state.oidc.clone() else {
        return login_page(&state, actix_web::http::StatusCode::NOT_FOUND, None, "/app/");
    };
    let what = "GET /app/login/oidc/callback";
    let fail = |status, audit_why: &str, shown: &str| {
        record(&access, "sign-in", "unknown person", Err(audit_why), what);
        let mut r = login_page(&state, status, Some(shown), "/app/");
        if let Ok(v) = header::HeaderValue::from_str(&cookie(OIDC_COOKIE, "", OIDC_PATH, "Lax", Some(0))) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
        r
    };
    let st = query_value(&req, "state").unwrap_or_default();
    let bound = cookie_value(&req, OIDC_COOKIE).unwrap_or_default();
    if st.is_empty() || bound.is_empty() || !same_secret(&st, &bound) {
        return fail(
            actix_web::http::StatusCode::BAD_REQUEST,
            "refused: the identity provider's answer does not belong to a sign-in this browser started (state)",
            "That sign-in did not start here, or it has expired. Please sign in again.",
        );
    }
    let Some(pending) = rp.pending.take(&st) else {
        return fail(
            actix_web::http::StatusCode::BAD_REQUEST,
            "refused: unknown, used or expired sign-in state",
            "That sign-in has expired or was already used. Please sign in again.",
        );
    };
    if let Some(e) = query_value(&req, "error") {
        let e: String = e.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
        return fail(
            actix_web::http::StatusCode::UNAUTHORIZED,
            &format!("refused by the identity provider: {e}"),
            "Your organisation did not sign you in.",
        );
    }
    let Some(code) = query_value(&req, "code").filter(|c| !c.is_empty() && c.len() <= 4096) else {
        return fail(
            actix_web::http::StatusCode::BAD_REQUEST,
            "refused: the identity provider's answer has no code",
            "The sign-in answer was incomplete. Please sign in again.",
        );
    };
    match rp.finish(&code, &pending).await {
        Ok(person) => {
            record(
                &access,
                "sign-in",
                &format!("person:{} ({}, {})", person.name, person.public_label(), person.via),
                Ok(()),
                what,
            );
            start_session(&state, person, &pending.next)
        }
        Err(e) => {
            tracing::warn!(error = %e, "OpenID Connect sign-in failed");
            let shown = match &e {
                crate::auth::oidc::OidcError::Claims(_) => {
                    "You are signed in at your organisation, but your account there gives no Pennine role, region or provider. Ask your organisation's administrator."
                }
                crate::auth::oidc::OidcError::Provider(_) => {
                    "Your organisation's sign-in cannot be reached just now. Please try again."
                }
                _ => "Your organisation's sign-in could not be completed. Please sign in again.",
            };
            fail(
                actix_web::http::StatusCode::UNAUTHORIZED,
                &format!("refused: {e}"),
                shown,
            )
        }
    }
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    req: HttpRequest,
    form: aw::Form<CsrfForm>,
    state: aw::Data<WebState>,
    access: aw::Data<Access>,
) -> HttpResponse {
    let Some((id, s)) = session_of(&req, &state) else {
        return redirect("/app/login");
    };
    if !same_secret(&s.csrf, &form.csrf) {
        record(
            &access,
            "sign-out",
            &person_label(&s),
            Err("refused: the form's CSRF token is missing or wrong"),
            "POST /app/logout",
        );
        return refused(&s, "The form did not come from this session.");
    }
    state.people.sessions.end(&id);
    record(&access, "sign-out", &person_label(&s), Ok(()), "POST /app/logout");
    let mut r = redirect("/app/login");
    if let Ok(v) = header::HeaderValue::from_str(&cookie(SESSION_COOKIE, "", "/", "Lax", Some(0))) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The period of a page: `periodStart`/`periodEnd` as the API takes them; one alone
/// stands for both (`periodStart=2025` is the year); the last full year by default.
fn period(req: &HttpRequest) -> Result<(String, String), Error> {
    let mut pairs = super::fhir::query_pairs(req);
    let get = |pairs: &[(String, String)], k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match (get(&pairs, "periodStart"), get(&pairs, "periodEnd")) {
        (Some(_), Some(_)) => {}
        (Some(s), None) => pairs.push(("periodEnd".into(), s)),
        (None, Some(e)) => pairs.push(("periodStart".into(), e)),
        (None, None) => {
            let year = crate::fhir::time::format_instant(crate::fhir::time::now_millis())
                .get(..4)
                .and_then(|y| y.parse::<u32>().ok())
                .map_or(2025, |y| y - 1);
            pairs.push(("periodStart".into(), year.to_string()));
            pairs.push(("periodEnd".into(), year.to_string()));
        }
    }
    let p = super::pathways::period_of_request(&pairs, &[])?;
    Ok((p.start, p.end))
}

fn asker(s: &Session) -> String {
    // The federated question's record names the role and organisation, not the person:
    // it is what the transparency page shows. The page view's own record names the person.
    format!("web: {}", s.person.public_label())
}

fn viewed(access: &Access, s: &Session, req: &HttpRequest) {
    record(
        access,
        "page",
        &person_label(s),
        Ok(()),
        &format!("GET {}?{}", req.path(), req.query_string()),
    );
}

async fn overview(
    req: HttpRequest,
    hub: aw::Data<Hub>,
    state: aw::Data<WebState>,
    access: aw::Data<Access>,
) -> HttpResponse {
    let (s, start, end) = match asking(&req, &state) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let mut reports = Vec::new();
    for p in hub.pathways.all() {
        let raw = format!("Measure/{}/$evaluate-measure?periodStart={start}&periodEnd={end}", p.id);
        match hub.evaluate_measure(&p.id, &start, &end, &raw, &asker(&s)).await {
            Ok(r) => reports.push((p.clone(), r)),
            Err(e) => return failed(&s, &e),
        }
    }
    viewed(&access, &s, &req);
    let items: Vec<pages::PathwaySummary> = reports
        .iter()
        .map(|(p, r)| pages::PathwaySummary {
            id: &p.id,
            title: p.measure["title"].as_str().unwrap_or(&p.id),
            version: &p.version,
            report: r,
        })
        .collect();
    ok(pages::pathways(&chrome("Pathways", &s), &start, &end, &items))
}

/// The released report and benchmark of one pathway, for a page.
async fn figures(
    hub: &Hub,
    id: &str,
    start: &str,
    end: &str,
    s: &Session,
) -> Result<
    (
        Arc<crate::pathways::Pathway>,
        Value,
        Value,
        crate::federation::disclosure::BenchmarkRelease,
    ),
    Error,
> {
    let p = hub
        .pathways
        .get(id)
        .cloned()
        .ok_or_else(|| Error::NotFound("Measure".into(), id.to_string()))?;
    // The two questions go to the regions at once: a page waits for the slower, not the sum.
    let who = asker(s);
    let evaluate = format!("Measure/{id}/$evaluate-measure?periodStart={start}&periodEnd={end}");
    let bench = format!("Measure/{id}/$benchmark?periodStart={start}&periodEnd={end}&group=mortality");
    let (report, benchmark) = tokio::join!(
        hub.evaluate_measure(id, start, end, &evaluate, &who),
        hub.benchmark(
            id,
            start,
            end,
            crate::pathways::MORTALITY,
            &crate::hub::Adjustment::Indirect,
            &bench,
            &who,
        )
    );
    let (benchmark, release) = benchmark?;
    Ok((p, report?, benchmark, release))
}

async fn pathway(
    req: HttpRequest,
    path: aw::Path<String>,
    hub: aw::Data<Hub>,
    state: aw::Data<WebState>,
    access: aw::Data<Access>,
) -> HttpResponse {
    let (s, start, end) = match asking(&req, &state) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let id = path.into_inner();
    let (p, report, benchmark, _) = match figures(&hub, &id, &start, &end, &s).await {
        Ok(x) => x,
        Err(e) => return failed(&s, &e),
    };
    viewed(&access, &s, &req);
    let title = p.measure["title"].as_str().unwrap_or(&p.id).to_string();
    ok(pages::pathway_detail(
        &chrome(&title, &s),
        &pages::Detail {
            id: &p.id,
            title: &title,
            version: &p.version,
            start: &start,
            end: &end,
            report: &report,
            benchmark: &benchmark,
            own: s.person.provider.as_deref(),
            labels: state.labels,
        },
    ))
}

async fn pathway_csv(
    req: HttpRequest,
    path: aw::Path<String>,
    hub: aw::Data<Hub>,
    state: aw::Data<WebState>,
    access: aw::Data<Access>,
) -> HttpResponse {
    let (s, start, end) = match asking(&req, &state) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let id = path.into_inner();
    if state.labels == pages::Labels::Anonymous {
        return refused(
            &s,
            "this hub shows other providers anonymously, so the named provider table is not offered",
        );
    }
    // The table needs the benchmark only: one question to the regions, not two.
    let raw = format!("Measure/{id}/$benchmark?periodStart={start}&periodEnd={end}&group=mortality");
    match hub
        .benchmark(
            &id,
            &start,
            &end,
            crate::pathways::MORTALITY,
            &crate::hub::Adjustment::Indirect,
            &raw,
            &asker(&s),
        )
        .await
    {
        Ok((_, release)) => {
            viewed(&access, &s, &req);
            secure(HttpResponse::Ok())
                .content_type("text/csv; charset=utf-8")
                .insert_header((
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{id}-benchmark-{start}-{end}.csv\""),
                ))
                .body(release.csv())
        }
        Err(e) => failed(&s, &e),
    }
}

async fn provider(
    req: HttpRequest,
    path: aw::Path<String>,
    hub: aw::Data<Hub>,
    state: aw::Data<WebState>,
    access: aw::Data<Access>,
) -> HttpResponse {
    let (s, start, end) = match asking(&req, &state) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let ods = path.into_inner().to_ascii_uppercase();
    if !crate::auth::users::is_ods_code(&ods) {
        return failed(&s, &Error::NotFound("provider".into(), ods.chars().take(16).collect()));
    }
    let mut all = Vec::new();
    for p in hub.pathways.all() {
        match figures(&hub, &p.id, &start, &end, &s).await {
            Ok((p, report, benchmark, _)) => all.push((p, report, benchmark)),
            Err(e) => return failed(&s, &e),
        }
    }
    // The provider's region, as the released benchmark names it (withheld rows name it too).
    let region = all
        .iter()
        .flat_map(|(_, _, b)| b["providers"].as_array().into_iter().flatten())
        .find(|r| r["provider"] == ods.as_str())
        .and_then(|r| r["region"].as_str())
        .map(str::to_string);
    let Some(region) = region else {
        return failed(
            &s,
            &Error::NotFound("provider".into(), format!("{ods} (no admissions in {start} to {end})")),
        );
    };
    if let Err(why) = decide_page(&s.person, PageKind::Provider { region: &region }) {
        record(
            &access,
            "page",
            &person_label(&s),
            Err("refused: not allowed"),
            &format!("GET {}", req.path()),
        );
        return refused(&s, &why);
    }
    viewed(&access, &s, &req);
    let items: Vec<pages::ProviderItem> = all
        .iter()
        .map(|(p, r, b)| pages::ProviderItem {
            id: &p.id,
            title: p.measure["title"].as_str().unwrap_or(&p.id),
            report: r,
            benchmark: b,
        })
        .collect();
    ok(pages::provider_report(
        &chrome(&format!("Provider {ods}"), &s),
        &ods,
        &start,
        &end,
        &items,
    ))
}

async fn quality(
    req: HttpRequest,
    hub: aw::Data<Hub>,
    state: aw::Data<WebState>,
    access: aw::Data<Access>,
) -> HttpResponse {
    let s = match reader(&req, &state) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match hub.quality().await {
        Ok(q) => {
            viewed(&access, &s, &req);
            ok(pages::quality(&chrome("Data quality", &s), &q))
        }
        Err(e) => failed(&s, &e),
    }
}

/// The federated questions in the hub's audit trail, newest first: what the
/// public may see of each (never the person: web questions are recorded with
/// role and organisation only).
fn questions(events: &crate::node::FhirService) -> Result<(Vec<pages::Question>, Option<u64>), Error> {
    use base64::Engine;
    let pairs = vec![
        (
            "type".to_string(),
            "http://dicom.nema.org/resources/ontology/DCM|110112".to_string(),
        ),
        ("_sort".to_string(), "-date".to_string()),
        ("_count".to_string(), TRANSPARENCY_ROWS.to_string()),
    ];
    let req = crate::search::parse_query(&events.registry, "AuditEvent", &pairs, true, TRANSPARENCY_ROWS)?;
    let bundle = events.search(
        req,
        &crate::node::SearchContext {
            base: String::new(),
            self_query: String::new(),
            cancel: Default::default(),
        },
    )?;
    let mut out = Vec::new();
    for e in bundle["entry"].as_array().into_iter().flatten() {
        let ev = &e["resource"];
        if ev["outcome"] != "0" {
            continue;
        }
        let detail = |k: &str| -> String {
            ev["entity"][0]["detail"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|d| d["type"] == k)
                .and_then(|d| d["valueString"].as_str())
                .unwrap_or("")
                .to_string()
        };
        let query = ev["entity"][0]["query"]
            .as_str()
            .and_then(|q| base64::engine::general_purpose::STANDARD.decode(q).ok())
            .map(|b| String::from_utf8_lossy(&b).chars().take(300).collect::<String>())
            .unwrap_or_default();
        let who = ev["agent"][0]["who"]["display"].as_str().unwrap_or("");
        out.push(pages::Question {
            when: ev["recorded"].as_str().unwrap_or("").to_string(),
            what: format!("{}: {query}", ev["subtype"][0]["code"].as_str().unwrap_or("")),
            asked_by: public_asker(who),
            regions: detail("regions"),
            released: detail("released"),
        });
    }
    Ok((out, bundle["total"].as_u64()))
}

/// Who asked, without a person's name: web questions are recorded as
/// `web: <role> at <organisation>`, clients as `<client id> (<roles>)`.
fn public_asker(who: &str) -> String {
    match who.strip_prefix("web: ") {
        Some(label) => format!("{label} (web view)"),
        None if who.starts_with("person:") => "a signed-in person".into(),
        None => who.to_string(),
    }
}

async fn transparency(
    req: HttpRequest,
    state: aw::Data<WebState>,
    events: aw::Data<super::hub::AuditEvents>,
) -> HttpResponse {
    let svc = events.0.clone();
    let result = aw::block(move || questions(&svc)).await;
    let session = session_of(&req, &state);
    let c = Chrome {
        title: "Transparency",
        person: session.as_ref().map(|(_, s)| &s.person),
        csrf: session.as_ref().map(|(_, s)| s.csrf.as_str()),
    };
    match result {
        Ok(Ok((qs, total))) => ok(pages::transparency(&c, &qs, total)),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the transparency log could not be read");
            page(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                web::problem(&c, "Transparency", "The log could not be read just now."),
            )
        }
        Err(_) => page(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            web::problem(&c, "Transparency", "The log could not be read just now."),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_only_sends_the_browser_to_pages_of_this_view() {
        assert_eq!(
            safe_next(Some("/app/pathways/chc-copd?periodStart=2025")),
            "/app/pathways/chc-copd?periodStart=2025"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/app/",
            "/fhir/Patient",
            "/app/\\evil",
            "/app/x?u=https://e",
        ] {
            assert_eq!(safe_next(Some(bad)), "/app/", "{bad}");
        }
        assert_eq!(public_asker("web: clinician at RXL"), "clinician at RXL (web view)");
        assert_eq!(
            public_asker("person:Dr A (clinician at RXL, local)"),
            "a signed-in person"
        );
    }
}
