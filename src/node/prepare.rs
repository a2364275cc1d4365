//! Preparing a resource for storage outside the write lock: checks, index rows,
//! and the JSON split so that the writer only has to splice in the version.

use super::{Error, FhirService};
use crate::fhir::{self, Issue, IssueCode};
use crate::search::{self, IndexRows};
use serde_json::{Map, Value};

/// A checked, indexed resource waiting for its id and version.
/// A resource the node accepts, with what it found to report.
#[derive(Debug)]
pub struct Checked {
    pub rtype: String,
    /// Warnings, information and profile errors accepted under the node's policy.
    pub issues: Vec<Issue>,
    /// How many of `issues` are profile errors accepted under a `flag` policy.
    pub flagged: usize,
    pub facts: super::quality::Facts,
}

#[derive(Debug, Clone)]
pub struct Prepared {
    pub rtype: String,
    /// Issues reported with the accepted write.
    pub issues: Vec<Issue>,
    /// How many of `issues` are flagged profile errors.
    pub flagged: usize,
    /// What it adds to the quality figures once written.
    pub recorded: std::sync::Arc<super::quality::Recorded>,
    /// The id in the body, if any.
    pub body_id: Option<String>,
    pub index: IndexRows,
    /// `meta` without versionId and lastUpdated, as JSON members without braces.
    meta_rest: String,
    /// The resource without resourceType, id and meta, as JSON members without braces.
    body_rest: String,
}

