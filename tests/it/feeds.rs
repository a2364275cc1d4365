//! HL7 v2 and CSV feeds: golden comparisons with another converter's output,
//! rule checks on every produced Bundle, and the transports over real sockets.

use super::helpers::{corpus, spawn_node, spawn_node_with};
use pennine::feeds::hl7v2::{split_messages, translate};
use pennine::feeds::ingest::transaction;
use pennine::feeds::mllp;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NOW: &str = "2026-01-01T00:00:00.000Z";

fn resources<'a>(b: &'a Value, rtype: &str) -> Vec<&'a Value> {
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == rtype)
        .collect()
}

fn strings(v: &Value, path: &[&str]) -> HashSet<String> {
    let mut cur = vec![v];
    for p in path {
        let mut next = Vec::new();
        for c in cur {
            match &c[*p] {
                Value::Array(a) => next.extend(a.iter()),
                Value::Null => {}
                other => next.push(other),
            }
        }
        cur = next;
    }
    cur.into_iter()
        .filter_map(|v| v.as_str().map(|s| s.trim().to_string()))
        .collect()
}

fn instant_ms(s: &str) -> Option<i64> {
    if !s.contains('T') {
        return None;
    }
    pennine::fhir::time::parse_range(s).map(|(lo, _)| lo)
}

/// Every element of a resource has a value: no "", [], {} or null.
fn empty_elements(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Null => out.push(path.to_string()),
        Value::String(s) if s.is_empty() => out.push(path.to_string()),
        Value::Array(a) if a.is_empty() => out.push(path.to_string()),
        Value::Object(o) if o.is_empty() => out.push(path.to_string()),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| empty_elements(x, &format!("{path}[{i}]"), out)),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| empty_elements(x, &format!("{path}.{k}"), out)),
        _ => {}
    }
}

/// The rules every produced Bundle keeps: unique ids, references that resolve
/// inside it, no empty elements.
fn check_bundle_rules(name: &str, bundle: &Value) {
    let mut ids = HashSet::new();
    for r in bundle["entry"].as_array().unwrap().iter().map(|e| &e["resource"]) {
        let key = format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
        assert!(
            pennine::fhir::is_valid_id(r["id"].as_str().unwrap()),
            "{name}: bad id {key}"
        );
        assert!(ids.insert(key.clone()), "{name}: {key} appears twice");
        let mut empty = Vec::new();
        empty_elements(r, &key, &mut empty);
        assert!(empty.is_empty(), "{name}: empty elements {empty:?}");
    }
    for r in bundle["entry"].as_array().unwrap().iter().map(|e| &e["resource"]) {
        let mut refs = Vec::new();
        pennine::fhir::refs::collect(r, &mut refs);
        for reference in refs {
            assert!(
                ids.contains(&reference),
                "{name}: reference {reference} does not resolve in the Bundle"
            );
        }
    }
}

/// Facts compared with FHIR-Converter's expected output, and how many agreed.
#[derive(Default)]
struct Tally {
    checked: HashMap<&'static str, (usize, usize)>,
    disagreements: Vec<String>,
}

impl Tally {
    fn check(&mut self, fact: &'static str, case: &str, ok: bool, detail: impl FnOnce() -> String) {
        let e = self.checked.entry(fact).or_default();
        e.0 += 1;
        if ok {
            e.1 += 1;
        } else {
            self.disagreements.push(format!("{case}: {fact}: {}", detail()));
        }
    }
}

