//! Snapshot generation: a profile's differential applied to its base's snapshot.
//!
//! The base is either an R4 type (its elements come from the validator's model)
//! or another profile with a snapshot. Each differential element is found by its
//! `id`; slices are added after the element they slice (with a copy of its
//! subtree), and elements inside a data type (`Patient.identifier:nhsNumber.system`)
//! are reached by expanding the type's own elements under their parent. A
//! differential may only narrow its base: a lower `min`, a higher `max` or a
//! type the base does not allow is an error that names the element.

use serde_json::{json, Value};

/// The elements of an R4 type (root first), as `Validator::base_elements` gives them.
pub type TypeElements<'a> = &'a dyn Fn(&str) -> Option<Vec<Value>>;

/// Applies `sd`'s differential to `base` (the base definition's snapshot elements).
pub fn generate(sd: &Value, base: Vec<Value>, types: TypeElements<'_>) -> Result<Vec<Value>, String> {
    let url = sd.get("url").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut snap = Snapshot { elements: base, types };
    let diff = sd
        .pointer("/differential/element")
        .and_then(Value::as_array)
        .ok_or("the StructureDefinition has neither a snapshot nor a differential")?;
    for d in diff {
        let id = element_id(d)?;
        let path = d.get("path").and_then(Value::as_str).unwrap_or_default();
        if strip_slices(&id) != path {
            return Err(format!("element '{id}': its id does not match its path '{path}'"));
        }
        let at = snap.ensure(&id)?;
        merge(&mut snap.elements[at], d, &id, &url)?;
    }
    Ok(snap.elements)
}

fn element_id(d: &Value) -> Result<String, String> {
    if let Some(id) = d.get("id").and_then(Value::as_str) {
        return Ok(id.to_string());
    }
    let path = d
        .get("path")
        .and_then(Value::as_str)
        .ok_or("a differential element has neither id nor path")?;
    Ok(match d.get("sliceName").and_then(Value::as_str) {
        Some(s) => format!("{path}:{s}"),
        None => path.to_string(),
    })
}

/// `Patient.identifier:nhsNumber.system` → `Patient.identifier.system`.
pub fn strip_slices(id: &str) -> String {
    id.split('.')
        .map(|seg| seg.split(':').next().unwrap_or(seg))
        .collect::<Vec<_>>()
        .join(".")
}

struct Snapshot<'t> {
    elements: Vec<Value>,
    types: TypeElements<'t>,
}

/// The type codes of an ElementDefinition (`type[].code`).
pub fn type_codes(e: &Value) -> Vec<&str> {
    e.get("type")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("code").and_then(Value::as_str))
        .collect()
}

fn id_of(e: &Value) -> &str {
    e.get("id").and_then(Value::as_str).unwrap_or_default()
}

