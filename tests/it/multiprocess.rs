//! Two node processes on one store behave like one node: conditional creates do
//! not duplicate and concurrent transactions keep every acknowledged write.
//! (On the embedded store the two share the SQLite file; on PostgreSQL, one schema.)

use crate::durability::start;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_store_act_as_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let schema = crate::helpers::fresh_schema();
    let (mut a, base_a) = start(dir.path(), Some(&schema));
    let (mut b, base_b) = start(dir.path(), Some(&schema));
    let client = crate::helpers::authed(&base_a).await;

    let mut tasks = Vec::new();
    for i in 0..64 {
        let (client, base) = (client.clone(), if i % 2 == 0 { base_a.clone() } else { base_b.clone() });
        tasks.push(tokio::spawn(async move {
            let body = json!({"resourceType": "Patient", "identifier": [{"system": "urn:two", "value": "1"}],
                              "name": [{"family": format!("P{i}")}]});
            client
                .post(format!("{base}/Patient"))
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", "identifier=urn:two|1")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            201 => created += 1,
            200 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(created, 1, "exactly one conditional create wins across both processes");

    let mut tasks = Vec::new();
    for t in 0..8 {
        let (client, base) = (client.clone(), if t % 2 == 0 { base_a.clone() } else { base_b.clone() });
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for round in 0..5 {
                let entries: Vec<Value> = (0..5)
                    .map(|i| json!({"fullUrl": format!("urn:uuid:{t}-{round}-{i}"),
                        "resource": {"resourceType": "Observation", "status": "final", "code": {"text": format!("{t}-{round}-{i}")}},
                        "request": {"method": "POST", "url": "Observation"}}))
                    .collect();
                let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
                let r = client
                    .post(&base)
                    .header("content-type", "application/fhir+json")
                    .body(bundle.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let v: Value = r.json().await.unwrap();
                for e in v["entry"].as_array().unwrap() {
                    ids.push(e["fullUrl"].as_str().unwrap().to_string());
                }
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    assert_eq!(ids.len(), 200);
    // Every acknowledged write is readable through either process.
    for (i, id) in ids.iter().enumerate() {
        let base = if i % 2 == 0 { &base_a } else { &base_b };
        assert_eq!(
            client.get(format!("{base}/{id}")).send().await.unwrap().status(),
            200,
            "{id}"
        );
    }
    let v: Value = client
        .get(format!("{base_b}/Observation?_summary=count"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total"], 200);
    for c in [&mut a, &mut b] {
        c.kill();
    }
    if let Some(url) = crate::helpers::test_database() {
        crate::helpers::drop_schema(url, schema).await;
    }
}

/// Behind one public address, the processes of a node refuse an assertion replayed
/// at the other and count a guesser's failed secrets together (kept in the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_refuse_one_replayed_assertion_and_lock_one_guesser() {
    use jsonwebtoken::{encode, Algorithm, Header};
    let dir = tempfile::tempdir().unwrap();
    let schema = crate::helpers::fresh_schema();
    let (key, jwk) = crate::access::es384_key("k1");
    let tester = std::fs::read_to_string(crate::helpers::write_clients(dir.path(), "yh")).unwrap();
    let clients = dir.path().join("both.toml");
    std::fs::write(
        &clients,
        format!(
            "{tester}\n[[client]]\nid = \"jwt-analyst\"\nroles = [\"analyst\"]\nregion = \"yh\"\njwks = '{}'\n",
            json!({"keys": [jwk]})
        ),
    )
    .unwrap();
    let public = ["--public-url", "https://pennine.test"];
    let (mut a, base_a) = crate::durability::start_with(dir.path(), Some(&schema), &clients, &public);
    let (mut b, base_b) = crate::durability::start_with(dir.path(), Some(&schema), &clients, &public);
    let root = |base: &str| base.trim_end_matches("/fhir").to_string();
    let http = reqwest::Client::new();

    let mut header = Header::new(Algorithm::ES384);
    header.kid = Some("k1".into());
    let exp = pennine::fhir::time::now_millis() / 1000 + 240;
    let claims = json!({"iss": "jwt-analyst", "sub": "jwt-analyst", "aud": "https://pennine.test/auth/token",
                        "exp": exp, "jti": "only-once"});
    let assertion = encode(&header, &claims, &key).unwrap();
    let form = [
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion.as_str()),
    ];
    let r = http
        .post(format!("{}/auth/token", root(&base_a)))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = http
        .post(format!("{}/auth/token", root(&base_b)))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.text().await.unwrap().contains("replay"),
        "the other process saw the assertion"
    );

    // Five wrong secrets for one client, split between the processes, lock it at both.
    let ask = |base: String, secret: &'static str| {
        let http = http.clone();
        async move {
            http.post(format!("{base}/auth/token"))
                .basic_auth("tester", Some(secret))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for i in 0..5 {
        let base = if i % 2 == 0 { root(&base_a) } else { root(&base_b) };
        assert_eq!(ask(base, "wrong").await, 401, "failure {i}");
    }
    for base in [root(&base_a), root(&base_b)] {
        assert_eq!(
            ask(base, crate::helpers::TEST_SECRET).await,
            429,
            "locked at both processes"
        );
    }
    for c in [&mut a, &mut b] {
        c.kill();
    }
    if let Some(url) = crate::helpers::test_database() {
        for suffix in ["", "_audit", "_deadletters"] {
            crate::helpers::drop_schema(url.clone(), format!("{schema}{suffix}")).await;
        }
    }
}
