//! Pathways at a node, through HTTP: the same episodes fed as a SUS extract at one
//! node and as HL7 v2 A03 messages at another give the same MeasureReport, and the
//! counts match what the episodes were designed to give (written down here, row by
//! row, not computed by the production code).

use super::feeds::sus_header;
use super::helpers::spawn_node;
use pennine::federation::Disclosure;
use serde_json::Value;

/// One designed episode and the groups it must fall in.
struct Designed {
    dx: &'static [&'static str],
    method: &'static str,
    treatment: &'static str,
    discharge: &'static str,
    age: u32,
    sex: &'static str,
    provider: &'static str,
    /// copd, epilepsy, arld admissions, arld primary, arld uplift, arld comorbid.
    flags: [bool; 6],
    /// In the COPD/epilepsy cohort (emergency, medical, in the period) and in ARLD's.
    medical_cohort: bool,
    arld_cohort: bool,
}

const F: bool = false;
const T: bool = true;

fn designed() -> Vec<Designed> {
    let d = |dx, flags, provider, age, sex| Designed {
        dx,
        method: "21",
        treatment: "300",
        discharge: "2025-06-10",
        age,
        sex,
        provider,
        flags,
        medical_cohort: true,
        arld_cohort: true,
    };
    vec![
        d(&["J440"], [T, F, F, F, F, F], "RTD", 70, "F"),
        d(&["J100", "J440"], [T, F, F, F, F, F], "RTD", 81, "M"),
        d(&["R060", "J100", "J440"], [T, F, F, F, F, F], "RXN", 66, "F"),
        d(&["J100", "I10X"], [F, F, F, F, F, F], "RXN", 50, "M"),
        d(&["G400"], [F, T, F, F, F, F], "RTD", 30, "F"),
        d(&["R568", "I10X", "G401"], [F, T, F, F, F, F], "RXN", 44, "M"),
        d(&["K700"], [F, F, T, T, F, F], "RTD", 55, "M"),
        d(&["D65X", "K700"], [F, F, T, F, T, F], "RTD", 58, "F"),
        d(&["I10X", "K700"], [F, F, F, F, F, T], "RXN", 90, "M"),
        // Every other ARLD category (A K700, C D65X, N K710, L F100), and near misses.
        d(&["D65X", "K710", "I10X", "K700"], [F, F, T, F, T, F], "RTD", 61, "F"),
        d(&["K710", "F100", "K700"], [F, F, T, F, T, F], "RTD", 62, "M"),
        d(&["D65X", "I10X", "K700"], [F, F, T, F, T, F], "RXN", 63, "F"),
        d(&["D65X", "", "I10X", "K700"], [F, F, T, F, T, F], "RXN", 64, "M"),
        d(&["F100", "D65X", "K700"], [F, F, T, F, T, F], "RTD", 65, "F"),
        d(&["K710", "D65X", "F100"], [F, F, T, F, T, F], "RTD", 66, "M"),
        d(&["D65X", "K710", "I10X", "F100"], [F, F, T, F, T, F], "RXN", 67, "F"),
        d(&["K710", "I10X", "I10X", "F100"], [F, F, T, F, T, F], "RXN", 68, "M"),
        d(&["F100", "I10X", "K700"], [F, F, T, F, T, F], "RTD", 69, "F"),
        d(&["D65X", "I10X"], [F, F, F, F, F, F], "RTD", 70, "M"),
        d(&["K710", "D65X", "I10X"], [F, F, F, F, F, F], "RXN", 71, "F"),
        // Epilepsy: an associated primary with G40/G41 in a secondary position, and misses.
        d(&["F019", "I10X", "G400"], [F, T, F, F, F, F], "RTD", 40, "M"),
        d(&["F019", "I10X"], [F, F, F, F, F, F], "RTD", 41, "F"),
        d(&["I10X", "G400"], [F, F, F, F, F, F], "RXN", 42, "M"),
        d(&["R568", "I10X"], [F, F, F, F, F, F], "RXN", 43, "F"),
        // COPD misses.
        d(&["J100", "", "J440"], [F, F, F, F, F, F], "RTD", 72, "M"),
        d(&["J100", "R060", "J100", "J440"], [F, F, F, F, F, F], "RXN", 73, "F"),
        // Elective: in no cohort.
        Designed {
            method: "11",
            medical_cohort: false,
            arld_cohort: false,
            ..d(&["J440"], [F; 6], "RTD", 70, "F")
        },
        // A surgical specialty: not COPD's cohort, but ARLD has no specialty filter.
        Designed {
            treatment: "100",
            medical_cohort: false,
            ..d(&["J440"], [F; 6], "RTD", 70, "F")
        },
        // Discharged before the period.
        Designed {
            discharge: "2024-12-31",
            medical_cohort: false,
            arld_cohort: false,
            ..d(&["J440"], [F; 6], "RTD", 70, "F")
        },
    ]
}

