//! Structural validation against the R4 base definitions: the corpora that must
//! pass, the official validator test cases, and `$validate` over HTTP.

use super::helpers::{corpus, json_files, spawn_node};
use pennine::validation::{validator, Options};
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn errors_of(v: &Value) -> Vec<String> {
    errors_with(v, Options::default())
}

fn errors_with(v: &Value, options: Options) -> Vec<String> {
    validator()
        .validate_with(v, options)
        .into_iter()
        .filter(|i| {
            matches!(
                i.severity,
                pennine::fhir::Severity::Error | pennine::fhir::Severity::Fatal
            )
        })
        .map(|i| format!("{} @ {}", i.diagnostics, i.expression.unwrap_or_default()))
        .collect()
}

/// Official examples that break the base specification itself, with the reason
/// (checked by hand against the R4 definitions).
pub const INVALID_UPSTREAM: [(&str, &str, &str); 2] = [
    (
        "bundle-questionnaire.json",
        "nested Questionnaire.item elements lack linkId, which is 1..1 in R4",
        "Questionnaire.item[0].item[0].linkId",
    ),
    (
        "codesystem-example.json",
        "the code 'chol-mass' is defined twice, which csd-1 forbids",
        "(csd-1)",
    ),
];

#[test]
fn every_r4_example_and_synthea_resource_is_structurally_valid() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for sub in [
        "fhir-r4-examples/fhir_models-r4-examples",
        "fhir-r4-examples/fhir-test-cases-r4-examples",
        "synthea-r4/bundles",
    ] {
        let Some(dir) = corpus(sub) else { continue };
        for f in json_files(&dir) {
            let v: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
            checked += 1;
            let errs = errors_of(&v);
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if let Some((_, why, at)) = INVALID_UPSTREAM.iter().find(|(n, _, _)| *n == name) {
                assert!(
                    errs.iter().any(|e| e.contains(at)),
                    "{name} should be reported: {why}; got {errs:?}"
                );
                println!("  known invalid upstream, reported: {name} ({why})");
                continue;
            }
            if !errs.is_empty() {
                failures.push(format!("{}: {}", f.display(), errs[..errs.len().min(3)].join("; ")));
            }
        }
    }
    println!("structural validation: {checked} files, {} with errors", failures.len());
    for f in &failures {
        println!("  {f}");
    }
    assert!(
        failures.is_empty(),
        "{} valid files were reported invalid (listed above)",
        failures.len()
    );
}

/// The Java validator's verdict for a case: does it report at least one error?
fn java_expects_error(dir: &std::path::Path, java: &Value) -> Option<bool> {
    match java {
        Value::String(path) => {
            let text = std::fs::read_to_string(dir.join("outcomes").join(path)).ok()?;
            let oo: Value = serde_json::from_str(&text).ok()?;
            Some(
                oo["issue"]
                    .as_array()?
                    .iter()
                    .any(|i| i["severity"] == "error" || i["severity"] == "fatal"),
            )
        }
        Value::Object(o) => o.get("errorCount").and_then(Value::as_u64).map(|n| n > 0),
        _ => None,
    }
}

