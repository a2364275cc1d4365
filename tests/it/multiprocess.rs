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