/// A valid NHS number (Modulus 11) from a 9-digit stem.
pub(crate) fn nhs(stem: u32) -> String {
    let digits: Vec<u32> = format!("{:09}", 400_000_000 + stem)
        .chars()
        .map(|c| c.to_digit(10).unwrap())
        .collect();
    let sum: u32 = digits.iter().enumerate().map(|(i, d)| d * (10 - i as u32)).sum();
    let check = (11 - sum % 11) % 11;
    if check == 10 {
        return nhs(stem + 1000);
    }
    format!("{}{check}", digits.iter().map(|d| d.to_string()).collect::<String>())
}

/// Every third designed episode ends in death (discharge method 4).
fn dies(i: usize) -> bool {
    i.is_multiple_of(3)
}

fn sus_csv(episodes: &[Designed]) -> String {
    let mut out = sus_header();
    for (i, e) in episodes.iter().enumerate() {
        let mut dx: Vec<String> = e.dx.iter().map(|s| s.to_string()).collect();
        dx.resize(20, String::new());
        let sex = if e.sex == "F" { "2" } else { "1" };
        out.push_str(&format!(
            "\nSP{i},1,1,{},{sex},{},{},{},{},{d},{d},{d},{d},{},{}",
            nhs(i as u32),
            e.age,
            e.provider,
            e.method,
            e.treatment,
            if dies(i) { "4" } else { "1" },
            dx.join(","),
            d = e.discharge,
        ));
    }
    out.push('\n');
    out
}

/// The same episode as an HL7 v2 A03 (discharge) from the provider's PAS.
fn a03(i: usize, e: &Designed) -> String {
    let mut pv1 = vec![String::new(); 46];
    pv1[0] = "PV1".into();
    pv1[1] = "1".into();
    pv1[2] = "I".into();
    pv1[4] = e.method.into();
    pv1[10] = e.treatment.into();
    pv1[19] = format!("V{i}");
    // PV1-36: NHS discharge method 4, or HL7 table 0112's 20 (expired), both "died".
    pv1[36] = match (dies(i), i % 2) {
        (true, 0) => "4".into(),
        (true, _) => "20".into(),
        (false, _) => "1".into(),
    };
    pv1[44] = format!("{}100000", e.discharge.replace('-', ""));
    pv1[45] = format!("{}120000", e.discharge.replace('-', ""));
    let birth = format!("{}0101", 2025 - e.age);
    let mut msg = format!(
        "MSH|^~\\&|PAS|{p}|PENNINE|NENC|20250610120000||ADT^A03|M{i}|P|2.5\rPID|1||MRN{i}^^^{p}^MR~{n}^^^NHS^NH||Test^Pat{i}||{birth}|{s}\r{pv1}\r",
        p = e.provider,
        n = nhs(i as u32),
        s = e.sex,
        pv1 = pv1.join("|"),
    );
    for (k, code) in e.dx.iter().enumerate() {
        let mut dg1 = vec![String::new(); 16];
        dg1[0] = "DG1".into();
        dg1[1] = (k + 1).to_string();
        dg1[3] = format!("{code}^^I10");
        dg1[6] = "F".into();
        dg1[15] = (k + 1).to_string();
        msg.push_str(&dg1.join("|"));
        msg.push('\r');
    }
    msg
}

