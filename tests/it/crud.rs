//! Create, read, update, delete, versions, history and conditional interactions.

use crate::helpers::spawn_node;
use serde_json::{json, Value};

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], "gender": "female",
           "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_read_update_delete_with_versions_and_headers() {
    let node = spawn_node().await;
    let r = node.post("Patient", &patient("Smith")).await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(r.headers()["etag"], "W/\"1\"");
    assert!(r.headers().contains_key("last-modified"));
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(
        location.ends_with(&format!("/fhir/Patient/{id}/_history/1")),
        "{location}"
    );
    assert_eq!(created["meta"]["versionId"], "1");
    assert!(created["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));

    let r = node.get(&format!("Patient/{id}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "W/\"1\"");
    assert_eq!(r.headers()["content-type"], "application/fhir+json; charset=utf-8");
    let read: Value = r.json().await.unwrap();
    assert_eq!(read["name"][0]["family"], "Smith");

    // If-None-Match with the current ETag: 304.
    let r = node
        .client
        .get(node.url(&format!("Patient/{id}")))
        .header("if-none-match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    let mut changed = read.clone();
    changed["name"][0]["family"] = json!("Jones");
    changed["gender"] = json!("other");
    changed["birthDate"] = json!("1999-09-09");
    let r = node.put(&format!("Patient/{id}"), &changed).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "W/\"2\"");
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["meta"]["versionId"], "2");

    // The index follows the current version only.
    assert_eq!(node.total("Patient?family=Smith").await, 0);
    assert_eq!(node.total("Patient?family=Jones").await, 1);
    assert_eq!(node.total("Patient?gender=female").await, 0, "old token rows are gone");
    assert_eq!(node.total("Patient?gender=other").await, 1);
    assert_eq!(node.total("Patient?birthdate=1999").await, 1);
    assert_eq!(node.total("Patient?identifier=9434765919").await, 1);
    let v1 = node.get_json(&format!("Patient/{id}/_history/1")).await;
    assert_eq!(v1["name"][0]["family"], "Smith");
    let hist = node.get_json(&format!("Patient/{id}/_history")).await;
    assert_eq!(hist["type"], "history");
    assert_eq!(hist["total"], 2);
    assert_eq!(hist["entry"][0]["resource"]["meta"]["versionId"], "2");
    assert_eq!(hist["entry"][0]["request"]["method"], "PUT");
    assert_eq!(hist["entry"][1]["request"]["method"], "POST");

    let r = node
        .client
        .delete(node.url(&format!("Patient/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = node.get(&format!("Patient/{id}")).await;
    assert_eq!(r.status(), 410);
    assert_eq!(node.total("Patient?family=Jones").await, 0);
    assert_eq!(node.total("Patient?identifier=9434765919").await, 0);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["code"], "deleted");
    // Deleting again is not an error; the old versions stay readable.
    let r = node
        .client
        .delete(node.url(&format!("Patient/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(node.get(&format!("Patient/{id}/_history/2")).await.status(), 200);
    assert_eq!(node.get(&format!("Patient/{id}/_history/3")).await.status(), 410);
    let hist = node.get_json(&format!("Patient/{id}/_history")).await;
    assert_eq!(hist["total"], 3);
    assert_eq!(hist["entry"][0]["request"]["method"], "DELETE");
    assert!(hist["entry"][0].get("resource").is_none());

    // Update after delete re-creates (201), and type and system history see everything.
    let r = node.put(&format!("Patient/{id}"), &changed).await;
    assert_eq!(r.status(), 201);
    assert_eq!(node.get_json("Patient/_history").await["total"], 4);
    assert_eq!(node.get_json("_history").await["total"], 4);
    assert_eq!(node.get("Patient/nonexistent").await.status(), 404);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_on_update_and_prefer_return() {
    let node = spawn_node().await;
    let mut p = patient("Create");
    p["id"] = json!("chosen-id");
    let r = node.put("Patient/chosen-id", &p).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["etag"], "W/\"1\"");

    let r = node
        .client
        .post(node.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(patient("Min").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("location"));
    assert!(r.bytes().await.unwrap().is_empty());

    let r = node
        .client
        .post(node.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=OperationOutcome")
        .body(patient("Oo").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["resourceType"], "OperationOutcome");

    // Update without an id in the body, or with another id: 400.
    let r = node.put("Patient/chosen-id", &patient("NoId")).await;
    assert_eq!(r.status(), 400);
    let mut other = patient("Other");
    other["id"] = json!("different");
    assert_eq!(node.put("Patient/chosen-id", &other).await.status(), 400);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_update_rejects_stale_versions() {
    let node = spawn_node().await;
    let id = node.create(&patient("Ver")).await;
    let mut body = node.get_json(&format!("Patient/{id}")).await;
    body["gender"] = json!("other");
    let put = |etag: &'static str, body: Value| {
        let node = &node;
        let id = id.clone();
        async move {
            node.client
                .put(node.url(&format!("Patient/{id}")))
                .header("content-type", "application/fhir+json")
                .header("if-match", etag)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(put("W/\"1\"", body.clone()).await.status(), 200);
    let r = put("W/\"1\"", body.clone()).await;
    assert_eq!(r.status(), 412);
    let oo: Value = r.json().await.unwrap();
    assert!(
        oo["issue"][0]["diagnostics"].as_str().unwrap().contains("version 2"),
        "{oo}"
    );
    assert_eq!(put("W/\"2\"", body).await.status(), 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_create_update_and_delete() {
    let node = spawn_node().await;
    let cond = "identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919";
    let send = |body: Value| {
        let node = &node;
        async move {
            node.client
                .post(node.url("Patient"))
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", cond)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
        }
    };
    let r1 = send(patient("First")).await;
    assert_eq!(r1.status(), 201);
    let first: Value = r1.json().await.unwrap();
    let r2 = send(patient("Second")).await;
    assert_eq!(r2.status(), 200);
    let second: Value = r2.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(
        second["name"][0]["family"], "First",
        "the existing resource is returned unchanged"
    );

    // Conditional update: one match -> update it.
    let r = node.put(&format!("Patient?{cond}"), &patient("Updated")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], first["id"]);
    assert_eq!(v["meta"]["versionId"], "2");
    // No match -> create.
    let mut p = patient("New");
    p["identifier"][0]["value"] = json!("9000000009");
    let r = node
        .put("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9000000009", &p)
        .await;
    assert_eq!(r.status(), 201);
    // Several matches -> 412.
    node.create(&patient("Dup")).await;
    let r = node.put(&format!("Patient?{cond}"), &patient("Ambiguous")).await;
    assert_eq!(r.status(), 412);
    let r = node.client.delete(node.url("Patient?family=New")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(node.total("Patient?family=New").await, 0);
    let r = node
        .client
        .delete(node.url(&format!("Patient?{cond}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_storm_leaves_one_resource() {
    let node = spawn_node().await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let client = node.client.clone();
        let url = node.url("Patient");
        tasks.push(tokio::spawn(async move {
            let body = json!({"resourceType": "Patient", "identifier": [{"system": "urn:storm", "value": "42"}],
                              "name": [{"family": format!("Storm{i}")}]});
            client
                .post(url)
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", "identifier=urn:storm|42")
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
    assert_eq!(created, 1);
    assert_eq!(node.total("Patient?identifier=urn:storm|42").await, 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_lists_what_the_node_supports() {
    let node = spawn_node().await;
    let cs = node.get_json("metadata").await;
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let rest = &cs["rest"][0];
    let patient = rest["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    let params: Vec<&str> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "_id",
        "_lastUpdated",
        "name",
        "identifier",
        "birthdate",
        "gender",
        "organization",
    ] {
        assert!(params.contains(&p), "{p} missing from {params:?}");
    }
    assert_eq!(patient["conditionalCreate"], true);
    let interactions: Vec<&str> = rest["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert!(interactions.contains(&"transaction") && interactions.contains(&"batch"));
    // Every advertised parameter of the core clinical types can actually be used.
    let mut searched = 0;
    for rtype in [
        "Patient",
        "Encounter",
        "Observation",
        "Condition",
        "Procedure",
        "MedicationRequest",
        "Immunization",
        "DiagnosticReport",
        "AllergyIntolerance",
        "Organization",
        "Practitioner",
        "Location",
        "Provenance",
    ] {
        let res = rest["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == rtype)
            .unwrap();
        for p in res["searchParam"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            let value = match p["type"].as_str().unwrap() {
                "date" => "ge2020",
                "quantity" | "number" => "gt1",
                _ => "x",
            };
            let r = node
                .client
                .get(node.url(&format!("{rtype}?{name}={value}")))
                .header("prefer", "handling=strict")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "searching {rtype} by {name}");
            searched += 1;
        }
    }
    assert!(searched > 250, "only {searched} parameters advertised");

    // The statement is valid R4 by our own validator (no empty arrays), advertises the
    // reverse includes that work, and lists only R4 types.
    let r = node.post("CapabilityStatement/$validate", &cs).await;
    assert_eq!(r.status(), 200);
    let oo: Value = r.json().await.unwrap();
    let errors: Vec<&Value> = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!cs.to_string().contains("[]"), "an empty array");
    let revs: Vec<&str> = patient["searchRevInclude"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        revs.contains(&"Observation:subject") && revs.contains(&"Encounter:patient"),
        "{revs:?}"
    );
    let found = node.get_json("Patient?_id=none&_revinclude=Observation:subject").await;
    assert_eq!(found["resourceType"], "Bundle");
    assert!(!rest["resource"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["type"] == "SubscriptionStatus"));
    assert_eq!(node.get("SubscriptionStatus").await.status(), 404);
    assert_eq!(
        node.client
            .get(format!("{}/health", node.root))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        node.client
            .get(format!("{}/ready", node.root))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    node.stop().await;
}

/// Server-assigned ids are version 7 UUIDs, ordered by creation: new resources' keys
/// (and the index rows pointing at them) go to the end of the store's B-trees instead
/// of onto random pages. Ids from a transaction and from plain creates both count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_assigned_ids_are_time_ordered_uuids() {
    let node = spawn_node().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = node.post("Patient", &patient(&format!("Order{i}"))).await;
        assert_eq!(r.status(), 201);
        let created: Value = r.json().await.unwrap();
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": (0..5).map(|i| json!({
        "fullUrl": format!("urn:uuid:00000000-0000-4000-8000-00000000000{i}"),
        "resource": patient(&format!("Txn{i}")),
        "request": {"method": "POST", "url": "Patient"}
    })).collect::<Vec<_>>()});
    let r = node.post("", &bundle).await;
    assert_eq!(r.status(), 200);
    let reply: Value = r.json().await.unwrap();
    for e in reply["entry"].as_array().unwrap() {
        let loc = e["response"]["location"].as_str().unwrap();
        ids.push(loc.split('/').nth(1).unwrap().to_string());
    }
    for id in &ids {
        let u = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(u.get_version_num(), 7, "{id} is not a version 7 UUID");
        assert_eq!(
            id,
            &u.hyphenated().to_string(),
            "{id} is not in the canonical lower-case form"
        );
    }
    let plain = &ids[..20];
    assert!(plain.windows(2).all(|w| w[0] < w[1]), "creates out of order: {plain:?}");
    let last_plain = &ids[19];
    assert!(
        ids[20..].iter().all(|t| t > last_plain),
        "the transaction's ids precede earlier creates: {ids:?}"
    );
}
