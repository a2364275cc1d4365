//! The regional profiles a node enforces: StructureDefinitions derived from UK
//! Core, the extension definitions and value sets they use, and the
//! CapabilityStatement that says which profile applies to which resource type.
//!
//! Loaded once at start-up, from the folder the node is given or from the copy
//! of `profiles/regional/` compiled into the binary. Anything broken (JSON that
//! does not parse, a differential that does not fit its base, an invariant that
//! is not FHIRPath, a profile the CapabilityStatement names but nobody defines)
//! stops the load with the file and the reason. Profiles without a snapshot get
//! one (`snapshot.rs`); `check.rs` validates resources against them.

pub mod build;
mod check;

use crate::validation::invariants::{self, Invariant, RawInvariant, Skipped};
use crate::validation::snapshot;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;

pub use check::Finding;

/// The compiled-in copy of `profiles/regional/` (one FHIR collection Bundle).
const BUILT_IN: &str = include_str!("../../profiles/regional/pennine-regional.json");

/// A broken conformance resource: which, and why.
#[derive(Debug, thiserror::Error)]
#[error("profile {file}: {reason}")]
pub struct ProfileError {
    pub file: String,
    pub reason: String,
}

fn broken(file: &str, reason: impl Into<String>) -> ProfileError {
    ProfileError {
        file: file.to_string(),
        reason: reason.into(),
    }
}

/// A value set's codes by system, or why they are not known.
#[derive(Debug)]
enum Expansion {
    Codes(HashMap<String, HashSet<String>>),
    /// Needs a terminology server (SNOMED CT filters, external code systems).
    NotExpanded,
}

#[derive(Debug, Clone)]
pub(crate) struct Slicing {
    /// (type, path): only `value` and `pattern` discriminators are evaluated.
    discriminators: Vec<(String, String)>,
    closed: bool,
}

#[derive(Debug)]
pub(crate) struct Binding {
    strength: String,
    value_set: String,
}

/// One element of a profile's snapshot, as the checker needs it.
#[derive(Debug)]
pub(crate) struct PElement {
    /// The path without the type (`identifier.system`).
    path: String,
    /// The element's own name, without `[x]`.
    name: String,
    choice: bool,
    slice_name: Option<String>,
    min: u32,
    max: Option<u32>,
    base_min: u32,
    base_max: Option<u32>,
    types: Vec<String>,
    fixed: Option<Value>,
    pattern: Option<Value>,
    binding: Option<Binding>,
    invariants: Vec<Invariant>,
    slicing: Option<Slicing>,
    /// For an extension slice: the extension's definition.
    ext_profile: Option<String>,
    must_support: bool,
    children: Vec<usize>,
    slices: Vec<usize>,
}

/// A compiled profile (a resource profile or an extension definition).
#[derive(Debug)]
pub struct Profile {
    pub url: String,
    pub name: String,
    pub type_name: String,
    pub(crate) elements: Vec<PElement>,
    /// Top-level elements marked must-support (for completeness figures).
    pub must_support: Vec<String>,
}

/// Every conformance resource a node loaded.
#[derive(Debug)]
pub struct ProfileSet {
    profiles: HashMap<String, Profile>,
    /// Resource type → the profile every resource of that type is checked against.
    enforced: HashMap<String, String>,
    value_sets: HashMap<String, Expansion>,
    /// Invariants not evaluated, and why.
    pub skipped: Vec<Skipped>,
    /// Extension definitions the profiles name but that are not loaded.
    pub unresolved: Vec<String>,
    /// Value sets bound (required or extensible) but not loaded: those bindings are not checked.
    pub value_sets_missing: Vec<String>,
    /// Where the set came from (a folder, or "built-in").
    pub origin: String,
}