async fn evaluate(node: &super::helpers::TestNode, id: &str, query: &str) -> (u16, Value) {
    let res = node
        .client
        .get(format!("{}/Measure/{id}/$evaluate-measure?{query}", node.fhir))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

/// (population, numerator) of a group of a report.
fn group(report: &Value, code: &str) -> (u64, u64) {
    let g = report["group"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["code"]["coding"][0]["code"] == code)
        .unwrap_or_else(|| panic!("no group {code} in {report}"));
    let count = |p: &str| {
        g["population"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["code"]["coding"][0]["code"] == p)
            .unwrap()["count"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(count("initial-population"), count("denominator"));
    (count("denominator"), count("numerator"))
}

#[tokio::test]
async fn pathways_count_what_the_algorithms_select_whichever_feed_brought_the_data() {
    let episodes = designed();
    let csv_node = spawn_node().await;
    let res = csv_node
        .client
        .post(format!("{}/feeds/csv/sus-apc", csv_node.root))
        .header("content-type", "text/csv")
        .body(sus_csv(&episodes))
        .send()
        .await
        .unwrap();
    let summary: Value = res.json().await.unwrap();
    assert_eq!(summary["stored"], episodes.len(), "{summary}");

    let v2_node = spawn_node().await;
    for (i, e) in episodes.iter().enumerate() {
        let res = v2_node
            .client
            .post(format!("{}/feeds/hl7v2", v2_node.root))
            .header("content-type", "x-application/hl7-v2+er7")
            .body(a03(i, e))
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["entry"][0]["response"]["status"], "201 Created", "{body}");
    }

    let count = |pick: &dyn Fn(&Designed) -> bool| episodes.iter().filter(|e| pick(e)).count() as u64;
    let medical = count(&|e| e.medical_cohort);
    let arld = count(&|e| e.arld_cohort);
    let want = [
        (
            "chc-copd",
            "admissions",
            medical,
            count(&|e| e.medical_cohort && e.flags[0]),
        ),
        (
            "chc-epilepsy",
            "admissions",
            medical,
            count(&|e| e.medical_cohort && e.flags[1]),
        ),
        ("chc-arld", "admissions", arld, count(&|e| e.arld_cohort && e.flags[2])),
        ("chc-arld", "primary", arld, count(&|e| e.arld_cohort && e.flags[3])),
        ("chc-arld", "uplift", arld, count(&|e| e.arld_cohort && e.flags[4])),
        ("chc-arld", "comorbid", arld, count(&|e| e.arld_cohort && e.flags[5])),
    ];
    for (id, code, population, numerator) in want {
        let (status, csv) = evaluate(&csv_node, id, "periodStart=2025&periodEnd=2025").await;
        assert_eq!(status, 200, "{csv}");
        assert_eq!(csv["resourceType"], "MeasureReport");
        assert_eq!(csv["type"], "summary");
        assert_eq!(
            group(&csv, code),
            (population, numerator),
            "{id} {code} from the SUS extract"
        );
        let (_, v2) = evaluate(&v2_node, id, "periodStart=2025-01-01&periodEnd=2025-12-31").await;
        assert_eq!(group(&v2, code), (population, numerator), "{id} {code} from HL7 v2");
        // The whole report, strata included, is the same whichever feed brought the data.
        assert_eq!(csv["group"], v2["group"], "{id}");
    }
    // Deaths come through both feeds (SUS discharge_method 4; HL7 v2 PV1-36 4 or 20):
    // mortality is among the groups compared above, and it is not empty.
    let (_, copd) = evaluate(&v2_node, "chc-copd", "periodStart=2025&periodEnd=2025").await;
    let expected_deaths = episodes
        .iter()
        .enumerate()
        .filter(|(i, e)| e.medical_cohort && e.flags[0] && dies(*i))
        .count() as u64;
    assert!(expected_deaths > 0);
    assert_eq!(group(&copd, "mortality").1, expected_deaths, "COPD deaths from HL7 v2");

    // Strata: COPD admissions by provider, age band, sex and month.
    let (_, copd) = evaluate(&csv_node, "chc-copd", "periodStart=2025&periodEnd=2025").await;
    let admissions = &copd["group"][0];
    let stratum = |s: &str, v: &str| {
        let st = admissions["stratifier"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["code"][0]["coding"][0]["code"] == s)
            .unwrap();
        st["stratum"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["value"]["text"] == v)
            .map(|x| x["population"][2]["count"].as_u64().unwrap())
    };
    assert_eq!(stratum("provider", "RTD"), Some(2));
    assert_eq!(stratum("provider", "RXN"), Some(1));
    assert_eq!(stratum("age-band", "75-84"), Some(1));
    assert_eq!(stratum("sex", "female"), Some(2));
    assert_eq!(stratum("month", "2025-06"), Some(3));

    // Bad requests are OperationOutcomes.
    let (status, body) = evaluate(&csv_node, "chc-copd", "periodStart=2025").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    let (status, _) = evaluate(&csv_node, "chc-copd", "periodStart=2025&periodEnd=2024").await;
    assert_eq!(status, 400);
    let (status, _) = evaluate(&csv_node, "nope", "periodStart=2025&periodEnd=2025").await;
    assert_eq!(status, 404);
    let (status, _) = evaluate(
        &csv_node,
        "chc-copd",
        "periodStart=2025&periodEnd=2025&reportType=subject-list",
    )
    .await;
    assert_eq!(status, 501, "no patient-level reports");
    csv_node.stop().await;
    v2_node.stop().await;
}

#[tokio::test]
async fn mortality_counts_deaths_among_the_admissions_and_only_the_last_episode_counts() {
    let node = spawn_node().await;
    let mut body = sus_header();
    let pad = |d: &[&str]| {
        let mut v: Vec<String> = d.iter().map(|s| s.to_string()).collect();
        v.resize(20, String::new());
        v.join(",")
    };
    // Spell A: two episodes; the first (not the last) has a COPD primary, the last does not.
    body.push_str(&format!(
        "\nA,1,2,{n},1,70,RTD,21,300,2025-03-01,2025-03-09,2025-03-01,2025-03-04,,{}",
        pad(&["J440"]),
        n = nhs(1)
    ));
    body.push_str(&format!(
        "\nA,2,1,{n},1,70,RTD,21,300,2025-03-01,2025-03-09,2025-03-04,2025-03-09,1,{}",
        pad(&["I10X"]),
        n = nhs(1)
    ));
    // Spell B: COPD, died. Spell C: COPD, went home. Spell D: not COPD, died.
    for (spell, dx, method) in [("B", "J440", "4"), ("C", "J441", "1"), ("D", "I10X", "4")] {
        body.push_str(&format!(
            "\n{spell},1,1,{n},2,80,RTD,21,340,2025-04-01,2025-04-05,2025-04-01,2025-04-05,{method},{}",
            pad(&[dx]),
            n = nhs(2)
        ));
    }
    body.push('\n');
    let res = node
        .client
        .post(format!("{}/feeds/csv/sus-apc", node.root))
        .header("content-type", "text/csv")
        .body(body)
        .send()
        .await
        .unwrap();
    let summary: Value = res.json().await.unwrap();
    assert_eq!(summary["stored"], 5, "{summary}");
    let (status, report) = evaluate(&node, "chc-copd", "periodStart=2025-03&periodEnd=2025-04").await;
    assert_eq!(status, 200, "{report}");
    // Cohort: the last episodes of A, B, C, D; COPD: B and C (A's COPD code is on a non-last episode).
    assert_eq!(group(&report, "admissions"), (4, 2));
    // Mortality: among B and C, B died (D's death is not a COPD admission).
    assert_eq!(group(&report, "mortality"), (2, 1));
    let (_, march) = evaluate(&node, "chc-copd", "periodStart=2025-03&periodEnd=2025-03").await;
    assert_eq!(group(&march, "admissions"), (1, 0));
    // A new extract is seen by the next evaluation (the episode cache follows the store).
    let more = format!(
        "{}\nE,1,1,{n},1,60,RTD,21,300,2025-04-02,2025-04-03,2025-04-02,2025-04-03,1,{}\n",
        sus_header(),
        pad(&["J44.0"]),
        n = nhs(3)
    );
    let res = node
        .client
        .post(format!("{}/feeds/csv/sus-apc", node.root))
        .header("content-type", "text/csv")
        .body(more)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, again) = evaluate(&node, "chc-copd", "periodStart=2025-03&periodEnd=2025-04").await;
    assert_eq!(group(&again, "admissions"), (5, 3));
    node.stop().await;
}

#[tokio::test]
async fn evaluate_measure_stays_in_the_region_and_within_the_node_budget() {
    // Resource exhaustion: the episode scan is charged to the node's view budget.
    let node = super::helpers::spawn_node_with(|c| c.service.max_view_rows = 5).await;
    let res = node
        .client
        .post(format!("{}/feeds/csv/sus-apc", node.root))
        .header("content-type", "text/csv")
        .body(sus_csv(&designed()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, body) = evaluate(&node, "chc-copd", "periodStart=2025&periodEnd=2025").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["issue"][0]["code"], "too-costly", "{body}");
    // Exact counts are for the region's own analysts: not a partner, not another region.
    for who in ["partner", "outsider", "vendor"] {
        let client = super::helpers::authed_with(reqwest::Client::builder, &node.root, who).await;
        let res = client
            .get(format!(
                "{}/Measure/chc-copd/$evaluate-measure?periodStart=2025&periodEnd=2025",
                node.fhir
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{who}");
    }
    node.stop().await;
}

#[tokio::test]
async fn a_node_lists_its_pathways_beside_stored_measures_and_keeps_them_read_only() {
    let node = spawn_node().await;
    let get = |q: &str| {
        let url = format!("{}/{q}", node.fhir);
        let client = node.client.clone();
        async move {
            let res = client.get(url).send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    let ids = |b: &Value| -> Vec<String> {
        b["entry"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    // A client's own Measure is stored as any resource is.
    let own =
        serde_json::json!({"resourceType": "Measure", "id": "local-audit", "status": "draft", "name": "LocalAudit"});
    let res = node
        .client
        .put(format!("{}/Measure/local-audit", node.fhir))
        .json(&own)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    let (status, all) = get("Measure").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["total"], 4, "{all}");
    assert_eq!(ids(&all), ["chc-copd", "chc-arld", "chc-epilepsy", "local-audit"]);
    assert_eq!(all["entry"][0]["resource"]["version"], "1.0.0");
    assert!(all["entry"][0]["fullUrl"]
        .as_str()
        .unwrap()
        .ends_with("/fhir/Measure/chc-copd"));
    // Search parameters mean for the pathways what they mean for stored Measures.
    for (q, want) in [
        ("Measure?_id=chc-arld", vec!["chc-arld"]),
        ("Measure?status=draft", vec!["local-audit"]),
        ("Measure?status:not=draft", vec!["chc-copd", "chc-arld", "chc-epilepsy"]),
        (
            "Measure?url=https://pennine.nhs.example/fhir/Measure/chc-epilepsy",
            vec!["chc-epilepsy"],
        ),
        ("Measure?version=2.0.0", vec![]),
    ] {
        let (status, b) = get(q).await;
        assert_eq!(status, 200, "{q}: {b}");
        assert_eq!(ids(&b), want, "{q}");
        assert_eq!(b["total"], want.len(), "{q}");
    }
    let (_, count) = get("Measure?_summary=count").await;
    assert_eq!(count["total"], 4);
    // Pages run through the pathways and on into stored Measures.
    let (_, first) = get("Measure?_count=3").await;
    assert_eq!(ids(&first), ["chc-copd", "chc-arld", "chc-epilepsy"]);
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let second: Value = node.client.get(next).send().await.unwrap().json().await.unwrap();
    assert_eq!(ids(&second), ["local-audit"]);
    // Read and vread.
    let (status, m) = get("Measure/chc-copd").await;
    assert_eq!(status, 200);
    assert_eq!(m["id"], "chc-copd");
    assert_eq!(get("Measure/chc-copd/_history/1").await.0, 200);
    assert_eq!(get("Measure/chc-copd/_history/2").await.0, 404);
    // The definitions change with the pathway files, never through the API.
    let res = node
        .client
        .put(format!("{}/Measure/chc-copd", node.fhir))
        .json(&serde_json::json!({"resourceType": "Measure", "id": "chc-copd", "status": "retired"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    let res = node
        .client
        .delete(format!("{}/Measure/chc-copd", node.fhir))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    let tx = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Measure", "id": "chc-arld", "status": "retired"},
        "request": {"method": "PUT", "url": "Measure/chc-arld"}
    }]});
    let res = node.client.post(&node.fhir).json(&tx).send().await.unwrap();
    assert_eq!(res.status(), 405);
    let res = node
        .client
        .put(format!("{}/Measure?name:exact=chc_copd", node.fhir))
        .json(&serde_json::json!({"resourceType": "Measure", "status": "retired"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status().as_u16(),
        201,
        "a conditional update matches stored Measures only"
    );
    let (_, m) = get("Measure/chc-copd").await;
    assert_eq!(m["status"], "active", "{m}");
    // Nothing of it is stored: the system history holds only what clients wrote.
    let (_, history) = get("_history").await;
    assert_eq!(history["total"], 2, "{history}");
    node.stop().await;
}

/// A deterministic stream of numbers (xorshift).
struct Stream(u64);

impl Stream {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `n` SUS episodes for a region: three providers, mixed ages, sexes, codes and deaths.
pub(crate) fn region_extract(region: usize, n: usize) -> String {
    let mut r = Stream(0x5eed + region as u64 * 7919);
    let providers = [
        ["RTD", "RXN", "RBN"],
        ["RCF", "RAE", "RWY"],
        ["R0A", "RMC", "RM3"],
        ["REM", "RBL", "RVY"],
    ][region];
    let primaries = [
        "J440", "J441", "J100", "R060", "G400", "R568", "K700", "K703", "D65X", "I10X", "F019",
    ];
    let seconds = ["J440", "G401", "K700", "F100", "I10X", ""];
    let mut out = sus_header();
    for i in 0..n {
        let mut dx = vec![
            primaries[r.next(primaries.len() as u64) as usize].to_string(),
            seconds[r.next(seconds.len() as u64) as usize].to_string(),
        ];
        dx.resize(20, String::new());
        let month = 1 + r.next(12);
        let day = format!("2025-{month:02}-1{}", r.next(9));
        out.push_str(&format!(
            "\nR{region}S{i},1,1,{},{},{},{},21,{},{day},{day},{day},{day},{},{}",
            nhs((region * 10_000 + i) as u32),
            1 + r.next(2),
            20 + r.next(75),
            providers[r.next(3) as usize],
            ["300", "340", "400"][r.next(3) as usize],
            if r.next(8) == 0 { "4" } else { "1" },
            dx.join(","),
        ));
    }
    out.push('\n');
    out
}

/// A copy of the built-in pathways with COPD at another version.
fn copd_at(version: &str, dir: &std::path::Path) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/pathways");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        let mut text = std::fs::read_to_string(&f).unwrap();
        if f.file_name().unwrap() == "chc-copd.json" {
            let mut v: Value = serde_json::from_str(&text).unwrap();
            v["measure"]["version"] = Value::from(version);
            text = v.to_string();
        }
        std::fs::write(dir.join(f.file_name().unwrap()), text).unwrap();
    }
}

/// A stratum as released: its value, (denominator, numerator) or why it is withheld.
type Stratum = (String, Option<(u64, u64)>, Option<String>);

/// Every stratum of a group's stratifier `s`.
fn strata(report: &Value, group: &str, s: &str) -> Vec<Stratum> {
    let g = report["group"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["code"]["coding"][0]["code"] == group)
        .unwrap();
    let st = g["stratifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["code"][0]["coding"][0]["code"] == s)
        .unwrap();
    st["stratum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let counts = x["population"]
                .as_array()
                .map(|p| (p[1]["count"].as_u64().unwrap(), p[2]["count"].as_u64().unwrap()));
            let withheld = x["extension"][0]["valueString"].as_str().map(str::to_string);
            (x["value"]["text"].as_str().unwrap().to_string(), counts, withheld)
        })
        .collect()
}

#[tokio::test]
async fn the_hub_pools_pathways_exactly_reports_other_versions_and_withholds_small_strata() {
    use super::federation::{as_client, hub, node, OPEN, REGIONS};
    use pennine::config::NodeConfig;
    use pennine::tls::{dev_certs, TlsFiles};
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path(), &["nenc", "yh", "gm", "nwc"], &[]).unwrap();
    let mut nodes = Vec::new();
    for r in &REGIONS[..3] {
        nodes.push(node(r, certs.path(), OPEN).await);
    }
    // nwc runs COPD 1.1.0: reported, not mixed in.
    let nwc_dir = tempfile::tempdir().unwrap();
    let pathways = tempfile::tempdir().unwrap();
    copd_at("1.1.0", pathways.path());
    let mut config = NodeConfig::local("nwc", nwc_dir.path());
    config.clients = Some(super::helpers::write_clients(nwc_dir.path(), "nwc"));
    config.tls = Some(TlsFiles::in_dir(certs.path(), "nwc"));
    config.disclosure = OPEN;
    config.service.pathways_dir = Some(pathways.path().to_path_buf());
    let nwc = pennine::startup::start_node(config).await.expect("nwc starts");

    let roots: Vec<String> = nodes
        .iter()
        .map(|n| n.node.base_url())
        .chain(std::iter::once(nwc.base_url()))
        .collect();
    let sizes = [400, 250, 7, 300];
    for (i, root) in roots.iter().enumerate() {
        let client = as_client(certs.path(), root, "tester").await;
        let res = client
            .post(format!("{root}/feeds/csv/sus-apc"))
            .header("content-type", "text/csv")
            .body(region_extract(i, sizes[i]))
            .send()
            .await
            .unwrap();
        let summary: Value = res.json().await.unwrap();
        assert_eq!(summary["stored"], sizes[i], "{summary}");
    }
    // Each region's own exact report.
    let mut local = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        let client = as_client(certs.path(), root, "tester").await;
        let report: Value = client
            .get(format!(
                "{root}/fhir/Measure/chc-copd/$evaluate-measure?periodStart=2025&periodEnd=2025"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        local.push((REGIONS[i], report));
    }
    let all: Vec<(&str, String)> = REGIONS.iter().zip(&roots).map(|(r, u)| (*r, u.clone())).collect();

    // An open gate releases exact counts: the pooled report is the sum of the node-local
    // reports of the regions on the same version, before the gate.
    let (open_hub, _d1) = hub(&all, certs.path(), OPEN, std::time::Duration::from_secs(20)).await;
    let analyst = as_client(certs.path(), &open_hub.base_url(), "analyst").await;
    let pooled: Value = analyst
        .get(format!(
            "{}/fhir/Measure/chc-copd/$evaluate-measure?periodStart=2025&periodEnd=2025",
            open_hub.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pooled["resourceType"], "MeasureReport", "{pooled}");
    // The hub lists the Measures it federates, with their versions.
    let list: Value = analyst
        .get(format!("{}/fhir/Measure", open_hub.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chc-copd", "chc-arld", "chc-epilepsy"]);
    assert_eq!(list["entry"][0]["resource"]["version"], "1.0.0");
    // Searched as a node searches them, and read one by one.
    let found: Value = analyst
        .get(format!(
            "{}/fhir/Measure?_id=chc-arld,chc-epilepsy&status=active",
            open_hub.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["total"], 2, "{found}");
    let read = analyst
        .get(format!("{}/fhir/Measure/chc-arld", open_hub.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.json::<Value>().await.unwrap()["id"], "chc-arld");
    let missing = analyst
        .get(format!("{}/fhir/Measure/chc-nothing", open_hub.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        pooled["status"], "pending",
        "a region on another version makes the report incomplete"
    );
    let nwc_status = pooled["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["extension"][0]["valueString"] == "nwc")
        .unwrap();
    assert!(nwc_status.to_string().contains("1.1.0"), "{nwc_status}");
    for g in ["admissions", "mortality"] {
        let sum = local[..3].iter().fold((0, 0), |acc, (_, r)| {
            let (p, n) = group(r, g);
            (acc.0 + p, acc.1 + n)
        });
        assert_eq!(group(&pooled, g), sum, "{g}: pooled = sum of the same-version regions");
        let by_region = strata(&pooled, g, "region");
        // nwc is not mixed in; a region with no one in the group has no stratum.
        let mut present: Vec<&str> = local[..3]
            .iter()
            .filter(|(_, r)| group(r, g).0 > 0)
            .map(|(r, _)| *r)
            .collect();
        present.sort();
        let mut got: Vec<&str> = by_region.iter().map(|(r, _, _)| r.as_str()).collect();
        got.sort();
        assert_eq!(got, present, "{g}");
        for (region, report) in local[..3].iter().filter(|(r, _)| present.contains(r)) {
            let (_, counts, _) = by_region.iter().find(|(r, _, _)| r == region).unwrap();
            assert_eq!(*counts, Some(group(report, g)), "{region} {g}");
        }
    }

    // $benchmark under the open gate, against a reference computed here from the
    // extracts themselves (COPD rule, pooled death rates by age band and sex, Poisson
    // tails by direct summation).
    let bench: Value = analyst
        .get(format!(
            "{}/fhir/Measure/chc-copd/$benchmark?periodStart=2025&periodEnd=2025&group=mortality",
            open_hub.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reference = reference_benchmark(&[(0, sizes[0]), (1, sizes[1]), (2, sizes[2])]);
    let providers = bench["providers"].as_array().unwrap();
    assert_eq!(providers.len(), reference.len(), "{bench}");
    let mut flagged = 0;
    for (provider, region, n, observed, expected) in &reference {
        let row = providers
            .iter()
            .find(|p| p["provider"] == provider.as_str() && p["region"] == region.as_str())
            .unwrap_or_else(|| panic!("{provider} missing: {bench}"));
        let survivors = n - observed;
        if *observed == 0 || survivors == 0 {
            assert!(row["withheld"].is_string(), "{row}");
            assert!(row.get("n").is_none() && row.get("smr").is_none(), "no figures: {row}");
            continue;
        }
        assert_eq!(row["n"], *n, "{row}");
        assert_eq!(row["observed"], *observed, "{row}");
        assert!(
            (row["expected"].as_f64().unwrap() - expected).abs() < 1e-9,
            "{row} vs {expected}"
        );
        assert!((row["smr"].as_f64().unwrap() - *observed as f64 / expected).abs() < 1e-9);
        let want = |alpha: f64| {
            let upper = 1.0 - poisson_cdf_by_sum(observed - 1, *expected);
            let lower = poisson_cdf_by_sum(*observed, *expected);
            if upper < alpha / 2.0 {
                "high"
            } else if lower < alpha / 2.0 {
                "low"
            } else {
                "none"
            }
        };
        assert_eq!(row["flag95"], want(0.05), "{row}");
        assert_eq!(row["flag998"], want(0.002), "{row}");
        flagged += (row["flag95"] != "none") as usize;
    }
    let _ = flagged;
    let funnel = bench["funnel"].as_array().unwrap();
    assert!(funnel.len() >= 10);
    let released: Vec<f64> = providers.iter().filter_map(|p| p["expected"].as_f64()).collect();
    let lo = released.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = released.iter().cloned().fold(0.0, f64::max);
    assert!(funnel[0]["expected"].as_f64().unwrap() <= lo);
    assert!(funnel[funnel.len() - 1]["expected"].as_f64().unwrap() >= hi);
    // CSV: the provider table.
    let csv = analyst
        .get(format!(
            "{}/fhir/Measure/chc-copd/$benchmark?periodStart=2025&periodEnd=2025&_format=csv",
            open_hub.base_url()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        csv.starts_with("provider,region,n,observed,expected,smr,flag95,flag998,withheld"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), providers.len() + 1);

    // The default gate: small strata are withheld with their reason, never alone in a
    // stratifier beside a released total, and counts are rounded.
    let (gated_hub, _d2) = hub(
        &all,
        certs.path(),
        Disclosure::default(),
        std::time::Duration::from_secs(20),
    )
    .await;
    let partner = as_client(certs.path(), &gated_hub.base_url(), "partner").await;
    let gated: Value = partner
        .get(format!(
            "{}/fhir/Measure/chc-copd/$evaluate-measure?periodStart=2025&periodEnd=2025",
            gated_hub.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let regions = strata(&gated, "admissions", "region");
    let gm = regions.iter().find(|(r, _, _)| r == "gm").unwrap();
    assert!(gm.1.is_none() && gm.2.is_some(), "gm's 7 episodes are withheld: {gm:?}");
    let mut released = 0;
    for g in ["admissions", "mortality"] {
        for s in ["region", "provider", "age-band", "sex", "month"] {
            let rows = strata(&gated, g, s);
            let withheld = rows.iter().filter(|(_, c, _)| c.is_none()).count();
            assert_ne!(
                withheld, 1,
                "{g}/{s}: one withheld stratum could be recovered from the total: {rows:?}"
            );
            for (_, c, why) in &rows {
                match c {
                    Some((p, n)) => {
                        released += 1;
                        assert!(*p >= 10 && p % 5 == 0 && n % 5 == 0, "{g}/{s}: {p} {n}");
                        assert!(*n == 0 || *n >= 10, "{g}/{s}: numerator {n}");
                    }
                    None => assert!(why.is_some(), "a withheld stratum says why"),
                }
            }
        }
    }
    assert!(released > 0, "the gate released something: {gated}");
    // The benchmark under the default gate: small providers are named, with the reason and no figure.
    let bench: Value = partner
        .get(format!(
            "{}/fhir/Measure/chc-copd/$benchmark?periodStart=2025&periodEnd=2025",
            gated_hub.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = bench["providers"].as_array().unwrap();
    assert!(!rows.is_empty(), "{bench}");
    for row in rows {
        assert!(row["provider"].is_string() && row["region"].is_string(), "{row}");
        match row["withheld"].as_str() {
            Some(why) => {
                assert!(why.contains("at least 10"), "{why}");
                assert!(row.get("observed").is_none() && row.get("expected").is_none(), "{row}");
            }
            None => {
                let (n, o) = (row["n"].as_u64().unwrap(), row["observed"].as_u64().unwrap());
                assert!(n >= 10 && o >= 10 && n % 5 == 0 && o % 5 == 0, "{row}");
            }
        }
    }
    assert_eq!(bench["disclosure"]["minCell"], 10);
    // Partners may ask at the hub; a vendor may not.
    let vendor = as_client(certs.path(), &gated_hub.base_url(), "vendor").await;
    let res = vendor
        .get(format!(
            "{}/fhir/Measure/chc-copd/$evaluate-measure?periodStart=2025&periodEnd=2025",
            gated_hub.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    open_hub.stop().await;
    gated_hub.stop().await;
    for n in nodes {
        n.stop().await;
    }
    nwc.stop().await;
}

/// P(X <= k), X ~ Poisson(mu), by summing the terms.
fn poisson_cdf_by_sum(k: u64, mu: f64) -> f64 {
    let mut term = (-mu).exp();
    let mut sum = term;
    for i in 1..=k {
        term *= mu / i as f64;
        sum += term;
    }
    sum
}

/// The COPD mortality benchmark of the extracts of `regions`, computed from the CSV
/// rows: (provider, region, n, observed, expected) per provider.
fn reference_benchmark(regions: &[(usize, usize)]) -> Vec<(String, String, u64, u64, f64)> {
    struct Row {
        provider: String,
        region: String,
        band: &'static str,
        sex: String,
        died: bool,
    }
    let mut rows = Vec::new();
    for (region, n) in regions {
        let text = region_extract(*region, *n);
        for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            let (p, s1) = (f[14], f[15]);
            let copd = matches!(p, "J440" | "J441") || (matches!(p, "J100" | "R060") && s1 == "J440");
            if !copd {
                continue;
            }
            let age: u32 = f[5].parse().unwrap();
            let band = match age {
                0..=44 => "0-44",
                45..=64 => "45-64",
                65..=74 => "65-74",
                75..=84 => "75-84",
                _ => "85+",
            };
            rows.push(Row {
                provider: f[6].to_string(),
                region: super::federation::REGIONS[*region].to_string(),
                band,
                sex: f[4].to_string(),
                died: f[13] == "4",
            });
        }
    }
    let mut rate: std::collections::HashMap<(&str, String), (f64, f64)> = std::collections::HashMap::new();
    for r in &rows {
        let e = rate.entry((r.band, r.sex.clone())).or_default();
        e.0 += 1.0;
        e.1 += r.died as u64 as f64;
    }
    let mut out: Vec<(String, String, u64, u64, f64)> = Vec::new();
    for r in &rows {
        let (n, d) = rate[&(r.band, r.sex.clone())];
        let i = match out.iter().position(|o| o.0 == r.provider && o.1 == r.region) {
            Some(i) => i,
            None => {
                out.push((r.provider.clone(), r.region.clone(), 0, 0, 0.0));
                out.len() - 1
            }
        };
        out[i].2 += 1;
        out[i].3 += r.died as u64;
        out[i].4 += d / n;
    }
    out
}

#[tokio::test]
async fn the_cli_lists_pathways_and_runs_one_over_an_extract_or_at_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sus-apc.csv");
    std::fs::write(&file, sus_csv(&designed())).unwrap();
    let bin = env!("CARGO_BIN_EXE_pennine");
    let out = std::process::Command::new(bin)
        .args(["pathway", "list"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for id in ["chc-copd", "chc-arld", "chc-epilepsy"] {
        assert!(text.contains(id), "{text}");
    }
    // Offline over the extract: the same report as the node's over the same rows.
    let out = std::process::Command::new(bin)
        .args([
            "pathway", "run", "chc-arld", "--period", "2025", "--format", "json", "--input",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let offline: Value = serde_json::from_slice(&out.stdout).unwrap();
    let node = spawn_node().await;
    let res = node
        .client
        .post(format!("{}/feeds/csv/sus-apc", node.root))
        .header("content-type", "text/csv")
        .body(sus_csv(&designed()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, stored) = evaluate(&node, "chc-arld", "periodStart=2025&periodEnd=2025").await;
    assert_eq!(offline["group"], stored["group"]);
    // At the node, as a table.
    let out = std::process::Command::new(bin)
        .args(["pathway", "run", "chc-arld", "--period", "2025", "--server", &node.root])
        .args(["--client-id", "tester", "--client-secret", super::helpers::TEST_SECRET])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    let uplift = table
        .lines()
        .find(|l| l.starts_with("uplift") && l.contains("(total)"))
        .unwrap_or_else(|| panic!("{table}"));
    let (population, numerator) = group(&stored, "uplift");
    assert!(
        uplift.contains(&format!(" {population} ")) && uplift.contains(&format!(" {numerator} ")),
        "{uplift}"
    );
    // A bad row stops the offline run with its line.
    std::fs::write(
        &file,
        format!(
            "{}\nX,1,1,9434765870,1,70,RTD,21,300,2025-01-01,2025-01-02,2025-01-01,2025-01-02,1,J4Q{}\n",
            sus_header(),
            ",".repeat(19)
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["pathway", "run", "chc-copd", "--period", "2025", "--input"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.stop().await;
}
