//! Validation of a resource against a compiled profile: cardinality the profile
//! tightens, fixed and pattern values, required and extensible bindings,
//! slicing by value or pattern (the slices' own cardinality and constraints,
//! closed slicing), extension instances against their definitions, narrowed
//! choice types, and the profile's own invariants. The base R4 rules are the
//! base validator's; nothing here repeats them.

use super::{PElement, Profile, ProfileSet};
use crate::fhir::{Issue, IssueCode};
use serde_json::Value;

/// An issue found against a profile, with the profile it came from.
#[derive(Debug, Clone)]
pub struct Finding {
    pub profile: String,
    pub issue: Issue,
}

struct Cx<'p, 'v> {
    set: &'p ProfileSet,
    profile: &'p Profile,
    root: &'v Value,
    out: Vec<Issue>,
    depth: usize,
}

impl ProfileSet {
    /// Every issue of `resource` against `profile` (errors and warnings).
    pub fn check(&self, profile: &Profile, resource: &Value) -> Vec<Issue> {
        let mut cx = Cx {
            set: self,
            profile,
            root: resource,
            out: Vec::new(),
            depth: 0,
        };
        let rtype = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        if rtype != profile.type_name {
            cx.out.push(
                Issue::error(
                    IssueCode::Invalid,
                    format!("{} constrains {}, not {rtype}", profile.name, profile.type_name),
                )
                .at(rtype),
            );
            return cx.out;
        }
        instance(&mut cx, profile, 0, resource, rtype);
        unknown_extensions(&mut cx, resource, &mut rtype.to_string());
        cx.out
    }
}

/// Checks one instance of element `at` of `p` (its value, then its children).
fn instance<'v>(cx: &mut Cx<'_, 'v>, p: &Profile, at: usize, v: &'v Value, expr: &str) {
    let el = &p.elements[at];
    if let Some(f) = &el.fixed {
        if !same(v, f) {
            cx.out
                .push(Issue::error(IssueCode::Value, format!("must be exactly {} ({})", short(f), p.name)).at(expr));
        }
    }
    if let Some(pat) = &el.pattern {
        if !contains(v, pat) {
            cx.out.push(
                Issue::error(
                    IssueCode::Value,
                    format!("must match the pattern {} ({})", short(pat), p.name),
                )
                .at(expr),
            );
        }
    }
    if let Some(b) = &el.binding {
        binding(cx, p, el, b, v, expr);
    }
    for inv in &el.invariants {
        if let Some(mut issue) = inv.check(v, None, cx.root, cx.root, expr) {
            issue.diagnostics = format!("{} [{}]", issue.diagnostics, p.name);
            cx.out.push(issue);
        }
    }
    if let Some(url) = &el.ext_profile {
        if let Some(def) = cx.set.profiles.get(url) {
            if cx.depth < 8 && !std::ptr::eq(def, p) {
                cx.depth += 1;
                instance(cx, def, 0, v, expr);
                cx.depth -= 1;
            }
        }
    }
    if let Some(obj) = v.as_object() {
        for &c in &el.children {
            element(cx, p, c, obj, expr);
        }
    }
}

/// The values of child element `c` in `obj`, with their FHIRPaths.
fn values<'v>(
    cx: &mut Cx<'_, 'v>,
    p: &Profile,
    el: &PElement,
    obj: &'v serde_json::Map<String, Value>,
    expr: &str,
) -> Vec<(&'v Value, String)> {
    let mut found = Vec::new();
    let mut push = |key: &str, v: &'v Value| match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                if !x.is_null() {
                    found.push((x, format!("{expr}.{key}[{i}]")));
                }
            }
        }
        Value::Null => {}
        other => found.push((other, format!("{expr}.{key}"))),
    };
    if !el.choice {
        if let Some(v) = obj.get(&el.name) {
            push(&el.name, v);
        }
        return found;
    }
    let model = &crate::fhir::definitions::get().choice;
    for (k, v) in obj {
        let Some(suffix) = k.strip_prefix(el.name.as_str()) else {
            continue;
        };
        let Some(ty) = model.type_suffixes.get(suffix) else {
            continue;
        };
        if !el.types.is_empty() && !el.types.iter().any(|t| t == ty) {
            cx.out.push(
                Issue::error(
                    IssueCode::Structure,
                    format!(
                        "{} allows {}[x] to be {} only, not {ty}",
                        p.name,
                        el.name,
                        el.types.join(", ")
                    ),
                )
                .at(format!("{expr}.{k}")),
            );
            continue;
        }
        push(k, v);
    }
    found
}