impl ProfileSet {
    /// The profiles compiled into the binary.
    pub fn built_in() -> Result<ProfileSet, ProfileError> {
        let bundle: Value = serde_json::from_str(BUILT_IN).map_err(|e| broken("built-in", e.to_string()))?;
        let resources = bundle
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("resource").cloned())
            .map(|r| (resource_label(&r), r))
            .collect();
        ProfileSet::from_resources(resources, "built-in")
    }

    /// Every `*.json` file of `dir` (a resource, or a Bundle of them).
    pub fn load_dir(dir: &Path) -> Result<ProfileSet, ProfileError> {
        let shown = dir.display().to_string();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| broken(&shown, format!("cannot read the folder: {e}")))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(broken(&shown, "the folder holds no .json conformance resources"));
        }
        let mut resources = Vec::new();
        for f in files {
            let name = f.display().to_string();
            let text = std::fs::read_to_string(&f).map_err(|e| broken(&name, e.to_string()))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| broken(&name, format!("not JSON: {e}")))?;
            if v.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
                for r in v.get("entry").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(r) = r.get("resource") {
                        resources.push((format!("{name} ({})", resource_label(r)), r.clone()));
                    }
                }
            } else {
                resources.push((name, v));
            }
        }
        ProfileSet::from_resources(resources, &shown)
    }

    pub fn from_resources(resources: Vec<(String, Value)>, origin: &str) -> Result<ProfileSet, ProfileError> {
        let mut sds: HashMap<String, (String, Value)> = HashMap::new();
        let mut value_sets = Vec::new();
        let mut code_systems: HashMap<String, Value> = HashMap::new();
        let mut capability = None;
        for (file, r) in resources {
            let structure = crate::validation::validator().validate(&r);
            if let Some(e) = structure.iter().find(|i| i.severity == crate::fhir::Severity::Error) {
                return Err(broken(
                    &file,
                    format!(
                        "not valid FHIR R4: {} at {}",
                        e.diagnostics,
                        e.expression.clone().unwrap_or_default()
                    ),
                ));
            }
            let url = r.get("url").and_then(Value::as_str).map(str::to_string);
            match r.get("resourceType").and_then(Value::as_str) {
                Some("StructureDefinition") => {
                    let url = url.ok_or_else(|| broken(&file, "a StructureDefinition needs a url"))?;
                    if sds.insert(url.clone(), (file.clone(), r)).is_some() {
                        return Err(broken(&file, format!("{url} is defined twice")));
                    }
                }
                Some("ValueSet") => value_sets.push((file, r)),
                Some("CodeSystem") => {
                    if let Some(u) = url {
                        code_systems.insert(u, r);
                    }
                }
                Some("CapabilityStatement") => capability = Some((file, r)),
                other => {
                    return Err(broken(
                        &file,
                        format!("{} is not a conformance resource", other.unwrap_or("?")),
                    ))
                }
            }
        }
        let mut set = ProfileSet {
            profiles: HashMap::new(),
            enforced: HashMap::new(),
            value_sets: HashMap::new(),
            skipped: Vec::new(),
            unresolved: Vec::new(),
            value_sets_missing: Vec::new(),
            origin: origin.to_string(),
        };
        let vs_by_url: HashMap<String, Value> = value_sets
            .iter()
            .filter_map(|(_, v)| Some((v.get("url")?.as_str()?.to_string(), v.clone())))
            .collect();
        for (file, vs) in &value_sets {
            let url = vs
                .get("url")
                .and_then(Value::as_str)
                .ok_or_else(|| broken(file, "a ValueSet needs a url"))?;
            let e = expand(vs, &vs_by_url, &code_systems, 0);
            set.value_sets.insert(url.to_string(), e);
        }
        // Snapshots, bases first.
        let urls: Vec<String> = sds.keys().cloned().collect();
        let mut done: HashMap<String, Vec<Value>> = HashMap::new();
        for url in &urls {
            snapshot_of(url, &sds, &mut done, 0)?;
        }
        for url in &urls {
            let (file, sd) = &sds[url];
            let profile = set.compile(sd, &done[url]).map_err(|e| broken(file, e))?;
            set.profiles.insert(url.clone(), profile);
        }
        let mut unresolved: HashSet<String> = HashSet::new();
        for p in set.profiles.values() {
            for e in &p.elements {
                if let Some(x) = &e.ext_profile {
                    if !set.profiles.contains_key(x) {
                        unresolved.insert(x.clone());
                    }
                }
            }
        }
        set.unresolved = unresolved.into_iter().collect();
        set.unresolved.sort();
        if let Some((file, cs)) = capability {
            for r in cs
                .pointer("/rest/0/resource")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (Some(t), Some(p)) = (
                    r.get("type").and_then(Value::as_str),
                    r.get("profile").and_then(Value::as_str),
                ) else {
                    continue;
                };
                let p = p.split('|').next().unwrap_or(p);
                match set.profiles.get(p) {
                    Some(found) if found.type_name == t => {}
                    Some(found) => {
                        return Err(broken(
                            &file,
                            format!("{t} is given profile {p}, which constrains {}", found.type_name),
                        ))
                    }
                    None => return Err(broken(&file, format!("{t} is given profile {p}, which is not loaded"))),
                }
                set.enforced.insert(t.to_string(), p.to_string());
            }
        }
        Ok(set)
    }

    /// The profile enforced on every resource of type `rtype`, if any.
    pub fn enforced(&self, rtype: &str) -> Option<&Profile> {
        self.profiles.get(self.enforced.get(rtype)?)
    }

    /// The profiles enforced per resource type.
    pub fn enforced_all(&self) -> impl Iterator<Item = (&str, &Profile)> {
        self.enforced
            .iter()
            .filter_map(|(t, u)| Some((t.as_str(), self.profiles.get(u)?)))
    }

    pub fn get(&self, url: &str) -> Option<&Profile> {
        self.profiles.get(url.split('|').next().unwrap_or(url))
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// Value sets that need a terminology server, so bindings to them are not checked.
    pub fn value_sets_not_expanded(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .value_sets
            .iter()
            .filter(|(_, e)| matches!(e, Expansion::NotExpanded))
            .map(|(u, _)| u.as_str())
            .collect();
        v.sort();
        v
    }

    /// Whether the code is in the value set: `None` when that cannot be told here.
    fn in_value_set(&self, url: &str, system: Option<&str>, code: &str) -> Option<bool> {
        let url = url.split('|').next().unwrap_or(url);
        match self.value_sets.get(url) {
            Some(Expansion::Codes(systems)) => Some(match system {
                Some(s) => systems.get(s).is_some_and(|c| c.contains(code)),
                None => systems.values().any(|c| c.contains(code)),
            }),
            Some(Expansion::NotExpanded) => None,
            None => crate::validation::validator().in_value_set(url, system, code),
        }
    }

    fn compile(&mut self, sd: &Value, snapshot: &[Value]) -> Result<Profile, String> {
        let url = sd.get("url").and_then(Value::as_str).unwrap_or_default().to_string();
        let type_name = sd.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
        let name = sd.get("name").and_then(Value::as_str).unwrap_or(&type_name).to_string();
        let mut elements: Vec<PElement> = Vec::with_capacity(snapshot.len());
        let mut by_id: HashMap<String, usize> = HashMap::new();
        for e in snapshot {
            let id = e.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            let path = e.get("path").and_then(Value::as_str).unwrap_or_default();
            let rel = path.split_once('.').map(|(_, r)| r).unwrap_or("").to_string();
            let last = rel.rsplit('.').next().unwrap_or("");
            let choice = last.ends_with("[x]");
            let max_of = |v: Option<&Value>| v.and_then(Value::as_str).and_then(|m| m.parse::<u32>().ok());
            let mut invariants_here = Vec::new();
            for c in e.get("constraint").and_then(Value::as_array).into_iter().flatten() {
                let source = c.get("source").and_then(Value::as_str).unwrap_or(&url);
                // The base's invariants are the base validator's.
                if source.starts_with("http://hl7.org/fhir/StructureDefinition/") && !url.starts_with(source) {
                    continue;
                }
                let raw: RawInvariant = serde_json::from_value(c.clone()).map_err(|err| {
                    format!(
                        "element {id}: constraint {}: {err}",
                        c.get("key").unwrap_or(&Value::Null)
                    )
                })?;
                match invariants::compile(&raw, &id) {
                    Ok(i) => invariants_here.push(i),
                    Err(s) if s.reason.starts_with("not parsed") => {
                        return Err(format!("element {id}: invariant {}: {}", raw.key, s.reason))
                    }
                    Err(s) => self.skipped.push(s),
                }
            }
            let prefixed = |prefix: &str| {
                e.as_object().and_then(|o| {
                    o.iter()
                        .find(|(k, _)| k.starts_with(prefix) && k.len() > prefix.len())
                        .map(|(_, v)| v.clone())
                })
            };
            let types: Vec<String> = snapshot::type_codes(e).into_iter().map(str::to_string).collect();
            let ext_profile = (types == ["Extension"])
                .then(|| {
                    e.pointer("/type/0/profile/0")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .flatten();
            let slicing = e.get("slicing").map(|s| Slicing {
                discriminators: s
                    .get("discriminator")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        (
                            d.get("type").and_then(Value::as_str).unwrap_or_default().to_string(),
                            d.get("path").and_then(Value::as_str).unwrap_or_default().to_string(),
                        )
                    })
                    .collect(),
                closed: s.get("rules").and_then(Value::as_str) == Some("closed"),
            });
            let binding = e.get("binding").and_then(|b| {
                let strength = b.get("strength")?.as_str()?;
                let vs = b.get("valueSet")?.as_str()?;
                let vs = vs.split('|').next().unwrap_or(vs);
                // The base's own required binding is the base validator's to judge.
                let plain = snapshot::strip_slices(&rel).replace("[x]", "");
                let inherited = strength == "required"
                    && crate::validation::validator().base_required_binding(&type_name, &plain) == Some(vs);
                (matches!(strength, "required" | "extensible") && !inherited).then(|| Binding {
                    strength: strength.to_string(),
                    value_set: vs.to_string(),
                })
            });
            if let Some(b) = &binding {
                let known = self.value_sets.contains_key(&b.value_set)
                    || crate::validation::validator()
                        .in_value_set(&b.value_set, None, "")
                        .is_some();
                if !known && !self.value_sets_missing.contains(&b.value_set) {
                    self.value_sets_missing.push(b.value_set.clone());
                }
            }
            let idx = elements.len();
            let min = e.get("min").and_then(Value::as_u64).unwrap_or(0) as u32;
            let max = max_of(e.get("max"));
            elements.push(PElement {
                path: rel.clone(),
                name: last.trim_end_matches("[x]").to_string(),
                choice,
                slice_name: e.get("sliceName").and_then(Value::as_str).map(str::to_string),
                min,
                max,
                base_min: e
                    .pointer("/base/min")
                    .and_then(Value::as_u64)
                    .map(|m| m as u32)
                    .unwrap_or(min),
                base_max: if e.pointer("/base/max").is_some() {
                    max_of(e.pointer("/base/max"))
                } else {
                    max
                },
                types,
                fixed: prefixed("fixed"),
                pattern: prefixed("pattern"),
                binding,
                invariants: invariants_here,
                slicing,
                ext_profile,
                must_support: e.get("mustSupport").and_then(Value::as_bool) == Some(true),
                children: Vec::new(),
                slices: Vec::new(),
            });
            if idx > 0 {
                let (parent, last_seg) = id.rsplit_once('.').unwrap_or(("", &id));
                if let Some((name, _slice)) = last_seg.split_once(':') {
                    let sliced = format!("{parent}.{name}");
                    let s = *by_id
                        .get(&sliced)
                        .ok_or_else(|| format!("slice {id} comes before the element it slices"))?;
                    elements[s].slices.push(idx);
                } else if let Some(p) = by_id.get(parent) {
                    let p = *p;
                    elements[p].children.push(idx);
                } else {
                    return Err(format!("element {id} comes before its parent {parent}"));
                }
            }
            by_id.insert(id, idx);
        }
        if elements.is_empty() {
            return Err("the snapshot is empty".into());
        }
        let must_support = elements[0]
            .children
            .iter()
            .map(|&c| &elements[c])
            .filter(|e| e.must_support)
            .map(|e| e.path.clone())
            .collect();
        Ok(Profile {
            url,
            name,
            type_name,
            elements,
            must_support,
        })
    }
}

