//! The R4 specification examples round-trip through create and read.

use crate::helpers::{corpus, json_files, spawn_node};
use serde_json::Value;

/// Removes what the server legitimately changes: id and meta's versionId/lastUpdated.
fn strip_server_fields(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
        if let Some(Value::Object(meta)) = o.get_mut("meta") {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if meta.is_empty() {
                o.remove("meta");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_examples_round_trip_without_loss() {
    let Some(root) = corpus("fhir-r4-examples") else { return };
    let node = spawn_node().await;
    let mut files = json_files(&root.join("fhir_models-r4-examples"));
    files.extend(json_files(&root.join("fhir-test-cases-r4-examples")));
    let mut checked = 0;
    let mut audit_refused = 0;
    let mut invalid_refused = 0;
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let Ok(original) = serde_json::from_str::<Value>(&text) else {
            failures.push(format!("{}: not JSON", f.display()));
            continue;
        };
        let rtype = original["resourceType"].as_str().unwrap_or_default().to_string();
        if rtype == "AuditEvent" {
            // The audit trail is the server's own and append-only: the API refuses writes to it.
            let r = node
                .client
                .post(node.url(&rtype))
                .header("content-type", "application/fhir+json")
                .body(text.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{}", f.display());
            audit_refused += 1;
            continue;
        }
        let r = node
            .client
            .post(node.url(&rtype))
            .header("content-type", "application/fhir+json")
            .body(text.clone())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let created: Value = r.json().await.unwrap();
        // The official examples that break the R4 base definitions are refused, naming the rule.
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if let Some((_, _, at)) = super::validation::INVALID_UPSTREAM.iter().find(|(n, _, _)| *n == name) {
            assert_eq!(status, 422, "{}", f.display());
            assert!(created.to_string().contains(at), "{created}");
            invalid_refused += 1;
            continue;
        }
        if status != 201 {
            failures.push(format!(
                "{}: {status} {}",
                f.display(),
                created["issue"][0]["diagnostics"]
            ));
            continue;
        }
        let id = created["id"].as_str().unwrap();
        let mut read = node.get_json(&format!("{rtype}/{id}")).await;
        let mut expected = original.clone();
        strip_server_fields(&mut read);
        strip_server_fields(&mut expected);
        if read != expected {
            failures.push(format!("{}: read differs from what was sent", f.display()));
        }
        checked += 1;
    }
    println!(
        "R4 examples: {checked} of {} round-tripped; {audit_refused} AuditEvent examples refused (audit records are the server's own); {invalid_refused} invalid examples refused",
        files.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    node.stop().await;
}
