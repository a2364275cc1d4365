//! `$regress` through HTTP: four regional nodes and a hub over mutual TLS, a fifth
//! node holding every region's rows, the disclosure rules one by one, and the
//! region's own fits (with an offset) whose rows `.ci/run` refits with statsmodels.

use crate::federation::{as_client, as_hub, hub, node, Node, REGIONS};
use crate::feeds::sus_header;
use crate::pathways::nhs;
use pennine::federation::Disclosure;
use pennine::tls::dev_certs;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// A small deterministic generator (no test depends on a random seed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

const CODES: [&str; 8] = ["I10X", "J440", "E119", "N179", "K700", "F100", "I489", "J189"];

/// One episode: age on admission (if recorded), admission method, diagnoses, death, provider.
struct Ep {
    age: Option<u32>,
    method: &'static str,
    diagnoses: usize,
    died: bool,
    provider: String,
}

/// `n` episodes of region `r`: age, admission method, diagnoses and death drawn so
/// that every model below has a real answer; every 31st age is missing.
fn draw(r: usize, n: usize, seed: u64) -> Vec<Ep> {
    let mut g = Lcg(seed * 7919 + r as u64);
    (0..n)
        .map(|i| {
            let age = 40 + (g.next() * 55.0) as u32;
            let method = match g.next() {
                u if u < 0.2 => "11",
                u if u < 0.35 => "12",
                _ => "21",
            };
            let emergency = method.starts_with('2') as u32 as f64;
            let k = 1 + (g.next() * (age as f64 / 15.0 + 2.0 * emergency)) as usize;
            let eta = -7.0 + 0.07 * age as f64 + 0.6 * emergency + 0.15 * k as f64;
            let died = g.next() < 1.0 / (1.0 + (-eta).exp());
            Ep {
                age: (i % 31 != 7).then_some(age),
                method,
                diagnoses: k.min(20),
                died,
                provider: format!("R{r}{}", if i % 2 == 0 { "A" } else { "B" }),
            }
        })
        .collect()
}

/// Episodes as a SUS extract; `tag` keeps spell ids and NHS numbers apart between extracts.
fn sus(tag: usize, eps: &[Ep]) -> String {
    let mut out = sus_header();
    for (i, e) in eps.iter().enumerate() {
        let mut dx: Vec<String> = (0..e.diagnoses)
            .map(|j| CODES[(i + j) % CODES.len()].to_string())
            .collect();
        dx.resize(20, String::new());
        out.push_str(&format!(
            "\nT{tag}E{i},1,1,{},{},{},{},{},300,2025-03-01,2025-03-09,2025-03-01,2025-03-09,{},{}",
            nhs((tag * 10_000 + i) as u32),
            if i % 2 == 0 { "1" } else { "2" },
            e.age.map(|a| a.to_string()).unwrap_or_default(),
            e.provider,
            e.method,
            if e.died { "4" } else { "1" },
            dx.join(","),
        ));
    }
    out.push('\n');
    out
}

fn episodes(r: usize, n: usize, seed: u64) -> String {
    sus(r * 10 + seed as usize, &draw(r, n, seed))
}

async fn load(vendor: &reqwest::Client, node: &Node, csv: String) {
    let res = vendor
        .post(format!("{}/feeds/csv/sus-apc", node.node.base_url()))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rejected"].as_u64().unwrap_or(0), 0, "{body}");
}

async fn post(client: &reqwest::Client, url: &str, q: &Value) -> (u16, Value) {
    let res = client.post(url).json(q).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The three families, each with what it exercises.
fn models() -> Vec<Value> {
    vec![
        json!({"viewReference": "hospital_episodes", "family": "gaussian", "outcome": "age",
               "predictors": ["emergency", "diagnoses", "died"]}),
        json!({"viewReference": "hospital_episodes", "family": "binomial", "outcome": "died",
               "predictors": ["age", {"column": "admission_method", "categorical": true, "reference": "21"}, "diagnoses"]}),
        json!({"viewReference": "hospital_episodes", "family": "poisson", "outcome": "diagnoses",
               "predictors": ["age", "died", {"column": "admission_method", "categorical": true}]}),
    ]
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-300)
}