/// The official validator test cases that need only the base specification
/// (no supporting profiles): how often our error/no-error verdict agrees with
/// the Java reference validator's, per module.
#[test]
fn agreement_with_the_official_validator_test_cases() {
    let Some(dir) = corpus("fhir-validator-tests") else {
        return;
    };
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest-r4-subset.json")).unwrap()).unwrap();
    let mut per_module: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut disagreements = Vec::new();
    let mut skipped_profiles = 0;
    for case in manifest["test-cases"].as_array().unwrap() {
        if case.get("supporting").is_some() || case.get("profiles").is_some() {
            skipped_profiles += 1;
            continue;
        }
        let Some(expected) = java_expects_error(&dir, &case["java"]) else {
            continue;
        };
        let file = case["file"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(file)).unwrap();
        // The case's own settings, as the reference validator ran it.
        let options = Options {
            example_urls: case["examples"].as_bool().unwrap_or(true),
            html_in_markdown_is_error: case["noHtmlInMarkdown"].as_bool().unwrap_or(false),
        };
        let ours = match serde_json::from_slice::<Value>(&bytes) {
            Err(_) => true,
            Ok(v) => !errors_with(&v, options).is_empty(),
        };
        let module = case["module"].as_str().unwrap_or("(none)").to_string();
        let e = per_module.entry(module.clone()).or_default();
        e.0 += 1;
        if ours == expected {
            e.1 += 1;
        } else {
            let why = serde_json::from_slice::<Value>(&bytes)
                .map(|v| {
                    errors_with(&v, options)
                        .into_iter()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            disagreements.push(format!("{module}/{file}: Java {expected}, ours {ours} {why}"));
        }
    }
    let (n, ok) = per_module.values().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    println!("validator test cases without supporting profiles: {ok}/{n} verdicts agree ({:.1}%); {skipped_profiles} cases need profiles (not run)", 100.0 * ok as f64 / n as f64);
    for (m, (n, ok)) in &per_module {
        println!("  {m}: {ok}/{n}");
    }
    for d in &disagreements {
        println!("  DISAGREES {d}");
    }
    assert!(n >= 80, "only {n} cases were run");
    assert!(
        ok * 10 >= n * 9,
        "agreement {ok}/{n} is below the 90% the issue asks for"
    );
    no_false_alarms(&disagreements);
}

#[tokio::test]
async fn validate_operation_reports_every_issue_with_its_expression() {
    let node = spawn_node().await;
    let post = |url: String, body: Value| {
        let c = node.client.clone();
        async move {
            let res = c
                .post(url)
                .header("content-type", "application/fhir+json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let errors = |oo: &Value| -> Vec<String> {
        oo["issue"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["severity"] == "error")
            .map(|i| {
                format!(
                    "{} @ {}",
                    i["diagnostics"].as_str().unwrap(),
                    i["expression"][0].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    // A valid resource: 200 and no errors.
    let good = json!({"resourceType": "Patient", "id": "v1", "birthDate": "1970-05-17", "gender": "female"});
    let (status, oo) = post(node.url("Patient/$validate"), good.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(errors(&oo).is_empty(), "{oo}");
    // Every defect at once, each with its FHIRPath.
    let bad = json!({"resourceType": "Patient", "birthDate": "1970-13-01", "nickname": "x",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765918"}], "gender": ["female"]});
    let (status, oo) = post(node.url("Patient/$validate"), bad).await;
    assert_eq!(status, 200);
    let found = errors(&oo);
    for at in [
        "Patient.birthDate",
        "Patient.nickname",
        "Patient.identifier[0].value",
        "Patient.gender",
    ] {
        assert!(
            found.iter().any(|e| e.ends_with(&format!("@ {at}"))),
            "{at} missing in {found:?}"
        );
    }
    // Parameters form at instance level: mode update checks the id; an unknown profile is reported.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": good},
        {"name": "mode", "valueCode": "update"},
        {"name": "profile", "valueUri": "https://fhir.nhs.uk/StructureDefinition/Unknown"}]});
    let (status, oo) = post(node.url("Patient/other/$validate"), params).await;
    assert_eq!(status, 200);
    let found = errors(&oo);
    assert!(
        found.iter().any(|e| e.contains("does not match the URL id")),
        "{found:?}"
    );
    assert!(found.iter().any(|e| e.contains("is not loaded")), "{found:?}");
    // The type in the URL must be the resource's.
    let (_, oo) = post(node.url("Observation/$validate"), json!({"resourceType": "Patient"})).await;
    assert!(errors(&oo).iter().any(|e| e.contains("URL is for Observation")));
    // Validating writes nothing.
    assert_eq!(node.total("Patient").await, 0);
    node.stop().await;
}

#[tokio::test]
async fn writes_that_break_the_r4_definitions_are_refused_with_every_issue() {
    let node = spawn_node().await;
    let bad = json!({"resourceType": "Patient", "birthDate": "1970-13-01", "nickname": "x",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765918"}]});
    let res = node.post("Patient", &bad).await;
    assert_eq!(res.status(), 422);
    let oo: Value = res.json().await.unwrap();
    let at: Vec<&str> = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["expression"][0].as_str())
        .collect();
    for want in ["Patient.birthDate", "Patient.nickname", "Patient.identifier[0].value"] {
        assert!(at.contains(&want), "{want} missing: {oo}");
    }
    assert_eq!(node.total("Patient").await, 0);
    node.stop().await;
}

/// Where the reference validator finds nothing wrong, neither may we.
fn no_false_alarms(disagreements: &[String]) {
    let false_alarms: Vec<&String> = disagreements
        .iter()
        .filter(|d| d.contains(": Java false, ours true"))
        .collect();
    assert!(
        false_alarms.is_empty(),
        "errors on cases the reference accepts: {false_alarms:?}"
    );
}

/// Loads a case's supporting conformance resources as a node would load a profile folder.
fn load_case_profiles(dir: &std::path::Path, files: &[&str]) -> Result<pennine::profiles::ProfileSet, String> {
    let mut resources = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(dir.join(f)).map_err(|e| format!("{f}: {e}"))?;
        let v: Value = if f.ends_with(".xml") {
            pennine::fhir::model::xml_to_json(&text)?
        } else {
            serde_json::from_str(&text).map_err(|e| format!("{f}: {e}"))?
        };
        let keep = match v["resourceType"].as_str() {
            Some("StructureDefinition") => v["derivation"] == "constraint",
            Some("ValueSet") | Some("CodeSystem") => true,
            _ => false,
        };
        if keep {
            resources.push((f.to_string(), v));
        }
    }
    pennine::profiles::ProfileSet::from_resources(resources, "case").map_err(|e| e.to_string())
}

/// The official cases that come with supporting profiles: reported, not held to a rate
/// (many need profiles from other IGs, terminology, or snapshot features we lack).
#[test]
fn agreement_on_cases_with_supporting_profiles_is_reported() {
    let Some(dir) = corpus("fhir-validator-tests") else {
        return;
    };
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest-r4-subset.json")).unwrap()).unwrap();
    let (mut run, mut agree, mut not_loaded) = (0, 0, Vec::new());
    let mut disagreements = Vec::new();
    for case in manifest["test-cases"].as_array().unwrap() {
        if case.get("supporting").is_none() && case.get("profiles").is_none() {
            continue;
        }
        let mut files: Vec<&str> = Vec::new();
        for key in ["supporting", "profiles"] {
            files.extend(case[key].as_array().into_iter().flatten().filter_map(Value::as_str));
        }
        let set = match load_case_profiles(&dir, &files) {
            Ok(s) => s,
            Err(e) => {
                not_loaded.push(format!("{}: {e}", case["file"].as_str().unwrap()));
                continue;
            }
        };
        let Some(expected) = java_expects_error(&dir, &case["java"]) else {
            continue;
        };
        let file = case["file"].as_str().unwrap();
        let Ok(v) = serde_json::from_slice::<Value>(&std::fs::read(dir.join(file)).unwrap()) else {
            continue;
        };
        let mut errors = errors_of(&v);
        // The profiles the instance claims, as the reference validator applies them.
        for claimed in v["meta"]["profile"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if let Some(p) = set.get(claimed) {
                errors.extend(
                    set.check(p, &v)
                        .into_iter()
                        .filter(|i| i.severity == pennine::fhir::Severity::Error)
                        .map(|i| format!("{} @ {}", i.diagnostics, i.expression.unwrap_or_default())),
                );
            }
        }
        run += 1;
        let ours = !errors.is_empty();
        if ours == expected {
            agree += 1;
        } else {
            disagreements.push(format!("{file}: Java {expected}, ours {ours} {}", errors.join("; ")));
        }
    }
    println!(
        "validator cases with supporting profiles: {agree}/{run} verdicts agree; {} whose profiles do not load here",
        not_loaded.len()
    );
    for d in &disagreements {
        println!("  DISAGREES {d}");
    }
    for n in &not_loaded {
        println!("  NOT LOADED {n}");
    }
    assert!(
        run + not_loaded.len() >= 15,
        "the cases with supporting profiles were not found"
    );
    no_false_alarms(&disagreements);
}
