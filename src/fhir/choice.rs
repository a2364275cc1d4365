//! FHIR choice elements (`value[x]` and friends): which element names are choices
//! and which type suffixes may follow them. Part of the definitions the node
//! carries; FHIRPath navigation and the validator both read it.

/// The names of FHIR choice elements (`value[x]` and friends) and the data type
/// names that may follow them, needed to navigate `Observation.value` onto
/// `valueQuantity` without a full structure model.
pub struct ChoiceModel {
    pub choice_names: std::collections::HashSet<String>,
    pub type_suffixes: std::collections::HashMap<String, String>,
}

impl ChoiceModel {
    pub fn new<'a>(
        choice_names: impl IntoIterator<Item = &'a str>,
        type_names: impl IntoIterator<Item = &'a str>,
    ) -> ChoiceModel {
        let mut type_suffixes = std::collections::HashMap::new();
        for t in type_names {
            type_suffixes.insert(upper_first(t), t.to_string());
        }
        // References and resources may also appear as choices (`medicationReference`).
        type_suffixes.insert("Reference".into(), "Reference".into());
        ChoiceModel {
            choice_names: choice_names.into_iter().map(str::to_string).collect(),
            type_suffixes,
        }
    }

    /// If `key` is `name` followed by a type suffix of a choice element, the FHIR type.
    pub fn choice_type<'k>(&'k self, name: &str, key: &str) -> Option<&'k str> {
        if !self.choice_names.contains(name) {
            return None;
        }
        let suffix = key.strip_prefix(name)?;
        self.type_suffixes.get(suffix).map(String::as_str)
    }
}

/// A type name as it follows a choice element (`quantity` → `Quantity`).
pub fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