impl Snapshot<'_> {
    fn find(&self, id: &str) -> Option<usize> {
        self.elements.iter().position(|e| id_of(e) == id)
    }

    /// The index after the last element of `id`'s subtree (its children and slices).
    fn subtree_end(&self, at: usize) -> usize {
        let id = id_of(&self.elements[at]).to_string();
        let mut end = at + 1;
        while end < self.elements.len() {
            let other = id_of(&self.elements[end]);
            let inside = other
                .strip_prefix(id.as_str())
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with(':'));
            if !inside {
                break;
            }
            end += 1;
        }
        end
    }

    /// The index of element `id`, creating slices and expanding data types as needed.
    fn ensure(&mut self, id: &str) -> Result<usize, String> {
        if let Some(i) = self.find(id) {
            return Ok(i);
        }
        let (parent, last) = id
            .rsplit_once('.')
            .ok_or_else(|| format!("element '{id}' is not in the base definition"))?;
        if let Some((name, slice)) = last.split_once(':') {
            let unsliced = format!("{parent}.{name}");
            let u = self.ensure(&unsliced)?;
            let end = self.subtree_end(u);
            let mut copies: Vec<Value> = Vec::new();
            for e in &self.elements[u..end] {
                let eid = id_of(e);
                // The unsliced element and its children, not its other slices.
                let rest = &eid[unsliced.len()..];
                if rest.starts_with(':') {
                    continue;
                }
                let mut c = e.clone();
                c["id"] = Value::String(format!("{id}{rest}"));
                if let Some(o) = c.as_object_mut() {
                    if rest.is_empty() {
                        // A slice starts optional: the unsliced element's minimum is the sum over its slices.
                        o.remove("slicing");
                        o.insert("sliceName".into(), Value::String(slice.to_string()));
                        o.insert("min".into(), json!(0));
                    }
                }
                copies.push(c);
            }
            if self.elements[u].get("slicing").is_none() {
                if name == "extension" || name == "modifierExtension" {
                    self.elements[u]["slicing"] = json!({"discriminator": [{"type": "value", "path": "url"}],
                        "ordered": false, "rules": "open"});
                } else {
                    return Err(format!("'{id}' slices '{unsliced}', which has no slicing"));
                }
            }
            let at = end;
            self.elements.splice(at..at, copies);
            return Ok(at);
        }
        let p = self.ensure(parent)?;
        self.expand(p)?;
        if let Some(i) = self.find(id) {
            return Ok(i);
        }
        // The parent may itself have been found under another name (a renamed choice).
        let under_real_parent = format!("{}.{last}", id_of(&self.elements[p]));
        if let Some(i) = self.find(&under_real_parent) {
            return Ok(i);
        }
        // R4 lets a differential name a choice by its one remaining type (`valueIdentifier`
        // for `value[x]` narrowed to Identifier): that is the choice element.
        let real_parent = id_of(&self.elements[p]).to_string();
        if let Some(i) = self.renamed_choice(&real_parent, last) {
            return Ok(i);
        }
        self.find(id).ok_or_else(|| {
            format!(
                "element '{id}' is not in the base definition (no '{last}' in {})",
                strip_slices(parent)
            )
        })
    }

    /// `parent.valueQuantity` → the element `parent.value[x]`, if it allows Quantity.
    fn renamed_choice(&self, parent: &str, last: &str) -> Option<usize> {
        let split = last.find(|c: char| c.is_ascii_uppercase())?;
        let (name, suffix) = last.split_at(split);
        let at = self.find(&format!("{parent}.{name}[x]"))?;
        let allows = type_codes(&self.elements[at])
            .into_iter()
            .any(|code| crate::fhir::choice::upper_first(code) == suffix);
        allows.then_some(at)
    }

    /// Adds the children of element `at` from its data type (or, for a `contentReference`,
    /// from the element it refers to), if it has none yet.
    fn expand(&mut self, at: usize) -> Result<(), String> {
        let end = self.subtree_end(at);
        let id = id_of(&self.elements[at]).to_string();
        if self.elements[at + 1..end]
            .iter()
            .any(|e| id_of(e).strip_prefix(id.as_str()).is_some_and(|r| r.starts_with('.')))
        {
            return Ok(());
        }
        let el = &self.elements[at];
        if let Some(target) = el.get("contentReference").and_then(Value::as_str) {
            let target = target.trim_start_matches('#').to_string();
            let path = el.get("path").and_then(Value::as_str).unwrap_or_default().to_string();
            let copies: Vec<Value> = self
                .elements
                .iter()
                .filter(|e| {
                    id_of(e)
                        .strip_prefix(target.as_str())
                        .is_some_and(|r| r.starts_with('.'))
                })
                .filter(|e| !id_of(e).contains(':'))
                .map(|e| {
                    let mut c = e.clone();
                    let rest = id_of(e)[target.len()..].to_string();
                    c["id"] = Value::String(format!("{id}{rest}"));
                    c["path"] = Value::String(format!("{path}{rest}"));
                    c
                })
                .collect();
            if copies.is_empty() {
                return Err(format!("'{id}' refers to {target}, which has no elements"));
            }
            self.elements.splice(end..end, copies);
            return Ok(());
        }
        let codes = type_codes(el);
        let [code] = codes.as_slice() else {
            return Err(format!(
                "cannot constrain inside '{id}': it has {} types; narrow it to one first",
                codes.len()
            ));
        };
        let path = el.get("path").and_then(Value::as_str).unwrap_or_default().to_string();
        let children = (self.types)(code).ok_or_else(|| format!("'{id}' has type {code}, which has no elements"))?;
        let rewritten: Vec<Value> = children
            .into_iter()
            .skip(1)
            .map(|mut c| {
                let cid = id_of(&c).to_string();
                let rest = &cid[code.len()..];
                c["id"] = Value::String(format!("{id}{rest}"));
                c["path"] = Value::String(format!("{path}{rest}"));
                c
            })
            .collect();
        self.elements.splice(end..end, rewritten);
        Ok(())
    }
}

