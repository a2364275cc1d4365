//! Regional profiles: UK Core's examples pass them, each rule kind has a passing
//! and a failing case, the node's policy decides between flagging and refusing,
//! and a broken profile stops the node at start-up.

use super::helpers::{corpus, spawn_node, spawn_node_with};
use pennine::fhir::Severity;
use pennine::profiles::ProfileSet;
use serde_json::{json, Value};

fn built_in() -> &'static ProfileSet {
    static SET: std::sync::OnceLock<ProfileSet> = std::sync::OnceLock::new();
    SET.get_or_init(|| ProfileSet::built_in().expect("the built-in profiles load"))
}

/// Errors of `v` against the base definitions and the profile for its type (or `url`).
fn profile_errors(v: &Value, url: Option<&str>) -> Vec<String> {
    let set = built_in();
    let rtype = v["resourceType"].as_str().unwrap();
    let profile = match url {
        Some(u) => set.get(u).unwrap_or_else(|| panic!("{u} is loaded")),
        None => set
            .enforced(rtype)
            .unwrap_or_else(|| panic!("a regional profile for {rtype}")),
    };
    let mut issues = pennine::validation::validator().validate(v);
    issues.extend(set.check(profile, v));
    issues
        .into_iter()
        .filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
        .map(|i| format!("{} @ {}", i.diagnostics, i.expression.unwrap_or_default()))
        .collect()
}

#[test]
fn the_built_in_set_enforces_a_regional_profile_for_each_agreed_type() {
    let set = built_in();
    for t in [
        "Patient",
        "Encounter",
        "Observation",
        "Condition",
        "Procedure",
        "MedicationRequest",
        "DiagnosticReport",
        "Organization",
        "Practitioner",
    ] {
        let p = set.enforced(t).unwrap_or_else(|| panic!("no regional profile for {t}"));
        assert!(p.url.ends_with(&format!("Pennine-{t}")), "{}", p.url);
        assert!(
            !p.must_support.is_empty(),
            "{t}: must-support elements are what completeness measures"
        );
    }
    println!(
        "built-in profiles: {} definitions; {} invariants not evaluated; {} value sets need a terminology server; {} extension definitions not available",
        set.len(),
        set.skipped.len(),
        set.value_sets_not_expanded().len(),
        set.unresolved.len()
    );
    for s in &set.skipped {
        println!("  invariant {} on {}: {}", s.key, s.on, s.reason);
    }
}

/// UK Core examples that break R4 itself, with the reason (checked by hand).
const UK_CORE_INVALID: [(&str, &str); 2] = [
    (
        "Extension-UKCore-ConditionEpisode-Example.xml",
        "one extension carries two values (valueCode and valueCodeableConcept)",
    ),
    (
        "UKCore-Patient-BabyPatient-Example.xml",
        "NHS number 9912003890 fails the Modulus 11 check (its check digit would be 6)",
    ),
];

#[test]
fn uk_core_examples_pass_the_regional_profiles() {
    let Some(dir) = corpus("uk-core-r4/examples") else {
        return;
    };
    let set = built_in();
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let xml = std::fs::read_to_string(&f).unwrap();
        let converted = pennine::fhir::model::xml_to_json(&xml);
        if let Some((_, why)) = UK_CORE_INVALID.iter().find(|(n, _)| *n == name) {
            let refused = match &converted {
                Err(_) => true,
                Ok(v) => !profile_errors(v, None).is_empty(),
            };
            assert!(refused, "{name} should be refused: {why}");
            println!("  known invalid upstream, refused: {name} ({why})");
            continue;
        }
        let v = match converted {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: not converted: {e}", f.display()));
                continue;
            }
        };
        let rtype = v["resourceType"].as_str().unwrap_or_default().to_string();
        if set.enforced(&rtype).is_none() {
            continue;
        }
        checked += 1;
        let errs = profile_errors(&v, None);
        if !errs.is_empty() {
            failures.push(format!("{}: {}", f.display(), errs[..errs.len().min(3)].join("; ")));
        }
    }
    println!(
        "UK Core examples against the regional profiles: {checked} checked, {} with errors",
        failures.len()
    );
    for f in &failures {
        println!("  {f}");
    }
    assert!(
        checked >= 40,
        "only {checked} UK Core examples of the agreed types were found"
    );
    assert!(
        failures.is_empty(),
        "{} UK Core examples fail (listed above)",
        failures.len()
    );
}