/// Checks element `c` (its count, slices and each of its values) under `obj`. Most of a
/// profile's elements are absent from most instances: their paths are built only for an
/// issue or for slicing.
fn element<'v>(cx: &mut Cx<'_, 'v>, p: &Profile, c: usize, obj: &'v serde_json::Map<String, Value>, expr: &str) {
    let el = &p.elements[c];
    let items = values(cx, p, el, obj, expr);
    let at = || {
        if el.choice {
            format!("{expr}.{}[x]", el.name)
        } else {
            format!("{expr}.{}", el.name)
        }
    };
    cardinality(cx, p, el, items.len(), &at, None);
    if !el.slices.is_empty() {
        slices(cx, p, el, &items, &at());
    }
    for (v, at) in &items {
        instance(cx, p, c, v, at);
    }
}

fn cardinality(
    cx: &mut Cx<'_, '_>,
    p: &Profile,
    el: &PElement,
    n: usize,
    at: &dyn Fn() -> String,
    slice: Option<&str>,
) {
    let what = || match slice {
        Some(s) => format!("slice '{s}' of {}", el.path),
        None => el.path.clone(),
    };
    if (n as u32) < el.min && (el.min > el.base_min || slice.is_some()) {
        cx.out.push(
            Issue::error(
                IssueCode::Required,
                format!("{} requires at least {} of {}; found {n}", p.name, el.min, what()),
            )
            .at(at()),
        );
    }
    if let Some(max) = el.max {
        if n as u32 > max && (el.base_max.is_none_or(|b| max < b) || slice.is_some()) {
            cx.out.push(
                Issue::error(
                    IssueCode::Structure,
                    format!("{} allows at most {max} of {}; found {n}", p.name, what()),
                )
                .at(at()),
            );
        }
    }
}

/// Sorts the values into slices by the discriminators, then checks each slice.
fn slices<'v>(cx: &mut Cx<'_, 'v>, p: &Profile, el: &PElement, items: &[(&'v Value, String)], at: &str) {
    let Some(slicing) = &el.slicing else { return };
    // Only value and pattern discriminators can be evaluated here; other slicings are not judged.
    if slicing.discriminators.is_empty()
        || slicing
            .discriminators
            .iter()
            .any(|(t, _)| t != "value" && t != "pattern")
    {
        return;
    }
    let mut matched: Vec<Vec<usize>> = vec![Vec::new(); el.slices.len()];
    for (i, (v, item_at)) in items.iter().enumerate() {
        let slot = el.slices.iter().position(|&s| {
            slicing
                .discriminators
                .iter()
                .all(|(_, path)| discriminates(cx, p, s, path, v))
        });
        match slot {
            Some(k) => matched[k].push(i),
            None if slicing.closed => cx.out.push(
                Issue::error(
                    IssueCode::Structure,
                    format!(
                        "{} slices {} closed, and this value fits none of its slices",
                        p.name, el.path
                    ),
                )
                .at(item_at),
            ),
            None => {}
        }
    }
    for (k, &s) in el.slices.iter().enumerate() {
        let slice = &p.elements[s];
        let name = slice.slice_name.as_deref().unwrap_or_default();
        cardinality(cx, p, slice, matched[k].len(), &|| at.to_string(), Some(name));
        for &i in &matched[k] {
            let (v, item_at) = &items[i];
            instance(cx, p, s, v, item_at);
        }
    }
}

/// Whether `v` belongs to slice `s` by the discriminator `path`.
fn discriminates(cx: &Cx<'_, '_>, p: &Profile, s: usize, path: &str, v: &Value) -> bool {
    let slice = &p.elements[s];
    // Extensions are told apart by url, which their definition fixes.
    if path == "url" {
        if let Some(u) = &slice.ext_profile {
            return v.get("url").and_then(Value::as_str) == Some(u.as_str());
        }
    }
    let expected = if path == "$this" {
        slice.fixed.as_ref().or(slice.pattern.as_ref())
    } else {
        find_child(p, s, path).and_then(|c| p.elements[c].fixed.as_ref().or(p.elements[c].pattern.as_ref()))
    };
    let Some(expected) = expected else {
        let _ = cx;
        return false;
    };
    let mut found = vec![v];
    if path != "$this" {
        for seg in path.split('.') {
            let mut next = Vec::new();
            for x in found {
                match x.get(seg) {
                    Some(Value::Array(a)) => next.extend(a.iter()),
                    Some(y) => next.push(y),
                    None => {}
                }
            }
            found = next;
        }
    }
    found.iter().any(|x| contains(x, expected))
}

