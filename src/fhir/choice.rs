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

/// Whether `suffix` is `t` with its first letter in upper case (`valueQuantity`'s
/// suffix against the type `Quantity`, `valueString`'s against `string`),
/// without building the upper-cased name.
pub fn is_upper_first_of(suffix: &str, t: &str) -> bool {
    let (mut a, mut b) = (suffix.chars(), t.chars());
    match (a.next(), b.next()) {
        (Some(x), Some(y)) => y.to_uppercase().eq(std::iter::once(x)) && a.as_str() == b.as_str(),
        (None, None) => true,
        _ => false,
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

#[cfg(test)]
mod tests {
    use super::{is_upper_first_of, upper_first};

    #[test]
    fn a_suffix_matches_its_type_as_upper_first_would() {
        for (suffix, t) in [("Quantity", "Quantity"), ("String", "string"), ("DateTime", "dateTime")] {
            assert!(is_upper_first_of(suffix, t), "{suffix} {t}");
            assert_eq!(upper_first(t), suffix);
        }
        for (suffix, t) in [
            ("string", "string"),
            ("Strin", "string"),
            ("", "string"),
            ("Date", "dateTime"),
        ] {
            assert!(!is_upper_first_of(suffix, t), "{suffix} {t}");
        }
        assert!(is_upper_first_of("", ""));
    }
}
