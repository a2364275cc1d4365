//! The R4 definitions extracted into `profiles/r4-core.json` (resource types,
//! choice element names, search parameters), compiled into the binary.

use serde::Deserialize;
use std::collections::HashSet;
use std::sync::OnceLock;

const R4_CORE: &str = include_str!("../../profiles/r4-core.json");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    resource_types: Vec<String>,
    data_types: Vec<String>,
    choice_elements: Vec<String>,
    summary_elements: std::collections::HashMap<String, Vec<String>>,
    search_parameters: Vec<SearchParamDefinition>,
}

/// A SearchParameter as the specification defines it.
#[derive(Debug, Clone, Deserialize)]
pub struct SearchParamDefinition {
    pub code: String,
    pub base: Vec<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub expression: String,
    #[serde(default)]
    pub target: Vec<String>,
}

/// Immutable specification data: loaded once, shared by every node in the process.
pub struct Definitions {
    pub resource_types: HashSet<String>,
    pub resource_type_list: Vec<String>,
    pub choice: super::choice::ChoiceModel,
    pub search_parameters: Vec<SearchParamDefinition>,
    /// Top-level elements marked `isSummary`, per resource type (choice names without `[x]`).
    pub summary_elements: std::collections::HashMap<String, Vec<String>>,
}

pub fn get() -> &'static Definitions {
    static DEFS: OnceLock<Definitions> = OnceLock::new();
    DEFS.get_or_init(|| {
        let raw: Raw = serde_json::from_str(R4_CORE).expect("profiles/r4-core.json is compiled in and well-formed");
        let mut type_names: Vec<&str> = raw.data_types.iter().map(String::as_str).collect();
        type_names.extend(raw.resource_types.iter().map(String::as_str));
        let choice = super::choice::ChoiceModel::new(raw.choice_elements.iter().map(String::as_str), type_names);
        Definitions {
            resource_types: raw.resource_types.iter().cloned().collect(),
            resource_type_list: raw.resource_types,
            choice,
            search_parameters: raw.search_parameters,
            summary_elements: raw.summary_elements,
        }
    })
}