const TEST_BASE: &str = "https://example.test";

/// A small profile set with one rule of each kind, written as a node's profile folder.
fn write_test_profiles(dir: &std::path::Path) {
    let sd = |id: &str, rtype: &str, base: &str, elements: Value, extra: Value| {
        let mut v = json!({"resourceType": "StructureDefinition", "id": id,
            "url": format!("{TEST_BASE}/StructureDefinition/{id}"), "name": id.replace('-', ""),
            "status": "active", "kind": if rtype == "Extension" { "complex-type" } else { "resource" },
            "abstract": false, "type": rtype, "baseDefinition": base, "derivation": "constraint",
            "differential": {"element": elements}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let patient = sd(
        "Test-Patient",
        "Patient",
        "http://hl7.org/fhir/StructureDefinition/Patient",
        json!([
            {"id": "Patient", "path": "Patient", "constraint": [{"key": "tst-1", "severity": "error",
                "human": "A patient has a name", "expression": "name.exists()"}]},
            {"id": "Patient.extension", "path": "Patient.extension",
                "slicing": {"discriminator": [{"type": "value", "path": "url"}], "rules": "open"}},
            {"id": "Patient.extension:ethnic", "path": "Patient.extension", "sliceName": "ethnic", "max": "1",
                "type": [{"code": "Extension", "profile": [format!("{TEST_BASE}/StructureDefinition/Test-Ethnic")]}]},
            {"id": "Patient.identifier", "path": "Patient.identifier",
                "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": "open"}},
            {"id": "Patient.identifier:nhs", "path": "Patient.identifier", "sliceName": "nhs", "min": 1, "max": "1"},
            {"id": "Patient.identifier:nhs.use", "path": "Patient.identifier.use", "fixedCode": "official"},
            {"id": "Patient.identifier:nhs.system", "path": "Patient.identifier.system", "min": 1,
                "fixedUri": "https://fhir.nhs.uk/Id/nhs-number"},
            {"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1, "mustSupport": true},
            {"id": "Patient.maritalStatus", "path": "Patient.maritalStatus",
                "patternCodeableConcept": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"}]},
                "binding": {"strength": "extensible", "valueSet": format!("{TEST_BASE}/ValueSet/Test-Marital")}},
            {"id": "Patient.language", "path": "Patient.language",
                "binding": {"strength": "required", "valueSet": format!("{TEST_BASE}/ValueSet/Test-Languages")}}
        ]),
        json!({}),
    );
    let ethnic = sd(
        "Test-Ethnic",
        "Extension",
        "http://hl7.org/fhir/StructureDefinition/Extension",
        json!([
            {"id": "Extension.url", "path": "Extension.url", "fixedUri": format!("{TEST_BASE}/StructureDefinition/Test-Ethnic")},
            {"id": "Extension.value[x]", "path": "Extension.value[x]", "type": [{"code": "CodeableConcept"}]}
        ]),
        json!({"context": [{"type": "element", "expression": "Patient"}]}),
    );
    let vs = |id: &str, system: &str, codes: &[&str]| {
        json!({"resourceType": "ValueSet", "id": id, "url": format!("{TEST_BASE}/ValueSet/{id}"), "status": "active",
            "compose": {"include": [{"system": system, "concept": codes.iter().map(|c| json!({"code": c})).collect::<Vec<_>>()}]}})
    };
    let cap = json!({"resourceType": "CapabilityStatement", "id": "test", "status": "active", "date": "2026-11-29",
        "kind": "requirements", "fhirVersion": "4.0.1", "format": ["json"], "description": "Test profiles",
        "rest": [{"mode": "server", "resource": [{"type": "Patient",
            "profile": format!("{TEST_BASE}/StructureDefinition/Test-Patient")}]}]});
    for (name, v) in [
        ("Test-Patient.json", patient),
        ("Test-Ethnic.json", ethnic),
        (
            "Test-Languages.json",
            vs("Test-Languages", "urn:ietf:bcp:47", &["en", "cy"]),
        ),
        (
            "Test-Marital.json",
            vs(
                "Test-Marital",
                "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                &["M", "S"],
            ),
        ),
        ("CapabilityStatement.json", cap),
    ] {
        std::fs::write(dir.join(name), serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
}

fn good_patient() -> Value {
    json!({"resourceType": "Patient",
        "extension": [{"url": format!("{TEST_BASE}/StructureDefinition/Test-Ethnic"), "valueCodeableConcept": {"text": "Welsh"}}],
        "identifier": [{"use": "official", "system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}],
        "name": [{"family": "Ng"}], "birthDate": "1970-01-01", "language": "cy",
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]}})
}

/// Each rule kind: (what, how to break the good patient, the expression reported).
fn defects() -> Vec<(&'static str, Value, &'static str)> {
    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = good_patient();
        f(&mut p);
        p
    };
    vec![
        (
            "slice minimum",
            with(&|p| p["identifier"] = json!([{"system": "urn:oid:1.2.3", "value": "x"}])),
            "Patient.identifier",
        ),
        (
            "slice maximum",
            with(&|p| {
                p["identifier"] = json!([
                    {"use": "official", "system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"},
                    {"use": "official", "system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765870"}])
            }),
            "Patient.identifier",
        ),
        (
            "fixed value",
            with(&|p| p["identifier"][0]["use"] = json!("usual")),
            "Patient.identifier[0].use",
        ),
        (
            "tightened cardinality",
            with(&|p| {
                p.as_object_mut().unwrap().remove("birthDate");
            }),
            "Patient.birthDate",
        ),
        (
            "pattern",
            with(&|p| p["maritalStatus"] = json!({"coding": [{"system": "urn:oid:9.9", "code": "M"}]})),
            "Patient.maritalStatus",
        ),
        (
            "required binding",
            with(&|p| p["language"] = json!("fr")),
            "Patient.language",
        ),
        (
            "extension definition",
            with(&|p| {
                p["extension"][0] =
                    json!({"url": format!("{TEST_BASE}/StructureDefinition/Test-Ethnic"), "valueString": "Welsh"})
            }),
            "Patient.extension[0].valueString",
        ),
        (
            "invariant",
            with(&|p| {
                p.as_object_mut().unwrap().remove("name");
            }),
            "Patient",
        ),
    ]
}

fn expressions(oo: &Value, severity: &str) -> Vec<String> {
    oo["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["severity"] == severity)
        .filter_map(|i| i["expression"][0].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn each_rule_kind_rejects_under_the_reject_policy_and_passes_when_met() {
    let profiles = tempfile::tempdir().unwrap();
    write_test_profiles(profiles.path());
    let dir = profiles.path().to_path_buf();
    let node = spawn_node_with(move |c| {
        c.service.profiles_dir = Some(dir);
        c.service.profile_policy.default = pennine::node::PolicyMode::Reject;
    })
    .await;
    let ok = node.post("Patient", &good_patient()).await;
    let status = ok.status();
    let header = ok
        .headers()
        .get("x-pennine-validation")
        .map(|h| h.to_str().unwrap().to_string());
    let body: Value = ok.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(header, None, "a resource that meets every rule has nothing to report");
    for (what, patient, at) in defects() {
        let r = node.post("Patient", &patient).await;
        let status = r.status();
        let oo: Value = r.json().await.unwrap();
        assert_eq!(status, 422, "{what}: {oo}");
        let errs = expressions(&oo, "error");
        assert!(
            errs.iter().any(|e| e == at),
            "{what}: expected an error at {at}, got {oo}"
        );
    }
    // Every issue at once: two defects, two errors.
    let mut both = good_patient();
    both["language"] = json!("fr");
    both.as_object_mut().unwrap().remove("birthDate");
    let oo: Value = node.post("Patient", &both).await.json().await.unwrap();
    let errs = expressions(&oo, "error");
    assert!(
        errs.contains(&"Patient.language".to_string()) && errs.contains(&"Patient.birthDate".to_string()),
        "{oo}"
    );
    // Warnings never reject: an extensible binding missed and an unknown extension.
    let mut warned = good_patient();
    warned["maritalStatus"]["coding"][0]["code"] = json!("W");
    warned["extension"]
        .as_array_mut()
        .unwrap()
        .push(json!({"url": "https://elsewhere.test/ext", "valueString": "x"}));
    let r = node
        .client
        .post(node.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=OperationOutcome")
        .body(warned.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("x-pennine-validation"));
    let oo: Value = r.json().await.unwrap();
    let warnings = expressions(&oo, "warning");
    assert!(warnings.contains(&"Patient.maritalStatus".to_string()), "{oo}");
    assert!(warnings.contains(&"Patient.extension[1]".to_string()), "{oo}");
    // $validate names the profile's rules too, and takes a profile by URL.
    let r = node.post("Patient/$validate", &defects()[5].1).await;
    let oo: Value = r.json().await.unwrap();
    assert!(
        expressions(&oo, "error").contains(&"Patient.language".to_string()),
        "{oo}"
    );
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": defects()[5].1},
        {"name": "profile", "valueCanonical": "http://hl7.org/fhir/StructureDefinition/Patient"}]});
    let oo: Value = node.post("Patient/$validate", &params).await.json().await.unwrap();
    assert!(
        expressions(&oo, "error").is_empty(),
        "against the base alone the language is fine: {oo}"
    );
    node.stop().await;
}

#[tokio::test]
async fn the_default_policy_accepts_and_flags_and_reports_in_the_response() {
    let profiles = tempfile::tempdir().unwrap();
    write_test_profiles(profiles.path());
    let dir = profiles.path().to_path_buf();
    let node = spawn_node_with(move |c| c.service.profiles_dir = Some(dir)).await;
    let (_, missing_nhs, _) = defects().remove(0);
    let r = node.post("Patient", &missing_nhs).await;
    assert_eq!(r.status(), 201);
    let header = r.headers()["x-pennine-validation"].to_str().unwrap().to_string();
    assert!(header.starts_with("1 flagged profile error"), "{header}");
    let r = node
        .client
        .post(node.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=OperationOutcome")
        .body(missing_nhs.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let oo: Value = r.json().await.unwrap();
    assert!(
        expressions(&oo, "warning").contains(&"Patient.identifier".to_string()),
        "{oo}"
    );
    assert!(oo.to_string().contains("flagged"), "{oo}");
    // In a batch, each entry's response carries its outcome.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": missing_nhs, "request": {"method": "POST", "url": "Patient"}},
        {"resource": good_patient(), "request": {"method": "POST", "url": "Patient"}}]});
    let reply: Value = node.post("", &batch).await.json().await.unwrap();
    assert_eq!(reply["entry"][0]["response"]["status"], "201 Created", "{reply}");
    assert!(
        expressions(&reply["entry"][0]["response"]["outcome"], "warning").contains(&"Patient.identifier".to_string()),
        "{reply}"
    );
    assert!(reply["entry"][1]["response"].get("outcome").is_none(), "{reply}");
    // An HL7 v2 sender hears of flagged issues too: ERR segments after the AA.
    let msg =
        "MSH|^~\\&|PAS|RTD|PENNINE|NENC|20240101120000||ADT^A04|F1|P|2.5\rPID|1||M1^^^RTD^MR||Doe^Jo||19800101|F\r";
    let r = node
        .client
        .post(format!("{}/feeds/hl7v2", node.root))
        .header("content-type", "x-application/hl7-v2+er7")
        .body(msg)
        .send()
        .await
        .unwrap();
    let reply: Value = r.json().await.unwrap();
    let ack = reply["entry"][0]["response"]["extension"][0]["valueString"]
        .as_str()
        .unwrap();
    assert!(ack.contains("MSA|AA|F1"), "{ack}");
    assert!(
        ack.split('\r')
            .any(|seg| seg.starts_with("ERR|") && seg.contains("flagged") && seg.contains("|W|")),
        "{ack}"
    );
    // A rule for one profile overrides the default.
    node.stop().await;
    let profiles2 = tempfile::tempdir().unwrap();
    write_test_profiles(profiles2.path());
    let dir = profiles2.path().to_path_buf();
    let strict = spawn_node_with(move |c| {
        c.service.profiles_dir = Some(dir);
        c.service
            .profile_policy
            .rules
            .insert("TestPatient".into(), pennine::node::PolicyMode::Reject);
    })
    .await;
    assert_eq!(strict.post("Patient", &defects()[0].1).await.status(), 422);
    strict.stop().await;
}

#[tokio::test]
async fn a_broken_profile_stops_the_node_and_says_which_and_why() {
    type Breaks = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, Breaks, &str)> = vec![
        (
            "a path its base does not have",
            Box::new(|d: &std::path::Path| {
                let p = d.join("Test-Patient.json");
                let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                v["differential"]["element"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"id": "Patient.nickname", "path": "Patient.nickname", "min": 1}));
                std::fs::write(&p, v.to_string()).unwrap();
            }),
            "Patient.nickname",
        ),
        (
            "an invariant that is not FHIRPath",
            Box::new(|d: &std::path::Path| {
                let p = d.join("Test-Patient.json");
                let text = std::fs::read_to_string(&p)
                    .unwrap()
                    .replace("name.exists()", "name.exists(");
                std::fs::write(&p, text).unwrap();
            }),
            "tst-1",
        ),
        (
            "a profile the CapabilityStatement names but nobody defines",
            Box::new(|d: &std::path::Path| std::fs::remove_file(d.join("Test-Patient.json")).unwrap()),
            "not loaded",
        ),
        (
            "a file that is not JSON",
            Box::new(|d: &std::path::Path| std::fs::write(d.join("broken.json"), "{ nope").unwrap()),
            "broken.json",
        ),
    ];
    for (what, breaks, said) in cases {
        let profiles = tempfile::tempdir().unwrap();
        write_test_profiles(profiles.path());
        breaks(profiles.path());
        let data = tempfile::tempdir().unwrap();
        let mut config = pennine::config::NodeConfig::local("nenc", data.path());
        config.service.profiles_dir = Some(profiles.path().to_path_buf());
        match pennine::startup::start_node(config).await {
            Ok(_) => panic!("{what}: the node started"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(said), "{what}: {msg}");
            }
        }
    }
    // The binary says it too, and exits non-zero.
    let profiles = tempfile::tempdir().unwrap();
    write_test_profiles(profiles.path());
    std::fs::write(profiles.path().join("broken.json"), "{ nope").unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pennine"))
        .args(["node", "--region", "nenc", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .arg("--profiles")
        .arg(profiles.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.json") && err.contains("not JSON"), "{err}");
}

#[test]
fn profiles_check_describes_a_folder_or_says_why_it_is_broken() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pennine"))
        .args(["profiles", "check"])
        .arg(root.join("profiles/regional"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for t in [
        "Patient",
        "Encounter",
        "Observation",
        "MedicationRequest",
        "Practitioner",
    ] {
        assert!(text.contains(&format!("StructureDefinition/Pennine-{t}")), "{text}");
    }
    let broken = tempfile::tempdir().unwrap();
    write_test_profiles(broken.path());
    std::fs::remove_file(broken.path().join("Test-Ethnic.json")).unwrap();
    std::fs::remove_file(broken.path().join("Test-Languages.json")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pennine"))
        .args(["profiles", "check"])
        .arg(broken.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // Bindings to a value set that is not there are listed, not fatal; an extension definition
    // that is missing is listed too.
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Test-Languages is not loaded"), "{text}");
    assert!(text.contains("Test-Ethnic is not loaded"), "{text}");
}

#[test]
fn the_checked_in_profile_set_is_what_the_build_makes() {
    let (Some(uk), Some(r4)) = (corpus("uk-core-r4"), corpus("fhir-r4-definitions")) else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("set.json");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    pennine::profiles::build::build(&root.join("profiles/source"), &uk, &r4, &path).unwrap();
    let built = std::fs::read_to_string(&path).unwrap();
    let shipped = std::fs::read_to_string(root.join("profiles/regional/pennine-regional.json")).unwrap();
    assert!(
        built == shipped,
        "profiles/regional/pennine-regional.json is stale: run `pennine profiles build`"
    );
}

#[tokio::test]
async fn the_built_in_profiles_accept_and_flag_the_synthea_corpus() {
    let Some(dir) = corpus("synthea-r4/bundles") else {
        return;
    };
    let node = spawn_node().await;
    let mut flagged = 0;
    for f in super::helpers::json_files(&dir).into_iter().take(5) {
        let text = std::fs::read_to_string(&f).unwrap();
        let r = node
            .client
            .post(&node.fhir)
            .header("content-type", "application/fhir+json")
            .body(text)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let reply: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{}: {reply}", f.display());
        for e in reply["entry"].as_array().unwrap() {
            assert!(e["response"]["status"].as_str().unwrap().starts_with("20"), "{e}");
            if !expressions(&e["response"]["outcome"], "warning").is_empty() {
                flagged += 1;
            }
        }
    }
    // Synthea patients carry no NHS number and US extensions: the regional profiles flag them.
    assert!(flagged > 0, "nothing was flagged");
    println!("Synthea (5 bundles): every entry stored; {flagged} entries carry flagged issues");
    node.stop().await;
}

#[test]
fn a_base_binding_a_profile_inherits_is_reported_once() {
    let v = json!({"resourceType": "Patient", "gender": "m"});
    let errs = profile_errors(&v, None);
    let at_gender = errs.iter().filter(|e| e.ends_with("@ Patient.gender")).count();
    assert_eq!(at_gender, 1, "{errs:?}");
}
