//! Four real nodes and a hub on loopback with mutual TLS.

use crate::helpers::{corpus, json_files};
use pennine::config::{parse_node, HubConfig, NodeConfig, StorageConfig};
use pennine::federation::Disclosure;
use pennine::startup::{start_hub, RunningHub};
use pennine::startup::{start_node, RunningNode};
use pennine::tls::{dev_certs, TlsFiles};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

pub(crate) const REGIONS: [&str; 4] = ["nenc", "yh", "gm", "nwc"];

pub(crate) struct Node {
    pub(crate) node: RunningNode,
    schema: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

pub(crate) async fn node(region: &str, certs: &Path, floor: Disclosure) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::local(region, dir.path());
    config.clients = Some(crate::helpers::write_clients(dir.path(), region));
    config.tls = Some(TlsFiles::in_dir(certs, region));
    config.disclosure = floor;
    let mut schema = None;
    if let Some(url) = crate::helpers::test_database() {
        let s = crate::helpers::fresh_schema();
        schema = Some((url.clone(), s.clone()));
        config.storage = StorageConfig::Postgres {
            url,
            schema: s,
            pool: 4,
        };
    }
    Node {
        node: start_node(config).await.expect("node starts"),
        schema,
        _dir: dir,
    }
}

impl Node {
    pub(crate) async fn stop(self) {
        self.node.stop().await;
        if let Some((url, schema)) = self.schema {
            crate::helpers::drop_schema(url, schema).await;
        }
    }
}

pub(crate) async fn hub(
    nodes: &[(&str, String)],
    certs: &Path,
    gate: Disclosure,
    deadline: Duration,
) -> (RunningHub, tempfile::TempDir) {
    let (config, dir) = hub_config(nodes, certs, gate, deadline);
    (start_hub(config).await.expect("hub starts"), dir)
}

/// The configuration `hub` starts (answers cached for a minute, as deployed).
fn hub_config(
    nodes: &[(&str, String)],
    certs: &Path,
    gate: Disclosure,
    deadline: Duration,
) -> (HubConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = HubConfig::local(
        dir.path(),
        nodes
            .iter()
            .map(|(r, url)| parse_node(&format!("{r}={url}")).unwrap())
            .collect(),
        Some(TlsFiles::in_dir(certs, "hub")),
    );
    config.deadline = deadline;
    config.disclosure = gate;
    config.clients = Some(crate::helpers::write_clients(dir.path(), "nenc"));
    config.aggregate_rate = 10_000;
    (config, dir)
}

/// Clients that trust the development CA and present no certificate.
pub(crate) fn tls(certs: &Path) -> impl Fn() -> reqwest::ClientBuilder {
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    move || {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .tls_built_in_root_certs(false)
    }
}

/// A client without a certificate or a token.
fn partner(certs: &Path) -> reqwest::Client {
    tls(certs)().build().unwrap()
}

/// A client holding `client`'s token at the server `root` (tokens are valid only where issued).
pub(crate) async fn as_client(certs: &Path, root: &str, client: &str) -> reqwest::Client {
    crate::helpers::authed_with(tls(certs), root, client).await
}

/// A client holding the hub's certificate, as the hub calls nodes.
pub(crate) fn as_hub(certs: &Path) -> reqwest::Client {
    let config = pennine::tls::client_config(&TlsFiles::in_dir(certs, "hub")).unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .build()
        .unwrap()
}

pub(crate) const OPEN: Disclosure = Disclosure {
    min_cell: 1,
    rounding: 1,
    noise: 0,
    min_regions: 1,
};

