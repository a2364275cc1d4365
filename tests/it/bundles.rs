//! Batch and transaction Bundles.

use crate::helpers::{corpus, json_files, spawn_node};
use serde_json::{json, Value};

async fn post_bundle(node: &crate::helpers::TestNode, b: &Value) -> (u16, Value) {
    let r = node.post("", b).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthea_transactions_load_with_references_resolved() {
    let Some(dir) = corpus("synthea-r4/bundles") else {
        return;
    };
    let node = spawn_node().await;
    let files = json_files(&dir);
    let mut expected = 0usize;
    let mut observations = 0u64;
    for f in files.iter().take(5) {
        let b: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
        let entries = b["entry"].as_array().unwrap();
        expected += entries.len();
        observations += entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Observation")
            .count() as u64;
        let (status, reply) = post_bundle(&node, &b).await;
        assert_eq!(status, 200, "{}: {reply:.500}", f.display());
        assert_eq!(reply["type"], "transaction-response");
        assert_eq!(reply["entry"].as_array().unwrap().len(), entries.len());
        assert!(reply["entry"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["response"]["status"] == "201 Created"));
    }
    assert_eq!(node.total("Observation").await, observations);
    let history = node.get_json("_history?_count=1").await;
    assert_eq!(history["total"].as_u64().unwrap() as usize, expected);
    // urn:uuid references now point at the stored resources, and search follows them.
    let patients = node.search_ids("Patient?_count=100").await;
    assert_eq!(patients.len(), 5);
    let mut linked = 0;
    for p in &patients {
        let obs = node
            .get_json(&format!("Observation?subject=Patient/{p}&_count=1"))
            .await;
        let n = obs["total"].as_u64().unwrap();
        linked += n;
        if n > 0 {
            let subject = obs["entry"][0]["resource"]["subject"]["reference"].as_str().unwrap();
            assert_eq!(subject, format!("Patient/{p}"));
            let enc = obs["entry"][0]["resource"]["encounter"]["reference"].as_str().unwrap();
            assert_eq!(node.get(enc).await.status(), 200, "{enc} resolves");
        }
    }
    assert_eq!(linked, observations);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_entry_rolls_back_the_whole_transaction() {
    let node = spawn_node().await;
    let existing = node.create(&json!({"resourceType": "Patient", "gender": "male"})).await;
    let before = node.get_json("_history").await["total"].as_u64().unwrap();
    // The second entry fails only inside the unit of work (a stale If-Match), after
    // the first has been written: both must be undone.
    let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:a", "resource": {"resourceType": "Patient", "gender": "female"},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "id": existing, "gender": "other"},
         "request": {"method": "PUT", "url": format!("Patient/{existing}"), "ifMatch": "W/\"7\""}}
    ]});
    let (status, oo) = post_bundle(&node, &b).await;
    assert_eq!(status, 412, "{oo}");
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(node.get_json("_history").await["total"].as_u64().unwrap(), before);
    assert_eq!(node.total("Patient?gender=female").await, 0);
    assert_eq!(node.get_json(&format!("Patient/{existing}")).await["gender"], "male");

    // An invalid resource anywhere: nothing is written and every problem is reported.
    let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "female"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "colour": "blue"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": ""}, "request": {"method": "POST", "url": "Observation"}}
    ]});
    let (status, oo) = post_bundle(&node, &b).await;
    assert_eq!(status, 422, "{oo}");
    let exprs: Vec<&str> = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["expression"][0].as_str())
        .collect();
    assert!(exprs.iter().any(|e| e.starts_with("Bundle.entry[1]")), "{exprs:?}");
    assert!(exprs.iter().any(|e| e.starts_with("Bundle.entry[2]")), "{exprs:?}");
    assert_eq!(node.get_json("_history").await["total"].as_u64().unwrap(), before);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_none_exist_and_conditional_references_in_a_transaction() {
    let node = spawn_node().await;
    let org = node
        .create(&json!({"resourceType": "Organization", "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RTD"}]}))
        .await;
    let tx = |family: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "name": [{"family": family}],
                "identifier": [{"system": "urn:mrn", "value": "77"}],
                "managingOrganization": {"reference": "Organization?identifier=https://fhir.nhs.uk/Id/ods-organization-code|RTD"}},
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|77"}},
            {"fullUrl": "urn:uuid:o1", "resource": {"resourceType": "Observation", "status": "final",
                "code": {"text": "note"}, "subject": {"reference": "urn:uuid:p1"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]})
    };
    let (status, reply) = post_bundle(&node, &tx("First")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["entry"][0]["response"]["status"], "201 Created");
    let pid = reply["entry"][0]["fullUrl"]
        .as_str()
        .unwrap()
        .trim_start_matches("Patient/")
        .to_string();
    let patient = node.get_json(&format!("Patient/{pid}")).await;
    assert_eq!(
        patient["managingOrganization"]["reference"],
        format!("Organization/{org}")
    );
    // Second time: the patient exists, so the Observation must point at the existing one.
    let (status, reply) = post_bundle(&node, &tx("Second")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(reply["entry"][0]["fullUrl"], format!("Patient/{pid}"));
    assert_eq!(node.total("Patient").await, 1);
    assert_eq!(node.total(&format!("Observation?subject=Patient/{pid}")).await, 2);
    // A conditional reference that matches nothing fails the transaction.
    let bad = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient?identifier=urn:mrn|nobody"}},
         "request": {"method": "POST", "url": "Observation"}}]});
    let (status, _) = post_bundle(&node, &bad).await;
    assert_eq!(status, 412);
    assert_eq!(node.total("Observation").await, 2);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_entries_succeed_or_fail_on_their_own() {
    let node = spawn_node().await;
    let id = node.create(&json!({"resourceType": "Patient", "gender": "male"})).await;
    let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "female"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "colour": "blue"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": format!("Patient/{id}")}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
        {"request": {"method": "DELETE", "url": format!("Patient/{id}")}},
        {"request": {"method": "GET", "url": "Patient?gender=female"}},
        {"resource": {"resourceType": "Patient", "id": "x"}, "request": {"method": "PUT", "url": "Patient/x", "ifMatch": "W/\"3\""}}
    ]});
    let (status, reply) = post_bundle(&node, &b).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["type"], "batch-response");
    let statuses: Vec<&str> = reply["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "422 Unprocessable Entity",
            "410 Gone",
            "404 Not Found",
            "204 No Content",
            "200 OK",
            "412 Precondition Failed"
        ]
    );
    assert_eq!(
        reply["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(reply["entry"][5]["resource"]["total"], 1);
    assert_eq!(node.total("Patient").await, 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_keep_every_acknowledged_write() {
    let node = spawn_node().await;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (client, url) = (node.client.clone(), node.url(""));
        tasks.push(tokio::spawn(async move {
            let mut acked = 0;
            for round in 0..5 {
                let entries: Vec<Value> = (0..10)
                    .map(|i| json!({"fullUrl": format!("urn:uuid:{t}-{round}-{i}"),
                        "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:load", "value": format!("{t}-{round}-{i}")}],
                                     "link": [{"other": {"reference": format!("urn:uuid:{t}-{round}-{}", (i + 1) % 10)}, "type": "seealso"}]},
                        "request": {"method": "POST", "url": "Patient"}}))
                    .collect();
                let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
                let r = client.post(&url).header("content-type", "application/fhir+json").body(b.to_string()).send().await.unwrap();
                assert_eq!(r.status(), 200);
                acked += 10;
            }
            acked
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap();
    }
    assert_eq!(node.total("Patient").await, acked);
    assert_eq!(node.total("Patient?identifier=urn:load|7-3-2").await, 1);
    node.stop().await;
}
