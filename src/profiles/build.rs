//! `pennine profiles build`: the regional profiles' differentials
//! (`profiles/source/`) with everything they depend on from UK Core (XML,
//! converted to JSON) and the R4 extension definitions, each StructureDefinition
//! given a snapshot, written as one collection Bundle that the node loads (and
//! the binary carries as its built-in set).

use super::{with_snapshots, ProfileSet};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

const UK_CORE: &str = "https://fhir.hl7.org.uk/";

pub struct Summary {
    pub profiles: usize,
    pub extensions: usize,
    pub value_sets: usize,
    pub code_systems: usize,
    pub unresolved: Vec<String>,
}

/// Builds the set from `sources` (hand-written differentials and the
/// CapabilityStatement) and writes it to `out`.
pub fn build(sources: &Path, uk_core: &Path, r4: &Path, out: &Path) -> anyhow::Result<Summary> {
    let index = UkCoreIndex::read(uk_core)?;
    let mut r4_extensions = read_r4_extensions(&r4.join("extension-definitions.json"))?;
    // R4's own value sets and code systems, for the bindings UK Core keeps from the base.
    for f in ["valuesets.json", "v3-codesystems.json", "v2-tables.json"] {
        for (url, r) in read_r4_extensions(&r4.join(f))? {
            r4_extensions.entry(url).or_insert(r);
        }
    }
    let mut resources: BTreeMap<String, Value> = BTreeMap::new();
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut own = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(sources)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for f in files {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(&f)?).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let key = v
            .get("url")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "{}/{}",
                    v["resourceType"].as_str().unwrap_or("?"),
                    v["id"].as_str().unwrap_or("?")
                )
            });
        queue.extend(references(&v));
        own.push(key.clone());
        resources.insert(key, v);
    }
    let mut seen: HashSet<String> = resources.keys().cloned().collect();
    let mut unresolved = Vec::new();
    while let Some(url) = queue.pop_front() {
        if !seen.insert(url.clone()) {
            continue;
        }
        let found = if let Some(file) = index.files.get(&url) {
            let xml = std::fs::read_to_string(file)?;
            Some(crate::fhir::model::xml_to_json(&xml).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?)
        } else {
            r4_extensions.get(&url).cloned()
        };
        match found {
            Some(mut v) => {
                if let Some(o) = v.as_object_mut() {
                    o.remove("text");
                }
                queue.extend(references(&v));
                resources.insert(url, v);
            }
            None if url.starts_with("http://hl7.org/fhir/StructureDefinition/") && !url.contains('-') => {}
            None => unresolved.push(url),
        }
    }
    let mut list: Vec<(String, Value)> = resources.into_iter().collect();
    with_snapshots(&mut list).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The set must load exactly as a node will load it.
    let set = ProfileSet::from_resources(list.clone(), "build").map_err(|e| anyhow::anyhow!("{e}"))?;
    let count = |t: &str| list.iter().filter(|(_, r)| r["resourceType"] == t).count();
    let extensions = list.iter().filter(|(_, r)| r["type"] == "Extension").count();
    let summary = Summary {
        profiles: count("StructureDefinition") - extensions,
        extensions,
        value_sets: count("ValueSet"),
        code_systems: count("CodeSystem"),
        unresolved: {
            let mut u = unresolved;
            u.extend(set.unresolved.iter().cloned());
            u.sort();
            u.dedup();
            u
        },
    };
    let bundle = json!({
        "resourceType": "Bundle",
        "id": "pennine-regional-profiles",
        "type": "collection",
        "entry": list.iter().map(|(url, r)| json!({"fullUrl": full_url(url, r), "resource": r})).collect::<Vec<_>>(),
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string(&bundle)? + "\n")?;
    Ok(summary)
}

fn full_url(key: &str, r: &Value) -> String {
    if key.contains("://") {
        key.to_string()
    } else {
        format!(
            "urn:pennine:{}:{}",
            r["resourceType"].as_str().unwrap_or("?"),
            r["id"].as_str().unwrap_or("?")
        )
    }
}

/// What a conformance resource depends on: base definitions, extension
/// definitions, bound value sets (required/extensible) and their code systems.
fn references(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let strip = |s: &str| s.split('|').next().unwrap_or(s).to_string();
    if let Some(b) = v.get("baseDefinition").and_then(Value::as_str) {
        out.push(strip(b));
    }
    for key in ["differential", "snapshot"] {
        for e in v
            .pointer(&format!("/{key}/element"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for t in e.get("type").and_then(Value::as_array).into_iter().flatten() {
                if t.get("code").and_then(Value::as_str) == Some("Extension") {
                    for p in t.get("profile").and_then(Value::as_array).into_iter().flatten() {
                        out.extend(p.as_str().map(strip));
                    }
                }
            }
            if let Some(b) = e.get("binding") {
                let strength = b.get("strength").and_then(Value::as_str).unwrap_or_default();
                if matches!(strength, "required" | "extensible") {
                    out.extend(b.get("valueSet").and_then(Value::as_str).map(strip));
                }
            }
        }
    }
    for inc in v
        .pointer("/compose/include")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(s) = inc.get("system").and_then(Value::as_str) {
            if s.starts_with(UK_CORE)
                || s.starts_with("http://terminology.hl7.org/CodeSystem/")
                || s.starts_with("http://hl7.org/fhir/")
            {
                out.push(s.to_string());
            }
        }
        for vs in inc.get("valueSet").and_then(Value::as_array).into_iter().flatten() {
            out.extend(vs.as_str().map(strip));
        }
    }
    for p in v
        .pointer("/rest/0/resource")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.extend(p.get("profile").and_then(Value::as_str).map(strip));
    }
    out.retain(|u| !u.is_empty());
    out
}

/// UK Core's files by the canonical URL they define.
struct UkCoreIndex {
    files: std::collections::HashMap<String, PathBuf>,
}

impl UkCoreIndex {
    fn read(dir: &Path) -> anyhow::Result<UkCoreIndex> {
        let url = regex::Regex::new(r#"<url value="([^"]+)""#).expect("a valid pattern");
        let mut files = std::collections::HashMap::new();
        for sub in ["structuredefinitions", "valuesets", "codesystems"] {
            let d = dir.join(sub);
            for e in std::fs::read_dir(&d).map_err(|e| anyhow::anyhow!("{}: {e}", d.display()))? {
                let p = e?.path();
                if p.extension().is_some_and(|x| x == "xml") {
                    let text = std::fs::read_to_string(&p)?;
                    if let Some(c) = url.captures(&text) {
                        files.insert(c[1].to_string(), p);
                    }
                }
            }
        }
        Ok(UkCoreIndex { files })
    }
}

fn read_r4_extensions(path: &Path) -> anyhow::Result<std::collections::HashMap<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let bundle: Value = serde_json::from_str(&text)?;
    Ok(bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let mut r = e.get("resource")?.clone();
            let url = r.get("url")?.as_str()?.to_string();
            if let Some(o) = r.as_object_mut() {
                o.remove("text");
                o.remove("differential");
                o.remove("mapping");
            }
            Some((url, r))
        })
        .collect())
}