/// Asks `hub` as the partner client (a fresh token from that hub each time).
pub(crate) async fn aggregate(client: &reqwest::Client, hub: &RunningHub, q: &Value) -> Value {
    let token = crate::helpers::token_for(client, &hub.base_url(), "partner").await;
    let res = client
        .post(format!("{}/fhir/$aggregate", hub.base_url()))
        .bearer_auth(token)
        .json(q)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

fn queries() -> Vec<Value> {
    vec![
        json!({"viewReference": "observation_values", "groupBy": ["code", "unit"],
            "measures": [{"name": "n", "function": "count"},
                         {"name": "patients", "function": "count_distinct", "column": "patient"},
                         {"name": "mean_value", "function": "mean", "column": "value"},
                         {"name": "sd_value", "function": "stddev", "column": "value"},
                         {"name": "total", "function": "sum", "column": "value"}]}),
        json!({"viewReference": "patient_demographics", "groupBy": ["gender", "birth_decade"],
            "measures": [{"name": "n", "function": "count"},
                         {"name": "patients", "function": "count_distinct", "column": "patient"},
                         {"name": "deceased", "function": "sum", "column": "deceased"},
                         {"name": "deceased_share", "function": "mean", "column": "deceased"}]}),
        json!({"viewReference": "encounter_classes",
            "groupBy": ["class"],
            "measures": [{"name": "encounters", "function": "count"},
                         {"name": "patients", "function": "count_distinct", "column": "patient"}]}),
    ]
}

pub(crate) fn pooled_rows(reply: &Value) -> Vec<&Value> {
    reply["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["region"] == "pooled")
        .collect()
}

fn key(row: &Value, group_by: &[&str]) -> String {
    group_by
        .iter()
        .map(|g| row[*g].to_string())
        .collect::<Vec<_>>()
        .join("|")
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_results_equal_one_node_holding_everything_and_disclosure_holds() {
    let Some(dir) = corpus("synthea-r4/bundles") else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path(), &["nenc", "yh", "gm", "nwc", "all"], &[]).unwrap();
    let mut nodes = Vec::new();
    for r in REGIONS {
        nodes.push(node(r, certs.path(), OPEN).await);
    }
    let whole = node("all", certs.path(), OPEN).await;
    let loader = as_hub(certs.path());
    let files = json_files(&dir);
    for (i, f) in files.iter().enumerate() {
        let bundle: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
        for target in [&nodes[i % 4].node, &whole.node] {
            let res = loader
                .post(format!("{}/fhir", target.base_url()))
                .header("content-type", "application/fhir+json")
                .json(&bundle)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 403, "the hub's certificate may not write");
        }
    }
    // Load as each region's vendor would (a token, no client certificate).
    let mut vendors = Vec::new();
    for n in nodes.iter().chain([&whole]) {
        vendors.push(as_client(certs.path(), &n.node.base_url(), "tester").await);
    }
    for (i, f) in files.iter().enumerate() {
        let bundle: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
        for (target, vendor) in [(&nodes[i % 4].node, &vendors[i % 4]), (&whole.node, &vendors[4])] {
            let res = vendor
                .post(format!("{}/fhir", target.base_url()))
                .header("content-type", "application/fhir+json")
                .json(&bundle)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{}", f.display());
        }
    }
    let urls: Vec<(&str, String)> = REGIONS
        .iter()
        .zip(&nodes)
        .map(|(r, n)| (*r, n.node.base_url()))
        .collect();
    let (exact_hub, _d1) = hub(&urls, certs.path(), OPEN, Duration::from_secs(30)).await;
    let (one_hub, _d2) = hub(
        &[("all", whole.node.base_url())],
        certs.path(),
        OPEN,
        Duration::from_secs(30),
    )
    .await;
    let (gated_hub, _d3) = hub(&urls, certs.path(), Disclosure::default(), Duration::from_secs(30)).await;
    let client = partner(certs.path());

    for q in queries() {
        let group_by: Vec<&str> = q["groupBy"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let measures: Vec<(String, String)> = q["measures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_string(),
                    m["function"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let split = aggregate(&client, &exact_hub, &q).await;
        let one = aggregate(&client, &one_hub, &q).await;
        assert_eq!(split["status"], "complete", "{}", split["regions"]);
        // Each region says how fresh and how complete its data is.
        for r in split["regions"].as_array().unwrap() {
            assert!(r["lastUpdated"].is_string(), "{r}");
            let c = r["completeness"].as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&c), "completeness in [0, 1]: {r}");
        }
        let a = pooled_rows(&split);
        let b = pooled_rows(&one);
        assert!(!a.is_empty());
        assert_eq!(a.len(), b.len(), "same groups");
        for row in &a {
            let k = key(row, &group_by);
            let other = b
                .iter()
                .find(|r| key(r, &group_by) == k)
                .unwrap_or_else(|| panic!("group {k} missing"));
            for (m, _) in &measures {
                assert!(close(&row[m], &other[m]), "{k} {m}: {} vs {}", row[m], other[m]);
            }
        }
        // Each region's rows add up to the pooled counts.
        for row in &a {
            let k = key(row, &group_by);
            let sum: f64 = split["rows"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["region"] != "pooled" && key(r, &group_by) == k)
                .map(|r| r["n"].as_f64().or(r["encounters"].as_f64()).unwrap_or(0.0))
                .sum();
            let pooled = row["n"].as_f64().or(row["encounters"].as_f64()).unwrap();
            assert_eq!(sum, pooled, "{k}");
        }

        // The same question through the default gate: the rules hold on every row.
        let gated = aggregate(&client, &gated_hub, &q).await;
        assert_eq!(gated["disclosure"]["minCell"], 10);
        assert_eq!(gated["disclosure"]["rounding"], 5);
        let exact_rows = split["rows"].as_array().unwrap();
        let rows = gated["rows"].as_array().unwrap();
        assert!(!rows.is_empty());
        assert!(rows.len() <= exact_rows.len());
        let counts: Vec<&String> = measures
            .iter()
            .filter(|(m, f)| f == "count" || f == "count_distinct" || m == "deceased")
            .map(|(m, _)| m)
            .collect();
        for row in rows {
            let k = key(row, &group_by);
            let exact = exact_rows
                .iter()
                .find(|r| r["region"] == row["region"] && key(r, &group_by) == k)
                .unwrap();
            assert_eq!(row["suppressed"], json!([]), "a released row has no withheld cell");
            for (m, f) in &measures {
                assert!(
                    !row[m].is_null() || f == "stddev",
                    "{k} {m}: a released row has every figure"
                );
                if counts.contains(&m) {
                    let n = row[m].as_u64().unwrap();
                    assert_eq!(n % 5, 0, "{k} {m}={n} is not rounded");
                    let true_n = exact[m].as_u64().unwrap();
                    if m != "deceased" {
                        assert!(true_n >= 10, "{k} {m}: a row with a count of {true_n} was released");
                    } else {
                        assert!(true_n == 0 || true_n >= 10, "{k}: {true_n} deaths were released");
                    }
                    // Noise of at most 2, then rounding to 5.
                    assert!(n.abs_diff(true_n) <= 5, "{k} {m}: {n} is too far from {true_n}");
                } else if f == "mean" || f == "stddev" {
                    if let (Some(a), Some(b)) = (row[m].as_f64(), exact[m].as_f64()) {
                        assert!(
                            (a - b).abs() <= 0.005 * b.abs() + 1e-12,
                            "{k} {m}: {a} is not {b} to 3 figures"
                        );
                    }
                }
            }
        }
        // Secondary suppression: no group lacks exactly one region row that exists beside a released pooled row.
        let mut groups: std::collections::BTreeMap<String, (bool, usize)> = Default::default();
        for exact in exact_rows.iter().filter(|r| r["region"] != "pooled") {
            let k = key(exact, &group_by);
            let released = rows
                .iter()
                .any(|r| r["region"] == exact["region"] && key(r, &group_by) == k);
            if !released {
                groups.entry(k).or_default().1 += 1;
            }
        }
        for row in rows.iter().filter(|r| r["region"] == "pooled") {
            if let Some(e) = groups.get_mut(&key(row, &group_by)) {
                e.0 = true;
            }
        }
        for (k, (pooled_released, withheld_regions)) in groups {
            assert!(
                !(pooled_released && withheld_regions == 1),
                "{k}: one withheld region row is recoverable from the pooled row"
            );
        }
    }

    // Federated counting: pooled total with per-region counts in extensions.
    let client = as_client(certs.path(), &exact_hub.base_url(), "partner").await;
    let res = client
        .get(format!("{}/fhir/Patient?_summary=count", exact_hub.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let bundle: Value = res.json().await.unwrap();
    assert_eq!(bundle["total"].as_u64().unwrap() as usize, files.len());
    let regional: u64 = bundle["extension"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["url"].as_str().unwrap().ends_with("federated-region-count"))
        .filter_map(|e| e["extension"].as_array().unwrap().iter().find(|x| x["url"] == "count"))
        .map(|x| x["valueUnsignedInt"].as_u64().unwrap())
        .sum();
    assert_eq!(regional as usize, files.len());
    // Each region's completeness travels with the count, as the node computed it.
    for (n, vendor) in nodes.iter().zip(&vendors) {
        let region = n.node.base_url();
        let q: Value = vendor
            .get(format!("{region}/quality"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let name = q["region"].as_str().unwrap().to_string();
        let patients = q["byResourceType"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["resourceType"] == "Patient")
            .unwrap();
        let overall = patients["completeness"]["overall"].as_f64().unwrap();
        let ext = bundle["extension"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["url"].as_str().unwrap().ends_with("federated-region-count"))
            .find(|e| {
                e["extension"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["valueString"] == name.as_str())
            })
            .unwrap();
        let sent = ext["extension"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["url"] == "completeness")
            .and_then(|x| x["valueDecimal"].as_f64());
        assert_eq!(sent, Some(overall), "{name}: {ext}");
    }
    // The hub gathers every region's quality figures (per type, no per-source detail).
    let res = client
        .get(format!("{}/quality", exact_hub.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let quality: Value = res.json().await.unwrap();
    assert_eq!(quality["status"], "complete", "{quality}");
    let mut received = 0;
    for r in REGIONS {
        let region = &quality["quality"][r];
        assert!(
            region.get("bySource").is_none(),
            "the hub gets aggregates only: {region}"
        );
        received += region["byResourceType"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["resourceType"] == "Patient")
            .map(|t| t["received"].as_u64().unwrap())
            .unwrap();
    }
    assert_eq!(received as usize, files.len(), "{quality}");
    let gated_partner = as_client(certs.path(), &gated_hub.base_url(), "partner").await;
    let res = gated_partner
        .get(format!(
            "{}/fhir/Patient?gender=female&_summary=count",
            gated_hub.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let gated: Value = res.json().await.unwrap();
    assert_eq!(gated["extension"].to_string().matches("\"ok\"").count(), 4, "{gated}");
    if let Some(t) = gated["total"].as_u64() {
        assert_eq!(t % 5, 0);
    }
    // The hub never returns resources.
    let res = client
        .get(format!("{}/fhir/Patient", exact_hub.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    // Audited at the hub and at each node.
    let admin = as_client(certs.path(), &exact_hub.base_url(), "admin").await;
    let res = admin
        .get(format!("{}/fhir/AuditEvent?_count=100", exact_hub.base_url()))
        .send()
        .await
        .unwrap();
    let audit: Value = res.json().await.unwrap();
    assert!(audit["total"].as_u64().unwrap() >= 4, "{audit:.300}");
    let res = vendors[0]
        .get(format!(
            "{}/fhir/AuditEvent?subtype=aggregate,count&_summary=count",
            nodes[0].node.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let node_audit: Value = res.json().await.unwrap();
    // Three aggregates and one count through each of two hubs.
    let listing: Value = vendors[0]
        .get(format!(
            "{}/fhir/AuditEvent?subtype=aggregate,count&_count=50",
            nodes[0].node.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen: Vec<String> = listing["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{} {} {}",
                e["resource"]["subtype"][0]["code"], e["resource"]["outcome"], e["resource"]["entity"][0]["query"]
            )
        })
        .collect();
    assert!(node_audit["total"].as_u64().unwrap() >= 8, "{node_audit} {seen:?}");

    // A node refuses a hub that asks for laxer disclosure than its own floor.
    let strict = node("nenc", certs.path(), Disclosure::default()).await;
    let (lax_hub, _d4) = hub(
        &[("nenc", strict.node.base_url())],
        certs.path(),
        OPEN,
        Duration::from_secs(5),
    )
    .await;
    let reply = aggregate(&client, &lax_hub, &queries()[1]).await;
    assert_eq!(reply["regions"][0]["status"], "error");
    assert!(
        reply["regions"][0]["detail"].as_str().unwrap().contains("minCell"),
        "{reply}"
    );
    lax_hub.stop().await;
    strict.stop().await;

    for h in [exact_hub, one_hub, gated_hub] {
        h.stop().await;
    }
    for n in nodes {
        n.stop().await;
    }
    whole.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_routes_answer_only_the_hub_certificate() {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path(), &["nenc"], &[]).unwrap();
    let n = node("nenc", certs.path(), OPEN).await;
    let digest = pennine::views::library::approved("patient_demographics")
        .unwrap()
        .unwrap()
        .digest;
    let q = json!({"viewReference": "patient_demographics", "viewDigest": digest, "groupBy": [],
        "measures": [{"name": "n", "function": "count"}],
        "disclosure": {"minCell": 1, "rounding": 1, "noise": 0, "minRegions": 1}, "deadlineMs": 5000});
    let url = format!("{}/federation/aggregate", n.node.base_url());
    let res = partner(certs.path()).post(&url).json(&q).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let oo: Value = res.json().await.unwrap();
    assert_eq!(oo["issue"][0]["code"], "forbidden");
    let res = as_hub(certs.path()).post(&url).json(&q).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["region"], "nenc");
    // Each federation call is audited at the node.
    for q in ["gender=female&_summary=count", "_summary=count"] {
        let res = as_hub(certs.path())
            .get(format!("{}/federation/count/Patient?{q}", n.node.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let admin = as_client(certs.path(), &n.node.base_url(), "tester").await;
    let audit: Value = admin
        .get(format!(
            "{}/fhir/AuditEvent?subtype=aggregate,count&_summary=count",
            n.node.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit["total"], 3, "one aggregate and two counts: {audit}");

    // The node's cached view rows follow writes: creates, updates and deletes after the first question.
    let by_gender = json!({"viewReference": "patient_demographics", "viewDigest": q["viewDigest"], "groupBy": ["gender"],
        "measures": [{"name": "n", "function": "count"}],
        "disclosure": {"minCell": 1, "rounding": 1, "noise": 0, "minRegions": 1}, "deadlineMs": 5000});
    let counts = |body: Value| -> std::collections::BTreeMap<String, u64> {
        body["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["key"][0].as_str().unwrap_or("none").to_string(),
                    g["measures"][0]["count"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let ask = || async {
        let res = as_hub(certs.path()).post(&url).json(&by_gender).send().await.unwrap();
        assert_eq!(res.status(), 200);
        counts(res.json::<Value>().await.unwrap())
    };
    for (id, g) in [("a", "female"), ("b", "female"), ("c", "male")] {
        let r = admin
            .put(format!("{}/fhir/Patient/{id}", n.node.base_url()))
            .json(&json!({"resourceType": "Patient", "id": id, "gender": g}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let first = ask().await;
    assert_eq!((first["female"], first["male"]), (2, 1), "{first:?}");
    admin
        .put(format!("{}/fhir/Patient/a", n.node.base_url()))
        .json(&json!({"resourceType": "Patient", "id": "a", "gender": "male"}))
        .send()
        .await
        .unwrap();
    admin
        .delete(format!("{}/fhir/Patient/b", n.node.base_url()))
        .send()
        .await
        .unwrap();
    admin
        .post(format!("{}/fhir/Patient", n.node.base_url()))
        .json(&json!({"resourceType": "Patient", "gender": "other"}))
        .send()
        .await
        .unwrap();
    let second = ask().await;
    assert_eq!(second.get("female"), None, "{second:?}");
    assert_eq!((second["male"], second["other"]), (2, 1), "{second:?}");
    // The hub's certificate reaches nothing but the federation API: no resources, no rows.
    for path in ["/fhir/Patient", "/fhir/_history", "/fhir/AuditEvent"] {
        let res = as_hub(certs.path())
            .get(format!("{}{path}", n.node.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{path}");
    }
    let run = json!({"resourceType": "Parameters", "parameter": [
        {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patient_demographics"}}]});
    let res = as_hub(certs.path())
        .post(format!("{}/fhir/ViewDefinition/$run", n.node.base_url()))
        .json(&run)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // A certificate from another CA cannot even connect.
    let other = tempfile::tempdir().unwrap();
    dev_certs(other.path(), &["nenc"], &[]).unwrap();
    assert!(as_hub(other.path()).post(&url).json(&q).send().await.is_err());
    n.stop().await;
}

/// Accepts TCP connections and never answers: a node that has hung.
async fn silent_listener() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (format!("https://{addr}"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_slow_and_untrusted_nodes_give_partial_answers_within_the_deadline() {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path(), &REGIONS, &[]).unwrap();
    let rogue = tempfile::tempdir().unwrap();
    dev_certs(rogue.path(), &["nwc"], &[]).unwrap();

    let healthy = [
        node("nenc", certs.path(), OPEN).await,
        node("gm", certs.path(), OPEN).await,
    ];
    let stopped = node("yh", certs.path(), OPEN).await;
    let stopped_url = stopped.node.base_url();
    stopped.stop().await;
    let (slow_url, slow_task) = silent_listener().await;
    let untrusted = node("nwc", rogue.path(), OPEN).await;
    let vendor = partner(certs.path());
    for n in &healthy {
        let tester = as_client(certs.path(), &n.node.base_url(), "tester").await;
        for i in 0..12 {
            let p = json!({"resourceType": "Patient", "gender": if i % 2 == 0 { "female" } else { "male" }, "birthDate": "1970-01-01"});
            let res = tester
                .post(format!("{}/fhir/Patient", n.node.base_url()))
                .json(&p)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
        }
    }
    let deadline = Duration::from_millis(1500);
    let q = json!({"viewReference": "patient_demographics", "groupBy": ["gender"],
        "measures": [{"name": "n", "function": "count"}]});

    // Two of four answer: partial, and no pooled rows (minRegions 3).
    let urls = vec![
        ("nenc", healthy[0].node.base_url()),
        ("yh", stopped_url.clone()),
        ("gm", slow_url.clone()),
        ("nwc", untrusted.node.base_url()),
    ];
    let (h, _d) = hub(
        &urls,
        certs.path(),
        Disclosure {
            min_cell: 1,
            rounding: 1,
            noise: 0,
            min_regions: 3,
        },
        deadline,
    )
    .await;
    let started = Instant::now();
    let reply = aggregate(&vendor, &h, &q).await;
    let took = started.elapsed();
    assert!(took < deadline + Duration::from_millis(1500), "took {took:?}");
    assert_eq!(reply["status"], "partial");
    let status = |r: &str| {
        reply["regions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["region"] == r)
            .unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status("nenc"), "ok");
    assert_eq!(status("yh"), "unreachable");
    assert_eq!(status("gm"), "timeout");
    assert_eq!(status("nwc"), "error");
    assert!(
        reply["regions"][3]["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{reply}"
    );
    assert!(pooled_rows(&reply).is_empty());
    assert!(reply["disclosure"]["notes"].to_string().contains("at least 3"));
    assert!(reply["rows"].as_array().unwrap().iter().any(|r| r["region"] == "nenc"));
    h.stop().await;

    // Three of four answer (one slow): pooled rows are released.
    let third = node("nwc", certs.path(), OPEN).await;
    let tester = as_client(certs.path(), &third.node.base_url(), "tester").await;
    for i in 0..12 {
        let p = json!({"resourceType": "Patient", "gender": if i % 2 == 0 { "female" } else { "male" }});
        tester
            .post(format!("{}/fhir/Patient", third.node.base_url()))
            .json(&p)
            .send()
            .await
            .unwrap();
    }
    let urls = vec![
        ("nenc", healthy[0].node.base_url()),
        ("yh", slow_url.clone()),
        ("gm", healthy[1].node.base_url()),
        ("nwc", third.node.base_url()),
    ];
    let (h, _d) = hub(
        &urls,
        certs.path(),
        Disclosure {
            min_cell: 1,
            rounding: 1,
            noise: 0,
            min_regions: 3,
        },
        deadline,
    )
    .await;
    let started = Instant::now();
    let reply = aggregate(&vendor, &h, &q).await;
    assert!(started.elapsed() < deadline + Duration::from_millis(1500));
    assert_eq!(reply["status"], "partial");
    let pooled = pooled_rows(&reply);
    assert_eq!(pooled.len(), 2);
    assert_eq!(pooled.iter().map(|r| r["n"].as_u64().unwrap()).sum::<u64>(), 36);
    // A region list narrower than minRegions never gets pooled rows.
    let mut narrow = q.clone();
    narrow["regions"] = json!(["nenc", "gm"]);
    let reply = aggregate(&vendor, &h, &narrow).await;
    assert_eq!(reply["status"], "complete");
    assert!(pooled_rows(&reply).is_empty());
    // Unknown regions are a clear 400.
    let mut bad = q.clone();
    bad["regions"] = json!(["mars"]);
    let res = as_client(certs.path(), &h.base_url(), "partner")
        .await
        .post(format!("{}/fhir/$aggregate", h.base_url()))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "{}", res.text().await.unwrap());
    h.stop().await;

    slow_task.abort();
    third.stop().await;
    untrusted.stop().await;
    for n in healthy {
        n.stop().await;
    }
}

/// Starts `pennine <args>` and reads the URL from its first line of output.
fn spawn_binary(args: &[&str]) -> (crate::durability::NodeProcess, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pennine"))
        .args(args)
        .env("PENNINE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the pennine binary");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no https URL in {line:?}"))
        .to_string();
    (crate::durability::NodeProcess(child), url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_nodes_and_a_hub_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pennine"))
        .args(["dev-certs", certs.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    for f in [
        "ca.pem",
        "hub.pem",
        "hub-key.pem",
        "nenc.pem",
        "nenc-key.pem",
        "nwc.pem",
        "nwc-key.pem",
    ] {
        assert!(certs.join(f).exists(), "dev-certs wrote {f}");
    }
    let mut procs = Vec::new();
    let mut specs = Vec::new();
    for r in ["nenc", "yh", "gm"] {
        let data = dir.path().join(r);
        std::fs::create_dir_all(&data).unwrap();
        let clients = crate::helpers::write_clients(&data, r);
        let (p, url) = spawn_binary(&[
            "node",
            "--region",
            r,
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
            "--tls-dir",
            certs.to_str().unwrap(),
            "--clients",
            clients.to_str().unwrap(),
        ]);
        procs.push(p);
        specs.push(format!("{r}={url}"));
    }
    let hub_data = dir.path().join("hub");
    std::fs::create_dir_all(&hub_data).unwrap();
    let hub_clients = crate::helpers::write_clients(&hub_data, "nenc");
    let mut args = vec![
        "hub",
        "--listen",
        "127.0.0.1:0",
        "--data",
        hub_data.to_str().unwrap(),
        "--tls-dir",
        certs.to_str().unwrap(),
        "--clients",
        hub_clients.to_str().unwrap(),
    ];
    for s in &specs {
        args.extend(["--node", s.as_str()]);
    }
    let (hub_proc, hub_url) = spawn_binary(&args);
    procs.push(hub_proc);
    for s in &specs {
        let url = s.split_once('=').unwrap().1;
        let client = as_client(&certs, url.trim_end_matches("/fhir"), "tester").await;
        for i in 0..12 {
            let res = client
                .post(format!("{url}/Patient"))
                .json(&json!({"resourceType": "Patient", "gender": if i < 6 { "female" } else { "male" }}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
        }
    }
    let client = as_client(&certs, hub_url.trim_end_matches("/fhir"), "partner").await;
    let res = client
        .post(format!("{hub_url}/$aggregate?_format=csv"))
        .json(&json!({"viewReference": "patient_demographics", "groupBy": ["gender"],
            "measures": [{"name": "n", "function": "count"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let csv = res.text().await.unwrap();
    assert_eq!(csv.lines().next(), Some("region,gender,n,suppressed"), "{csv}");
    // 18 women in all: perturbed by at most 2, then rounded to 5.
    assert!(
        csv.lines()
            .any(|l| l == "pooled,female,20," || l == "pooled,female,15,"),
        "{csv}"
    );
    // 6 in a region is under minCell 10: the row is left out, key and all.
    assert!(!csv.lines().any(|l| l.starts_with("nenc,")), "{csv}");

    // The hub refuses to start without nodes, and says how to give them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pennine"))
        .args(["hub", "--listen", "127.0.0.1:0", "--data", hub_data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node"));
    drop(procs);
}

/// A node's answers stay exact while its data changes thousands of times: creates,
/// updates that move a patient between groups, and deletes, with a question after each
/// round. The node keeps the rows of changed resources beside its column-wise rows and
/// folds them in once they pass a threshold (more than 4,096 rows changed or gone); eight
/// rounds of 1,000 changes cross it, so answers before and after the fold are both checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_thousands_of_creates_updates_and_deletes() {
    use std::collections::{BTreeMap, HashMap};
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path(), &["nenc"], &[]).unwrap();
    let node = node("nenc", certs.path(), OPEN).await;
    let base = node.node.base_url();
    let (mut config, _hub_dir) = hub_config(&[("nenc", base.clone())], certs.path(), OPEN, Duration::from_secs(30));
    // Every question goes to the node: an answer cached at the hub would hide its rows.
    config.answer_cache = Duration::ZERO;
    let hub = start_hub(config).await.expect("hub starts");
    let vendor = as_client(certs.path(), &base, "tester").await;
    let client = partner(certs.path());
    let q = json!({"viewReference": "patient_demographics", "groupBy": ["gender", "birth_decade"],
        "measures": [{"name": "n", "function": "count"},
                     {"name": "patients", "function": "count_distinct", "column": "patient"}]});

    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let genders = ["female", "male", "other", "unknown"];
    let mut truth: HashMap<String, (&str, u64)> = HashMap::new();
    let mut new_id = 0usize;
    for round in 0..=8 {
        // Round 0 creates 3,000 patients; each later round makes 1,000 changes to distinct
        // patients: 400 updates, 300 deletes, 300 creates.
        let mut entries = Vec::new();
        let mut existing: Vec<String> = truth.keys().cloned().collect();
        existing.sort();
        for i in (1..existing.len()).rev() {
            existing.swap(i, next() as usize % (i + 1));
        }
        let (updates, deletes, creates) = if round == 0 { (0, 0, 3000) } else { (400, 300, 300) };
        let mut put = |id: String, truth: &mut HashMap<String, (&str, u64)>, r: u64| {
            let gender = genders[(r % 4) as usize];
            let year = 1920 + (r / 4) % 90;
            entries.push(
                json!({"resource": {"resourceType": "Patient", "id": id, "gender": gender,
                                             "birthDate": format!("{year}-06-15")},
                                "request": {"method": "PUT", "url": format!("Patient/{id}")}}),
            );
            truth.insert(id, (gender, year / 10 * 10));
        };
        for id in existing.iter().take(updates) {
            put(id.clone(), &mut truth, next());
        }
        for _ in 0..creates {
            new_id += 1;
            put(format!("churn-{new_id}"), &mut truth, next());
        }
        for id in existing.iter().skip(updates).take(deletes) {
            entries.push(json!({"request": {"method": "DELETE", "url": format!("Patient/{id}")}}));
            truth.remove(id);
        }
        for chunk in entries.chunks(500) {
            let res = vendor
                .post(format!("{base}/fhir"))
                .header("content-type", "application/fhir+json")
                .json(&json!({"resourceType": "Bundle", "type": "transaction", "entry": chunk}))
                .send()
                .await
                .unwrap();
            let status = res.status();
            assert_eq!(status, 200, "round {round}: {}", res.text().await.unwrap());
        }

        let mut expected: BTreeMap<String, u64> = BTreeMap::new();
        for (gender, decade) in truth.values() {
            *expected.entry(format!("\"{gender}\"|\"{decade}s\"")).or_default() += 1;
        }
        let reply = aggregate(&client, &hub, &q).await;
        assert_eq!(reply["status"], "complete", "{reply}");
        let got: BTreeMap<String, u64> = pooled_rows(&reply)
            .into_iter()
            .map(|r| {
                assert_eq!(r["n"], r["patients"], "one row per patient: {r}");
                (key(r, &["gender", "birth_decade"]), r["n"].as_u64().unwrap())
            })
            .collect();
        assert_eq!(got, expected, "round {round}: {} patients", truth.len());
    }
    hub.stop().await;
    node.stop().await;
}