/// Applies one differential element to its snapshot element.
fn merge(into: &mut Value, d: &Value, id: &str, url: &str) -> Result<(), String> {
    let Some(obj) = d.as_object() else {
        return Err(format!("element '{id}' is not an object"));
    };
    let max_of = |v: &Value| -> Option<u64> {
        match v.as_str() {
            Some("*") | None => None,
            Some(m) => m.parse().ok(),
        }
    };
    for (key, value) in obj {
        match key.as_str() {
            "id" | "path" | "extension" => {}
            "min" => {
                let base = into.get("min").and_then(Value::as_u64).unwrap_or(0);
                let new = value.as_u64().ok_or_else(|| format!("'{id}': min must be a number"))?;
                if new < base {
                    return Err(format!("'{id}': min {new} is lower than the base's {base}"));
                }
                into["min"] = value.clone();
            }
            "max" => {
                let base = into.get("max").and_then(max_of);
                let new = max_of(value);
                if value.as_str() != Some("*") && new.is_none() {
                    return Err(format!("'{id}': max must be a number or *"));
                }
                if let Some(b) = base {
                    if new.is_none_or(|n| n > b) {
                        return Err(format!("'{id}': max {value} is higher than the base's {b}"));
                    }
                }
                into["max"] = value.clone();
            }
            "type" => {
                let allowed: Vec<String> = type_codes(into).into_iter().map(str::to_string).collect();
                for t in value.as_array().into_iter().flatten() {
                    let code = t.get("code").and_then(Value::as_str).unwrap_or_default();
                    let ok = allowed.iter().any(|a| a == code)
                        || (allowed.iter().any(|a| a == "Resource") && crate::fhir::is_resource_type(code));
                    if !allowed.is_empty() && !ok {
                        return Err(format!(
                            "'{id}': type {code} is not allowed by the base ({})",
                            allowed.join(", ")
                        ));
                    }
                }
                into["type"] = value.clone();
            }
            "constraint" => {
                let mut list = into
                    .get("constraint")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for c in value.as_array().into_iter().flatten() {
                    let mut c = c.clone();
                    if c.get("source").is_none() {
                        c["source"] = Value::String(url.to_string());
                    }
                    let key = c.get("key").cloned();
                    list.retain(|x| x.get("key") != key.as_ref());
                    list.push(c);
                }
                into["constraint"] = Value::Array(list);
            }
            // A binding is refined key by key (a new strength keeps the base's value set).
            "binding" => match (
                into.get_mut("binding").and_then(Value::as_object_mut),
                value.as_object(),
            ) {
                (Some(old), Some(new)) => {
                    for (k, v) in new {
                        old.insert(k.clone(), v.clone());
                    }
                }
                _ => into["binding"] = value.clone(),
            },
            _ => into[key.as_str()] = value.clone(),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(t: &str) -> Option<Vec<Value>> {
        crate::validation::validator().base_elements(t)
    }

    #[test]
    fn slices_and_data_type_children() {
        let sd = json!({"url": "https://example.org/p", "type": "Patient", "differential": {"element": [
            {"id": "Patient.identifier", "path": "Patient.identifier", "min": 1,
             "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": "open"}},
            {"id": "Patient.identifier:nhs", "path": "Patient.identifier", "sliceName": "nhs", "max": "1"},
            {"id": "Patient.identifier:nhs.system", "path": "Patient.identifier.system", "min": 1,
             "fixedUri": "https://fhir.nhs.uk/Id/nhs-number"},
            {"id": "Patient.extension:x", "path": "Patient.extension", "sliceName": "x"}
        ]}});
        let snap = generate(&sd, types("Patient").unwrap(), &types).unwrap();
        let get = |id: &str| snap.iter().find(|e| id_of(e) == id).cloned();
        assert_eq!(get("Patient.identifier").unwrap()["min"], 1);
        assert_eq!(get("Patient.identifier:nhs").unwrap()["sliceName"], "nhs");
        let system = get("Patient.identifier:nhs.system").unwrap();
        assert_eq!(system["fixedUri"], "https://fhir.nhs.uk/Id/nhs-number");
        assert_eq!(system["path"], "Patient.identifier.system");
        assert!(
            get("Patient.identifier:nhs.value").is_some(),
            "the slice has the type's other elements"
        );
        assert_eq!(
            get("Patient.extension").unwrap()["slicing"]["discriminator"][0]["path"],
            "url"
        );
        // The slice comes after the element it slices, before the next element.
        let pos = |id: &str| snap.iter().position(|e| id_of(e) == id).unwrap();
        assert!(pos("Patient.identifier") < pos("Patient.identifier:nhs"));
        assert!(pos("Patient.identifier:nhs.system") < pos("Patient.language"));
    }

    #[test]
    fn a_differential_may_only_narrow() {
        let cases = [
            (
                json!({"id": "Observation.status", "path": "Observation.status", "min": 0}),
                "lower",
            ),
            (
                json!({"id": "Patient.gender", "path": "Patient.gender", "max": "*"}),
                "higher",
            ),
            (
                json!({"id": "Patient.deceased[x]", "path": "Patient.deceased[x]", "type": [{"code": "string"}]}),
                "not allowed",
            ),
            (
                json!({"id": "Patient.nickname", "path": "Patient.nickname"}),
                "not in the base",
            ),
            (
                json!({"id": "Patient.name", "path": "Patient.gender"}),
                "does not match",
            ),
        ];
        for (el, want) in cases {
            let rtype = el["path"].as_str().unwrap().split('.').next().unwrap().to_string();
            let sd = json!({"url": "u", "type": rtype, "differential": {"element": [el]}});
            let e = generate(&sd, types(&rtype).unwrap(), &types).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }
}
