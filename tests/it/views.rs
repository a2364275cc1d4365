//! SQL-on-FHIR v2: the official test suite run through `POST /fhir/ViewDefinition/$run`
//! with inline resources, and `$run` over stored data.

use crate::helpers::{corpus, json_files, spawn_node};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A row with sorted keys and numbers compared as floats, so that `5` and `5.0` agree.
fn normalise(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let sorted: BTreeMap<String, Value> = o.iter().map(|(k, v)| (k.clone(), normalise(v))).collect();
            json!(sorted)
        }
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        Value::Number(n) => json!(n.as_f64().map(|f| format!("{f}")).unwrap_or_default()),
        other => other.clone(),
    }
}

fn rows_key(rows: &[Value]) -> Vec<String> {
    let mut keys: Vec<String> = rows.iter().map(|r| normalise(r).to_string()).collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn official_sql_on_fhir_suite_passes_through_run() {
    let Some(dir) = corpus("sql-on-fhir-v2/tests") else {
        return;
    };
    let node = spawn_node().await;
    let mut failures = Vec::new();
    let (mut total, mut passed, mut shareable, mut shareable_passed) = (0, 0, 0, 0);
    for file in json_files(&dir) {
        let suite: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let resources = suite["resources"].as_array().cloned().unwrap_or_default();
        for test in suite["tests"].as_array().unwrap() {
            total += 1;
            let is_shareable = test["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == "shareable"));
            shareable += usize::from(is_shareable);
            let mut params = vec![json!({"name": "viewResource", "resource": test["view"]})];
            params.extend(resources.iter().map(|r| json!({"name": "resource", "resource": r})));
            let wants_columns = test.get("expectColumns").is_some();
            if wants_columns {
                params.push(json!({"name": "_format", "valueCode": "csv"}));
            }
            let body = json!({"resourceType": "Parameters", "parameter": params});
            let res = node.post("ViewDefinition/$run", &body).await;
            let status = res.status().as_u16();
            let text = res.text().await.unwrap();
            let name = format!("{} / {}", file.file_name().unwrap().to_string_lossy(), test["title"]);
            let ok = if test.get("expectError").is_some() {
                let is_outcome =
                    serde_json::from_str::<Value>(&text).is_ok_and(|v| v["resourceType"] == "OperationOutcome");
                (400..500).contains(&status) && is_outcome
            } else if wants_columns {
                let header = text.lines().next().unwrap_or_default().to_string();
                let want: Vec<&str> = test["expectColumns"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                status == 200 && header == want.join(",")
            } else {
                let got: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
                let want = test["expect"].as_array().cloned().unwrap_or_default();
                status == 200 && rows_key(&got) == rows_key(&want)
            };
            assert!(status < 500, "{name}: server error {status}: {text}");
            if ok {
                passed += 1;
                shareable_passed += usize::from(is_shareable);
            } else {
                failures.push(format!(
                    "{name}: status {status}: {}",
                    text.chars().take(300).collect::<String>()
                ));
            }
        }
    }
    println!("SQL-on-FHIR v2 suite: {passed}/{total} passed; shareable {shareable_passed}/{shareable}");
    for f in &failures {
        println!("  FAILED {f}");
    }
    assert_eq!(
        shareable_passed, shareable,
        "every shareable test must pass: {failures:#?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn run_over_stored_data_in_every_format() {
    let node = spawn_node().await;
    for (id, gender, bd) in [
        ("a", "female", "1980-02-03"),
        ("b", "male", "1991-07-08"),
        ("c", "female", "1985-01-01"),
    ] {
        let r = node
            .put(
                &format!("Patient/{id}"),
                &json!({"resourceType": "Patient", "id": id, "gender": gender, "birthDate": bd}),
            )
            .await;
        assert!(r.status().is_success());
    }
    let run = |format: &str| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patient_demographics"}},
            {"name": "_format", "valueCode": format}]})
    };
    let res = node.post("ViewDefinition/$run", &run("json")).await;
    assert_eq!(res.status(), 200);
    let rows: Vec<Value> = res.json().await.unwrap();
    assert_eq!(rows.len(), 3);
    let decades: Vec<&str> = rows.iter().filter_map(|r| r["birth_decade"].as_str()).collect();
    assert!(decades.contains(&"1980s") && decades.contains(&"1990s"), "{rows:?}");

    let res = node.post("ViewDefinition/$run", &run("ndjson")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap().lines().count(), 3);

    let res = node.post("ViewDefinition/$run", &run("csv")).await;
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = res.text().await.unwrap();
    assert_eq!(text.lines().next(), Some("patient,gender,birth_decade,deceased"));
    assert_eq!(text.lines().count(), 4);

    // A family name that is a spreadsheet formula comes back as text, not as a formula.
    let r = node
        .put(
            "Patient/f",
            &json!({"resourceType": "Patient", "id": "f", "name": [{"family": "=HYPERLINK(\"http://evil.example\",\"x\")"}]}),
        )
        .await;
    assert!(r.status().is_success());
    let names = json!({"resourceType": "Parameters", "parameter": [
        {"name": "viewResource", "resource": {"resourceType": "ViewDefinition", "resource": "Patient", "status": "active",
            "select": [{"column": [{"name": "id", "path": "id"}, {"name": "family", "path": "name.family.first()"}]}]}},
        {"name": "_format", "valueCode": "csv"}]});
    let res = node.post("ViewDefinition/$run", &names).await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(
        text.contains("f,\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\""),
        "{text}"
    );

    let limited = json!({"resourceType": "Parameters", "parameter": [
        {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patient_demographics"}},
        {"name": "_limit", "valueInteger": 2}]});
    let rows: Vec<Value> = node.post("ViewDefinition/$run", &limited).await.json().await.unwrap();
    assert_eq!(rows.len(), 2);

    // A bad view is a 400 OperationOutcome that says where.
    let bad = json!({"resourceType": "Parameters", "parameter": [
        {"name": "viewResource", "resource": {"resourceType": "ViewDefinition", "resource": "Patient",
            "select": [{"column": [{"name": "x", "path": "name.("}]}]}}]});
    let res = node.post("ViewDefinition/$run", &bad).await;
    assert_eq!(res.status(), 400);
    let oo: Value = res.json().await.unwrap();
    assert_eq!(oo["issue"][0]["expression"][0], "select[0].column[0].path");
    let unknown = json!({"resourceType": "Parameters", "parameter": [
        {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/nope"}}]});
    assert_eq!(node.post("ViewDefinition/$run", &unknown).await.status(), 400);
    // The run over stored data was audited.
    assert!(node.total("AuditEvent?_summary=count").await >= 3);
    node.stop().await;
}
