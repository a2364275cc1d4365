//! The attacks of a hostile partner, analyst or vendor, tried from outside by
//! class: four real nodes and a hub with mutual TLS under the default disclosure
//! settings, Synthea split four ways. Each class asserts that nothing below the
//! threshold and no key of a withheld row can be recovered, and that every
//! server is still up afterwards. The truth each assertion compares with comes
//! from each region's own analyst (`ViewDefinition/$run` and searches at the node).

use crate::federation::{as_client, as_hub, hub, node, Node, REGIONS};
use crate::helpers::{corpus, json_files};
use pennine::federation::Disclosure;
use pennine::startup::RunningHub;
use pennine::tls::dev_certs;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

struct Fixture {
    certs: tempfile::TempDir,
    nodes: Vec<Node>,
    hub: RunningHub,
    _hub_dir: tempfile::TempDir,
    partner: reqwest::Client,
    /// Each region's analyst (the `tester` client: vendor, analyst and admin of its region).
    analysts: Vec<reqwest::Client>,
}

impl Fixture {
    async fn start(files: &[std::path::PathBuf]) -> Fixture {
        let certs = tempfile::tempdir().unwrap();
        dev_certs(certs.path(), &REGIONS, &[]).unwrap();
        let mut nodes = Vec::new();
        for r in REGIONS {
            nodes.push(node(r, certs.path(), Disclosure::default()).await);
        }
        let mut analysts = Vec::new();
        for n in &nodes {
            analysts.push(as_client(certs.path(), &n.node.base_url(), "tester").await);
        }
        for (i, f) in files.iter().enumerate() {
            let bundle: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
            let res = analysts[i % 4]
                .post(format!("{}/fhir", nodes[i % 4].node.base_url()))
                .header("content-type", "application/fhir+json")
                .json(&bundle)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{}", f.display());
        }
        let urls: Vec<(&str, String)> = REGIONS
            .iter()
            .zip(&nodes)
            .map(|(r, n)| (*r, n.node.base_url()))
            .collect();
        let (hub, hub_dir) = hub(&urls, certs.path(), Disclosure::default(), Duration::from_secs(30)).await;
        let partner = as_client(certs.path(), &hub.base_url(), "partner").await;
        Fixture {
            certs,
            nodes,
            hub,
            _hub_dir: hub_dir,
            partner,
            analysts,
        }
    }

    async fn ask(&self, q: &Value) -> (u16, Value) {
        self.ask_as(&self.partner, q, "").await
    }

    async fn ask_as(&self, client: &reqwest::Client, q: &Value, query: &str) -> (u16, Value) {
        let res = client
            .post(format!("{}/fhir/$aggregate{query}", self.hub.base_url()))
            .json(q)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn count(&self, query: &str) -> (u16, Value) {
        let res = self
            .partner
            .get(format!("{}/fhir/{query}", self.hub.base_url()))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }

    /// The rows of an approved view at region `i`, as its own analyst sees them.
    async fn truth(&self, i: usize, view: &str) -> Vec<Value> {
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "viewReference", "valueReference": {"reference": format!("ViewDefinition/{view}")}}]});
        let res = self.analysts[i]
            .post(format!("{}/fhir/ViewDefinition/$run", self.nodes[i].node.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// Every server answers its health check.
    async fn all_up(&self) {
        let http = crate::federation::tls(self.certs.path())().build().unwrap();
        for url in self
            .nodes
            .iter()
            .map(|n| n.node.base_url())
            .chain([self.hub.base_url()])
        {
            let res = http.get(format!("{url}/health")).send().await.unwrap();
            assert_eq!(res.status(), 200, "{url} is down");
        }
    }

    async fn stop(self) {
        self.hub.stop().await;
        for n in self.nodes {
            n.stop().await;
        }
    }
}

/// Distinct subjects per group key in truth rows; `region` None pools all regions.
fn people_by_key(truth: &[Vec<Value>], region: Option<usize>, dims: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, rows) in truth.iter().enumerate() {
        if region.is_some_and(|r| r != i) {
            continue;
        }
        for row in rows {
            let key = dims.iter().map(|d| row[*d].to_string()).collect::<Vec<_>>().join("|");
            out.entry(key)
                .or_default()
                .insert(format!("{i}:{}", row["patient"].as_str().unwrap_or("")));
        }
    }
    out
}

fn row_key(row: &Value, dims: &[&str]) -> String {
    dims.iter().map(|d| row[*d].to_string()).collect::<Vec<_>>().join("|")
}