fn resource_label(r: &Value) -> String {
    format!(
        "{}/{}",
        r.get("resourceType").and_then(Value::as_str).unwrap_or("?"),
        r.get("id").and_then(Value::as_str).unwrap_or("?")
    )
}

/// Gives every StructureDefinition among `resources` a snapshot (generated
/// where it has only a differential), as `pennine profiles build` writes them.
pub fn with_snapshots(resources: &mut [(String, Value)]) -> Result<(), ProfileError> {
    let sds: HashMap<String, (String, Value)> = resources
        .iter()
        .filter(|(_, r)| r.get("resourceType").and_then(Value::as_str) == Some("StructureDefinition"))
        .filter_map(|(f, r)| Some((r.get("url")?.as_str()?.to_string(), (f.clone(), r.clone()))))
        .collect();
    let mut done = HashMap::new();
    for url in sds.keys() {
        snapshot_of(url, &sds, &mut done, 0)?;
    }
    for (_, r) in resources.iter_mut() {
        let Some(url) = r.get("url").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        if let Some(snap) = done.remove(&url) {
            if r.get("snapshot").is_none() {
                r["snapshot"] = serde_json::json!({ "element": snap });
            }
        }
    }
    Ok(())
}

/// The snapshot of `url`: its own, or generated from its base's (bases first).
fn snapshot_of(
    url: &str,
    sds: &HashMap<String, (String, Value)>,
    done: &mut HashMap<String, Vec<Value>>,
    depth: usize,
) -> Result<(), ProfileError> {
    if done.contains_key(url) {
        return Ok(());
    }
    let (file, sd) = &sds[url];
    if depth > 16 {
        return Err(broken(file, "its base definitions form a cycle"));
    }
    if let Some(s) = sd.pointer("/snapshot/element").and_then(Value::as_array) {
        done.insert(url.to_string(), s.clone());
        return Ok(());
    }
    if sd.get("derivation").and_then(Value::as_str) != Some("constraint") {
        return Err(broken(
            file,
            "only constraints on R4 types (derivation = constraint) can be loaded",
        ));
    }
    let base_url = sd
        .get("baseDefinition")
        .and_then(Value::as_str)
        .ok_or_else(|| broken(file, "baseDefinition is missing"))?;
    let v = crate::validation::validator();
    let base = if sds.contains_key(base_url) {
        snapshot_of(base_url, sds, done, depth + 1)?;
        done[base_url].clone()
    } else if let Some(t) = base_url.strip_prefix("http://hl7.org/fhir/StructureDefinition/") {
        v.base_elements(t)
            .ok_or_else(|| broken(file, format!("the base {base_url} is not an R4 type")))?
    } else {
        return Err(broken(file, format!("the base {base_url} is not loaded")));
    };
    let types = |t: &str| v.base_elements(t);
    let snap = snapshot::generate(sd, base, &types).map_err(|e| broken(file, e))?;
    done.insert(url.to_string(), snap);
    Ok(())
}