#[test]
fn hl7v2_corpus_translates_or_is_refused_and_agrees_with_the_reference_converter() {
    let Some(dir) = corpus("fhir-converter-hl7v2") else {
        return;
    };
    let cases = std::fs::read_to_string(dir.join("cases.csv")).unwrap();
    let mut tally = Tally::default();
    let (mut translated, mut refused) = (0, 0);
    for line in cases.lines().skip(1) {
        let parts: Vec<&str> = line.split(',').collect();
        let (root, input, expected) = (parts[0], parts[1], parts[2]);
        let text = std::fs::read_to_string(dir.join(input)).unwrap();
        let messages = split_messages(&text);
        assert!(!messages.is_empty(), "{input}: no message found");
        let result = translate(messages[0], NOW);
        let ours = match result {
            Ok(t) => {
                translated += 1;
                let b = transaction(&t.resources);
                check_bundle_rules(input, &b);
                b
            }
            Err(r) => {
                refused += 1;
                assert!(!r.findings.is_empty(), "{input}: refused without a reason");
                for f in &r.findings {
                    assert!(!f.issue.diagnostics.is_empty(), "{input}: empty reason");
                }
                // ADT and ORU messages of the listed events must translate.
                let supported = root.starts_with("ADT_")
                    && !["ADT_A29", "ADT_A41", "ADT_A45", "ADT_A47", "ADT_A60"].contains(&root)
                    || root == "ORU_R01";
                assert!(!supported, "{input} ({root}) was refused: {:?}", r.findings);
                continue;
            }
        };
        if !(root.starts_with("ADT_") || root == "ORU_R01") {
            continue;
        }
        let exp: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(expected)).unwrap()).unwrap();
        // Patient.
        let (p, e) = (resources(&ours, "Patient")[0], resources(&exp, "Patient"));
        let Some(e) = e.first() else { continue };
        tally.check("birthDate", input, p["birthDate"] == e["birthDate"], || {
            format!("{} vs {}", p["birthDate"], e["birthDate"])
        });
        tally.check("gender", input, p["gender"] == e["gender"], || {
            format!("{} vs {}", p["gender"], e["gender"])
        });
        let (ours_ids, exp_ids) = (
            strings(p, &["identifier", "value"]),
            strings(e, &["identifier", "value"]),
        );
        tally.check(
            "identifiers",
            input,
            ours_ids.is_subset(&exp_ids) && !ours_ids.is_empty(),
            || format!("{ours_ids:?} not within {exp_ids:?}"),
        );
        let (of, ef) = (strings(p, &["name", "family"]), strings(e, &["name", "family"]));
        // The reference also copies names from other segments (GT1, IN2, PID-6): ours must be among them.
        tally.check("family names", input, !of.is_empty() && of.is_subset(&ef), || {
            format!("{of:?} vs {ef:?}")
        });
        let (og, eg) = (strings(p, &["name", "given"]), strings(e, &["name", "given"]));
        tally.check("given names", input, og.is_subset(&eg), || format!("{og:?} vs {eg:?}"));
        let (oz, ez) = (
            strings(p, &["address", "postalCode"]),
            strings(e, &["address", "postalCode"]),
        );
        tally.check("postcodes", input, oz.is_subset(&ez), || format!("{oz:?} vs {ez:?}"));
        let (oc, ec) = (strings(p, &["address", "city"]), strings(e, &["address", "city"]));
        tally.check("cities", input, oc.is_subset(&ec), || format!("{oc:?} vs {ec:?}"));
        // Encounter.
        if let (Some(oe), Some(ee)) = (
            resources(&ours, "Encounter").first(),
            resources(&exp, "Encounter").first(),
        ) {
            tally.check(
                "encounter class",
                input,
                oe["class"]["code"] == ee["class"]["code"],
                || format!("{} vs {}", oe["class"]["code"], ee["class"]["code"]),
            );
            // The reference fills the period from PV2-8/9 (expected admit/discharge) when PV1-44/45
            // are empty, and keeps PV1-45 on cancelled discharges; we follow the V2-to-FHIR IG:
            // PV1-44/45 are the period (no end after A13/A25), PV2-8/9 the planned-date extensions.
            // The fact must be in one place or the other, with the same instant.
            let planned = |which: &str| -> Option<String> {
                oe["extension"]
                    .as_array()?
                    .iter()
                    .find(|x| x["url"].as_str().is_some_and(|u| u.ends_with(which)))?["valueDateTime"]
                    .as_str()
                    .map(str::to_string)
            };
            let cancelled_discharge = matches!(root, "ADT_A13" | "ADT_A25");
            for (end, ext) in [("start", "plannedStartDate"), ("end", "plannedEndDate")] {
                let b = ee["period"][end].as_str();
                let a = oe["period"][end].as_str().map(str::to_string);
                let same_instant = |x: &str, y: &str| match (instant_ms(x), instant_ms(y)) {
                    (Some(p), Some(q)) => p == q,
                    _ => x == y,
                };
                match (a, b) {
                    (Some(a), Some(b)) => {
                        let ok = same_instant(&a, b) || planned(ext).is_some_and(|p| same_instant(&p, b));
                        tally.check("encounter period", input, ok, || format!("{end}: {a} vs {b}"));
                    }
                    (None, Some(b)) => {
                        let ok = planned(ext).is_some_and(|p| same_instant(&p, b));
                        tally.check("encounter period", input, ok, || format!("{end}: none vs {b}"));
                    }
                    (Some(a), None) => {
                        tally.check("encounter period", input, false, || format!("{end}: {a} vs none"));
                    }
                    (None, None) => {
                        if end == "end" && cancelled_discharge {
                            tally.check("encounter period", input, true, String::new);
                        }
                    }
                }
            }
        }
        // Observations (ORU): code, value, unit, reference range.
        if root == "ORU_R01" {
            let key = |o: &Value| -> String { o["code"]["coding"][0]["code"].as_str().unwrap_or("").to_string() };
            let ours_obs: HashMap<String, &Value> = resources(&ours, "Observation")
                .into_iter()
                .map(|o| (key(o), o))
                .collect();
            let exp_obs = resources(&exp, "Observation");
            let exp_codes: HashSet<String> = exp_obs.iter().map(|o| key(o)).collect();
            let our_codes: HashSet<String> = ours_obs.keys().cloned().collect();
            // Every result the reference made is ours too (we also keep specimen OBXs after SPM).
            tally.check("observation codes", input, exp_codes.is_subset(&our_codes), || {
                format!("{our_codes:?} vs {exp_codes:?}")
            });
            for eo in exp_obs {
                let Some(oo) = ours_obs.get(&key(eo)) else { continue };
                if let Some(ev) = eo["valueQuantity"]["value"].as_f64() {
                    let ov = oo["valueQuantity"]["value"].as_f64();
                    tally.check("observation values", input, ov == Some(ev), || {
                        format!("{ov:?} vs {ev}")
                    });
                    let (ou, eu) = (&oo["valueQuantity"]["unit"], &eo["valueQuantity"]["unit"]);
                    tally.check("observation units", input, ou == eu || eu.is_null(), || {
                        format!("{ou} vs {eu}")
                    });
                } else if let Some(es) = eo["valueString"].as_str() {
                    let os = oo["valueString"].as_str();
                    tally.check(
                        "observation values",
                        input,
                        os.map(str::trim) == Some(es.trim()),
                        || format!("{os:?} vs {es}"),
                    );
                }
                let (orr, err) = (&oo["referenceRange"][0], &eo["referenceRange"][0]);
                if !err.is_null() {
                    // Where the reference gives only the text, ours must have that text (we also parse low/high).
                    let bounds = err["low"].is_null() && err["high"].is_null()
                        || orr["low"]["value"] == err["low"]["value"] && orr["high"]["value"] == err["high"]["value"];
                    let same = bounds && (err["text"].is_null() || orr["text"] == err["text"]);
                    tally.check("reference ranges", input, same, || format!("{orr} vs {err}"));
                }
                // Deliberate differences where the V2-to-FHIR IG gives no mapping and the reference
                // says unknown: OBX-11 R ("entered, not verified") is preliminary here (FHIR: "data
                // may be incomplete or unverified"), I ("specimen in lab, results pending") is
                // registered (FHIR: "no result yet available").
                let obx11_r =
                    (oo["status"] == "preliminary" || oo["status"] == "registered") && eo["status"] == "unknown";
                tally.check(
                    "observation status",
                    input,
                    oo["status"] == eo["status"] || obx11_r,
                    || format!("{} vs {}", oo["status"], eo["status"]),
                );
            }
        }
    }
    println!("HL7 v2 corpus: {translated} translated, {refused} refused (unsupported message types)");
    let mut facts: Vec<_> = tally.checked.iter().collect();
    facts.sort();
    for (fact, (n, ok)) in &facts {
        println!("  {fact}: {ok}/{n} agree with FHIR-Converter");
    }
    for d in &tally.disagreements {
        println!("  DISAGREES {d}");
    }
    assert!(translated >= 50, "only {translated} messages translated");
    assert!(
        tally.disagreements.is_empty(),
        "{} facts disagree with the reference converter (listed above)",
        tally.disagreements.len()
    );
}

#[test]
fn other_hl7v2_corpora_translate_or_are_refused_without_panics() {
    let mut seen = 0;
    for sub in ["google-hdh-hl7v2-fhir", "lfh-hl7v2-fhir-converter", "hl7-v2-to-fhir-ig"] {
        let Some(dir) = corpus(sub) else { continue };
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if !p.extension().is_some_and(|e| e == "hl7" || e == "er7" || e == "txt") {
                    continue;
                }
                let text = pennine::feeds::decode_text(&std::fs::read(&p).unwrap());
                for m in split_messages(&text) {
                    seen += 1;
                    match translate(m, NOW) {
                        Ok(t) => check_bundle_rules(&p.display().to_string(), &transaction(&t.resources)),
                        Err(r) => assert!(!r.findings.is_empty(), "{}: refused without a reason", p.display()),
                    }
                }
            }
        }
    }
    println!("other HL7 v2 corpora: {seen} messages translated or refused with a reason");
}

