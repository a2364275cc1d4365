//! Data quality, computed as data arrives: `/quality` on a node against data
//! whose defects are known, and the hub gathering every region's figures.

use super::helpers::spawn_node;
use pennine::fhir::time::{format_instant, now_millis};
use serde_json::{json, Value};

fn by_type<'a>(report: &'a Value, rtype: &str) -> &'a Value {
    report["byResourceType"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["resourceType"] == rtype)
        .unwrap_or_else(|| panic!("no {rtype} figures in {report}"))
}

#[tokio::test]
async fn quality_figures_match_data_with_known_defects() {
    let node = spawn_node().await;
    let nhs = |v: &str| json!([{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": v}]);
    // Four patients: one born in the future, two that look like one person, one sharing an NHS number.
    let patients = [
        json!({"resourceType": "Patient", "identifier": nhs("9434765919"), "name": [{"family": "Ng", "given": ["Ann"]}],
            "gender": "female", "birthDate": "1970-01-01"}),
        json!({"resourceType": "Patient", "name": [{"family": "NG", "given": ["ann"]}], "gender": "female", "birthDate": "1970-01-01"}),
        json!({"resourceType": "Patient", "identifier": nhs("9434765919"), "name": [{"family": "Other", "given": ["Bo"]}],
            "gender": "male", "birthDate": "1980-02-02", "address": [{"city": "Leeds"}]}),
        json!({"resourceType": "Patient", "name": [{"family": "Future", "given": ["Fi"]}], "birthDate": "2999-01-01"}),
    ];
    for p in &patients {
        assert_eq!(node.post("Patient", p).await.status(), 201);
    }
    // Observations: a plausible heart rate two days old, an impossible one, and one an hour old.
    let hr = |value: f64, when: i64| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/x"}, "effectiveDateTime": format_instant(when),
            "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})
    };
    let now = now_millis();
    for o in [
        hr(72.0, now - 48 * 3_600_000),
        hr(720.0, now - 48 * 3_600_000),
        hr(80.0, now - 3_600_000),
    ] {
        assert_eq!(node.post("Observation", &o).await.status(), 201);
    }
    // An encounter that ends before it starts breaks R4 (per-1): refused, and counted as received.
    let bad = json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
        "period": {"start": "2024-05-02T10:00:00Z", "end": "2024-05-01T10:00:00Z"}});
    assert_eq!(node.post("Encounter", &bad).await.status(), 422);

    let r = node.client.get(format!("{}/quality", node.root)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let q: Value = r.json().await.unwrap();
    println!("{}", serde_json::to_string_pretty(&q["byResourceType"]).unwrap());

    let p = by_type(&q, "Patient");
    assert_eq!(p["received"], 4);
    assert_eq!(p["accepted"], 4);
    let ms = &p["completeness"]["mustSupport"];
    assert_eq!(ms["birthDate"]["present"], 4, "{ms}");
    assert_eq!(ms["gender"]["present"], 3, "{ms}");
    assert_eq!(ms["address"]["present"], 1, "{ms}");
    assert_eq!(ms["identifier"]["present"], 2, "{ms}");
    assert_eq!(ms["address"]["of"], 4, "{ms}");
    assert_eq!(p["plausibility"]["kinds"]["birth date in the future"], 1, "{p}");
    assert_eq!(q["uniqueness"]["patients"], 4);
    // Ann Ng twice by demographics, and the shared NHS number: two pairs.
    assert_eq!(q["uniqueness"]["likelyDuplicatePairs"], 2, "{}", q["uniqueness"]);

    let o = by_type(&q, "Observation");
    assert_eq!(o["received"], 3);
    assert_eq!(o["plausibility"]["implausible"], 1, "{o}");
    assert_eq!(o["timeliness"]["measured"], 3);
    let median = o["timeliness"]["delayHoursMedian"].as_f64().unwrap();
    assert!((median - 48.0).abs() < 0.5, "median delay {median} h");
    let p90 = o["timeliness"]["delayHoursP90"].as_f64().unwrap();
    assert!((p90 - 48.0).abs() < 0.5, "p90 delay {p90} h");

    let e = by_type(&q, "Encounter");
    assert_eq!(
        (e["received"].as_u64(), e["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{e}"
    );
    assert_eq!(e["conformance"]["withErrors"], 1);
    assert_eq!(e["plausibility"]["kinds"]["encounter ends before it starts"], 1, "{e}");
    assert!(
        e["conformance"]["topIssues"][0]["issue"]
            .as_str()
            .unwrap()
            .contains("per-1"),
        "{e}"
    );
    // Per source: every REST write here came from the test client.
    let sources: Vec<&str> = q["bySource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert!(sources.iter().all(|s| *s == "client:tester"), "{sources:?}");

    // A feed is a source of its own.
    let msg = "MSH|^~\\&|PAS|RTD|PENNINE|NENC|20240101120000||ADT^A04|Q1|P|2.5\rPID|1||M77^^^RTD^MR||Doe^Jo||19800101|F\rPV1|1|O\r";
    let r = node
        .client
        .post(format!("{}/feeds/hl7v2", node.root))
        .header("content-type", "x-application/hl7-v2+er7")
        .body(msg)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let q: Value = node
        .client
        .get(format!("{}/quality", node.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        q["bySource"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["source"] == "hl7v2:PAS|RTD" && s["resourceType"] == "Patient"),
        "{}",
        q["bySource"]
    );
    node.stop().await;
}

/// The figures live in the store: two processes on one store see each other's
/// counts, and a node killed with `kill -9` and started again still has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_figures_are_stored_shared_by_processes_and_survive_kill_9() {
    use crate::durability::start;
    let dir = tempfile::tempdir().unwrap();
    let schema = crate::helpers::fresh_schema();
    let (mut a, base_a) = start(dir.path(), Some(&schema));
    let (mut b, base_b) = start(dir.path(), Some(&schema));
    let client = crate::helpers::authed(&base_a).await;
    let post = |base: &str, body: Value| {
        let (client, url) = (
            client.clone(),
            format!("{base}/{}", body["resourceType"].as_str().unwrap()),
        );
        async move {
            client
                .post(url)
                .header("content-type", "application/fhir+json")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let patient = |family: &str| {
        json!({"resourceType": "Patient", "name": [{"family": family, "given": ["A"]}],
                                        "gender": "female", "birthDate": "1970-01-01"})
    };
    assert_eq!(post(&base_a, patient("Same")).await, 201);
    // The same person again, through the other process: a likely duplicate pair.
    assert_eq!(post(&base_b, patient("Same")).await, 201);
    // Refused (no status), then a write that carries the refusal's figures into the store.
    assert_eq!(
        post(&base_b, json!({"resourceType": "Observation", "code": {"text": "x"}})).await,
        422
    );
    assert_eq!(post(&base_b, patient("Other")).await, 201);

    let figures = |base: String| {
        let client = client.clone();
        async move {
            let root = base.trim_end_matches("/fhir").to_string();
            let r = client.get(format!("{root}/quality")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let seen_by_a = figures(base_a.clone()).await;
    let patients = by_type(&seen_by_a, "Patient");
    assert_eq!(patients["received"], 3, "{seen_by_a}");
    assert_eq!(patients["accepted"], 3, "{seen_by_a}");
    assert_eq!(by_type(&seen_by_a, "Observation")["rejected"], 1, "{seen_by_a}");
    assert_eq!(seen_by_a["uniqueness"]["patients"], 3, "{seen_by_a}");
    assert_eq!(seen_by_a["uniqueness"]["likelyDuplicatePairs"], 1, "{seen_by_a}");

    a.kill();
    b.kill();
    let (mut c, base_c) = start(dir.path(), Some(&schema));
    let seen_by_c = figures(base_c).await;
    for key in ["byResourceType", "bySource", "uniqueness", "since"] {
        assert_eq!(seen_by_c[key], seen_by_a[key], "{key} after kill -9 and a restart");
    }
    c.kill();
    if let Some(url) = crate::helpers::test_database() {
        for suffix in ["", "_audit", "_deadletters"] {
            crate::helpers::drop_schema(url.clone(), format!("{schema}{suffix}")).await;
        }
    }
}
