//! The ViewDefinitions that ship in `profiles/views/`, compiled into the binary
//! so that nodes and the hub agree on them without shared files.

use super::{View, ViewError};
use serde_json::Value;

const SOURCES: [(&str, &str); 4] = [
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