/// A value set's codes from its `expansion`, or from its `compose` (explicit
/// concepts, whole complete code systems of the set, imported value sets).
fn expand(
    vs: &Value,
    value_sets: &HashMap<String, Value>,
    code_systems: &HashMap<String, Value>,
    depth: usize,
) -> Expansion {
    let mut codes: HashMap<String, HashSet<String>> = HashMap::new();
    if let Some(contains) = vs.pointer("/expansion/contains").and_then(Value::as_array) {
        fn walk(items: &[Value], codes: &mut HashMap<String, HashSet<String>>) {
            for c in items {
                if let (Some(s), Some(code)) = (
                    c.get("system").and_then(Value::as_str),
                    c.get("code").and_then(Value::as_str),
                ) {
                    codes.entry(s.to_string()).or_default().insert(code.to_string());
                }
                if let Some(nested) = c.get("contains").and_then(Value::as_array) {
                    walk(nested, codes);
                }
            }
        }
        walk(contains, &mut codes);
        return Expansion::Codes(codes);
    }
    if depth > 8 {
        return Expansion::NotExpanded;
    }
    let Some(compose) = vs.get("compose") else {
        return Expansion::NotExpanded;
    };
    for inc in compose.get("include").and_then(Value::as_array).into_iter().flatten() {
        if inc.get("filter").is_some() {
            return Expansion::NotExpanded;
        }
        for imported in inc.get("valueSet").and_then(Value::as_array).into_iter().flatten() {
            let u = imported.as_str().unwrap_or_default();
            let Some(sub) = value_sets.get(u.split('|').next().unwrap_or(u)) else {
                return Expansion::NotExpanded;
            };
            match expand(sub, value_sets, code_systems, depth + 1) {
                Expansion::Codes(c) => c.into_iter().for_each(|(s, cs)| codes.entry(s).or_default().extend(cs)),
                Expansion::NotExpanded => return Expansion::NotExpanded,
            }
        }
        let Some(system) = inc.get("system").and_then(Value::as_str) else {
            continue;
        };
        if let Some(concepts) = inc.get("concept").and_then(Value::as_array) {
            let set = codes.entry(system.to_string()).or_default();
            set.extend(
                concepts
                    .iter()
                    .filter_map(|c| c.get("code").and_then(Value::as_str).map(str::to_string)),
            );
            continue;
        }
        let Some(cs) = code_systems.get(system) else {
            return Expansion::NotExpanded;
        };
        if cs.get("content").and_then(Value::as_str) != Some("complete") {
            return Expansion::NotExpanded;
        }
        fn all(concepts: &[Value], out: &mut HashSet<String>) {
            for c in concepts {
                if let Some(code) = c.get("code").and_then(Value::as_str) {
                    out.insert(code.to_string());
                }
                if let Some(n) = c.get("concept").and_then(Value::as_array) {
                    all(n, out);
                }
            }
        }
        let set = codes.entry(system.to_string()).or_default();
        all(
            cs.get("concept")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]),
            set,
        );
    }
    for exc in compose.get("exclude").and_then(Value::as_array).into_iter().flatten() {
        let system = exc.get("system").and_then(Value::as_str).unwrap_or_default();
        for c in exc.get("concept").and_then(Value::as_array).into_iter().flatten() {
            if let (Some(set), Some(code)) = (codes.get_mut(system), c.get("code").and_then(Value::as_str)) {
                set.remove(code);
            }
        }
    }
    Expansion::Codes(codes)
}
