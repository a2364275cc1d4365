//! Search: every parameter type, modifiers, prefixes, chaining, paging, sorting,
//! includes and result parameters, against data with known answers.

use crate::helpers::{spawn_node, TestNode};
use serde_json::{json, Value};

struct Seed {
    ann: String,
    bob: String,
    zoe: String,
}

async fn seed(node: &TestNode) -> Seed {
    let org = node
        .create(&json!({"resourceType": "Organization", "name": "Freeman Hospital",
                        "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RTD01"}]}))
        .await;
    let ann = node
        .create(
            &json!({"resourceType": "Patient", "name": [{"family": "Armstrong", "given": ["Ann"]}], "gender": "female",
            "birthDate": "1970-05-17", "managingOrganization": {"reference": format!("Organization/{org}")},
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}],
            "address": [{"city": "Newcastle upon Tyne", "postalCode": "NE1 4LP"}]}),
        )
        .await;
    let bob = node
        .create(
            &json!({"resourceType": "Patient", "name": [{"family": "Brown", "given": ["Bob"]}], "gender": "male",
            "birthDate": "1985-11-02", "address": [{"city": "Leeds"}],
            "identifier": [{"system": "urn:mrn", "value": "B-1"}]}),
        )
        .await;
    let zoe = node
        .create(
            &json!({"resourceType": "Patient", "name": [{"family": "Zoë", "given": ["Zed"]}], "gender": "female",
            "birthDate": "2001", "active": false}),
        )
        .await;
    let obs = |patient: &str, code: &str, value: f64, unit: &str, when: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": format!("code {code}")},
            "subject": {"reference": format!("Patient/{patient}")},
            "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})
    };
    for o in [
        obs(&ann, "29463-7", 72.5, "kg", "2020-01-15T10:00:00Z"),
        obs(&ann, "29463-7", 74.0, "kg", "2020-06-15T10:00:00Z"),
        obs(&ann, "8302-2", 165.0, "cm", "2020-01-15T10:00:00Z"),
        obs(&bob, "29463-7", 90.0, "kg", "2021-03-01T09:30:00+01:00"),
        obs(&zoe, "8302-2", 120.0, "cm", "2019-12-31"),
    ] {
        node.create(&o).await;
    }
    node.create(
        &json!({"resourceType": "Provenance", "recorded": "2020-01-15T10:00:00Z",
        "target": [{"reference": format!("Patient/{ann}")}], "agent": [{"who": {"display": "feed"}}]}),
    )
    .await;
    Seed { ann, bob, zoe }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_string_date_reference_quantity_and_uri() {
    let node = spawn_node().await;
    let s = seed(&node).await;
    // token
    assert_eq!(node.total("Observation?code=http://loinc.org|29463-7").await, 3);
    assert_eq!(node.total("Observation?code=29463-7").await, 3);
    assert_eq!(node.total("Observation?code=http://snomed.info/sct|29463-7").await, 0);
    assert_eq!(node.total("Observation?code=29463-7,8302-2").await, 5);
    assert_eq!(node.total("Observation?code:not=29463-7").await, 2);
    assert_eq!(node.total("Observation?code:text=code%208302").await, 2);
    assert_eq!(node.search_ids("Patient?gender=female").await.len(), 2);
    assert_eq!(
        node.search_ids("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919")
            .await,
        vec![s.ann.clone()]
    );
    assert_eq!(
        node.search_ids("Patient?identifier=urn:mrn|").await,
        vec![s.bob.clone()]
    );
    assert_eq!(node.search_ids("Patient?active=false").await, vec![s.zoe.clone()]);
    // string: starts-with, case- and accent-insensitive; exact; contains
    assert_eq!(node.search_ids("Patient?name=arm").await, vec![s.ann.clone()]);
    assert_eq!(node.search_ids("Patient?family=zoe").await, vec![s.zoe.clone()]);
    assert!(node.search_ids("Patient?family:exact=zoe").await.is_empty());
    assert_eq!(
        node.search_ids("Patient?family:exact=Zo%C3%AB").await,
        vec![s.zoe.clone()]
    );
    assert_eq!(
        node.search_ids("Patient?address-city:contains=upon").await,
        vec![s.ann.clone()]
    );
    assert_eq!(
        node.search_ids("Patient?address-postalcode=ne1").await,
        vec![s.ann.clone()]
    );
    // date with prefixes and implicit precision
    assert_eq!(
        sorted(node.search_ids("Patient?birthdate=ge1980").await),
        sorted(vec![s.bob.clone(), s.zoe.clone()])
    );
    assert_eq!(node.search_ids("Patient?birthdate=1970-05").await, vec![s.ann.clone()]);
    assert_eq!(node.search_ids("Patient?birthdate=lt1971").await, vec![s.ann.clone()]);
    assert_eq!(
        node.search_ids("Patient?birthdate=2001-06-01").await.len(),
        0,
        "a year is not inside a day"
    );
    assert_eq!(node.search_ids("Patient?birthdate=le2001-06-01").await.len(), 3);
    assert_eq!(node.total("Observation?date=2020").await, 3);
    assert_eq!(node.total("Observation?date=ge2020-02-01&date=le2020-12-31").await, 1);
    assert_eq!(node.total("Observation?date=sa2020-12-31").await, 1);
    assert_eq!(node.total("Observation?date=eb2020-01-01").await, 1);
    assert_eq!(
        node.total("Observation?date=2021-03-01T08:30:00Z").await,
        1,
        "offsets are normalised"
    );
    assert_eq!(node.total("Observation?date=ne2020").await, 2);
    // reference: Type/id, bare id, type modifier, chaining
    assert_eq!(node.total(&format!("Observation?subject=Patient/{}", s.ann)).await, 3);
    assert_eq!(node.total(&format!("Observation?subject={}", s.ann)).await, 3);
    assert_eq!(node.total(&format!("Observation?subject:Patient={}", s.bob)).await, 1);
    assert_eq!(node.total(&format!("Observation?patient={}", s.zoe)).await, 1);
    assert_eq!(node.total("Observation?subject:Patient.gender=female").await, 4);
    assert_eq!(
        node.total("Observation?subject:Patient.identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919")
            .await,
        3
    );
    assert_eq!(node.total("Observation?subject.family=brown").await, 1);
    assert_eq!(node.total("Patient?organization.name=freeman").await, 1);
    // quantity with prefixes, precision and units
    assert_eq!(
        node.total("Observation?value-quantity=72.5|http://unitsofmeasure.org|kg")
            .await,
        1
    );
    assert_eq!(
        node.total("Observation?value-quantity=72|http://unitsofmeasure.org|kg")
            .await,
        0
    );
    assert_eq!(node.total("Observation?value-quantity=gt73||kg").await, 2);
    assert_eq!(node.total("Observation?value-quantity=le120").await, 4);
    assert_eq!(node.total("Observation?value-quantity=ap74").await, 2);
    // uri
    assert_eq!(node.total("Observation?_profile=http://example.org/none").await, 0);
    // _id and _lastUpdated
    assert_eq!(
        node.search_ids(&format!("Patient?_id={},{}", s.ann, s.bob)).await.len(),
        2
    );
    assert_eq!(node.total("Patient?_lastUpdated=gt2000-01-01").await, 3);
    assert_eq!(node.total("Patient?_lastUpdated=lt2000-01-01").await, 0);
    // :missing
    assert_eq!(
        node.search_ids("Patient?address:missing=true").await,
        vec![s.zoe.clone()]
    );
    assert_eq!(node.total("Patient?address:missing=false").await, 2);
    // POST _search with form parameters behaves like GET
    let r = node
        .client
        .post(node.url("Patient/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("gender=male")
        .send()
        .await
        .unwrap();
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["total"], 1);
    node.stop().await;
}

/// `Observation.patient` is `subject` filtered to Patients and stores no rows of its own
/// (it reads `subject`'s): every way of searching it must still see only Patients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parameter_stored_within_another_sees_only_its_target_type() {
    let node = spawn_node().await;
    let s = seed(&node).await;
    let group = node
        .create(
            &json!({"resourceType": "Group", "type": "person", "actual": true, "name": "Armstrong family",
            "identifier": [{"system": "urn:families", "value": "armstrong"}]}),
        )
        .await;
    // An Observation about a Group: `subject` reaches it, `patient` must not.
    let subject_group = |id: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": format!("Group/{id}")}})
    };
    node.create(&subject_group(&group)).await;
    // The rows are `subject`'s; `patient` is the part of them that points at Patients.
    assert_eq!(node.total(&format!("Observation?subject={group}")).await, 1);
    assert_eq!(node.total(&format!("Observation?patient={group}")).await, 0);
    assert_eq!(node.total(&format!("Observation?patient=Group/{group}")).await, 0);
    assert_eq!(node.total(&format!("Observation?patient:Group={group}")).await, 0);
    assert_eq!(node.total(&format!("Observation?patient={},{group}", s.ann)).await, 3);
    assert_eq!(node.total(&format!("Observation?patient=Patient/{}", s.bob)).await, 1);
    assert_eq!(node.total("Observation?patient:missing=true").await, 1);
    assert_eq!(node.total("Observation?patient:missing=false").await, 5);
    assert_eq!(node.total("Observation?subject:missing=true").await, 0);
    // Chains: through Patients only.
    assert_eq!(node.total("Observation?patient.name=armstrong").await, 3);
    assert_eq!(node.total("Observation?subject:Group.identifier=armstrong").await, 1);
    assert_eq!(node.total("Observation?patient:Group.identifier=armstrong").await, 0);
    // Includes both ways.
    let included = |b: &Value, rtype: &str| {
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["search"]["mode"] == "include" && e["resource"]["resourceType"] == rtype)
            .count()
    };
    let b = node
        .get_json("Observation?code=29463-7&_include=Observation:patient")
        .await;
    assert_eq!(
        (b["total"].as_u64(), included(&b, "Patient"), included(&b, "Group")),
        (Some(4), 2, 0)
    );
    let b = node
        .get_json("Observation?code=29463-7&_include=Observation:subject")
        .await;
    assert_eq!((included(&b, "Patient"), included(&b, "Group")), (2, 1));
    let b = node
        .get_json("Observation?code=29463-7&_include=Observation:patient:Group")
        .await;
    assert_eq!(included(&b, "Group"), 0);
    let b = node
        .get_json(&format!("Group?_id={group}&_revinclude=Observation:patient"))
        .await;
    assert_eq!(included(&b, "Observation"), 0);
    let b = node
        .get_json(&format!("Group?_id={group}&_revinclude=Observation:subject"))
        .await;
    assert_eq!(included(&b, "Observation"), 1);
    let b = node
        .get_json(&format!("Patient?_id={}&_revinclude=Observation:patient", s.ann))
        .await;
    assert_eq!(included(&b, "Observation"), 3);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_is_stable_and_sorting_works() {
    let node = spawn_node().await;
    for i in 0..25 {
        node.create(
            &json!({"resourceType": "Patient", "name": [{"family": format!("Page{i:02}")}],
            "birthDate": format!("19{:02}-01-01", 50 + i)}),
        )
        .await;
    }
    let first = node.get_json("Patient?_count=10&_sort=-birthdate").await;
    assert_eq!(first["total"], 25);
    assert_eq!(first["entry"].as_array().unwrap().len(), 10);
    assert_eq!(first["entry"][0]["resource"]["birthDate"], "1974-01-01");
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    // A write between pages does not shift them.
    node.create(&json!({"resourceType": "Patient", "name": [{"family": "Intruder"}], "birthDate": "1999-01-01"}))
        .await;
    let mut seen: Vec<String> = first["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    let mut url = Some(next);
    let mut pages = 1;
    while let Some(u) = url {
        let page: Value = node.client.get(&u).send().await.unwrap().json().await.unwrap();
        assert_eq!(page["total"], 25);
        for e in page["entry"].as_array().unwrap() {
            seen.push(e["resource"]["id"].as_str().unwrap().to_string());
        }
        assert!(page["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "previous"));
        url = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 25, "no duplicates across pages");
    let by_name = node.get_json("Patient?_sort=family&_count=3").await;
    let names: Vec<&str> = by_name["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["name"][0]["family"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Intruder", "Page00", "Page01"]);
    let r = node
        .client
        .get(format!("{}?_getpages=doesnotexist", node.fhir))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn includes_summary_elements_and_unknown_parameters() {
    let node = spawn_node().await;
    let s = seed(&node).await;
    let b = node
        .get_json("Observation?code=8302-2&_include=Observation:subject")
        .await;
    let modes: Vec<(&str, &str)> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["resource"]["resourceType"].as_str().unwrap(),
                e["search"]["mode"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(modes.iter().filter(|m| *m == &("Observation", "match")).count(), 2);
    assert_eq!(modes.iter().filter(|m| *m == &("Patient", "include")).count(), 2);
    let b = node
        .get_json(&format!("Patient?_id={}&_revinclude=Provenance:target", s.ann))
        .await;
    assert_eq!(b["entry"].as_array().unwrap().len(), 2);
    assert_eq!(b["entry"][1]["resource"]["resourceType"], "Provenance");
    assert_eq!(b["entry"][1]["search"]["mode"], "include");

    let b = node.get_json("Patient?_summary=count").await;
    assert_eq!(b["total"], 3);
    assert!(b.get("entry").is_none());
    let b = node.get_json(&format!("Patient?_id={}&_elements=gender", s.ann)).await;
    let r = &b["entry"][0]["resource"];
    assert_eq!(r["gender"], "female");
    assert!(r.get("name").is_none());
    assert!(r["meta"]["tag"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["code"] == "SUBSETTED"));
    let b = node.get_json(&format!("Patient?_id={}&_summary=true", s.ann)).await;
    assert!(b["entry"][0]["resource"].get("name").is_some());

    // Unknown parameter: ignored and reported under lenient handling, 400 under strict.
    let b = node.get_json("Patient?gender=male&colour=blue").await;
    assert_eq!(b["total"], 1);
    let outcome = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .unwrap();
    assert!(outcome["resource"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("colour"));
    assert!(
        !b["link"][0]["url"].as_str().unwrap().contains("colour"),
        "self link shows only applied parameters"
    );
    let r = node
        .client
        .get(node.url("Patient?gender=male&colour=blue"))
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let oo: Value = r.json().await.unwrap();
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("colour"));
    // Bad values are always errors.
    assert_eq!(node.get("Patient?birthdate=yesterday").await.status(), 400);
    assert_eq!(node.get("Patient?gender:fuzzy=x").await.status(), 400);
    assert_eq!(node.get("Patient?_count=lots").await.status(), 400);
    assert_eq!(node.get("Patient?_sort=nonsense").await.status(), 400);
    assert_eq!(node.get("Patient?_include=Nonsense:x").await.status(), 400);
    let _ = s.bob;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_beyond_the_paging_limit_only_when_accurate_is_asked() {
    let node = crate::helpers::spawn_node_with(|c| c.service.max_results = 5).await;
    for i in 0..8 {
        node.create(&json!({"resourceType": "Patient", "name": [{"family": format!("T{i}")}]}))
            .await;
    }
    let b = node.get_json("Patient?_count=2").await;
    assert!(b.get("total").is_none(), "{b}");
    let b = node.get_json("Patient?_count=2&_total=accurate").await;
    assert_eq!(b["total"], 8);
    assert_eq!(node.get("Patient?_total=sometimes").await.status(), 400);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_parameters_match_exactly_below_and_above() {
    let node = spawn_node().await;
    let profile = "https://fhir.nhs.uk/StructureDefinition/NHSDigital-Observation";
    node.create(
        &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "meta": {"profile": [profile]}}),
    )
    .await;
    node.create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "y"}}))
        .await;
    assert_eq!(node.total(&format!("Observation?_profile={profile}")).await, 1);
    assert_eq!(
        node.total("Observation?_profile=https://fhir.nhs.uk/StructureDefinition/NHSDigital")
            .await,
        0
    );
    assert_eq!(
        node.total("Observation?_profile:below=https://fhir.nhs.uk/StructureDefinition/")
            .await,
        1
    );
    assert_eq!(
        node.total(&format!("Observation?_profile:above={profile}/extra/parts"))
            .await,
        1
    );
    assert_eq!(node.total("Observation?_profile:missing=true").await, 1);
    node.stop().await;
}
