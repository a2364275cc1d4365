//! The ViewDefinitions that ship in `profiles/views/`, compiled into the binary
//! so that nodes and the hub agree on them without shared files.

use super::{View, ViewError};
use serde_json::Value;

const SOURCES: [(&str, &str); 5] = [
    (
        "patient_demographics",
        include_str!("../../profiles/views/patient_demographics.json"),
    ),
    (
        "observation_values",
        include_str!("../../profiles/views/observation_values.json"),
    ),
    (
        "condition_codes",
        include_str!("../../profiles/views/condition_codes.json"),
    ),
    (
        "encounter_classes",
        include_str!("../../profiles/views/encounter_classes.json"),
    ),
    (
        "hospital_episodes",
        include_str!("../../profiles/views/hospital_episodes.json"),
    ),
];

/// The names of the shipped views.
pub fn names() -> impl Iterator<Item = &'static str> {
    SOURCES.iter().map(|(n, _)| *n)
}

/// A shipped view's JSON by name; `ViewDefinition/<name>` and a canonical URL
/// ending in `/<name>` are accepted too.
pub fn get(reference: &str) -> Option<Value> {
    let name = reference.rsplit('/').next().unwrap_or(reference);
    SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, text)| serde_json::from_str(text).ok())
}

/// A shipped view, compiled.
pub fn compile(reference: &str) -> Option<Result<View, ViewError>> {
    get(reference).map(|v| View::compile(&v))
}

/// A shipped view as federated questions use it: its name, version and the
/// SHA-256 of its definition, which the hub sends so that every node can check
/// it runs exactly the definition the hub checked the question against.
#[derive(Debug, Clone)]
pub struct Approved {
    pub name: &'static str,
    pub version: String,
    pub digest: String,
    pub view: View,
}

/// The approved (shipped) view `reference` names, compiled once per process.
pub fn approved(reference: &str) -> Option<Result<Approved, ViewError>> {
    static COMPILED: std::sync::OnceLock<Vec<Result<Approved, ViewError>>> = std::sync::OnceLock::new();
    let name = reference.rsplit('/').next().unwrap_or(reference);
    let i = SOURCES.iter().position(|(n, _)| *n == name)?;
    let all = COMPILED.get_or_init(|| SOURCES.iter().map(|(n, text)| compile_approved(n, text)).collect());
    all.get(i).cloned()
}

fn compile_approved(name: &'static str, text: &'static str) -> Result<Approved, ViewError> {
    let json: Value =
        serde_json::from_str(text).map_err(|e| super::err("", format!("view '{name}' is not JSON: {e}")))?;
    let version = json.get("version").and_then(Value::as_str).unwrap_or("0").to_string();
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let digest: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    View::compile(&json).map(|view| Approved {
        name,
        version,
        digest,
        view,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_shipped_view_compiles() {
        for name in super::names() {
            let view = super::compile(name).expect("listed").expect("compiles");
            assert_eq!(view.name.as_deref(), Some(name));
        }
        assert!(super::get("ViewDefinition/patient_demographics").is_some());
        assert!(super::get("nope").is_none());
    }
}