fn region_index(row: &Value) -> Option<usize> {
    REGIONS.iter().position(|r| row["region"] == *r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_partner_learns_nothing_below_the_threshold() {
    let Some(dir) = corpus("synthea-r4/bundles") else {
        return;
    };
    let files = json_files(&dir);
    let fx = Fixture::start(&files).await;
    let mut demographics = Vec::new();
    let mut observations = Vec::new();
    for i in 0..4 {
        demographics.push(fx.truth(i, "patient_demographics").await);
        observations.push(fx.truth(i, "observation_values").await);
    }

    row_keys_of_withheld_rows_never_leave(&fx, &demographics, &observations).await;
    sums_means_and_shares_reveal_no_exact_or_small_count(&fx, &demographics, &observations).await;
    free_filters_trackers_and_oracles_are_refused(&fx).await;
    zeros_look_like_small_counts(&fx).await;
    noise_cannot_be_averaged_away(&fx).await;
    a_dominant_value_is_not_released(&fx).await;
    the_hub_quality_figures_pass_the_gate(&fx).await;
    the_federation_api_takes_only_approved_typed_questions(&fx).await;
    fx.all_up().await;
    fx.stop().await;
}

/// Attack 1: grouping by row keys (resource key, surname, birth date), in JSON and CSV.
async fn row_keys_of_withheld_rows_never_leave(fx: &Fixture, demographics: &[Vec<Value>], observations: &[Vec<Value>]) {
    let ids: Vec<String> = demographics
        .iter()
        .flatten()
        .filter_map(|r| r["patient"].as_str().map(str::to_string))
        .collect();
    assert!(ids.len() >= 100);
    let inline = json!({"view": {"resourceType": "ViewDefinition", "resource": "Patient", "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"}, {"name": "family", "path": "name.first().family"},
            {"name": "born", "path": "birthDate"}]}]},
        "groupBy": ["id", "family", "born"], "measures": [{"name": "n", "function": "count"}]});
    for query in ["", "?_format=csv"] {
        let (status, body) = fx.ask_as(&fx.partner, &inline, query).await;
        assert_eq!(status, 400, "an inline view is refused at the hub: {body}");
        let text = body.to_string();
        assert!(text.contains("approved"), "{text}");
        assert!(!ids.iter().any(|id| text.contains(id.as_str())));
    }
    // The approved view's subject column is not a dimension.
    let (status, body) = fx
        .ask(&json!({"viewReference": "patient_demographics", "groupBy": ["patient"],
            "measures": [{"name": "n", "function": "count"}]}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["issue"][0]["expression"][0], "groupBy[0]");

    // The finest grouping partners may ask: every released row stands for at least 10 people.
    for (view, truth, dims) in [
        ("patient_demographics", demographics, vec!["gender", "birth_decade"]),
        (
            "observation_values",
            observations,
            vec!["code", "display", "status", "unit", "year"],
        ),
    ] {
        let q = json!({"viewReference": view, "groupBy": dims,
            "measures": [{"name": "n", "function": "count"},
                         {"name": "people", "function": "count_distinct", "column": "patient"}]});
        let (status, reply) = fx.ask(&q).await;
        assert_eq!(status, 200, "{reply}");
        let rows = reply["rows"].as_array().unwrap();
        assert!(!rows.is_empty(), "{view}: something is released");
        let pooled = people_by_key(truth, None, &dims);
        let by_region: Vec<_> = (0..4).map(|i| people_by_key(truth, Some(i), &dims)).collect();
        let mut withheld_region_rows = 0;
        for (i, keys) in by_region.iter().enumerate() {
            for (k, people) in keys {
                let released = rows
                    .iter()
                    .any(|r| region_index(r) == Some(i) && row_key(r, &dims) == *k);
                if people.len() < 10 {
                    assert!(
                        !released,
                        "{view} {}: a row of {} people was released: {k}",
                        REGIONS[i],
                        people.len()
                    );
                    withheld_region_rows += 1;
                }
            }
        }
        assert!(withheld_region_rows > 0, "{view}: the data has small groups to protect");
        for r in rows {
            let k = row_key(r, &dims);
            let people = match region_index(r) {
                Some(i) => by_region[i].get(&k).map_or(0, BTreeSet::len),
                None => pooled.get(&k).map_or(0, BTreeSet::len),
            };
            assert!(
                people >= 10,
                "{view}: {} row {k} stands for {people} people",
                r["region"]
            );
            assert_eq!(r["suppressed"], json!([]));
            assert!(r["n"].is_u64() && r["people"].is_u64(), "{r}");
        }
        // CSV carries exactly the same rows and nothing else.
        let (status, csv) = fx.ask_as(&fx.partner, &q, "?_format=csv").await;
        assert_eq!(status, 200);
        let csv = csv.as_str().unwrap().to_string();
        assert_eq!(
            csv.lines().count(),
            rows.len() + 1,
            "{view}: CSV rows = JSON rows + header"
        );
        for id in &ids {
            assert!(!csv.contains(id.as_str()));
        }
    }
}

