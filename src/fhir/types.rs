//! Typed values of the write path, parsed once at the edge (HTTP path, a feed's
//! translation) so that the service never re-checks or re-splits text:
//! `ResourceType` (a concrete R4 type), `Id` (the FHIR `id` datatype) and
//! `Identifier` (a system and value, never a `system|value` string).

use serde_json::{json, Value};
use std::fmt;

/// A concrete R4 resource type, e.g. `Patient`. Cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(&'static str);

impl ResourceType {
    /// `None` unless `name` is a concrete R4 resource type.
    pub fn parse(name: &str) -> Option<ResourceType> {
        super::definitions::get()
            .resource_types
            .get(name)
            .map(|s| ResourceType(s.as_str()))
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// The types the feeds match identities on (checked against the definitions by a test).
pub const PATIENT: ResourceType = ResourceType("Patient");
pub const ENCOUNTER: ResourceType = ResourceType("Encounter");
pub const AUDIT_EVENT: ResourceType = ResourceType("AuditEvent");
pub const MEASURE: ResourceType = ResourceType("Measure");

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::ops::Deref for ResourceType {
    type Target = str;
    fn deref(&self) -> &str {
        self.0
    }
}

/// A logical id: `[A-Za-z0-9\-\.]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id(String);

impl Id {
    /// `None` unless `id` is a valid FHIR id.
    pub fn parse(id: &str) -> Option<Id> {
        super::is_valid_id(id).then(|| Id(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for Id {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A business identifier: a value within an optional system (an NHS number, a
/// hospital number, a visit number).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identifier {
    pub system: Option<String>,
    pub value: String,
}

impl Identifier {
    pub fn new(system: Option<&str>, value: &str) -> Identifier {
        Identifier {
            system: system.filter(|s| !s.is_empty()).map(str::to_string),
            value: value.to_string(),
        }
    }

    /// An `Identifier` element's system and value; `None` without a value.
    pub fn from_json(v: &Value) -> Option<Identifier> {
        let value = v.get("value")?.as_str().filter(|s| !s.is_empty())?;
        Some(Identifier::new(v.get("system").and_then(Value::as_str), value))
    }

    /// The identifiers of a resource's `identifier` element (one or many).
    pub fn all_of(resource: &Value) -> Vec<Identifier> {
        match resource.get("identifier") {
            Some(Value::Array(a)) => a.iter().filter_map(Identifier::from_json).collect(),
            Some(one @ Value::Object(_)) => Identifier::from_json(one).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// As an `Identifier` element.
    pub fn to_json(&self) -> Value {
        match &self.system {
            Some(s) => json!({"system": s, "value": self.value}),
            None => json!({"value": self.value}),
        }
    }
}

/// `system|value` (or the value alone), as messages and reports show it.
impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.system {
            Some(s) => write!(f, "{s}|{}", self.value),
            None => f.write_str(&self.value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_dont_validate() {
        assert_eq!(
            ResourceType::parse("Patient").map(ResourceType::as_str),
            Some("Patient")
        );
        assert!(ResourceType::parse("patient").is_none());
        assert!(
            ResourceType::parse("Resource").is_none(),
            "abstract types are not stored"
        );
        for known in [PATIENT, ENCOUNTER, AUDIT_EVENT] {
            assert_eq!(ResourceType::parse(known.as_str()), Some(known));
        }
        assert!(Id::parse("a.b-1").is_some());
        assert!(Id::parse("").is_none() && Id::parse("a/b").is_none() && Id::parse(&"x".repeat(65)).is_none());
        let i = Identifier::from_json(&json!({"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765870"}))
            .unwrap();
        assert_eq!(i.to_string(), "https://fhir.nhs.uk/Id/nhs-number|9434765870");
        assert_eq!(Identifier::from_json(&i.to_json()), Some(i));
        assert!(Identifier::from_json(&json!({"system": "s"})).is_none());
        assert_eq!(Identifier::new(Some(""), "v").system, None);
    }
}