const ADT_A01: &str = "MSH|^~\\&|PAS|RTD|PENNINE|NENC|20240715093000||ADT^A01^ADT_A01|CTRL-1|P|2.5\r\
EVN|A01|20240715093000\r\
PID|1||9434765919^^^NHS^NH~RTD123456^^^RTD^MR||Smith^Ann^May^^Mrs||19700517|F|||1 High St^^Newcastle^^NE1 4LP^GBR^H||0191 496 0000^PRN^PH\r\
PV1|1|I|WARD7^BAY2^BED3^RTD||||C123^Jones^Peter^^^Dr|||MED|||||||||V0001^^^RTD^VN|||||||||||||||||||||||||20240715091500\r";

fn with(msg: &str, control: &str, edit: impl Fn(&str) -> String) -> String {
    msg.replace("CTRL-1", control)
        .split('\r')
        .map(&edit)
        .collect::<Vec<_>>()
        .join("\r")
}

async fn post_hl7(node: &super::helpers::TestNode, body: &str) -> Value {
    let res = node
        .client
        .post(format!("{}/feeds/hl7v2", node.root))
        .header("content-type", "x-application/hl7-v2+er7")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

async fn open_dead_letters(node: &super::helpers::TestNode) -> Value {
    let res = node
        .client
        .get(format!("{}/feeds/dead-letters?status=open", node.root))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

async fn post_csv(node: &super::helpers::TestNode, mapping: &str, body: impl Into<String>) -> reqwest::Response {
    node.client
        .post(format!("{}/feeds/csv/{mapping}", node.root))
        .header("content-type", "text/csv")
        .body(body.into())
        .send()
        .await
        .unwrap()
}

fn ack_of(entry: &Value) -> String {
    entry["response"]["extension"][0]["valueString"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn http_feed_stores_updates_and_refuses_with_reasons() {
    let node = spawn_node().await;
    // One body, three messages: admit, a resend of it, and an update with a bad birth date.
    let update = with(ADT_A01, "CTRL-2", |s| {
        if s.starts_with("PID") {
            s.replace("19700517", "19701317")
        } else {
            s.to_string()
        }
    });
    let body = format!("{ADT_A01}\n{ADT_A01}\n{update}");
    let reply = post_hl7(&node, &body).await;
    let entries = reply["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["response"]["status"], "201 Created", "{}", entries[0]);
    assert!(ack_of(&entries[0]).contains("MSA|AA|CTRL-1"));
    assert_eq!(entries[1]["response"]["status"], "200 OK");
    assert!(ack_of(&entries[1]).contains("MSA|AA|CTRL-1"));
    assert_eq!(entries[2]["response"]["status"], "422 Unprocessable Entity");
    let ack = ack_of(&entries[2]);
    assert!(ack.contains("MSA|AE|CTRL-2"), "{ack}");
    assert!(ack.contains("|PID^1^7|102^Data type error^HL70357|E|"), "{ack}");
    let diag = entries[2]["response"]["outcome"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap();
    assert!(diag.contains("PID-7") && diag.contains("19701317"), "{diag}");
    // Stored once: one patient with the NHS number and its MRN, one encounter, one Provenance.
    assert_eq!(
        node.total("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919")
            .await,
        1
    );
    assert_eq!(node.total("Patient").await, 1);
    assert_eq!(node.total("Encounter").await, 1);
    assert_eq!(node.total("Provenance").await, 1);
    let patient = &node.get_json("Patient?identifier=urn:pennine:id:RTD|RTD123456").await["entry"][0]["resource"];
    assert_eq!(patient["birthDate"], "1970-05-17", "the refused update changed nothing");
    assert_eq!(patient["meta"]["versionId"], "1", "the resend was not applied again");
    let enc = &node.get_json("Encounter").await["entry"][0]["resource"];
    assert_eq!(
        enc["period"]["start"], "2024-07-15T09:15:00+01:00",
        "July local time is BST"
    );
    assert_eq!(enc["class"]["code"], "IMP");
    let prov = &node.get_json("Provenance").await["entry"][0]["resource"];
    assert_eq!(prov["entity"][0]["what"]["identifier"]["value"], "CTRL-1");
    let targets = prov["target"].as_array().unwrap().len();
    assert!(targets >= 5, "Provenance points at what the message wrote: {prov}");

    // A later discharge (A03) for the same visit updates the encounter; the
    // patient arrives identified by the MRN only and is matched, not duplicated.
    let discharge = with(ADT_A01, "CTRL-3", |s| {
        if s.starts_with("MSH") {
            s.replace("ADT^A01^ADT_A01", "ADT^A03^ADT_A03")
        } else if s.starts_with("PID") {
            s.replace("9434765919^^^NHS^NH~", "")
        } else if s.starts_with("PV1") {
            format!("{s}|20240716120000")
        } else {
            s.to_string()
        }
    });
    let reply = post_hl7(&node, &discharge).await;
    assert_eq!(reply["entry"][0]["response"]["status"], "201 Created", "{reply}");
    assert_eq!(node.total("Patient").await, 1);
    assert_eq!(node.total("Encounter").await, 1);
    let enc = &node.get_json("Encounter").await["entry"][0]["resource"];
    assert_eq!(enc["status"], "finished");
    assert_eq!(enc["period"]["start"], "2024-07-15T09:15:00+01:00");
    assert_eq!(enc["period"]["end"], "2024-07-16T12:00:00+01:00");
    let patient = &node.get_json("Patient").await["entry"][0]["resource"];
    let ids = strings(patient, &["identifier", "value"]);
    assert!(ids.contains("9434765919"), "the NHS number stays: {ids:?}");

    // Dead letters: the refused update is kept, raw, with its reasons.
    let letters = open_dead_letters(&node).await;
    assert_eq!(letters["total"], 1, "{letters}");
    assert!(letters["deadLetters"][0]["content"]
        .as_str()
        .unwrap()
        .contains("19701317"));
    assert_eq!(letters["deadLetters"][0]["reference"], "CTRL-2");
    // A vendor may not read them (raw patient data): administrators only.
    let vendor = super::helpers::authed_with(reqwest::Client::builder, &node.root, "vendor").await;
    let res = vendor
        .get(format!("{}/feeds/dead-letters", node.root))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // A body without a message is a 400 OperationOutcome.
    let res = node
        .client
        .post(format!("{}/feeds/hl7v2", node.root))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    // ...and what was received is kept all the same, with the reason.
    let diag = body["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(diag.contains("kept as dead letter"), "{diag}");
    let letters = open_dead_letters(&node).await;
    assert_eq!(letters["total"], 2, "{letters}");
    assert!(letters.to_string().contains("\"content\":\"hello\""), "{letters}");
    node.stop().await;
}

/// Garbage over MLLP is kept as dead letters too, within the peer's quota: past it (64 MiB
/// by default, 4 MiB here) a letter keeps only its first 4 KiB, so a hostile peer cannot
/// fill the disk.
#[tokio::test]
async fn garbage_frames_are_kept_within_a_quota_per_peer() {
    let node = spawn_node_with(|c| {
        c.mllp = Some("127.0.0.1:0".into());
        c.dead_letter_quota = 4 << 20;
    })
    .await;
    let addr = node.mllp.unwrap();
    let junk = "x".repeat(1 << 20);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..5 {
        let ack = send_frame(&mut stream, &junk).await;
        assert!(ack.contains("MSA|AR"), "{}", &ack[..ack.len().min(300)]);
    }
    // Bytes outside a frame are no message: kept (and not answered).
    stream.write_all(b"stray bytes\r\n").await.unwrap();
    let ack = send_frame(&mut stream, "not hl7 either").await;
    assert!(ack.contains("MSA|AR"));
    drop(stream);
    let res = node
        .client
        .get(format!("{}/feeds/dead-letters?status=open&_count=0", node.root))
        .send()
        .await
        .unwrap();
    let listed: Value = res.json().await.unwrap();
    assert_eq!(listed["total"], 7, "five frames, the stray bytes and the last frame");
    let res = node
        .client
        .get(format!("{}/feeds/dead-letters?status=open&_count=7", node.root))
        .send()
        .await
        .unwrap();
    let letters: Value = res.json().await.unwrap();
    let sizes: Vec<usize> = letters["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["content"].as_str().unwrap().len())
        .collect();
    // Four whole frames fit in 4 MiB; the fifth is cut to its head, with the reason.
    assert_eq!(&sizes[..5], &[1 << 20, 1 << 20, 1 << 20, 1 << 20, 4096], "{sizes:?}");
    assert!(letters["deadLetters"][4].to_string().contains("only the first 4096"));
    assert!(letters["deadLetters"][5]["content"]
        .as_str()
        .unwrap()
        .contains("stray bytes"));
    assert_eq!(letters["deadLetters"][5]["source"], letters["deadLetters"][0]["source"]);
    node.stop().await;
}

/// A resend (the same content, even re-stamped in MSH-7 or with other line ends) is a
/// duplicate; a different message under a used control id is refused (AR) and kept.
#[tokio::test]
async fn a_reused_control_id_is_refused_and_kept_not_dropped() {
    let node = spawn_node().await;
    let reply = post_hl7(&node, ADT_A01).await;
    assert_eq!(reply["entry"][0]["response"]["status"], "201 Created", "{reply}");
    // The same message later: another MSH-7 and \n line ends.
    let resend = with(ADT_A01, "CTRL-1", |s| {
        s.replace("|20240715093000||ADT", "|20240716080000||ADT")
    })
    .replace('\r', "\n");
    let reply = post_hl7(&node, &resend).await;
    assert_eq!(reply["entry"][0]["response"]["status"], "200 OK", "{reply}");
    assert!(ack_of(&reply["entry"][0]).contains("MSA|AA|CTRL-1"));
    assert_eq!(open_dead_letters(&node).await["total"], 0);
    // Another patient under the same control id (as the corpus' ADT-A01-01 and ADT-A03-01 do).
    let other = with(ADT_A01, "CTRL-1", |s| s.replace("Smith^Ann", "Brown^Bea"));
    let reply = post_hl7(&node, &other).await;
    let entry = &reply["entry"][0];
    let ack = ack_of(entry);
    assert!(ack.contains("MSA|AR|CTRL-1"), "{ack}");
    assert!(ack.contains("|MSH^1^10|"), "the ERR points at MSH-10: {ack}");
    let diag = entry["response"]["outcome"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap();
    assert!(
        diag.contains("control id reused") && diag.contains("dead letter"),
        "{diag}"
    );
    // Nothing of it was applied, and it is kept, raw, for an administrator to resend.
    let patient = &node.get_json("Patient").await["entry"][0]["resource"];
    assert_eq!(patient["name"][0]["family"], "Smith");
    assert_eq!(node.total("Patient").await, 1);
    let letters = open_dead_letters(&node).await;
    assert_eq!(letters["total"], 1, "{letters}");
    assert!(letters["deadLetters"][0]["content"]
        .as_str()
        .unwrap()
        .contains("Brown^Bea"));
    assert_eq!(letters["deadLetters"][0]["reference"], "CTRL-1");
    node.stop().await;
}

#[tokio::test]
async fn nhs_numbers_are_checked_and_unknown_content_reported() {
    let node = spawn_node().await;
    let msg = with(ADT_A01, "CTRL-9", |s| {
        if s.starts_with("PID") {
            s.replace("9434765919", "9434765918")
        } else if s.starts_with("EVN") {
            format!("{s}\rZPI|1|custom")
        } else {
            s.to_string()
        }
    });
    let reply = post_hl7(&node, &msg).await;
    let entry = &reply["entry"][0];
    assert_eq!(entry["response"]["status"], "201 Created", "{entry}");
    let issues = entry["response"]["outcome"]["issue"].as_array().unwrap();
    let text = |sev: &str| -> Vec<String> {
        issues
            .iter()
            .filter(|i| i["severity"] == sev)
            .map(|i| i["diagnostics"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(text("warning").iter().any(|d| d.contains("Modulus 11")), "{issues:?}");
    assert!(
        text("information")
            .iter()
            .any(|d| d.contains("segment ZPI is not mapped")),
        "{issues:?}"
    );
    assert!(
        text("information").iter().any(|d| d.contains("EVN")),
        "EVN is reported too: {issues:?}"
    );
    assert!(ack_of(entry).contains("|W|"), "the ACK carries the warning");
    assert_eq!(
        node.total("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765918")
            .await,
        0
    );
    assert_eq!(node.total("Patient?identifier=urn:pennine:id:RTD|RTD123456").await, 1);
    node.stop().await;
}

// --- MLLP ---

async fn send_frame(stream: &mut tokio::net::TcpStream, msg: &str) -> String {
    stream.write_all(&mllp::frame(msg.as_bytes())).await.unwrap();
    read_frame(stream).await
}

async fn read_frame(stream: &mut tokio::net::TcpStream) -> String {
    let mut decoder = mllp::Decoder::new(1 << 20);
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("an ACK within 20 s")
            .unwrap();
        assert!(n > 0, "connection closed before the ACK");
        for f in decoder.push(&buf[..n]).unwrap() {
            if let mllp::Frame::Message(m) = f {
                return String::from_utf8(m).unwrap();
            }
        }
    }
}

/// Connections that hold a half-sent frame are closed after the frame timeout, one address
/// may hold only so many, and a real sender (from another address) always gets through.
#[tokio::test]
async fn held_mllp_connections_cannot_keep_senders_out() {
    let node = spawn_node_with(|c| {
        c.mllp = Some("127.0.0.1:0".into());
        c.mllp_limits.frame = Duration::from_secs(8);
        c.mllp_limits.per_peer = 8;
    })
    .await;
    let addr = node.mllp.unwrap();
    // 40 connections from 127.0.0.1, each with a partial frame: past 8 they are closed at once.
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(b"\x0bMSH|^~\\&|half").await;
        held.push(s);
    }
    // Read every connection at once: a closed one ends its read; a held one is still open
    // when the wait (well within the frame timeout) ends.
    async fn closed_within(streams: &mut [tokio::net::TcpStream], wait: Duration) -> Vec<bool> {
        let reads = streams.iter_mut().map(|s| async move {
            let mut b = [0u8; 16];
            matches!(tokio::time::timeout(wait, s.read(&mut b)).await, Ok(Ok(0) | Err(_)))
        });
        futures_util::future::join_all(reads).await
    }
    let closed = closed_within(&mut held, Duration::from_secs(3)).await;
    assert_eq!(
        closed.iter().filter(|c| **c).count(),
        32,
        "only 8 held connections per address"
    );
    // A sender on another loopback address is served while those are held.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut real = socket.connect(addr).await.unwrap();
    let ack = send_frame(&mut real, &patient_message(4242)).await;
    assert!(ack.contains("MSA|AA|M4242"), "{ack}");
    // The held frames are not finished within the frame timeout: their connections close.
    let mut still: Vec<tokio::net::TcpStream> = held
        .into_iter()
        .zip(closed)
        .filter(|(_, c)| !c)
        .map(|(s, _)| s)
        .collect();
    assert_eq!(still.len(), 8);
    let closed = closed_within(&mut still, Duration::from_secs(20)).await;
    assert!(
        closed.iter().all(|c| *c),
        "every half-sent frame's connection is closed"
    );
    // ...so the address may connect again.
    let mut again = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ack = send_frame(&mut again, &patient_message(4243)).await;
    assert!(ack.contains("MSA|AA|M4243"), "{ack}");
    node.stop().await;
}

fn patient_message(i: usize) -> String {
    // A valid NHS number per patient: 943476591 + i varies the MRN; the NHS number is left out.
    format!(
        "MSH|^~\\&|PAS|RTD|PENNINE|NENC|20240115093000||ADT^A04^ADT_A01|M{i}|P|2.4\r\
         PID|1||MRN{i}^^^RTD^MR||Patient{i}^Test||19800101|M\r\
         PV1|1|O|CLINIC1^^^RTD||||||||||||||||V{i}^^^RTD^VN|||||||||||||||||||||||||20240115090000\r"
    )
}

#[tokio::test]
async fn mllp_acks_after_commit_with_concurrent_senders_and_half_frames() {
    let node = spawn_node_with(|c| c.mllp = Some("127.0.0.1:0".into())).await;
    let addr = node.mllp.expect("MLLP listening");
    // A sender that stops mid-frame and disconnects.
    let mut broken = tokio::net::TcpStream::connect(addr).await.unwrap();
    let half = mllp::frame(patient_message(999).as_bytes());
    broken.write_all(&half[..half.len() / 2]).await.unwrap();
    // Eight concurrent senders, 20 messages each, one ACK per message.
    let mut tasks = Vec::new();
    for s in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            for k in 0..20 {
                let ack = send_frame(&mut stream, &patient_message(s * 100 + k)).await;
                assert!(ack.contains(&format!("MSA|AA|M{}", s * 100 + k)), "{ack}");
            }
        }));
    }
    drop(broken);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(node.total("Patient").await, 160);
    assert_eq!(node.total("Encounter").await, 160);
    // The sending trust, named by all 160 messages, is not rewritten once stored unchanged:
    // only the first message of each of the 8 concurrent senders may have written it.
    let org = &node
        .get_json("Organization?identifier=https://fhir.nhs.uk/Id/ods-organization-code|RTD&name=RTD")
        .await["entry"][0]["resource"];
    let versions: u32 = org["meta"]["versionId"].as_str().unwrap().parse().unwrap();
    assert!(versions <= 8, "{org}");
    assert_eq!(
        node.total("Patient?identifier=urn:pennine:id:RTD|MRN999").await,
        0,
        "half a frame stores nothing"
    );
    let enc = &node.get_json("Encounter?identifier=urn:pennine:id:RTD|V5").await["entry"][0]["resource"];
    assert_eq!(
        enc["period"]["start"], "2024-01-15T09:00:00+00:00",
        "January local time is GMT"
    );

    // Resend: acknowledged again, not applied again.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ack = send_frame(&mut stream, &patient_message(5)).await;
    assert!(ack.contains("MSA|AA|M5"), "{ack}");
    let p = &node.get_json("Patient?identifier=urn:pennine:id:RTD|MRN5").await["entry"][0]["resource"];
    assert_eq!(p["meta"]["versionId"], "1");
    // A bad date: AE with an ERR naming the field; a time in the spring-forward gap is an error too.
    let bad = patient_message(7000).replace("19800101", "19800132");
    let ack = send_frame(&mut stream, &bad).await;
    assert!(ack.contains("MSA|AE|M7000"), "{ack}");
    // (A v2.4 ACK: the error's place and code are ERR-1, the only ERR field of v2.4.)
    assert!(ack.contains("ERR|PID^1^7^102&"), "{ack}");
    let gap = patient_message(7001).replace("20240115090000", "20240331013000");
    let ack = send_frame(&mut stream, &gap).await;
    assert!(ack.contains("MSA|AE|M7001") && ack.contains("PV1^1^44"), "{ack}");
    // Not HL7 at all: a reject.
    let ack = send_frame(&mut stream, "hello world").await;
    assert!(ack.contains("MSA|AR|"), "{ack}");
    // An unsupported message type: a reject that says so.
    let ack = send_frame(
        &mut stream,
        "MSH|^~\\&|X|Y|Z|W|20240101||SIU^S12|Q1|P|2.5\rPID|1||1^^^X^MR\r",
    )
    .await;
    assert!(
        ack.contains("MSA|AR|Q1") && ack.contains("200^Unsupported message type"),
        "{ack}"
    );
    node.stop().await;
}

#[tokio::test]
async fn a40_merge_deactivates_the_prior_patient_and_replay_recovers_dead_letters() {
    let node = spawn_node_with(|c| c.mllp = Some("127.0.0.1:0".into())).await;
    let addr = node.mllp.unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    for i in [1, 2] {
        let ack = send_frame(&mut stream, &patient_message(i)).await;
        assert!(ack.contains("MSA|AA"), "{ack}");
    }
    let merge = "MSH|^~\\&|PAS|RTD|PENNINE|NENC|20240116100000||ADT^A40^ADT_A39|MRG1|P|2.4\r\
                 EVN|A40|20240116100000\r\
                 PID|1||MRN1^^^RTD^MR||Patient1^Test||19800101|M\r\
                 MRG|MRN2^^^RTD^MR\r";
    let ack = send_frame(&mut stream, merge).await;
    assert!(ack.contains("MSA|AA|MRG1"), "{ack}");
    let prior = &node
        .get_json("Patient?identifier=urn:pennine:id:RTD|MRN2&active=false")
        .await["entry"][0]["resource"];
    assert_eq!(prior["active"], false, "{prior}");
    assert_eq!(prior["link"][0]["type"], "replaced-by");
    let survivor = &node
        .get_json("Patient?identifier=urn:pennine:id:RTD|MRN1&active=true")
        .await["entry"][0]["resource"];
    assert_eq!(survivor["link"][0]["type"], "replaces");
    let ids = strings(survivor, &["identifier", "value"]);
    assert!(
        ids.contains("MRN2"),
        "the survivor keeps the merged identifier: {ids:?}"
    );
    assert_eq!(
        prior["link"][0]["other"]["reference"],
        format!("Patient/{}", survivor["id"].as_str().unwrap())
    );
    // Later messages about MRN2 go to the survivor.
    let later = patient_message(2).replace("|M2|", "|M2b|");
    let ack = send_frame(&mut stream, &later).await;
    assert!(ack.contains("MSA|AA|M2b"), "{ack}");
    assert_eq!(node.total("Patient?active=true").await, 1);

    // A cause that can be fixed: two stored patients share an NHS number.
    for (i, mrn) in [(1, "X1"), (2, "X2")] {
        node.create(&json!({"resourceType": "Patient", "identifier": [
            {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765870"},
            {"system": "urn:pennine:id:OTHER", "value": format!("{mrn}-{i}")}]}))
            .await;
    }
    let msg = "MSH|^~\\&|PAS|RTD|PENNINE|NENC|20240117100000||ADT^A08^ADT_A01|DUP1|P|2.4\r\
               PID|1||9434765870^^^NHS^NH||Twin^Test||19800101|F\r";
    let ack = send_frame(&mut stream, msg).await;
    assert!(ack.contains("MSA|AE|DUP1") && ack.contains("204"), "{ack}");
    let letters = open_dead_letters(&node).await;
    assert_eq!(letters["total"], 1, "{letters}");
    let id = letters["deadLetters"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(letters["deadLetters"][0]["transport"], "mllp");
    // Replaying before the fix fails again and keeps the letter open.
    let replay = |id: String| {
        let c = node.client.clone();
        let url = format!("{}/feeds/dead-letters/{id}/$replay", node.root);
        async move { c.post(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let r = replay(id.clone()).await;
    assert_eq!(r["deadLetter"]["status"], "open", "{r}");
    // Fix: remove one of the duplicates; the replay then stores the message.
    let twins = node
        .search_ids("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765870")
        .await;
    let res = node
        .client
        .delete(node.url(&format!("Patient/{}", twins[1])))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let r = replay(id.clone()).await;
    assert_eq!(r["deadLetter"]["status"], "replayed", "{r}");
    assert_eq!(r["deadLetter"]["replays"].as_array().unwrap().len(), 2);
    let p = &node.get_json(&format!("Patient/{}", twins[0])).await;
    assert_eq!(p["name"][0]["family"], "Twin");
    node.stop().await;
}

#[tokio::test]
async fn synthea_csv_extract_loads_through_the_shipped_mappings() {
    let Some(dir) = corpus("synthea-csv") else { return };
    let node = spawn_node().await;
    let mut expected = HashMap::new();
    for (file, mapping, rtype) in [
        ("patients.csv", "synthea-patients", "Patient"),
        ("encounters.csv", "synthea-encounters", "Encounter"),
        ("conditions.csv", "synthea-conditions", "Condition"),
        ("observations.csv", "synthea-observations", "Observation"),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let rows = text.lines().count() - 1;
        let res = post_csv(&node, mapping, text).await;
        assert_eq!(res.status(), 200);
        let summary: Value = res.json().await.unwrap();
        assert_eq!(summary["rows"], rows, "{summary}");
        assert_eq!(summary["rejected"], json!([]), "{summary}");
        expected.insert(rtype, rows as u64);
    }
    for (rtype, n) in &expected {
        // Ids are deterministic, so a row that repeats an earlier one is one resource.
        let total = node.total(rtype).await;
        assert!(total <= *n && total >= n * 9 / 10, "{rtype}: {total} of {n}");
    }
    let p = &node.get_json("Patient/3edac2e3-d223-6fae-d515-daf96ef6bc76").await;
    assert_eq!(p["birthDate"], "2014-10-06");
    assert_eq!(p["gender"], "male");
    assert_eq!(p["address"][0]["postalCode"], "02155");
    let heights = node
        .get_json("Observation?subject=Patient/3edac2e3-d223-6fae-d515-daf96ef6bc76&code=http://loinc.org|8302-2")
        .await;
    assert!(heights["total"].as_u64().unwrap() >= 1);
    assert_eq!(
        heights["entry"][0]["resource"]["valueQuantity"]["system"],
        "http://unitsofmeasure.org"
    );

    // A bad row is refused with its column named and kept; the good rows are stored.
    let bad = "Id,BIRTHDATE,DEATHDATE,SSN,DRIVERS,PASSPORT,PREFIX,FIRST,LAST,SUFFIX,MAIDEN,MARITAL,RACE,ETHNICITY,GENDER,BIRTHPLACE,ADDRESS,CITY,STATE,COUNTY,ZIP,LAT,LON,HEALTHCARE_EXPENSES,HEALTHCARE_COVERAGE\n\
               good-1,2001-02-03,,,,,,Ann,Good,,,,,,F,,,,,,,,,,\n\
               bad-1,2001-02-30,,,,,,Bob,Bad,,,,,,M,,,,,,,,,,\n\
               bad-2,2001-02-03,,,,,,Cy,Bad,,,,,,Q,,,,,,,,,,\n";
    let res = post_csv(&node, "synthea-patients", bad).await;
    let summary: Value = res.json().await.unwrap();
    assert_eq!(summary["stored"], 1, "{summary}");
    let rejected = summary["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["line"], 3);
    assert!(rejected[0]["outcome"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("BIRTHDATE"));
    assert!(rejected[1]["outcome"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("GENDER"));
    assert!(rejected[0]["deadLetter"].is_string());
    // An unknown mapping and a CSV without the mapped columns are whole-request errors.
    let res = post_csv(&node, "nope", "a,b\n1,2\n").await;
    assert_eq!(res.status(), 404);
    let res = post_csv(&node, "synthea-patients", "a,b\n1,2\n").await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["issue"][0]["diagnostics"].as_str().unwrap().contains("BIRTHDATE"),
        "{body}"
    );
    node.stop().await;
}

#[tokio::test]
async fn whole_hl7v2_corpus_through_http_stores_every_translated_message() {
    let Some(dir) = corpus("fhir-converter-hl7v2") else {
        return;
    };
    let node = spawn_node().await;
    let mut files: Vec<_> = std::fs::read_dir(dir.join("input"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let (mut stored, mut refused, mut reused) = (0, 0, 0);
    // The corpus gives one control id to several different messages of one sender (MSG00001 in
    // ADT-A01-01, ADT-A01-02, ADT-A03-01...): after the first, each is refused and kept.
    let mut seen: std::collections::HashMap<(String, String), String> = std::collections::HashMap::new();
    for f in &files {
        let text = pennine::feeds::decode_text(&std::fs::read(f).unwrap());
        let reply = post_hl7(&node, &text).await;
        for e in reply["entry"].as_array().unwrap() {
            let status = e["response"]["status"].as_str().unwrap();
            let ack = ack_of(e);
            let translated = split_messages(&text)
                .first()
                .map(|m| translate(m, NOW).is_ok())
                .unwrap_or(false);
            let msh: Vec<&str> = text.split(['\r', '\n']).next().unwrap_or("").split('|').collect();
            let key = (
                format!("{}|{}", msh.get(2).unwrap_or(&""), msh.get(3).unwrap_or(&"")),
                msh.get(9).unwrap_or(&"").to_string(),
            );
            let body: String = text
                .split(['\r', '\n'])
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("\r");
            let earlier = if translated { seen.get(&key).cloned() } else { None };
            if translated && earlier.is_none() {
                seen.insert(key.clone(), body.clone());
            }
            if earlier.as_ref().is_some_and(|b| *b != body) {
                assert_eq!(
                    status,
                    "400 Bad Request",
                    "{}: {}",
                    f.display(),
                    e["response"]["outcome"]
                );
                assert!(ack.contains("MSA|AR") && ack.contains("control id reused"), "{ack}");
                reused += 1;
            } else if translated {
                // Every message the translator accepts is valid FHIR the store accepts.
                assert!(
                    status == "201 Created" || status == "200 OK",
                    "{}: {status} {}",
                    f.display(),
                    e["response"]["outcome"]
                );
                stored += 1;
            } else {
                assert_eq!(status, "400 Bad Request", "{}", f.display());
                assert!(ack.contains("MSA|AR"), "{ack}");
                refused += 1;
            }
        }
    }
    println!("FHIR-Converter corpus over HTTP: {stored} stored, {refused} refused, {reused} reusing a control id");
    assert!(stored >= 10 && reused >= 2, "{stored} stored, {reused} reused");
    // Every message refused for its control id is kept as a dead letter.
    let letters = open_dead_letters(&node).await;
    let kept = letters["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l.to_string().contains("control id reused"))
        .count();
    assert_eq!(kept, reused, "{letters}");
    node.stop().await;

    // The same corpus with a control id of each message's own (as a sender that follows the
    // standard sends it): every message the translator accepts is stored.
    let node = spawn_node().await;
    let mut stored = 0;
    for f in &files {
        let text = pennine::feeds::decode_text(&std::fs::read(f).unwrap());
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        let text: String = text
            .split_inclusive(['\r', '\n'])
            .map(|line| {
                if line.starts_with("MSH") {
                    let mut fields: Vec<String> = line.split('|').map(str::to_string).collect();
                    if let Some(id) = fields.get_mut(9) {
                        *id = format!("{id}-{stem}");
                    }
                    fields.join("|")
                } else {
                    line.to_string()
                }
            })
            .collect();
        let translated = split_messages(&text)
            .first()
            .map(|m| translate(m, NOW).is_ok())
            .unwrap_or(false);
        let reply = post_hl7(&node, &text).await;
        for e in reply["entry"].as_array().unwrap() {
            let status = e["response"]["status"].as_str().unwrap();
            if translated {
                assert!(
                    status == "201 Created" || status == "200 OK",
                    "{}: {status} {}",
                    f.display(),
                    e["response"]["outcome"]
                );
                stored += 1;
            }
        }
    }
    assert!(stored >= 50, "{stored}");
    node.stop().await;
}

#[tokio::test]
async fn cli_translate_send_and_push() {
    let node = spawn_node_with(|c| c.mllp = Some("127.0.0.1:0".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("admit.hl7");
    std::fs::write(&good, format!("{}\n{}", patient_message(1), patient_message(2))).unwrap();
    let bad = dir.path().join("bad.hl7");
    std::fs::write(&bad, patient_message(3).replace("19800101", "1980XX01")).unwrap();
    let bin = env!("CARGO_BIN_EXE_pennine");
    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || std::process::Command::new(bin).args(args).output().unwrap())
            .await
            .unwrap()
    };
    // translate: a Bundle per message on stdout, no server needed.
    let out = run(vec!["translate".into(), "--ndjson".into(), good.display().to_string()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["type"], "transaction");
    let out = run(vec!["translate".into(), bad.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PID-7"));
    // send over MLLP: two accepted, one rejected, exit status 1.
    let out = run(vec![
        "send".into(),
        "--mllp".into(),
        node.mllp.unwrap().to_string(),
        good.display().to_string(),
        bad.display().to_string(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("accepted 2 rejected 1"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(node.total("Patient").await, 2);
    // push over HTTP with client credentials: a folder with an HL7 file and a CSV extract.
    let folder = dir.path().join("upload");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("more.hl7"), patient_message(4)).unwrap();
    std::fs::write(
        folder.join("patients.csv"),
        "Id,BIRTHDATE,DEATHDATE,PREFIX,FIRST,LAST,SUFFIX,MAIDEN,MARITAL,GENDER,ADDRESS,CITY,STATE,COUNTY,ZIP\n\
         csv-1,1990-01-01,,,Ann,Csv,,,,F,,,,,\n",
    )
    .unwrap();
    let out = run(vec![
        "push".into(),
        node.root.clone(),
        folder.display().to_string(),
        "--client-id".into(),
        "vendor".into(),
        "--client-secret".into(),
        super::helpers::TEST_SECRET.into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("accepted 2 rejected 0"), "{stdout}");
    assert_eq!(node.total("Patient").await, 4);
    node.stop().await;
}

/// The SUS admitted-patient-care header, as the `sus-apc` mapping names it.
pub(crate) fn sus_header() -> String {
    let mut h = vec![
        "spell_id",
        "episode_number",
        "last_episode_in_spell",
        "nhs_number",
        "sex",
        "age_on_admission",
        "provider_code",
        "admission_method",
        "treatment_function_code",
        "admission_date",
        "discharge_date",
        "episode_start_date",
        "episode_end_date",
        "discharge_method",
    ]
    .into_iter()
    .map(str::to_string)
    .collect::<Vec<_>>();
    h.extend((1..=20).map(|i| format!("diag_{i:02}")));
    h.join(",")
}

#[tokio::test]
async fn sus_extract_keeps_diagnosis_positions_and_resending_changes_nothing() {
    let node = spawn_node().await;
    let pad = |diags: &[&str]| {
        let mut d: Vec<String> = diags.iter().map(|s| s.to_string()).collect();
        d.resize(20, String::new());
        d.join(",")
    };
    let body = format!(
        "{}\n\
         S1,1,2,9434765870,1,67,RTD,21,300,2025-01-03,2025-01-10,2025-01-03,2025-01-05,,{}\n\
         S1,2,1,9434765870,1,67,RTD,21,340,2025-01-03,2025-01-10,2025-01-05,2025-01-10,4,{}\n\
         S2,1,1,9434765870,1,67,RTD,21,340,2025-02-03,2025-02-04,2025-02-03,2025-02-04,1,{}\n",
        sus_header(),
        pad(&["R06.0"]),
        pad(&["J22", "", "J44.1", "I10X"]),
        pad(&["J44.9-", "J40"]),
    );
    let res = post_csv(&node, "sus-apc", body.clone()).await;
    assert_eq!(res.status(), 200);
    let summary: Value = res.json().await.unwrap();
    assert_eq!(summary["stored"], 3, "{summary}");
    assert_eq!(summary["rejected"], json!([]), "{summary}");
    assert_eq!(node.total("Encounter").await, 3);
    assert_eq!(node.total("Patient").await, 1, "one patient, keyed on the NHS number");
    assert_eq!(node.total("Condition").await, 6, "one Condition per non-empty position");

    // The spell's last episode: positions kept (the empty second one is absent), codes normalised.
    let found = node
        .get_json("Encounter?identifier=https://pennine.nhs.example/fhir/sid/sus-episode|S1/2")
        .await;
    let enc = &found["entry"][0]["resource"];
    let ranks: Vec<u64> = enc["diagnosis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["rank"].as_u64().unwrap())
        .collect();
    assert_eq!(ranks, vec![1, 3, 4]);
    let third = node
        .get_json(enc["diagnosis"][1]["condition"]["reference"].as_str().unwrap())
        .await;
    assert_eq!(third["code"]["coding"][0]["system"], "http://hl7.org/fhir/sid/icd-10");
    assert_eq!(third["code"]["coding"][0]["code"], "J441");
    assert_eq!(third["code"]["text"], "J44.1");
    // The episode's extensions are defined in the regional profile set: nothing is left unchecked.
    let outcome: Value = node
        .client
        .post(format!("{}/Encounter/$validate", node.fhir))
        .header("content-type", "application/fhir+json")
        .body(enc.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!outcome.to_string().contains("is not known to this node"), "{outcome}");
    // ICD-10 codes are searchable in the 4-character form.
    assert_eq!(
        node.total("Condition?code=http://hl7.org/fhir/sid/icd-10|J40X").await,
        1
    );

    // The same extract again: every row matches what is stored, nothing new.
    let enc_ref = format!("Encounter/{}", enc["id"].as_str().unwrap());
    let version = node.get_json(&enc_ref).await["meta"]["versionId"].clone();
    let res = post_csv(&node, "sus-apc", body).await;
    let summary: Value = res.json().await.unwrap();
    assert_eq!(summary["stored"], 3, "{summary}");
    assert_eq!(node.total("Encounter").await, 3);
    assert_eq!(node.total("Condition").await, 6);
    assert_eq!(
        node.get_json(&enc_ref).await["meta"]["versionId"],
        version,
        "no new version"
    );

    // An unreadable code refuses its row with the line and the column; the row is kept.
    let bad = format!(
        "{}\nS3,1,1,9434765870,2,80,RTD,21,300,2025-03-01,2025-03-02,2025-03-01,2025-03-02,1,{}\n",
        sus_header(),
        pad(&["J44.1", "44J"])
    );
    let summary: Value = post_csv(&node, "sus-apc", bad).await.json().await.unwrap();
    assert_eq!(summary["stored"], 0, "{summary}");
    let rejected = &summary["rejected"][0];
    assert_eq!(rejected["line"], 2);
    let why = rejected["outcome"]["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(why.contains("diag_02") && why.contains("44J"), "{why}");
    assert!(rejected["deadLetter"].is_string());
    assert_eq!(
        node.total("Encounter").await,
        3,
        "nothing of the refused row was stored"
    );

    // Rows are written many to a commit, each whole or not at all: a row the profiles
    // refuse (an NHS number failing its check digit) is undone alone; a patient on two
    // rows of one upload gets one version, not two.
    let rows = format!(
        "{}\nS4,1,1,4010232137,1,70,RTD,21,300,2025-04-01,2025-04-03,2025-04-01,2025-04-03,1,{}\nS5,1,1,9434765871,1,70,RTD,21,300,2025-04-01,2025-04-03,2025-04-01,2025-04-03,1,{}\nS6,1,1,4010232137,1,70,RTD,21,300,2025-05-01,2025-05-03,2025-05-01,2025-05-03,1,{}\n",
        sus_header(),
        pad(&["J44.1"]),
        pad(&["J44.1", "I10"]),
        pad(&["J20.9"])
    );
    let summary: Value = post_csv(&node, "sus-apc", rows).await.json().await.unwrap();
    assert_eq!(summary["stored"], 2, "{summary}");
    let rejected = &summary["rejected"][0];
    assert_eq!(rejected["line"], 3, "{summary}");
    assert!(rejected.to_string().contains("NHS"), "{rejected}");
    assert_eq!(node.total("Encounter").await, 5);
    assert_eq!(
        node.total("Condition").await,
        8,
        "the refused row's diagnoses were undone"
    );
    assert_eq!(
        node.total("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765871")
            .await,
        0
    );
    let patient = node
        .get_json("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|4010232137")
        .await;
    assert_eq!(patient["total"], 1);
    assert_eq!(patient["entry"][0]["resource"]["meta"]["versionId"], "1");
    node.stop().await;
}