fn assert_same_model(a: &Value, b: &Value, rel: f64) {
    let (ca, cb) = (
        a["coefficients"].as_array().unwrap(),
        b["coefficients"].as_array().unwrap(),
    );
    assert_eq!(ca.len(), cb.len(), "{a}\n{b}");
    for (x, y) in ca.iter().zip(cb) {
        assert_eq!(x["term"], y["term"]);
        for k in ["estimate", "stdError", "statistic"] {
            let (u, v) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!(close(u, v, rel), "{} {k}: {u} vs {v}", x["term"]);
        }
    }
    for k in ["deviance", "nullDeviance", "aic"] {
        let (u, v) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
        assert!(close(u, v, rel), "{k}: {u} vs {v}");
    }
    assert_eq!(a["n"], b["n"]);
    assert_eq!(a["dfResidual"], b["dfResidual"]);
}

const GATE: Disclosure = Disclosure {
    min_cell: 5,
    rounding: 5,
    noise: 0,
    min_regions: 3,
};

#[tokio::test]
async fn federated_fits_equal_one_node_holding_every_row_and_each_rule_refuses() {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path(), &["nenc", "yh", "gm", "nwc", "all"], &[]).unwrap();
    let mut nodes = Vec::new();
    for r in REGIONS {
        nodes.push(node(r, certs.path(), GATE).await);
    }
    let whole = node("all", certs.path(), GATE).await;
    let all_vendor = as_client(certs.path(), &whole.node.base_url(), "tester").await;
    for (r, n) in nodes.iter().enumerate() {
        let vendor = as_client(certs.path(), &n.node.base_url(), "tester").await;
        let rows = [400, 250, 300, 150][r];
        load(&vendor, n, episodes(r, rows, 1)).await;
        load(&all_vendor, &whole, episodes(r, rows, 1)).await;
    }
    let urls: Vec<(&str, String)> = REGIONS
        .iter()
        .zip(&nodes)
        .map(|(r, n)| (*r, n.node.base_url()))
        .collect();
    let (split_hub, _d1) = hub(&urls, certs.path(), GATE, Duration::from_secs(30)).await;
    let (one_hub, _d2) = hub(
        &[("all", whole.node.base_url())],
        certs.path(),
        Disclosure { min_regions: 1, ..GATE },
        Duration::from_secs(30),
    )
    .await;
    let partner = as_client(certs.path(), &split_hub.base_url(), "partner").await;
    let one_partner = as_client(certs.path(), &one_hub.base_url(), "partner").await;
    let split_url = format!("{}/fhir/$regress", split_hub.base_url());

    for q in models() {
        let (s, split) = post(&partner, &split_url, &q).await;
        assert_eq!(s, 200, "{split}");
        assert_eq!(split["status"], "complete", "{split}");
        assert_eq!(split["converged"], true);
        let (s, one) = post(&one_partner, &format!("{}/fhir/$regress", one_hub.base_url()), &q).await;
        assert_eq!(s, 200, "{one}");
        // The fit over four regions is the fit over their rows together.
        assert_same_model(&split, &one, 1e-8);
        // And the region's own fit at the fifth node, without a hub.
        let (s, here) = post(&all_vendor, &format!("{}/fhir/$regress", whole.node.base_url()), &q).await;
        assert_eq!(s, 200, "{here}");
        assert_same_model(&split, &here, 1e-8);
        // Rows missing a value are dropped and counted; regions' counts are rounded to 5.
        let n: u64 = split["n"].as_u64().unwrap();
        let uses_age = q.to_string().contains("\"age\"");
        let expected: u64 = [400u64, 250, 300, 150]
            .iter()
            .map(|&rows| {
                if uses_age {
                    rows - (0..rows).filter(|i| i % 31 == 7).count() as u64
                } else {
                    rows
                }
            })
            .sum();
        assert_eq!(n, expected, "{}", split["regions"]);
        for r in split["regions"].as_array().unwrap() {
            assert_eq!(r["n"].as_u64().unwrap() % 5, 0, "{r}");
        }
        let family = q["family"].as_str().unwrap();
        let stat_is_t = family == "gaussian";
        let c0 = &split["coefficients"][0];
        assert_eq!(c0["term"], "(Intercept)");
        assert!(c0["ciLower"].as_f64().unwrap() < c0["estimate"].as_f64().unwrap());
        if !stat_is_t {
            assert_eq!(split["dispersion"], 1.0);
        }
        // Intermediate matrices are never released.
        let text = split.to_string();
        assert!(!text.contains("xtwx") && !text.contains("xtwz"), "{text}");
    }
    // The categorical predictor is named as R names it, against the reference asked for.
    let (_, binomial) = post(&partner, &split_url, &models()[1]).await;
    let terms: Vec<&str> = binomial["coefficients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["term"].as_str().unwrap())
        .collect();
    assert_eq!(
        terms,
        [
            "(Intercept)",
            "age",
            "admission_method[11]",
            "admission_method[12]",
            "diagnoses"
        ]
    );
    // The coefficient table as CSV.
    let res = partner
        .post(format!("{split_url}?_format=csv"))
        .json(&models()[1])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let csv = res.text().await.unwrap();
    assert!(
        csv.starts_with("term,estimate,stdError,statistic,pValue,ciLower,ciUpper\n"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 6, "{csv}");

    // Refusals, each with its reason.
    let ask = |q: Value| {
        let partner = partner.clone();
        let url = split_url.clone();
        async move { post(&partner, &url, &q).await }
    };
    // Inline views, a person's key, unknown columns and oversized questions: 400 naming the member.
    for (q, at) in [
        (json!({"view": {"resource": "Encounter"}, "outcome": "age"}), "view"),
        (
            json!({"viewReference": "hospital_episodes", "outcome": "age", "predictors": ["patient"]}),
            "predictors[0]",
        ),
        (
            json!({"viewReference": "hospital_episodes", "outcome": "nope"}),
            "outcome",
        ),
        (
            json!({"viewReference": "hospital_episodes", "outcome": "age", "predictors": ["provider"]}),
            "predictors[0]",
        ),
        (
            json!({"viewReference": "hospital_episodes", "outcome": "age", "maxIterations": 1000}),
            "maxIterations",
        ),
    ] {
        let (s, body) = ask(q).await;
        assert_eq!(s, 400, "{body}");
        assert_eq!(body["issue"][0]["expression"][0], at, "{body}");
    }
    // A model of five parameters: every full region has rows enough (emergency would be
    // admission_method[21] again: a singular design, refused with the term's name).
    let many = json!({"viewReference": "hospital_episodes", "family": "gaussian", "outcome": "age",
        "predictors": ["diagnoses", "died", {"column": "admission_method", "categorical": true}]});
    let (s, body) = ask(many.clone()).await;
    assert_eq!(s, 200, "{body}");

    // A region with a small level and a small outcome class.
    let small = node("nenc", certs.path(), GATE).await;
    let vendor = as_client(certs.path(), &small.node.base_url(), "tester").await;
    // Twelve episodes at one provider: two elective, one death, four ages recorded.
    let few: Vec<Ep> = (0..12)
        .map(|i| Ep {
            age: (i >= 8).then_some(50 + i as u32),
            method: if i < 2 { "11" } else { "21" },
            diagnoses: 1 + i % 4,
            died: i == 5,
            provider: "R0A".into(),
        })
        .collect();
    load(&vendor, &small, sus(99, &few)).await;
    let mut with_small = urls.clone();
    with_small[0].1 = small.node.base_url();
    let (small_hub, _d3) = hub(&with_small, certs.path(), GATE, Duration::from_secs(30)).await;
    let small_partner = as_client(certs.path(), &small_hub.base_url(), "partner").await;
    let small_url = format!("{}/fhir/$regress", small_hub.base_url());
    let gaussian = |predictors: Value| json!({"viewReference": "hospital_episodes", "family": "gaussian", "outcome": "diagnoses", "predictors": predictors});
    for (q, reason) in [
        (gaussian(json!(["age"])), "fewer than minCell (5) usable rows"),
        (
            json!({"viewReference": "hospital_episodes", "family": "binomial", "outcome": "died", "predictors": ["diagnoses"]}),
            "an outcome class of 'died'",
        ),
        (
            gaussian(json!([{"column": "admission_method", "categorical": true}])),
            "a level of 'admission_method'",
        ),
        // Eight providers across the regions: eight parameters, more than 12 / 3.
        (
            gaussian(json!([{"column": "provider", "categorical": true}])),
            "more than one per three",
        ),
    ] {
        let (s, body) = post(&small_partner, &small_url, &q).await;
        assert_eq!(s, 200, "three regions still take part: {body}");
        assert_eq!(body["status"], "partial", "{body}");
        let nenc = &body["regions"][0];
        assert_eq!(nenc["status"], "refused", "{nenc}");
        assert!(nenc["reason"].as_str().unwrap().contains(reason), "{reason}: {nenc}");
        assert!(nenc.get("n").is_none());
    }
    // With one more region gone, minRegions (3) stops the fit: 422 with every region's reason.
    let (s, body) = post(
        &small_partner,
        &small_url,
        &json!({"viewReference": "hospital_episodes", "family": "binomial", "outcome": "died",
                "predictors": ["age"], "regions": ["nenc", "yh", "gm"]}),
    )
    .await;
    assert_eq!(s, 422, "{body}");
    let text = body.to_string();
    assert!(text.contains("minRegions") && text.contains("nenc (refused)"), "{text}");

    // Differencing: the same model again after one more row in a region is refused there.
    let q = json!({"viewReference": "hospital_episodes", "family": "gaussian", "outcome": "age",
        "predictors": ["died"]});
    let (s, first) = post(&partner, &split_url, &q).await;
    assert_eq!(s, 200, "{first}");
    let yh_vendor = as_client(certs.path(), &nodes[1].node.base_url(), "tester").await;
    load(&yh_vendor, &nodes[1], episodes(1, 1, 77)).await;
    // (the hub keeps complete answers for its cache window; a second hub asks afresh)
    let (again_hub, _d4) = hub(&urls, certs.path(), GATE, Duration::from_secs(30)).await;
    let again_partner = as_client(certs.path(), &again_hub.base_url(), "partner").await;
    let (s, second) = post(&again_partner, &format!("{}/fhir/$regress", again_hub.base_url()), &q).await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["status"], "partial", "{second}");
    let yh = &second["regions"][1];
    assert_eq!(yh["status"], "refused");
    assert!(
        yh["reason"].as_str().unwrap().contains("earlier fit of the same model"),
        "{yh}"
    );
    assert_ne!(first["n"], second["n"]);

    // One node down: the fit goes on without it (partial) while minRegions hold, and is
    // refused when they do not (yh still refuses the model it fitted a row ago).
    let gm = nodes.remove(2);
    gm.stop().await;
    let (down_hub, _d5) = hub(&urls, certs.path(), GATE, Duration::from_secs(6)).await;
    let down_partner = as_client(certs.path(), &down_hub.base_url(), "partner").await;
    let down_url = format!("{}/fhir/$regress", down_hub.base_url());
    let fresh = json!({"viewReference": "hospital_episodes", "family": "poisson", "outcome": "diagnoses",
        "predictors": ["died"]});
    let (s, body) = post(&down_partner, &down_url, &fresh).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"], "partial");
    // Unreachable, or (when another test's server took the freed port) an error: never ok.
    let gm_status = body["regions"][2]["status"].as_str().unwrap();
    assert!(["unreachable", "error", "timeout"].contains(&gm_status), "{body}");
    let (s, body) = post(&down_partner, &down_url, &q).await;
    assert_eq!(s, 422, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("minRegions") && text.contains("regions[gm]") && text.contains("yh (refused)"),
        "{text}"
    );

    // Every fit is in the hub's audit trail and at each node.
    let admin = as_client(certs.path(), &split_hub.base_url(), "admin").await;
    let events = admin
        .get(format!("{}/fhir/AuditEvent?_count=500", split_hub.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        events.contains("\"regress\"") && events.contains("a binomial model of 5 term(s)"),
        "hub audit"
    );
    let node_admin = as_client(certs.path(), &nodes[0].node.base_url(), "admin").await;
    let events = node_admin
        .get(format!("{}/fhir/AuditEvent?_count=500", nodes[0].node.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        events.contains("regress") && events.contains("hospital_episodes"),
        "node audit"
    );

    // The hub's certificate alone opens the federation step; a partner token does not.
    let (s, _) = post(
        &partner,
        &format!("{}/federation/regress", nodes[0].node.base_url()),
        &json!({}),
    )
    .await;
    assert!(s == 401 || s == 403, "{s}");
    let hub_client = as_hub(certs.path());
    let (s, body) = post(
        &hub_client,
        &format!("{}/federation/regress", nodes[0].node.base_url()),
        &json!({"fit": "x", "step": {"round": {"design": {"predictors": [], "terms": ["(Intercept)"]}, "beta": null}},
                "disclosure": {"minCell": 5, "rounding": 5, "noise": 0, "minRegions": 3}, "deadlineMs": 1000}),
    )
    .await;
    assert_eq!(s, 404, "a round of a fit never opened: {body}");

    for n in nodes.into_iter().chain([whole, small]) {
        n.stop().await;
    }
}

/// An inline view a region's analyst might write: the episode's diagnoses, its
/// emergency flag and the log of age as an offset (a rate per year of age).
fn inline_view() -> Value {
    let am = "extension.where(url = 'https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-AdmissionMethod').value.ofType(CodeableConcept).coding.code.first()";
    let age = "extension.where(url = 'https://pennine.nhs.example/fhir/StructureDefinition/age-on-admission').value.ofType(integer)";
    let dm = "extension.where(url = 'https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-DischargeMethod').value.ofType(CodeableConcept).coding.code.first()";
    json!({"resourceType": "ViewDefinition", "resource": "Encounter", "status": "active",
    "select": [{"column": [
        {"name": "diagnoses", "path": "diagnosis.count()", "type": "integer"},
        {"name": "emergency", "path": format!("{am}.startsWith('2')"), "type": "boolean"},
        {"name": "method", "path": am, "type": "code"},
        {"name": "age", "path": age, "type": "integer"},
        {"name": "log_age", "path": format!("{age}.ln()"), "type": "decimal"},
        {"name": "died", "path": format!("{dm} = '4'"), "type": "boolean"},
        {"name": "old", "path": format!("{age} >= 80"), "type": "boolean"}
    ]}]})
}

/// The region's own fits, through `$regress` at a node: Poisson with an offset, a
/// categorical predictor, separation; each model and the rows `$run` exports are
/// written under `target/regress-check/` for `.ci/run`'s statsmodels comparison.
#[tokio::test]
async fn a_region_fits_its_own_rows_with_offsets_and_separation_is_named() {
    let node = crate::helpers::spawn_node_with(|c| c.disclosure = GATE).await;
    let res = node
        .client
        .post(format!("{}/feeds/csv/sus-apc", node.root))
        .header("content-type", "text/csv")
        .body(episodes(2, 500, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let url = format!("{}/$regress", node.fhir);
    let view = inline_view();
    let models = [
        (
            "gaussian",
            json!({"view": view, "family": "gaussian", "outcome": "age",
            "predictors": ["died", "diagnoses", {"column": "method", "categorical": true, "reference": "21"}], "tolerance": 1e-10}),
        ),
        (
            "binomial",
            json!({"view": view, "family": "binomial", "outcome": "died",
            "predictors": ["age", {"column": "method", "categorical": true}], "tolerance": 1e-10}),
        ),
        (
            "poisson",
            json!({"view": view, "family": "poisson", "outcome": "diagnoses",
            "predictors": ["emergency", "died"], "offset": "log_age", "tolerance": 1e-10}),
        ),
    ];
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/regress-check");
    std::fs::create_dir_all(&out).unwrap();
    // The rows, as the analyst would export them.
    let run = node
        .client
        .post(format!("{}/ViewDefinition/$run", node.fhir))
        .json(&json!({"resourceType": "Parameters", "parameter": [
            {"name": "viewResource", "resource": view}, {"name": "_format", "valueCode": "json"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), 200);
    let rows: Value = run.json().await.unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 500);
    std::fs::write(out.join("rows.json"), rows.to_string()).unwrap();
    for (family, q) in &models {
        let (s, fit) = post(&node.client, &url, q).await;
        assert_eq!(s, 200, "{family}: {fit}");
        assert_eq!(fit["converged"], true, "{fit}");
        assert_eq!(fit["regions"][0]["region"], "nenc");
        std::fs::write(
            out.join(format!("{family}.json")),
            json!({"model": q, "fit": fit}).to_string(),
        )
        .unwrap();
    }
    // The Poisson offset moves the intercept by the log of age: without it, another model.
    let (_, with) = post(&node.client, &url, &models[2].1).await;
    let mut without_q = models[2].1.clone();
    without_q.as_object_mut().unwrap().remove("offset");
    let (_, without) = post(&node.client, &url, &without_q).await;
    assert!(
        (with["coefficients"][0]["estimate"].as_f64().unwrap()
            - without["coefficients"][0]["estimate"].as_f64().unwrap())
        .abs()
            > 1.0,
        "{with}\n{without}"
    );
    // Separation: `old` is age >= 80, and the outcome below is `old` itself through age.
    let sep = json!({"view": view, "family": "binomial", "outcome": "old", "predictors": ["age"]});
    let (s, body) = post(&node.client, &url, &sep).await;
    assert_eq!(s, 422, "{body}");
    assert!(body.to_string().contains("separation"), "{body}");
    // A "categorical" predictor with a level per age is not a category: refused, not fitted.
    let (s, body) = post(
        &node.client,
        &url,
        &json!({"view": view, "outcome": "diagnoses", "predictors": [{"column": "age", "categorical": true}]}),
    )
    .await;
    assert_eq!(s, 422, "{body}");
    assert!(body.to_string().contains("more than 50 levels"), "{body}");
    // An offset is for Poisson models only; regions are for the hub.
    let (s, body) = post(
        &node.client,
        &url,
        &json!({"view": view, "outcome": "age", "offset": "log_age"}),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = post(
        &node.client,
        &url,
        &json!({"view": view, "outcome": "age", "regions": ["yh"]}),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    // A vendor may not fit models.
    let vendor = crate::helpers::authed_with(reqwest::Client::builder, &node.root, "vendor").await;
    let (s, _) = post(&vendor, &url, &models[0].1).await;
    assert_eq!(s, 403);
    node.stop().await;
}

/// `$benchmark?adjustment=logistic`: expected deaths per provider from a federated
/// logistic model of the cohort. At the maximum-likelihood fit the expected deaths
/// add up to the observed ones; the model is the one a hub over a single node holding
/// every region's episodes fits; and a provider's figures come from the model's rows.
#[tokio::test]
async fn benchmarks_adjust_by_a_federated_logistic_model() {
    const OPEN: Disclosure = Disclosure {
        min_cell: 1,
        rounding: 1,
        noise: 0,
        min_regions: 1,
    };
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path(), &["nenc", "yh", "gm", "nwc", "all"], &[]).unwrap();
    let mut nodes = Vec::new();
    for r in REGIONS {
        nodes.push(node(r, certs.path(), OPEN).await);
    }
    let whole = node("all", certs.path(), OPEN).await;
    let all_vendor = as_client(certs.path(), &whole.node.base_url(), "tester").await;
    for (n, r) in nodes.iter().zip(REGIONS) {
        let vendor = as_client(certs.path(), &n.node.base_url(), "tester").await;
        let extract = pennine::demo::sus_extract(r, 5, 600);
        load(&vendor, n, extract.clone()).await;
        load(&all_vendor, &whole, extract).await;
    }
    let urls: Vec<(&str, String)> = REGIONS
        .iter()
        .zip(&nodes)
        .map(|(r, n)| (*r, n.node.base_url()))
        .collect();
    let (split_hub, _d1) = hub(&urls, certs.path(), OPEN, Duration::from_secs(30)).await;
    let (one_hub, _d2) = hub(
        &[("all", whole.node.base_url())],
        certs.path(),
        OPEN,
        Duration::from_secs(30),
    )
    .await;
    let get = |hub: &pennine::startup::RunningHub, query: &str| {
        let url = format!(
            "{}/fhir/Measure/chc-copd/$benchmark?periodStart=2025&periodEnd=2025{query}",
            hub.base_url()
        );
        let certs = certs.path().to_path_buf();
        let base = hub.base_url();
        async move {
            let partner = as_client(&certs, &base, "partner").await;
            let res = partner.get(url).send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    let (s, indirect) = get(&split_hub, "").await;
    assert_eq!(s, 200, "{indirect}");
    assert_eq!(indirect["adjustment"]["method"], "indirect-standardisation");
    let (s, split) = get(&split_hub, "&adjustment=logistic&predictors=age,sex").await;
    assert_eq!(s, 200, "{split}");
    let model = &split["adjustment"]["model"];
    assert_eq!(split["adjustment"]["method"], "logistic");
    let terms: Vec<&str> = model["coefficients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["term"].as_str().unwrap())
        .collect();
    assert_eq!(terms, ["(Intercept)", "age", "sex[male]"], "{model}");
    let c = model["cStatistic"].as_f64().unwrap();
    assert!(c > 0.5 && c < 1.0, "{model}");
    // The demo's risk of death rises with age: the model finds it.
    assert!(model["coefficients"][1]["estimate"].as_f64().unwrap() > 0.0, "{model}");
    // At the fit, expected deaths add up to observed deaths over the cohort.
    let providers = split["providers"].as_array().unwrap();
    assert!(providers.len() >= 8, "{split}");
    let (mut observed, mut expected, mut n) = (0.0, 0.0, 0u64);
    for p in providers {
        assert!(p["withheld"].is_null(), "{p}");
        observed += p["observed"].as_f64().unwrap();
        expected += p["expected"].as_f64().unwrap();
        n += p["n"].as_u64().unwrap();
    }
    assert!(
        (observed - expected).abs() < 1e-6 * observed,
        "{observed} vs {expected}"
    );
    assert_eq!(n, model["n"].as_u64().unwrap());
    // The same model as over every episode at one node.
    let (s, one) = get(&one_hub, "&adjustment=logistic&predictors=age,sex").await;
    assert_eq!(s, 200, "{one}");
    let other = &one["adjustment"]["model"];
    for (a, b) in model["coefficients"]
        .as_array()
        .unwrap()
        .iter()
        .zip(other["coefficients"].as_array().unwrap())
    {
        for k in ["estimate", "stdError"] {
            let (u, v) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
            assert!(close(u, v, 1e-8), "{k}: {u} vs {v}");
        }
    }
    assert!(close(c, other["cStatistic"].as_f64().unwrap(), 1e-12));
    // Under the default gate the model's providers pass the same gate as indirect
    // standardisation's: small ones are named with the reason and no figure.
    let (gated_hub, _d3) = hub(&urls, certs.path(), Disclosure::default(), Duration::from_secs(30)).await;
    let (s, gated) = get(&gated_hub, "&adjustment=logistic&predictors=age,sex").await;
    assert_eq!(s, 200, "{gated}");
    let mut withheld = 0;
    for p in gated["providers"].as_array().unwrap() {
        match p["withheld"].as_str() {
            Some(why) => {
                withheld += 1;
                assert!(why.contains("at least 10"), "{why}");
                assert!(p.get("observed").is_none() && p.get("expected").is_none(), "{p}");
            }
            None => {
                let (n, o) = (p["n"].as_u64().unwrap(), p["observed"].as_u64().unwrap());
                assert!(n >= 10 && o >= 10 && n % 5 == 0 && o % 5 == 0, "{p}");
            }
        }
    }
    assert!(withheld > 0, "600 episodes per region leave small providers: {gated}");
    // Unknown adjustments and predictors are refused, naming them.
    let (s, body) = get(&split_hub, "&adjustment=magic").await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = get(&split_hub, "&adjustment=logistic&predictors=age,provider").await;
    assert_eq!(s, 400, "{body}");
    assert!(body.to_string().contains("provider"), "{body}");
    let (s, body) = get(&split_hub, "&predictors=age").await;
    assert_eq!(s, 400, "{body}");
    for n in nodes.into_iter().chain([whole]) {
        n.stop().await;
    }
}