/// Attack 4: sums, means and shares used to read exact or small counts.
async fn sums_means_and_shares_reveal_no_exact_or_small_count(
    fx: &Fixture,
    demographics: &[Vec<Value>],
    observations: &[Vec<Value>],
) {
    // A free-form indicator column is impossible: only declared measures are summed.
    let (status, _) = fx
        .ask(&json!({"viewReference": "patient_demographics", "groupBy": ["gender"],
            "measures": [{"name": "x", "function": "sum", "column": "birth_decade"}]}))
        .await;
    assert_eq!(status, 400);
    let q = json!({"viewReference": "patient_demographics", "groupBy": ["gender"],
        "measures": [{"name": "n", "function": "count"},
                     {"name": "deaths", "function": "sum", "column": "deceased"},
                     {"name": "share", "function": "mean", "column": "deceased"}]});
    let (status, reply) = fx.ask(&q).await;
    assert_eq!(status, 200, "{reply}");
    for r in reply["rows"].as_array().unwrap() {
        let (n, deaths, share) = (
            r["n"].as_u64().unwrap(),
            r["deaths"].as_u64().unwrap(),
            r["share"].as_f64().unwrap(),
        );
        assert_eq!(n % 5, 0);
        assert_eq!(deaths % 5, 0, "a sum of true/false values is a rounded count: {r}");
        // The share is the released deaths over the released count: it gives nothing more.
        assert!(
            (share - deaths as f64 / n as f64).abs() < 0.0051 * share.max(0.01),
            "{r}"
        );
        let truth: Vec<&Value> = match region_index(r) {
            Some(i) => demographics[i].iter().collect(),
            None => demographics.iter().flatten().collect(),
        };
        let rows: Vec<&&Value> = truth.iter().filter(|t| t["gender"] == r["gender"]).collect();
        let true_deaths = rows.iter().filter(|t| t["deceased"] == true).count();
        let alive = rows.len() - true_deaths;
        assert!(
            true_deaths >= 10 && alive >= 10,
            "{r}: {true_deaths} deaths, {alive} alive were released"
        );
    }
    // The sum of a number divided by its mean gives the released count, not the true one.
    let q = json!({"viewReference": "observation_values", "groupBy": ["code", "unit"],
        "measures": [{"name": "n", "function": "count"},
                     {"name": "total", "function": "sum", "column": "value"},
                     {"name": "mean", "function": "mean", "column": "value"}]});
    let (status, reply) = fx.ask(&q).await;
    assert_eq!(status, 200, "{reply}");
    let mut checked = 0;
    for r in reply["rows"].as_array().unwrap() {
        let (n, total, mean) = (
            r["n"].as_u64().unwrap(),
            r["total"].as_f64().unwrap(),
            r["mean"].as_f64().unwrap(),
        );
        if mean.abs() < 1e-9 {
            continue;
        }
        let implied = total / mean;
        assert!(
            (implied - n as f64).abs() <= 0.01 * n as f64 + 0.5,
            "{r}: sum/mean = {implied}"
        );
        let true_n = match region_index(r) {
            Some(i) => observations[i]
                .iter()
                .filter(|t| t["code"] == r["code"] && t["unit"] == r["unit"])
                .count(),
            None => observations
                .iter()
                .flatten()
                .filter(|t| t["code"] == r["code"] && t["unit"] == r["unit"])
                .count(),
        };
        assert!(true_n >= 10);
        checked += 1;
    }
    assert!(checked > 10);
}