fn members(map: &Map<String, Value>) -> String {
    let s = serde_json::to_string(map).unwrap_or_else(|_| "{}".into());
    s[1..s.len() - 1].to_string()
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl Prepared {
    /// The stored JSON: `resourceType`, `id` and `meta` first, then the rest as sent.
    pub fn assemble(&self, id: &str, version: u64, last_updated: i64) -> Vec<u8> {
        let mut out = String::with_capacity(self.body_rest.len() + self.meta_rest.len() + 128);
        out.push_str("{\"resourceType\":");
        out.push_str(&json_str(&self.rtype));
        out.push_str(",\"id\":");
        out.push_str(&json_str(id));
        out.push_str(",\"meta\":{\"versionId\":\"");
        out.push_str(&version.to_string());
        out.push_str("\",\"lastUpdated\":\"");
        out.push_str(&fhir::time::format_instant(last_updated));
        out.push('"');
        if !self.meta_rest.is_empty() {
            out.push(',');
            out.push_str(&self.meta_rest);
        }
        out.push('}');
        if !self.body_rest.is_empty() {
            out.push(',');
            out.push_str(&self.body_rest);
        }
        out.push('}');
        out.into_bytes()
    }
}

/// Finds JSON that FHIR forbids but a generic parser accepts: empty objects,
/// empty arrays, empty strings and nulls outside primitive-extension arrays.
fn empty_elements(value: &Value, path: &mut String, issues: &mut Vec<Issue>) {
    fn report(issues: &mut Vec<Issue>, path: &str, what: &str) {
        issues
            .push(Issue::error(IssueCode::Invalid, format!("{what} is not allowed in FHIR JSON")).at(path.to_string()));
    }
    match value {
        Value::Object(map) => {
            if map.is_empty() {
                report(issues, path, "an empty object");
            }
            for (k, v) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                match v {
                    Value::Null => report(issues, path, "null"),
                    Value::Array(items) if k.starts_with('_') || items.iter().any(|i| !i.is_null()) => {
                        // `_given: [null, {...}]` pairs with `given`; nulls there are allowed.
                        if !k.starts_with('_') && items.iter().any(Value::is_null) {
                            let paired = map.contains_key(&format!("_{k}"));
                            if !paired {
                                report(issues, path, "null");
                            }
                        }
                        for (i, item) in items.iter().enumerate() {
                            let l2 = path.len();
                            path.push_str(&format!("[{i}]"));
                            if !item.is_null() {
                                empty_elements(item, path, issues);
                            }
                            path.truncate(l2);
                        }
                    }
                    Value::Array(_) => report(issues, path, "an empty array"),
                    Value::String(s) if s.is_empty() => report(issues, path, "an empty string"),
                    other => empty_elements(other, path, issues),
                }
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for item in items {
                empty_elements(item, path, issues);
            }
        }
        _ => {}
    }
}

impl FhirService {
    /// Checks that `value` is a resource this node accepts: a JSON object with a
    /// known `resourceType`, a valid `id` if present, no empty elements, and (if
    /// enabled) the R4 base definitions and the regional profiles.
    pub fn check_resource(&self, value: &Value) -> Result<Checked, Error> {
        let Some(obj) = value.as_object() else {
            return Err(Error::invalid(Issue::error(
                IssueCode::Structure,
                "a resource must be a JSON object",
            )));
        };
        let rtype = match obj.get("resourceType") {
            Some(Value::String(t)) => t.clone(),
            _ => {
                return Err(Error::invalid(
                    Issue::error(IssueCode::Required, "resourceType is missing").at("resourceType"),
                ))
            }
        };
        if !fhir::is_resource_type(&rtype) {
            return Err(Error::invalid(
                Issue::error(IssueCode::NotSupported, format!("'{rtype}' is not an R4 resource type"))
                    .at("resourceType"),
            ));
        }
        let mut issues = Vec::new();
        match obj.get("id") {
            None => {}
            Some(Value::String(id)) if fhir::is_valid_id(id) => {}
            Some(_) => issues.push(
                Issue::error(IssueCode::Value, "id must match [A-Za-z0-9\\-\\.]{1,64}").at(format!("{rtype}.id")),
            ),
        }
        let mut path = rtype.clone();
        empty_elements(value, &mut path, &mut issues);
        // Accepted issues (reported with the write) and every issue with the severity it
        // was found with (for the quality figures: a flagged error is still an error).
        let (mut accepted, mut judged) = (Vec::new(), Vec::new());
        let mut flagged = 0usize;
        let mut must_support: &[String] = &[];
        if self.settings.structural_check {
            // The R4 base definitions: every issue at once, with its FHIRPath; warnings are
            // reported with the write, never refused. (fhirbolt's strict parse left this path:
            // src/validation checks what it did and names each element; see BENCHMARKS.md.)
            for issue in crate::validation::validator().validate(value) {
                match issue.severity {
                    fhir::Severity::Error | fhir::Severity::Fatal => {
                        if !issues.contains(&issue) {
                            issues.push(issue)
                        }
                    }
                    _ => {
                        judged.push(issue.clone());
                        accepted.push(issue)
                    }
                }
            }
            // The regional profile of the type, and any loaded profile the resource claims.
            let enforced = self.profiles.enforced(&rtype);
            if let Some(p) = enforced {
                must_support = &p.must_support;
            }
            let mut profiles: Vec<&crate::profiles::Profile> = enforced.into_iter().collect();
            for claimed in value
                .pointer("/meta/profile")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                match self.profiles.get(claimed) {
                    Some(p) if !profiles.iter().any(|q| q.url == p.url) => profiles.push(p),
                    Some(_) => {}
                    None => accepted.push(
                        // A note to the sender, not a finding about the data.
                        Issue::information(
                            IssueCode::NotSupported,
                            format!("profile {claimed} is not loaded on this node; the resource was checked against the base and the regional profile only"),
                        )
                        .at(format!("{rtype}.meta.profile")),
                    ),
                }
            }
            for p in profiles {
                let mode = self.settings.profile_policy.mode(p);
                for issue in self.profiles.check(p, value) {
                    let is_error = matches!(issue.severity, fhir::Severity::Error | fhir::Severity::Fatal);
                    if is_error && mode == super::PolicyMode::Reject {
                        issues.push(issue);
                    } else if is_error {
                        // Accepted and flagged: still an error of the profile, reported as a warning of the write.
                        let mut reported = issue.clone();
                        reported.severity = fhir::Severity::Warning;
                        reported.diagnostics = format!(
                            "{} (flagged: {} is not enforced by this node)",
                            issue.diagnostics, p.name
                        );
                        judged.push(issue);
                        flagged += 1;
                        accepted.push(reported);
                    } else {
                        judged.push(issue.clone());
                        accepted.push(issue);
                    }
                }
            }
        }
        judged.extend(issues.iter().cloned());
        let facts = super::quality::Facts::of(
            self.source(),
            &rtype,
            value,
            &judged,
            must_support,
            fhir::time::now_millis(),
        );
        if issues.is_empty() {
            // Counted once written (the stored id tells patients apart).
            Ok(Checked {
                rtype,
                issues: accepted,
                flagged,
                facts,
            })
        } else {
            if self.quality.rejected(&facts) {
                // Many refusals and no write to carry them: store them now.
                let _ = self.flush_quality();
            }
            Err(Error::Unprocessable(issues))
        }
    }

    /// Splits a checked resource for storage and computes its index rows.
    pub fn prepare(&self, checked: Checked, value: Value) -> Prepared {
        let recorded = std::sync::Arc::new(super::quality::Recorded::of(&checked.facts));
        self.prepare_again(checked.rtype, checked.issues, checked.flagged, recorded, value)
    }

    /// Prepares a resource whose check is already done (a transaction entry whose
    /// references were rewritten): what the check found is carried over.
    pub fn prepare_again(
        &self,
        rtype: String,
        issues: Vec<Issue>,
        flagged: usize,
        recorded: std::sync::Arc<super::quality::Recorded>,
        mut value: Value,
    ) -> Prepared {
        let index = search::extract(&self.registry, &rtype, &value);
        let obj = value.as_object_mut().expect("check_resource accepted only objects");
        obj.shift_remove("resourceType");
        let body_id = match obj.shift_remove("id") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let meta_rest = match obj.shift_remove("meta") {
            Some(Value::Object(mut m)) => {
                m.shift_remove("versionId");
                m.shift_remove("lastUpdated");
                members(&m)
            }
            _ => String::new(),
        };
        Prepared {
            rtype,
            issues,
            flagged,
            recorded,
            body_id,
            index,
            meta_rest,
            body_rest: members(obj),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_empty_elements() {
        let mut issues = Vec::new();
        let v = json!({"name":[{"given":[]}],"gender":"","x":null,"y":{}});
        empty_elements(&v, &mut "Patient".to_string(), &mut issues);
        let paths: Vec<_> = issues.iter().map(|i| i.expression.clone().unwrap()).collect();
        assert_eq!(
            paths,
            ["Patient.name[0].given", "Patient.gender", "Patient.x", "Patient.y"]
        );
        let mut ok = Vec::new();
        let v = json!({"name":[{"given":["A", null],"_given":[null,{"id":"x"}]}]});
        empty_elements(&v, &mut "Patient".to_string(), &mut ok);
        assert!(ok.is_empty(), "{ok:?}");
    }
}
