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