/// Attacks 5, 6 and 7: free filters, bisecting trackers and a membership oracle.
async fn free_filters_trackers_and_oracles_are_refused(fx: &Fixture) {
    let filtered = json!({"view": {"resourceType": "ViewDefinition", "resource": "Patient",
            "where": [{"path": "birthDate.toString() != '1945-11-27'"}],
            "select": [{"column": [{"name": "one", "path": "1", "type": "integer"}]}]},
        "measures": [{"name": "ones", "function": "sum", "column": "one"}]});
    let (status, _) = fx.ask(&filtered).await;
    assert_eq!(status, 400, "no free where for partners");
    for query in [
        "Patient?deceased=true&birthdate=ge1945-01-01&birthdate=lt1946-01-01&_summary=count",
        "Patient?deceased=true&birthdate=ge1940&birthdate=lt1950&birthdate=ne1945-11-27&_summary=count",
        "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919&_summary=count",
        "Patient?_id=abc&_summary=count",
        "Patient?name=Smith&_summary=count",
        "Patient?gender:not=male&_summary=count",
        "Observation?subject=Patient/abc&_summary=count",
        "Observation?subject:Patient.birthdate=1945-11-27&_summary=count",
        "AuditEvent?_summary=count",
    ] {
        let (status, body) = fx.count(query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome");
    }
    // The same through the hub's certificate straight to a node: the node checks too.
    let hub_cert = as_hub(fx.certs.path());
    let res = hub_cert
        .get(format!(
            "{}/federation/count/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919",
            fx.nodes[0].node.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // Generalised questions are answered.
    let (status, body) = fx
        .count("Patient?deceased=true&birthdate=ge1900&birthdate=lt2000&_summary=count")
        .await;
    assert_eq!(status, 200, "{body}");
}

/// A region with no match and a region with a few look the same.
async fn zeros_look_like_small_counts(fx: &Fixture) {
    let (status, body) = fx
        .count("Patient?gender=female&birthdate=ge1915&birthdate=lt1925&_summary=count")
        .await;
    assert_eq!(status, 200, "{body}");
    let mut withheld = 0;
    for (i, analyst) in fx.analysts.iter().enumerate() {
        let res: Value = analyst
            .get(format!(
                "{}/fhir/Patient?gender=female&birthdate=ge1915&birthdate=lt1925&_summary=count",
                fx.nodes[i].node.base_url()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let truth = res["total"].as_u64().unwrap();
        let ext = body["extension"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["extension"].to_string().contains(&format!("\"{}\"", REGIONS[i])))
            .unwrap();
        let released = ext["extension"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["url"] == "count");
        if truth < 10 {
            assert!(released.is_none(), "{}: {truth} released as {ext}", REGIONS[i]);
            withheld += 1;
        }
        if let Some(r) = released {
            assert_ne!(r["valueUnsignedInt"], 0, "a zero is never released");
        }
    }
    assert!(withheld > 0, "the question has small or empty regions");
}

/// Asking again, reworded, gives the same figures: the noise follows the records.
async fn noise_cannot_be_averaged_away(fx: &Fixture) {
    let a = json!({"viewReference": "patient_demographics", "groupBy": ["gender"],
        "measures": [{"name": "n", "function": "count"}]});
    let b = json!({"viewReference": "patient_demographics", "groupBy": ["gender"],
        "measures": [{"name": "people", "function": "count_distinct", "column": "patient"},
                     {"name": "rows", "function": "count"}]});
    let (_, ra) = fx.ask(&a).await;
    let (_, rb) = fx.ask(&b).await;
    let released = |reply: &Value, m: &str| -> BTreeMap<String, u64> {
        reply["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (format!("{}|{}", r["region"], r["gender"]), r[m].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(released(&ra, "n"), released(&rb, "rows"));
    assert_eq!(
        released(&ra, "n"),
        released(&rb, "people"),
        "one row per patient: the same figure"
    );
    // A subset of regions gets no pooled row (it would difference with the whole).
    let mut subset = a.clone();
    subset["regions"] = json!(["nenc", "yh", "gm"]);
    let (status, reply) = fx.ask(&subset).await;
    assert_eq!(status, 200);
    assert!(reply["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["region"] != "pooled"));
}

/// A sum or mean dominated by one value is withheld.
async fn a_dominant_value_is_not_released(fx: &Fixture) {
    let vendor = &fx.analysts[0];
    let base = fx.nodes[0].node.base_url();
    for i in 0..12 {
        let p = json!({"resourceType": "Patient", "id": format!("dominance-{i}"), "gender": "unknown"});
        let res = vendor
            .put(format!("{base}/fhir/Patient/dominance-{i}"))
            .json(&p)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
        let value = if i == 0 { 1_000_000.0 } else { 1.0 };
        let o = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "99999-9", "display": "Dominance probe"}]},
            "subject": {"reference": format!("Patient/dominance-{i}")},
            "effectiveDateTime": "2020-01-01",
            "valueQuantity": {"value": value, "unit": "g", "system": "http://unitsofmeasure.org", "code": "g"}});
        let res = vendor
            .post(format!("{base}/fhir/Observation"))
            .json(&o)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    let (status, reply) = fx
        .ask(&json!({"viewReference": "observation_values", "groupBy": ["code"],
            "measures": [{"name": "n", "function": "count"}, {"name": "mean", "function": "mean", "column": "value"}]}))
        .await;
    assert_eq!(status, 200);
    assert!(
        !reply["rows"].as_array().unwrap().iter().any(|r| r["code"] == "99999-9"),
        "one value makes up nearly all of the mean"
    );
}

/// Attack 8: the hub's quality figures.
async fn the_hub_quality_figures_pass_the_gate(fx: &Fixture) {
    let res = fx
        .partner
        .get(format!("{}/quality", fx.hub.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let q: Value = res.json().await.unwrap();
    fn walk(v: &Value, path: &str, found: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, x) in o {
                    assert!(k != "topIssues" && k != "bySource", "{path}.{k} leaves the region");
                    walk(x, &format!("{path}.{k}"), found);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, path, found)),
            Value::Number(n) => {
                if let Some(n) = n.as_u64() {
                    if (1..10).contains(&n) || n % 5 != 0 {
                        found.push(format!("{path} = {n}"));
                    }
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(&q["quality"], "quality", &mut found);
    assert!(found.is_empty(), "small or exact counts at the hub: {found:?}");
}

/// The node's federation API takes the hub's typed question only, for approved views.
async fn the_federation_api_takes_only_approved_typed_questions(fx: &Fixture) {
    let hub_cert = as_hub(fx.certs.path());
    let url = format!("{}/federation/aggregate", fx.nodes[0].node.base_url());
    let d = serde_json::to_value(Disclosure::default()).unwrap();
    let post = |body: Value| hub_cert.post(&url).json(&body).send();
    let inline = json!({"view": {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]},
        "groupBy": ["id"], "measures": [{"name": "n", "function": "count"}], "disclosure": d});
    assert_eq!(
        post(inline).await.unwrap().status(),
        400,
        "no inline view, even from the hub"
    );
    let wrong_digest = json!({"viewReference": "patient_demographics", "viewDigest": "00",
        "groupBy": ["gender"], "measures": [{"name": "n", "function": "count"}], "disclosure": d, "deadlineMs": 5000});
    assert_eq!(post(wrong_digest).await.unwrap().status(), 400);
    let lax = json!({"viewReference": "patient_demographics", "viewDigest": "00",
        "groupBy": ["gender"], "measures": [{"name": "n", "function": "count"}],
        "disclosure": {"minCell": 1, "rounding": 1, "noise": 0, "minRegions": 1}, "deadlineMs": 5000});
    assert_eq!(
        post(lax).await.unwrap().status(),
        403,
        "a hub asking for less than the node's floor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_crashes_hangs_or_exhausts_a_node() {
    let node = crate::helpers::spawn_node_with(|c| c.service.max_view_rows = 2_000).await;
    for i in 0..30 {
        let mut names = Vec::new();
        for j in 0..40 {
            names.push(json!({"family": format!("F{i}-{j}"), "given": ["A", "B", "C"]}));
        }
        let p = json!({"resourceType": "Patient", "id": format!("p{i}"), "name": names, "gender": "female"});
        assert!(node.put(&format!("Patient/p{i}"), &p).await.status().is_success());
    }
    let run =
        |view: Value| json!({"resourceType": "Parameters", "parameter": [{"name": "viewResource", "resource": view}]});
    let column = |path: String| {
        run(
            json!({"resourceType": "ViewDefinition", "resource": "Patient", "select": [{"column": [
            {"name": "x", "path": path}]}]}),
        )
    };
    let before = peak_rss_kb();
    // Attack 2: expressions deep enough to overflow a stack.
    for path in [
        vec!["true"; 3500].join(" and "),
        format!("{}1{}", "(".repeat(3000), ")".repeat(3000)),
        format!("{}1{}", "iif(true, ".repeat(3000), ", 0)".repeat(3000)),
        format!("{}1", "-".repeat(3000)),
        "a".repeat(100_000),
    ] {
        let res = node.post("ViewDefinition/$run", &column(path)).await;
        assert_eq!(res.status(), 400);
        let body: Value = res.json().await.unwrap();
        let text = body["issue"][0]["diagnostics"].as_str().unwrap_or_default().to_string();
        assert!(text.contains("limit") || text.contains("deeper than"), "{text}");
    }
    // Nesting of selects.
    let mut select = json!({"column": [{"name": "x", "path": "id"}]});
    for _ in 0..40 {
        select = json!({"forEach": "name", "select": [select]});
    }
    let res = node
        .post(
            "ViewDefinition/$run",
            &run(json!({"resourceType": "ViewDefinition", "resource": "Patient", "select": [select]})),
        )
        .await;
    assert_eq!(res.status(), 400);
    // Attack 3: a row explosion stops within the budget, and memory returns.
    let explosion = run(
        json!({"resourceType": "ViewDefinition", "resource": "Patient", "select": [
        {"forEach": "%resource.descendants()", "select": [
            {"forEach": "%resource.descendants()", "select": [
                {"forEach": "%resource.descendants()", "column": [{"name": "x", "path": "id"}]}]}]}]}),
    );
    let started = std::time::Instant::now();
    let res = node.post("ViewDefinition/$run", &explosion).await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert!(body.to_string().contains("rows"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let exploding_column =
        column("descendants().select(%resource.descendants().select(%resource.descendants()))".into());
    let res = node.post("ViewDefinition/$run", &exploding_column).await;
    assert_eq!(res.status(), 400);
    // Over the node's stored data: the node's row budget (max_view_rows, 2,000 here).
    let wide = json!({"resourceType": "Parameters", "parameter": [{"name": "viewResource", "resource":
        {"resourceType": "ViewDefinition", "resource": "Patient", "select": [
            {"forEach": "name.given", "column": [{"name": "g", "path": "$this"}]}]}}]});
    let res = node.post("ViewDefinition/$run", &wide).await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["issue"][0]["code"], "too-costly", "{body}");
    let after = peak_rss_kb();
    if let (Some(b), Some(a)) = (before, after) {
        assert!(a < b + 1_500_000, "peak memory grew from {b} kB to {a} kB");
    }
    // Attack 10: numbers no double can hold are refused on write.
    for value in ["1e400", "-1e309"] {
        let text = format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueQuantity":{{"value":{value}}}}}"#
        );
        let res = node
            .client
            .post(node.url("Observation"))
            .header("content-type", "application/fhir+json")
            .body(text)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{value}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body["issue"][0]["expression"][0], "Observation.valueQuantity.value",
            "{body}"
        );
    }
    let res = node.client.get(format!("{}/health", node.root)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    node.stop().await;
}

/// The test process's peak resident memory (the nodes run in it), in kB.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Attack 9: a write-only vendor learns nothing stored through conditional operations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_only_vendor_reads_nothing_stored() {
    let node = crate::helpers::spawn_node().await;
    let p = json!({"resourceType": "Patient", "name": [{"family": "Secretname"}], "birthDate": "1945-11-27"});
    assert_eq!(node.post("Patient", &p).await.status(), 201);
    let vendor = crate::helpers::authed_with(reqwest::Client::builder, &node.root, "vendor").await;
    let probe = json!({"resourceType": "Patient", "name": [{"family": "Probe"}]});
    let res = vendor
        .post(node.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("If-None-Exist", "birthdate=1945-11-27")
        .header("Prefer", "return=representation")
        .json(&probe)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the match exists");
    let body = res.text().await.unwrap();
    assert!(!body.contains("Secretname"), "{body}");
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": probe, "request": {"method": "POST", "url": "Patient", "ifNoneExist": "birthdate=1945-11-27"}}]});
    let res = vendor
        .post(node.fhir.clone())
        .header("content-type", "application/fhir+json")
        .header("Prefer", "return=representation")
        .json(&tx)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    assert!(!body.contains("Secretname"), "{body}");
    // A client who may read gets the representation it asks for.
    let res = node
        .client
        .post(node.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("If-None-Exist", "birthdate=1945-11-27")
        .header("Prefer", "return=representation")
        .json(&probe)
        .send()
        .await
        .unwrap();
    assert!(res.text().await.unwrap().contains("Secretname"));
    node.stop().await;
}