/// The element at `path` (dotted names) below element `s`.
fn find_child(p: &Profile, s: usize, path: &str) -> Option<usize> {
    let mut at = s;
    for seg in path.split('.') {
        at = *p.elements[at].children.iter().find(|&&c| p.elements[c].name == seg)?;
    }
    Some(at)
}

fn binding(cx: &mut Cx<'_, '_>, p: &Profile, el: &PElement, b: &super::Binding, v: &Value, expr: &str) {
    let t = el.types.first().map(String::as_str).unwrap_or("");
    let coding_verdict = |c: &Value| -> Option<bool> {
        let code = c.get("code").and_then(Value::as_str)?;
        cx.set
            .in_value_set(&b.value_set, c.get("system").and_then(Value::as_str), code)
    };
    let verdict = match (t, v) {
        (_, Value::String(code)) => cx.set.in_value_set(&b.value_set, None, code),
        ("Coding", _) => coding_verdict(v),
        ("CodeableConcept", _) => {
            let all: Vec<bool> = v
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(coding_verdict)
                .collect();
            (!all.is_empty()).then(|| all.iter().any(|x| *x))
        }
        _ => None,
    };
    if verdict != Some(false) {
        return;
    }
    let text = format!(
        "the code is not in the value set {} that {} binds ({})",
        b.value_set, p.name, b.strength
    );
    cx.out.push(if b.strength == "required" {
        Issue::error(IssueCode::CodeInvalid, text).at(expr)
    } else {
        Issue::warning(IssueCode::CodeInvalid, text).at(expr)
    });
}

/// Extensions whose definitions this node does not have: a warning each, since
/// nothing can be said of what they carry.
fn unknown_extensions(cx: &mut Cx<'_, '_>, v: &Value, expr: &mut String) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if (k == "extension" || k == "modifierExtension") && x.is_array() {
                    for (i, e) in x.as_array().into_iter().flatten().enumerate() {
                        let url = e.get("url").and_then(Value::as_str).unwrap_or_default();
                        let known = cx.set.profiles.contains_key(url)
                            || cx
                                .profile
                                .elements
                                .iter()
                                .any(|el| el.ext_profile.as_deref() == Some(url));
                        let modifier = k == "modifierExtension";
                        if !known && !url.is_empty() {
                            let text =
                                format!("extension {url} is not known to this node, so its content is not checked");
                            cx.out.push(if modifier {
                                Issue::error(IssueCode::Extension, format!("modifier {text}"))
                                    .at(format!("{expr}.{k}[{i}]"))
                            } else {
                                Issue::warning(IssueCode::Extension, text).at(format!("{expr}.{k}[{i}]"))
                            });
                        }
                    }
                } else if k != "contained" {
                    // The path grows and shrinks as the walk goes: built only for an issue.
                    let len = expr.len();
                    expr.push('.');
                    expr.push_str(k);
                    unknown_extensions(cx, x, expr);
                    expr.truncate(len);
                }
            }
        }
        Value::Array(a) => {
            let len = expr.len();
            for (i, x) in a.iter().enumerate() {
                use std::fmt::Write;
                let _ = write!(expr, "[{i}]");
                unknown_extensions(cx, x, expr);
                expr.truncate(len);
            }
        }
        _ => {}
    }
}

/// JSON equality, numbers by value.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Whether `v` carries everything `pattern` has (FHIR pattern[x] semantics).
fn contains(v: &Value, pattern: &Value) -> bool {
    match (v, pattern) {
        (Value::Object(x), Value::Object(pat)) => pat.iter().all(|(k, pv)| x.get(k).is_some_and(|xv| contains(xv, pv))),
        (Value::Array(x), Value::Array(pat)) => pat.iter().all(|pv| x.iter().any(|xv| contains(xv, pv))),
        (Value::Array(x), pv) => x.iter().any(|xv| contains(xv, pv)),
        _ => same(v, pattern),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}...", s.chars().take(77).collect::<String>())
    } else {
        s
    }
}
