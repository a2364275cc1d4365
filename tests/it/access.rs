//! Access control through the real HTTP interface: the access matrix (every
//! route of the node and of the hub, with every kind of caller, against the one
//! table in `src/auth/policy.rs`), token rejections, rate limits and audit.

use crate::helpers::{spawn_node, token_for, write_clients, TestNode, TEST_SECRET};
use pennine::auth::policy::{decide, Facts, Rule, Server};
use pennine::auth::{Clients, Principal, HUB_ROUTES, NODE_ROUTES};
use pennine::config::{parse_node, HubConfig};
use pennine::startup::{start_hub, RunningHub};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Tokens that must never be accepted, made with (or without) the server's own key.
fn bad_tokens(key_file: &Path, audience: &str) -> Vec<(&'static str, String)> {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let key = std::fs::read(key_file).unwrap();
    let claims = |aud: &str, exp: i64| {
        json!({"iss": aud, "sub": "tester", "aud": aud, "exp": exp, "iat": now() - 10, "jti": "x",
               "scope": "system/*.cruds pennine/aggregate pennine/run", "roles": ["vendor", "analyst", "admin"], "region": "nenc"})
    };
    let sign = |c: &Value, k: &[u8]| encode(&Header::new(Algorithm::HS256), c, &EncodingKey::from_secret(k)).unwrap();
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    vec![
        ("expired", sign(&claims(audience, now() - 600), &key)),
        (
            "forged",
            sign(
                &claims(audience, now() + 300),
                b"not the server's key, not the server's key",
            ),
        ),
        ("wrong audience", sign(&claims("pennine:node:gm", now() + 300), &key)),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims(audience, now() + 300))
            ),
        ),
        ("garbage", "not-a-jwt".into()),
    ]
}

