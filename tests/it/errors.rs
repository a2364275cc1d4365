//! Bad input: every error is an OperationOutcome with the right status, and no
//! input stops the node.

use crate::helpers::{spawn_node, spawn_node_with};
use serde_json::{json, Value};

async fn outcome(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("an OperationOutcome body");
    assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
    assert!(
        v["issue"][0]["severity"].is_string()
            && v["issue"][0]["code"].is_string()
            && v["issue"][0]["diagnostics"].is_string()
    );
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_too_large_and_wrong_type() {
    let node = spawn_node_with(|c| c.max_body_bytes = 4096).await;
    let post_raw = |path: &str, ct: &str, body: String| {
        node.client
            .post(node.url(path))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let (s, oo) = outcome(
        post_raw(
            "Patient",
            "application/fhir+json",
            "{\n  \"resourceType\": \"Patient\",\n  \"gender\": }".into(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    let d = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(d.contains("line 3") && d.contains("column"), "{d}");

    // A key given twice is refused, not read as the last one.
    let (s, oo) = outcome(
        post_raw(
            "Patient",
            "application/fhir+json",
            "{\"resourceType\": \"Patient\", \"gender\": \"male\", \"gender\": \"female\"}".into(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    let d = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(d.contains("'gender' is given twice"), "{d}");
    // Control characters in a string are refused with their place.
    let (s, oo) = outcome(
        post_raw(
            "Patient",
            "application/fhir+json",
            "{\"resourceType\": \"Patient\", \"name\": [{\"family\": \"A\\u0000B\"}]}".into(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s, 422, "{oo}");
    assert!(oo.to_string().contains("Patient.name[0].family"), "{oo}");

    let (s, _) = outcome(node.get("Nonsense/1").await).await;
    assert_eq!(s, 404);
    let (s, _) = outcome(
        post_raw("Nonsense", "application/fhir+json", "{}".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = outcome(node.get("Patient/has$bad!id").await).await;
    assert_eq!(s, 400);
    let big = json!({"resourceType": "Patient", "name": [{"text": "x".repeat(5000)}]}).to_string();
    let (s, oo) = outcome(post_raw("Patient", "application/fhir+json", big).await.unwrap()).await;
    assert_eq!(s, 413);
    assert_eq!(oo["issue"][0]["code"], "too-long");
    let (s, _) = outcome(
        post_raw("Patient", "application/xml", "<Patient/>".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 415);
    let (s, _) = outcome(post_raw("Patient", "text/plain", "{}".into()).await.unwrap()).await;
    assert_eq!(s, 415);
    let (s, _) = outcome(
        node.client
            .get(node.url("Patient"))
            .header("accept", "application/fhir+xml")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 406);
    // Body of the wrong type for the URL, a non-object, a missing resourceType.
    let (s, _) = outcome(
        node.post(
            "Patient",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = outcome(node.post("Patient", &json!([1, 2])).await).await;
    assert_eq!(s, 400);
    let (s, oo) = outcome(node.post("Patient", &json!({"gender": "male"})).await).await;
    assert_eq!(s, 400);
    assert_eq!(oo["issue"][0]["expression"][0], "resourceType");
    let (s, _) = outcome(
        node.client
            .patch(node.url("Patient/1"))
            .body("[]")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 405);
    let (s, _) = outcome(node.client.get(format!("{}/nowhere", node.root)).send().await.unwrap()).await;
    assert_eq!(s, 404);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structural_errors_name_the_element() {
    let node = spawn_node().await;
    let (s, oo) = outcome(
        node.post("Patient", &json!({"resourceType": "Patient", "colour": "blue"}))
            .await,
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(oo["issue"][0]["code"], "structure");
    assert_eq!(oo["issue"][0]["expression"][0], "Patient.colour");
    let (s, oo) = outcome(
        node.post("Patient", &json!({"resourceType": "Patient", "name": [], "gender": ""}))
            .await,
    )
    .await;
    assert_eq!(s, 422);
    let exprs: Vec<&str> = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["expression"][0].as_str())
        .collect();
    assert!(
        exprs.contains(&"Patient.name") && exprs.contains(&"Patient.gender"),
        "{exprs:?}"
    );
    let (s, _) = outcome(
        node.post("Patient", &json!({"resourceType": "Patient", "active": "yes"}))
            .await,
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(node.total("Patient").await, 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_stops_the_node() {
    let node = spawn_node().await;
    let bodies = [
        "", "null", "[]", "{", "}", "\"string\"", "{\"resourceType\": 5}", "{\"resourceType\": \"Bundle\"}",
        "{\"resourceType\": \"Bundle\", \"type\": \"transaction\", \"entry\": 7}",
        "{\"resourceType\": \"Bundle\", \"type\": \"transaction\", \"entry\": [{}]}",
        "{\"resourceType\": \"Bundle\", \"type\": \"batch\", \"entry\": [{\"request\": {\"method\": \"POST\", \"url\": \"Patient\"}}]}",
        "{\"resourceType\": \"Bundle\", \"type\": \"transaction\", \"entry\": [{\"resource\": {\"resourceType\": \"Patient\"}, \"request\": {\"method\": \"PUT\", \"url\": \"Patient?\"}}]}",
        "{\"resourceType\": \"Patient\", \"id\": \"\u{0}\"}",
        "\u{feff}{\"resourceType\": \"Patient\"}",
        "{\"resourceType\": \"Patient\", \"name\": [{\"given\": [null]}]}",
    ];
    let mut bytes: Vec<Vec<u8>> = bodies.iter().map(|b| b.as_bytes().to_vec()).collect();
    bytes.push(vec![0xff, 0xfe, 0x00, 0x7b]);
    bytes.push((0..3000u32).map(|i| (i * 7919 % 251) as u8).collect());
    for path in ["", "Patient", "Patient/abc", "Patient?_id=1", "Observation/_search"] {
        for b in &bytes {
            for method in [reqwest::Method::POST, reqwest::Method::PUT] {
                let r = node
                    .client
                    .request(method.clone(), node.url(path))
                    .header(
                        "content-type",
                        if path.ends_with("_search") {
                            "application/x-www-form-urlencoded"
                        } else {
                            "application/fhir+json"
                        },
                    )
                    .body(b.clone())
                    .send()
                    .await
                    .unwrap();
                let s = r.status().as_u16();
                assert!(
                    s < 500,
                    "{method} /{path} with {:?} gave {s}",
                    String::from_utf8_lossy(b)
                );
            }
        }
    }
    for q in [
        "Patient?birthdate=%00",
        "Patient?name=%27%3B%20DROP%20TABLE%20resources",
        "Patient?_sort=-",
        "Patient?_count=99999999999999999999",
        "Observation?subject:Patient.subject.name=x",
        "Patient?_elements=,,,",
    ] {
        let s = node.get(q).await.status().as_u16();
        assert!(s < 500, "{q} gave {s}");
    }
    assert_eq!(node.get("metadata").await.status(), 200, "the node still answers");
    // A UTF-8 byte-order mark is tolerated.
    let r = node
        .client
        .post(node.url("Patient"))
        .header("content-type", "application/fhir+json")
        .body("\u{feff}{\"resourceType\": \"Patient\", \"gender\": \"male\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    node.stop().await;
}