/// A concrete request for a route of the table.
struct Sample {
    method: &'static str,
    url: String,
    body: Option<(String, &'static str)>,
    rtype: Option<&'static str>,
    summary_count: bool,
}

fn node_sample(method: &'static str, path: &str, id: &str) -> Sample {
    let fhir_json = "application/fhir+json";
    let patient = json!({"resourceType": "Patient", "gender": "other"}).to_string();
    let (url, body, rtype): (String, Option<(String, &str)>, Option<&str>) = match (method, path) {
        ("GET", "/health")
        | ("GET", "/ready")
        | ("GET", "/.well-known/smart-configuration")
        | ("GET", "/fhir/.well-known/smart-configuration")
        | ("GET", "/fhir/metadata") => (path.into(), None, None),
        ("POST", "/auth/token") => (
            path.into(),
            Some((
                "grant_type=client_credentials".into(),
                "application/x-www-form-urlencoded",
            )),
            None,
        ),
        ("POST", "/federation/aggregate") => (
            path.into(),
            Some((
                json!({"viewReference": "patient_demographics", "measures": [{"name": "n", "function": "count"}],
                "disclosure": {"minCell": 10, "rounding": 5, "minRegions": 3}})
                .to_string(),
                "application/json",
            )),
            None,
        ),
        ("POST", "/federation/measure") => (
            path.into(),
            Some((
                json!({"measure": "chc-copd", "version": "1.0.0", "periodStart": "2025-01-01", "periodEnd": "2025-12-31",
                "disclosure": {"minCell": 10, "rounding": 5, "noise": 2, "minRegions": 3}, "deadlineMs": 5000})
                .to_string(),
                "application/json",
            )),
            None,
        ),
        ("POST", "/federation/regress") => (
            path.into(),
            Some((
                json!({"fit": "f", "step": "close",
                "disclosure": {"minCell": 10, "rounding": 5, "noise": 2, "minRegions": 3}, "deadlineMs": 5000})
                .to_string(),
                "application/json",
            )),
            None,
        ),
        ("POST", "/fhir/$regress") => (
            path.into(),
            Some((
                json!({"viewReference": "hospital_episodes", "outcome": "age", "predictors": ["diagnoses"]}).to_string(),
                "application/json",
            )),
            None,
        ),
        ("GET", "/federation/count/{type}") => {
            ("/federation/count/Patient?_summary=count".into(), None, Some("Patient"))
        }
        ("GET", "/federation/quality") | ("GET", "/quality") => (path.into(), None, None),
        ("POST", "/fhir/ViewDefinition/$run") => (
            path.into(),
            Some((
                json!({"resourceType": "Parameters", "parameter": [
                {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patient_demographics"}}]})
                .to_string(),
                fhir_json,
            )),
            None,
        ),
        ("POST", "/fhir") | ("POST", "/fhir/") => (
            path.into(),
            Some((
                json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}]})
                .to_string(),
                fhir_json,
            )),
            None,
        ),
        ("GET", "/fhir") | ("GET", "/fhir/") => (format!("{path}?_type=Patient"), None, None),
        ("GET", "/fhir/_history") => (path.into(), None, None),
        ("GET", "/fhir/{type}") => ("/fhir/Patient".into(), None, Some("Patient")),
        ("POST", "/fhir/{type}") => ("/fhir/Patient".into(), Some((patient, fhir_json)), Some("Patient")),
        ("PUT", "/fhir/{type}") => (
            "/fhir/Patient?_id=nomatch".into(),
            Some((patient, fhir_json)),
            Some("Patient"),
        ),
        ("DELETE", "/fhir/{type}") => ("/fhir/Patient?_id=nomatch".into(), None, Some("Patient")),
        ("POST", "/fhir/{type}/_search") => (
            "/fhir/Patient/_search".into(),
            Some(("gender=other".into(), "application/x-www-form-urlencoded")),
            Some("Patient"),
        ),
        ("GET", "/fhir/{type}/_history") => ("/fhir/Patient/_history".into(), None, Some("Patient")),
        ("GET", "/fhir/{type}/{id}") => (format!("/fhir/Patient/{id}"), None, Some("Patient")),
        ("PUT", "/fhir/{type}/{id}") => (
            format!("/fhir/Patient/{id}"),
            Some((
                json!({"resourceType": "Patient", "id": id, "gender": "other"}).to_string(),
                fhir_json,
            )),
            Some("Patient"),
        ),
        ("DELETE", "/fhir/{type}/{id}") => ("/fhir/Patient/nobody".into(), None, Some("Patient")),
        ("PATCH", "/fhir/{type}/{id}") => (
            format!("/fhir/Patient/{id}"),
            Some(("[]".into(), "application/json-patch+json")),
            Some("Patient"),
        ),
        ("GET", "/fhir/{type}/{id}/_history") => (format!("/fhir/Patient/{id}/_history"), None, Some("Patient")),
        ("GET", "/fhir/{type}/{id}/_history/{vid}") => {
            (format!("/fhir/Patient/{id}/_history/1"), None, Some("Patient"))
        }
        ("POST", "/feeds/hl7v2") => (
            path.into(),
            Some((
                "MSH|^~\\&|PAS|RTD|P|N|20240101||ADT^A04|ACC1|P|2.5\rPID|1||M1^^^RTD^MR||Doe^Jo||19800101|F\r".into(),
                "x-application/hl7-v2+er7",
            )),
            None,
        ),
        ("POST", "/feeds/csv/{mapping}") => (
            "/feeds/csv/synthea-conditions".into(),
            Some((
                "START,STOP,PATIENT,ENCOUNTER,CODE,DESCRIPTION\n2020-01-01,,p1,,44054006,Diabetes\n".into(),
                "text/csv",
            )),
            None,
        ),
        ("POST", "/fhir/{type}/$validate") => (
            "/fhir/Patient/$validate".into(),
            Some((patient.clone(), fhir_json)),
            Some("Patient"),
        ),
        ("POST", "/fhir/{type}/{id}/$validate") => (
            format!("/fhir/Patient/{id}/$validate"),
            Some((patient.clone(), fhir_json)),
            Some("Patient"),
        ),
        ("GET", "/fhir/Measure/{id}/$evaluate-measure") => (
            "/fhir/Measure/chc-copd/$evaluate-measure?periodStart=2025&periodEnd=2025".into(),
            None,
            None,
        ),
        ("POST", "/fhir/Measure/{id}/$evaluate-measure") => (
            "/fhir/Measure/chc-arld/$evaluate-measure".into(),
            Some((
                json!({"resourceType": "Parameters", "parameter": [
                    {"name": "periodStart", "valueDate": "2025-01-01"},
                    {"name": "periodEnd", "valueDate": "2025-12-31"}]})
                .to_string(),
                fhir_json,
            )),
            None,
        ),
        ("GET", "/feeds/dead-letters") => (path.into(), None, None),
        ("GET", "/feeds/dead-letters/{id}") => ("/feeds/dead-letters/none".into(), None, None),
        ("POST", "/feeds/dead-letters/{id}/$replay") => ("/feeds/dead-letters/none/$replay".into(), None, None),
        other => panic!("the access-matrix test has no sample request for {other:?}: add one"),
    };
    Sample {
        method,
        summary_count: url.contains("_summary=count"),
        url,
        body,
        rtype,
    }
}

fn hub_sample(method: &'static str, path: &str) -> Vec<Sample> {
    let s = |url: &str, body: Option<(String, &'static str)>, rtype: Option<&'static str>| Sample {
        method,
        summary_count: url.contains("_summary=count"),
        url: url.into(),
        body,
        rtype,
    };
    match (method, path) {
        ("GET", "/health")
        | ("GET", "/ready")
        | ("GET", "/.well-known/smart-configuration")
        | ("GET", "/fhir/.well-known/smart-configuration")
        | ("GET", "/fhir/metadata") => {
            vec![s(path, None, None)]
        }
        ("POST", "/auth/token") => vec![s(
            path,
            Some((
                "grant_type=client_credentials".into(),
                "application/x-www-form-urlencoded",
            )),
            None,
        )],
        ("POST", "/fhir/$aggregate") => vec![s(
            path,
            Some((
                json!({"viewReference": "patient_demographics", "groupBy": ["gender"],
                "measures": [{"name": "n", "function": "count"}]})
                .to_string(),
                "application/json",
            )),
            None,
        )],
        ("POST", "/fhir/$regress") => vec![s(
            path,
            Some((
                json!({"viewReference": "hospital_episodes", "outcome": "age", "predictors": ["diagnoses"]})
                    .to_string(),
                "application/json",
            )),
            None,
        )],
        ("GET", "/quality") => vec![s(path, None, None)],
        ("GET", "/fhir/Measure") => vec![s(path, None, None)],
        ("GET", "/fhir/Measure/{id}") => vec![s("/fhir/Measure/chc-arld", None, None)],
        ("GET", "/fhir/Measure/{id}/$evaluate-measure") => vec![s(
            "/fhir/Measure/chc-epilepsy/$evaluate-measure?periodStart=2025&periodEnd=2025",
            None,
            None,
        )],
        ("POST", "/fhir/Measure/{id}/$evaluate-measure") => vec![s(
            "/fhir/Measure/chc-copd/$evaluate-measure",
            Some((
                json!({"resourceType": "Parameters", "parameter": [
                    {"name": "periodStart", "valueDate": "2025"}, {"name": "periodEnd", "valueDate": "2025"}]})
                .to_string(),
                "application/fhir+json",
            )),
            None,
        )],
        ("GET", "/fhir/Measure/{id}/$benchmark") => vec![s(
            "/fhir/Measure/chc-copd/$benchmark?periodStart=2025&periodEnd=2025",
            None,
            None,
        )],
        ("POST", "/fhir/Measure/{id}/$benchmark") => vec![s(
            "/fhir/Measure/chc-arld/$benchmark?group=admissions",
            Some((
                json!({"resourceType": "Parameters", "parameter": [
                    {"name": "periodStart", "valueDate": "2025"}, {"name": "periodEnd", "valueDate": "2025"}]})
                .to_string(),
                "application/fhir+json",
            )),
            None,
        )],
        // One route, three kinds of question.
        ("GET", "/fhir/{type}") => vec![
            s("/fhir/Patient?_summary=count", None, Some("Patient")),
            s("/fhir/Patient", None, Some("Patient")),
            s("/fhir/AuditEvent", None, Some("AuditEvent")),
        ],
        // The web view: public pages, and pages that need a signed-in session.
        ("GET", "/app")
        | ("GET", "/app/static/pennine.css")
        | ("GET", "/app/static/pennine.svg")
        | ("GET", "/app/login/oidc")
        | ("GET", "/app/login")
        | ("GET", "/app/")
        | ("GET", "/app/quality")
        | ("GET", "/transparency") => vec![s(path, None, None)],
        ("POST", "/app/login") => vec![s(
            path,
            Some((
                "username=ana&password=x&csrf=forged".into(),
                "application/x-www-form-urlencoded",
            )),
            None,
        )],
        ("GET", "/app/login/once/{token}") => vec![s("/app/login/once/unknown", None, None)],
        ("GET", "/app/login/oidc/callback") => vec![s("/app/login/oidc/callback?code=x&state=y", None, None)],
        ("POST", "/app/logout") => vec![s(
            path,
            Some(("csrf=forged".into(), "application/x-www-form-urlencoded")),
            None,
        )],
        ("GET", "/app/pathways/{measure}") => vec![s("/app/pathways/chc-copd", None, None)],
        ("GET", "/app/pathways/{measure}/benchmark.csv") => {
            vec![s("/app/pathways/chc-copd/benchmark.csv", None, None)]
        }
        ("GET", "/app/providers/{ods}") => vec![s("/app/providers/RTD", None, None)],
        other => panic!("the access-matrix test has no sample request for {other:?}: add one"),
    }
}

async fn send(http: &reqwest::Client, root: &str, s: &Sample, token: Option<&str>) -> (u16, bool) {
    let method = reqwest::Method::from_bytes(s.method.as_bytes()).unwrap();
    let mut req = http.request(method, format!("{root}{}", s.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some((body, ct)) = &s.body {
        req = req.header("content-type", *ct).body(body.clone());
    }
    let res = req.send().await.unwrap();
    let bearer_challenge = res
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer"));
    (res.status().as_u16(), bearer_challenge)
}

fn principal(clients: &Clients, id: &str) -> Principal {
    let c = clients.get(id).unwrap();
    Principal {
        client_id: c.id.clone(),
        roles: c.roles.clone(),
        region: c.region.as_ref().map(|r| r.to_string()),
        scopes: c.allowed.clone(),
    }
}

/// Walks `samples` with no token, bad tokens and every client, checking each answer against the table.
async fn walk(
    root: &str,
    server: &Server,
    table: &[pennine::auth::RouteRule],
    samples: Vec<(Rule, Sample)>,
    clients_file: &Path,
    bad: Vec<(&'static str, String)>,
) -> usize {
    // Redirects are answers here (the web view sends a browser without a session to sign in).
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let clients = Clients::load(clients_file).unwrap();
    let ids = ["tester", "vendor", "analyst", "partner", "admin", "outsider"];
    let mut tokens = Vec::new();
    for id in ids {
        tokens.push((id, token_for(&http, root, id).await));
    }
    assert!(samples.len() >= table.len(), "a sample for every route");
    let mut checked = 0;
    for (rule, s) in &samples {
        let public = *rule == Rule::Public;
        // No token, or one the server must refuse.
        let mut anonymous: Vec<(&str, Option<&str>)> = vec![("no token", None)];
        anonymous.extend(bad.iter().map(|(n, t)| (*n, Some(t.as_str()))));
        for (name, token) in anonymous {
            let (status, challenge) = send(&http, root, s, token).await;
            let want = match rule {
                Rule::Public => status != 403 && !challenge,
                Rule::HubCertificate => status == 403,
                // No session: the browser is sent to sign in.
                Rule::Page => status == 303 && !challenge,
                _ => status == 401 && challenge,
            };
            assert!(
                want,
                "{} {} with {name}: {status} (challenge {challenge})",
                s.method, s.url
            );
            checked += 1;
        }
        for (id, token) in &tokens {
            let (status, challenge) = send(&http, root, s, Some(token)).await;
            if *rule == Rule::Page {
                // A token signs nobody in to the web view.
                assert!(status == 303 && !challenge, "{} {} as {id}: {status}", s.method, s.url);
                checked += 1;
                continue;
            }
            if public {
                // Public routes answer on their own terms (the token endpoint wants client credentials).
                assert!(status != 403 && !challenge, "{} {} as {id}: {status}", s.method, s.url);
                checked += 1;
                continue;
            }
            let p = principal(&clients, id);
            let facts = Facts {
                rtype: s.rtype,
                summary_count: s.summary_count,
            };
            let allowed = match rule {
                Rule::Public => true,
                Rule::HubCertificate => false,
                // A bundle is also checked entry by entry (the sample creates a Patient).
                Rule::Bundle => {
                    decide(server, *rule, &p, &facts).is_ok()
                        && pennine::auth::policy::decide_entry(&p, "POST", "Patient").is_ok()
                }
                _ => decide(server, *rule, &p, &facts).is_ok(),
            };
            if allowed {
                assert!(
                    status != 401 && status != 403,
                    "{} {} as {id}: the table allows it, the server said {status}",
                    s.method,
                    s.url
                );
            } else {
                assert_eq!(status, 403, "{} {} as {id}: the table denies it", s.method, s.url);
            }
            // What must hold whatever the table says.
            if !public && (*id == "partner" || *id == "outsider") && matches!(server, Server::Node { .. }) {
                assert_eq!(status, 403, "{} {} as {id} on a node", s.method, s.url);
            }
            if *id == "vendor" && s.method == "GET" && !public {
                assert!(status == 403, "{} {}: a vendor reads nothing", s.method, s.url);
            }
            // Dead letters hold raw patient data: administrators only.
            if s.url.starts_with("/feeds/dead-letters") && !p.roles.contains(&pennine::auth::Role::Admin) {
                assert_eq!(
                    status, 403,
                    "{} {} as {id}: dead letters are for administrators",
                    s.method, s.url
                );
            }
            checked += 1;
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_matrix_of_every_node_route() {
    let node = spawn_node().await;
    let r = node
        .put("Patient/p1", &json!({"resourceType": "Patient", "id": "p1"}))
        .await;
    assert!(r.status().is_success());
    let data = node.data_dir();
    let mut samples: Vec<(Rule, Sample)> = NODE_ROUTES
        .iter()
        .map(|r| (r.rule, node_sample(r.method, r.path, "p1")))
        .collect();
    // The audit trail: append-only for everyone, readable by administrators.
    for (method, url, rule) in [
        ("GET", "/fhir/AuditEvent", Rule::Search),
        ("POST", "/fhir/AuditEvent", Rule::Create),
        ("DELETE", "/fhir/AuditEvent/x", Rule::Delete),
    ] {
        samples.push((
            rule,
            Sample {
                method,
                url: url.into(),
                body: (method == "POST").then(|| {
                    (
                        json!({"resourceType": "AuditEvent"}).to_string(),
                        "application/fhir+json",
                    )
                }),
                rtype: Some("AuditEvent"),
                summary_count: false,
            },
        ));
    }
    let server = Server::Node { region: "nenc".into() };
    let bad = bad_tokens(&data.join("token-key"), "pennine:node:nenc");
    let n = walk(
        &node.root,
        &server,
        NODE_ROUTES,
        samples,
        &data.join("clients.toml"),
        bad,
    )
    .await;
    println!(
        "access matrix (node): {n} requests checked over {} routes",
        NODE_ROUTES.len()
    );
    // Nobody writes the audit trail through the API, whatever their scopes.
    for id in ["tester", "vendor", "admin"] {
        let t = token_for(&reqwest::Client::new(), &node.root, id).await;
        let r = reqwest::Client::new()
            .post(node.url("AuditEvent"))
            .bearer_auth(t)
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "AuditEvent"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{id} wrote an AuditEvent");
    }
    node.stop().await;
}

async fn plain_hub(dir: &Path, rate: u32) -> RunningHub {
    let mut config = HubConfig::local(dir, vec![parse_node("nenc=http://127.0.0.1:9").unwrap()], None);
    config.deadline = Duration::from_millis(300);
    config.clients = Some(write_clients(dir, "nenc"));
    config.aggregate_rate = rate;
    start_hub(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_matrix_of_every_hub_route() {
    let dir = tempfile::tempdir().unwrap();
    let hub = plain_hub(dir.path(), 10_000).await;
    let samples: Vec<(Rule, Sample)> = HUB_ROUTES
        .iter()
        .flat_map(|r| hub_sample(r.method, r.path).into_iter().map(move |s| (r.rule, s)))
        .collect();
    let bad = bad_tokens(&dir.path().join("token-key"), "pennine:hub");
    let n = walk(
        &hub.base_url(),
        &Server::Hub,
        HUB_ROUTES,
        samples,
        &dir.path().join("clients.toml"),
        bad,
    )
    .await;
    println!(
        "access matrix (hub): {n} requests checked over {} routes",
        HUB_ROUTES.len()
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_cannot_write_to_another_region_and_tokens_stay_where_issued() {
    let nenc = spawn_node().await;
    let gm = crate::helpers::spawn_node_with(|c| {
        c.region = pennine::config::Region::parse("gm").unwrap();
        c.clients = Some(write_clients(&c.data, "gm"));
    })
    .await;
    let http = reqwest::Client::new();
    // `outsider` is a vendor of gm: registered at nenc too, but for another region.
    let t = token_for(&http, &nenc.root, "outsider").await;
    let r = http
        .post(nenc.url("Patient"))
        .bearer_auth(&t)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let oo: Value = r.json().await.unwrap();
    assert!(
        oo["issue"][0]["diagnostics"].as_str().unwrap().contains("region"),
        "{oo}"
    );
    // A nenc vendor's token is not valid at gm (another server's key and audience).
    let t = token_for(&http, &nenc.root, "vendor").await;
    let r = http
        .post(gm.url("Patient"))
        .bearer_auth(&t)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A transaction cannot smuggle a read past the table.
    let t = token_for(&http, &nenc.root, "vendor").await;
    let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient?gender=female"}}]});
    let r = http
        .post(nenc.url(""))
        .bearer_auth(&t)
        .header("content-type", "application/fhir+json")
        .body(b.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    nenc.stop().await;
    gm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_clients_every_protected_route_is_closed() {
    let node = crate::helpers::spawn_node_with(|c| c.clients = None).await;
    let http = reqwest::Client::new();
    let r = http.get(node.url("Patient")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let oo: Value = r.json().await.unwrap();
    assert!(
        oo["issue"][0]["diagnostics"].as_str().unwrap().contains("--clients"),
        "{oo}"
    );
    assert_eq!(http.get(node.url("metadata")).send().await.unwrap().status(), 200);
    assert_eq!(
        http.get(format!("{}/health", node.root)).send().await.unwrap().status(),
        200
    );
    let r = http
        .post(format!("{}/auth/token", node.root))
        .basic_auth("tester", Some(TEST_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    node.stop().await;
    // The binary says at start-up how to register clients.
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pennine"))
        .args(["node", "--region", "nenc", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut said = false;
    for _ in 0..20 {
        line.clear();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.contains("--clients") {
            said = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(said, "start-up explains how to register clients");
}

/// An ES384 key pair as rcgen makes it, with its public JWK.
pub(crate) fn es384_key(kid: &str) -> (jsonwebtoken::EncodingKey, Value) {
    use base64::Engine;
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let raw = kp.public_key_raw();
    let (x, y) = raw[1..].split_at(48);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-384", "x": b64(x), "y": b64(y), "kid": kid, "alg": "ES384", "use": "sig"});
    (
        jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
        jwk,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_assertions_are_checked_like_smart_backend_services_requires() {
    use jsonwebtoken::{encode, Algorithm, Header};
    let (key, jwk) = es384_key("k1");
    let (other_key, _) = es384_key("k1");
    let node = crate::helpers::spawn_node_with(move |c| {
        let path = c.data.join("jwt-clients.toml");
        std::fs::write(
            &path,
            format!(
                "[[client]]\nid = \"jwt-analyst\"\nroles = [\"analyst\"]\nregion = \"nenc\"\njwks = '{}'\n",
                json!({"keys": [jwk]})
            ),
        )
        .unwrap();
        c.clients = Some(path);
    })
    .await;
    let http = reqwest::Client::new();
    let config: Value = http
        .get(format!("{}/.well-known/smart-configuration", node.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token_url = config["token_endpoint"].as_str().unwrap().to_string();
    // The same document at the FHIR base, where SMART clients and test kits look, and the
    // token endpoint in the CapabilityStatement's rest.security (SMART's oauth-uris).
    let at_base: Value = http
        .get(format!("{}/.well-known/smart-configuration", node.fhir))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(at_base, config);
    let statement: Value = http
        .get(format!("{}/metadata", node.fhir))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let security = &statement["rest"][0]["security"];
    assert_eq!(
        security["service"][0]["coding"][0]["code"], "SMART-on-FHIR",
        "{security}"
    );
    let oauth = &security["extension"][0];
    assert_eq!(
        oauth["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert_eq!(oauth["extension"][0]["url"], "token");
    assert_eq!(oauth["extension"][0]["valueUri"], token_url.as_str());
    assert!(config["token_endpoint_auth_signing_alg_values_supported"]
        .to_string()
        .contains("ES384"));
    let assertion = |claims: Value, alg: Algorithm, k: &jsonwebtoken::EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = Some("k1".into());
        encode(&h, &claims, k).unwrap()
    };
    let claims = |aud: &str, exp: i64, jti: &str| json!({"iss": "jwt-analyst", "sub": "jwt-analyst", "aud": aud, "exp": exp, "jti": jti});
    let ask = |a: String, scope: Option<&str>| {
        let http = http.clone();
        let url = token_url.clone();
        let scope = scope.map(str::to_string);
        async move {
            let mut form = vec![
                ("grant_type".to_string(), "client_credentials".to_string()),
                (
                    "client_assertion_type".into(),
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ),
                ("client_assertion".into(), a),
            ];
            if let Some(s) = scope {
                form.push(("scope".into(), s));
            }
            let r = http.post(url).form(&form).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let good = assertion(claims(&token_url, now() + 240, "a1"), Algorithm::ES384, &key);
    let (status, body) = ask(good.clone(), Some("system/Patient.rs system/*.cruds")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "bearer");
    let scope = body["scope"].as_str().unwrap();
    assert!(
        scope.contains("system/Patient.rs") && scope.contains("system/*.rs") && !scope.contains('c'),
        "{scope}"
    );
    // The token works, within its scopes.
    let token = body["access_token"].as_str().unwrap().to_string();
    let r = http.get(node.url("Patient")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(node.url("Patient"))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body("{\"resourceType\":\"Patient\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A narrower grant is enforced as such.
    let a = assertion(claims(&token_url, now() + 240, "n1"), Algorithm::ES384, &key);
    let (status, body) = ask(a, Some("system/Patient.rs")).await;
    assert_eq!(status, 200, "{body}");
    let narrow = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        http.get(node.url("Patient"))
            .bearer_auth(&narrow)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = http
        .get(node.url("Observation"))
        .bearer_auth(&narrow)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());

    let cases = [
        ("replayed jti", good),
        (
            "expired",
            assertion(claims(&token_url, now() - 120, "a2"), Algorithm::ES384, &key),
        ),
        (
            "lives too long",
            assertion(claims(&token_url, now() + 3600, "a3"), Algorithm::ES384, &key),
        ),
        (
            "not yet valid",
            assertion(
                json!({"iss": "jwt-analyst", "sub": "jwt-analyst", "aud": token_url, "exp": now() + 240, "nbf": now() + 120, "jti": "a4"}),
                Algorithm::ES384,
                &key,
            ),
        ),
        (
            "wrong signature",
            assertion(claims(&token_url, now() + 240, "a5"), Algorithm::ES384, &other_key),
        ),
        (
            "wrong audience",
            assertion(
                claims("https://elsewhere/auth/token", now() + 240, "a6"),
                Algorithm::ES384,
                &key,
            ),
        ),
        (
            "wrong issuer",
            assertion(
                json!({"iss": "someone", "sub": "someone", "aud": token_url, "exp": now() + 240, "jti": "a7"}),
                Algorithm::ES384,
                &key,
            ),
        ),
        (
            "HS256 with a guessed secret",
            encode(
                &Header::new(Algorithm::HS256),
                &claims(&token_url, now() + 240, "a8"),
                &jsonwebtoken::EncodingKey::from_secret(b"k"),
            )
            .unwrap(),
        ),
        ("no kid", {
            encode(
                &Header::new(Algorithm::ES384),
                &claims(&token_url, now() + 240, "a10"),
                &key,
            )
            .unwrap()
        }),
        ("alg none", {
            use base64::Engine;
            let b = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
            format!(
                "{}.{}.",
                b(json!({"alg": "none"})),
                b(claims(&token_url, now() + 240, "a9"))
            )
        }),
    ];
    for (name, a) in cases {
        let (status, body) = ask(a, None).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body["error"], "invalid_client", "{name}");
    }
    // A scope the client may not have is refused as such.
    let a = assertion(claims(&token_url, now() + 240, "b1"), Algorithm::ES384, &key);
    let (status, body) = ask(a, Some("pennine/aggregate")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_scope");
    // fhirclient's default request: the subset the client may hold is granted, the rest dropped.
    let a = assertion(claims(&token_url, now() + 240, "b2"), Algorithm::ES384, &key);
    let (status, body) = ask(a, Some("launch/patient system/*.rs")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "system/*.rs");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_questions_are_rate_limited_and_repeats_are_answered_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let hub = plain_hub(dir.path(), 2).await;
    let http = reqwest::Client::new();
    let t = token_for(&http, &hub.base_url(), "partner").await;
    let ask = |group: &str| {
        http.post(format!("{}/fhir/$aggregate", hub.base_url()))
            .bearer_auth(&t)
            .json(&json!({"viewReference": "patient_demographics", "groupBy": [group],
                "measures": [{"name": "n", "function": "count"}]}))
            .send()
    };
    assert_eq!(ask("gender").await.unwrap().status(), 200);
    assert_eq!(ask("birth_decade").await.unwrap().status(), 200);
    let r = ask("deceased").await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["issue"][0]["code"], "throttled");
    // The same question again: the released answer, without counting against the limit.
    assert_eq!(ask("gender").await.unwrap().status(), 200);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_and_refused_accesses_are_audited() {
    let node: TestNode = spawn_node().await;
    let http = reqwest::Client::new();
    assert_eq!(node.get("Patient?gender=male").await.status(), 200);
    let partner = token_for(&http, &node.root, "partner").await;
    let r = http
        .get(node.url("Patient"))
        .bearer_auth(&partner)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http.get(node.url("Observation")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("{}/auth/token", node.root))
        .basic_auth("partner", Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Events are written in batches; give the writer a moment.
    let mut found = (0, 0, 0);
    for _ in 0..50 {
        let list = node.get_json("AuditEvent?_count=200").await;
        let events: Vec<&Value> = list["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| &e["resource"])
            .collect();
        let has = |code: &str, outcome: &str, who: &str| {
            events
                .iter()
                .filter(|e| {
                    e["subtype"][0]["code"] == code
                        && e["outcome"] == outcome
                        && e["agent"][0]["who"]["display"].as_str().unwrap_or("").contains(who)
                })
                .count()
        };
        found = (
            has("search", "0", "tester"),
            has("denied", "4", "partner") + has("denied", "4", "unauthenticated"),
            has("token", "4", ""),
        );
        if found.0 >= 1 && found.1 >= 2 && found.2 >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        found.0 >= 1 && found.1 >= 2 && found.2 >= 1,
        "allowed, refused and token events: {found:?}"
    );
    // The audit trail does not appear in the clinical data's history.
    let history = node.get_json("_history?_count=50").await;
    assert!(!history.to_string().contains("\"AuditEvent\""));
    node.stop().await;
}

#[tokio::test]
async fn client_secrets_cannot_be_enumerated_or_guessed_quickly() {
    let node: TestNode = spawn_node().await;
    let http = reqwest::Client::new();
    let ask = |id: &'static str, secret: &'static str| {
        http.post(format!("{}/auth/token", node.root))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
    };
    // An unknown id and a wrong secret read the same.
    let unknown = ask("nobody", "x").await.unwrap();
    assert_eq!(unknown.status(), 401);
    let unknown: Value = unknown.json().await.unwrap();
    let wrong = ask("partner", "x").await.unwrap();
    assert_eq!(wrong.status(), 401);
    let wrong: Value = wrong.json().await.unwrap();
    assert_eq!(unknown, wrong);
    // Five failures lock the client id: even its right secret waits, and is told how long.
    for _ in 0..4 {
        assert_eq!(ask("partner", "guess").await.unwrap().status(), 401);
    }
    let locked = ask("partner", TEST_SECRET).await.unwrap();
    assert_eq!(locked.status(), 429);
    assert!(locked.headers().contains_key("retry-after"));
    // Another client from the same address is not locked out by it.
    assert!(!token_for(&http, &node.root, "analyst").await.is_empty());
    // The lock ends (one second after the fifth failure), and the right secret works again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(ask("partner", TEST_SECRET).await.unwrap().status(), 200);
}

/// Two hub processes on one PostgreSQL schema count a client's questions together:
/// the rate limit is not multiplied by the number of processes behind a balancer.
/// (PostgreSQL only: one hub on its embedded store keeps the count in memory.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_on_one_database_share_the_rate_limit() {
    let Some(url) = crate::helpers::test_database() else {
        println!("two_hubs_on_one_database_share_the_rate_limit: runs in the PostgreSQL pass (PENNINE_TEST_DATABASE)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let schema = crate::helpers::fresh_schema();
    let hub = |dir: PathBuf| {
        let (url, schema) = (url.clone(), schema.clone());
        async move {
            let mut config = HubConfig::local(&dir, vec![parse_node("nenc=http://127.0.0.1:9").unwrap()], None);
            config.deadline = Duration::from_millis(300);
            config.clients = Some(write_clients(&dir, "nenc"));
            config.aggregate_rate = 3;
            config.storage = pennine::config::StorageConfig::Postgres { url, schema, pool: 2 };
            start_hub(config).await.unwrap()
        }
    };
    let (a, b) = (hub(dir.path().to_path_buf()).await, hub(dir.path().to_path_buf()).await);
    let http = reqwest::Client::new();
    let t = token_for(&http, &a.base_url(), "partner").await;
    let ask = |base: String, group: Value| {
        let (http, t) = (http.clone(), t.clone());
        async move {
            http.post(format!("{base}/fhir/$aggregate"))
                .bearer_auth(&t)
                .json(&json!({"viewReference": "patient_demographics", "groupBy": group,
                    "measures": [{"name": "n", "function": "count"}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Three different questions (no answer from the cache), split between the processes.
    assert_eq!(ask(a.base_url(), json!(["gender"])).await, 200);
    assert_eq!(ask(b.base_url(), json!(["birth_decade"])).await, 200);
    assert_eq!(ask(a.base_url(), json!(["gender", "birth_decade"])).await, 200);
    // The fourth, at either process, is over the limit of three a minute.
    assert_eq!(ask(b.base_url(), json!(["birth_decade", "gender"])).await, 429);
    assert_eq!(ask(a.base_url(), json!(["birth_decade", "gender"])).await, 429);
    a.stop().await;
    b.stop().await;
    crate::helpers::drop_schema(url, format!("{schema}_audit")).await;
}
