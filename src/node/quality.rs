//! Data-quality figures in the Kahn framework, kept as data arrives (never by
//! rescanning the store): per source (the client or feed sender) and resource
//! type, completeness of the elements the regional profile marks must-support,
//! conformance (resources with errors or warnings, the commonest issues),
//! plausibility (dates in the future, encounters ending before they start,
//! observation values outside physiological ranges), uniqueness (patients that
//! look like an already-known one by identifier or by demographics) and
//! timeliness (delay from the clinical event to receipt).
//!
//! The source of a write is the service handle's write context
//! (`FhirService::for_source`): the HTTP layer gives the client, feeds the
//! sending application or mapping. Figures live
//! in memory: a restarted node starts counting again (they say since when).

use crate::fhir::{Issue, Severity};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

/// What one resource tells about quality, worked out when it is checked.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Who sent it (`FhirService::for_source`), taken when the resource was checked.
    pub source: String,
    pub rtype: String,
    pub errors: usize,
    pub warnings: usize,
    pub issue_kinds: Vec<String>,
    /// (must-support element, present).
    pub must_support: Vec<(String, bool)>,
    pub implausible: Vec<String>,
    /// Receipt minus the clinical event, in milliseconds.
    pub delay_ms: Option<i64>,
    /// For patients: identifier keys (`system|value`) and a demographic key.
    pub patient: Option<(Vec<String>, Option<String>)>,
}

/// Physiological ranges by LOINC code: (low, high, UCUM unit).
const RANGES: &[(&str, f64, f64, &str, &str)] = &[
    ("8867-4", 0.0, 350.0, "/min", "heart rate"),
    ("9279-1", 0.0, 150.0, "/min", "respiratory rate"),
    ("8310-5", 20.0, 46.0, "Cel", "body temperature"),
    ("29463-7", 0.1, 700.0, "kg", "body weight"),
    ("8302-2", 20.0, 280.0, "cm", "body height"),
    ("39156-5", 5.0, 200.0, "kg/m2", "body mass index"),
    ("8480-6", 20.0, 320.0, "mm[Hg]", "systolic blood pressure"),
    ("8462-4", 10.0, 220.0, "mm[Hg]", "diastolic blood pressure"),
    ("2708-6", 0.0, 100.0, "%", "oxygen saturation"),
    ("59408-5", 0.0, 100.0, "%", "oxygen saturation"),
];

impl Facts {
    /// The facts of `v` (a resource of type `rtype`) with the issues found and the must-support paths.
    pub fn of(source: &str, rtype: &str, v: &Value, issues: &[Issue], must_support: &[String], now_ms: i64) -> Facts {
        let mut f = Facts {
            source: source.to_string(),
            rtype: rtype.to_string(),
            ..Facts::default()
        };
        for i in issues {
            match i.severity {
                Severity::Error | Severity::Fatal => f.errors += 1,
                Severity::Warning => f.warnings += 1,
                Severity::Information => continue,
            }
            f.issue_kinds.push(issue_kind(i));
        }
        let obj = v.as_object();
        for path in must_support {
            let name = path.trim_end_matches("[x]");
            let present = obj.is_some_and(|o| {
                if path.ends_with("[x]") {
                    o.keys().any(|k| k.starts_with(name) && k.len() > name.len())
                } else {
                    o.contains_key(name)
                }
            });
            f.must_support.push((path.clone(), present));
        }
        let ms = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .and_then(crate::fhir::time::parse_range)
        };
        match rtype {
            "Patient" => {
                if ms("/birthDate").is_some_and(|(lo, _)| lo > now_ms) {
                    f.implausible.push("birth date in the future".into());
                }
                let ids: Vec<String> = v
                    .get("identifier")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|i| Some(format!("{}|{}", i.get("system")?.as_str()?, i.get("value")?.as_str()?)))
                    .collect();
                let demo = (|| {
                    let name = v.pointer("/name/0")?;
                    let family = name.get("family")?.as_str()?.to_lowercase();
                    let given = name.pointer("/given/0")?.as_str()?.to_lowercase();
                    let birth = v.get("birthDate")?.as_str()?;
                    Some(format!(
                        "{family}|{given}|{birth}|{}",
                        v.get("gender").and_then(Value::as_str).unwrap_or("")
                    ))
                })();
                f.patient = Some((ids, demo));
            }
            "Encounter" => {
                if let (Some((s, _)), Some((_, e))) = (ms("/period/start"), ms("/period/end")) {
                    if e < s {
                        f.implausible.push("encounter ends before it starts".into());
                    }
                }
                f.delay_ms = ms("/period/start").map(|(lo, _)| now_ms - lo);
            }
            "Observation" => {
                f.delay_ms = ms("/effectiveDateTime")
                    .or_else(|| ms("/effectivePeriod/start"))
                    .or_else(|| ms("/effectiveInstant"))
                    .map(|(lo, _)| now_ms - lo);
                let mut check = |code: Option<&Value>, q: Option<&Value>| {
                    let (Some(code), Some(q)) = (code, q) else { return };
                    for c in code.get("coding").and_then(Value::as_array).into_iter().flatten() {
                        if c.get("system").and_then(Value::as_str) != Some("http://loinc.org") {
                            continue;
                        }
                        let code = c.get("code").and_then(Value::as_str).unwrap_or_default();
                        let Some((_, lo, hi, unit, what)) = RANGES.iter().find(|r| r.0 == code) else {
                            continue;
                        };
                        let value = q.get("value").and_then(Value::as_f64);
                        if q.get("code").and_then(Value::as_str) == Some(unit) {
                            if let Some(x) = value.filter(|x| x < lo || x > hi) {
                                f.implausible.push(format!("{what} {x} {unit} outside {lo}-{hi}"));
                            }
                        }
                    }
                };
                check(v.get("code"), v.get("valueQuantity"));
                for comp in v.get("component").and_then(Value::as_array).into_iter().flatten() {
                    check(comp.get("code"), comp.get("valueQuantity"));
                }
            }
            "Condition" => {
                f.delay_ms = ms("/recordedDate")
                    .or_else(|| ms("/onsetDateTime"))
                    .map(|(lo, _)| now_ms - lo)
            }
            "Procedure" => {
                f.delay_ms = ms("/performedDateTime")
                    .or_else(|| ms("/performedPeriod/start"))
                    .map(|(lo, _)| now_ms - lo)
            }
            "DiagnosticReport" => {
                f.delay_ms = ms("/effectiveDateTime")
                    .or_else(|| ms("/issued"))
                    .map(|(lo, _)| now_ms - lo)
            }
            "MedicationRequest" => f.delay_ms = ms("/authoredOn").map(|(lo, _)| now_ms - lo),
            _ => {}
        }
        if f.delay_ms.is_some_and(|d| d < -5 * 60_000) {
            f.implausible.push("clinical event in the future".into());
        }
        f
    }
}

fn issue_kind(i: &Issue) -> String {
    // The invariant key or the first words: enough to group, not a copy of the message.
    let text = &i.diagnostics;
    if let Some(k) = text.rsplit_once('(').and_then(|(_, k)| k.strip_suffix(')')) {
        if k.len() < 24 && !k.contains(' ') {
            return format!("{}: {k}", i.code.as_str());
        }
    }
    let at = i.expression.as_deref().map(strip_indexes).unwrap_or_default();
    format!("{} at {at}", i.code.as_str())
}

fn strip_indexes(e: &str) -> String {
    let mut out = String::with_capacity(e.len());
    let mut depth = 0;
    for c in e.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

#[derive(Debug, Default)]
struct Counters {
    received: u64,
    accepted: u64,
    rejected: u64,
    with_errors: u64,
    with_warnings: u64,
    issues: HashMap<String, u64>,
    must_support: BTreeMap<String, (u64, u64)>,
    implausible: HashMap<String, u64>,
    delays_hours: Vec<f64>,
}

#[derive(Debug, Default)]
struct Patients {
    by_identifier: HashMap<String, String>,
    by_demographics: HashMap<String, String>,
    suspected: HashSet<(String, String)>,
    known: HashSet<String>,
}

/// Counters per (source, resource type), and what tells patients apart.
#[derive(Debug, Default)]
struct Ledger {
    counters: HashMap<(String, String), Counters>,
    patients: Patients,
}

/// The node's quality figures.
#[derive(Debug)]
pub struct Book {
    since: i64,
    inner: Mutex<Ledger>,
}

impl Default for Book {
    fn default() -> Self {
        Book {
            since: crate::fhir::time::now_millis(),
            inner: Mutex::default(),
        }
    }
}

/// Delays kept per source and type for percentiles (a reservoir beyond this).
const DELAY_SAMPLES: usize = 10_000;

impl Book {
    /// Records a resource the node stored as `id`.
    pub fn accepted(&self, f: &Facts, id: &str) {
        self.record(f, Some(id));
    }

    /// Records a resource the node refused.
    pub fn rejected(&self, f: &Facts) {
        self.record(f, None);
    }

    /// Counts `f`; `stored_as` is the id it was written under (None: refused).
    fn record(&self, f: &Facts, stored_as: Option<&str>) {
        let stored = stored_as.is_some();
        let source = f.source.clone();
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Ledger { counters, patients } = &mut *guard;
        let c = counters.entry((source, f.rtype.clone())).or_default();
        c.received += 1;
        if stored {
            c.accepted += 1;
        } else {
            c.rejected += 1;
        }
        c.with_errors += (f.errors > 0) as u64;
        c.with_warnings += (f.warnings > 0) as u64;
        for k in &f.issue_kinds {
            *c.issues.entry(k.clone()).or_default() += 1;
        }
        for (path, present) in &f.must_support {
            let e = c.must_support.entry(path.clone()).or_default();
            e.0 += *present as u64;
            e.1 += 1;
        }
        for i in &f.implausible {
            *c.implausible.entry(i.clone()).or_default() += 1;
        }
        if let Some(d) = f.delay_ms.filter(|d| *d >= 0) {
            let hours = d as f64 / 3_600_000.0;
            if c.delays_hours.len() < DELAY_SAMPLES {
                c.delays_hours.push(hours);
            } else {
                let slot = (c.received as usize * 2_654_435_761) % DELAY_SAMPLES;
                c.delays_hours[slot] = hours;
            }
        }
        if let (Some(id), Some((ids, demo))) = (stored_as, &f.patient) {
            let id = &id.to_string();
            patients.known.insert(id.clone());
            for key in ids {
                match patients.by_identifier.get(key) {
                    Some(other) if other != id => {
                        patients.suspected.insert(pair(id, other));
                    }
                    Some(_) => {}
                    None => {
                        patients.by_identifier.insert(key.clone(), id.clone());
                    }
                }
            }
            if let Some(d) = demo {
                match patients.by_demographics.get(d) {
                    Some(other) if other != id => {
                        patients.suspected.insert(pair(id, other));
                    }
                    Some(_) => {}
                    None => {
                        patients.by_demographics.insert(d.clone(), id.clone());
                    }
                }
            }
        }
    }

    /// The figures as JSON (`GET /quality`).
    pub fn report(&self, region: &str) -> Value {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Ledger { counters, patients } = &*guard;
        let mut keys: Vec<&(String, String)> = counters.keys().collect();
        keys.sort();
        let share = |n: u64, d: u64| {
            if d == 0 {
                Value::Null
            } else {
                json!(round3(n as f64 / d as f64))
            }
        };
        let mut sources = Vec::new();
        let mut totals: BTreeMap<String, Counters> = BTreeMap::new();
        for key in keys {
            let c = &counters[key];
            sources.push(figures(c, Some(&key.0), &key.1, share));
            let t = totals.entry(key.1.clone()).or_default();
            merge_into(t, c);
        }
        let by_type: Vec<Value> = totals.iter().map(|(t, c)| figures(c, None, t, share)).collect();
        json!({
            "region": region,
            "since": crate::fhir::time::format_instant(self.since),
            "generatedAt": crate::fhir::time::format_instant(crate::fhir::time::now_millis()),
            "byResourceType": by_type,
            "bySource": sources,
            "uniqueness": {
                "patients": patients.known.len(),
                "likelyDuplicatePairs": patients.suspected.len(),
                "share": share(patients.suspected.len() as u64, patients.known.len() as u64),
                "rule": "a patient whose identifier (system|value) or whose family name, first given name, birth date and gender match another patient's"
            }
        })
    }

    /// Share of must-support elements present over all resources of `rtype` (None: none seen).
    pub fn completeness(&self, rtype: &str) -> Option<f64> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (mut present, mut total) = (0u64, 0u64);
        for ((_, t), c) in guard.counters.iter() {
            if t == rtype {
                for (p, n) in c.must_support.values() {
                    present += p;
                    total += n;
                }
            }
        }
        (total > 0).then(|| round3(present as f64 / total as f64))
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a < b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

fn merge_into(t: &mut Counters, c: &Counters) {
    t.received += c.received;
    t.accepted += c.accepted;
    t.rejected += c.rejected;
    t.with_errors += c.with_errors;
    t.with_warnings += c.with_warnings;
    for (k, v) in &c.issues {
        *t.issues.entry(k.clone()).or_default() += v;
    }
    for (k, (p, n)) in &c.must_support {
        let e = t.must_support.entry(k.clone()).or_default();
        e.0 += p;
        e.1 += n;
    }
    for (k, v) in &c.implausible {
        *t.implausible.entry(k.clone()).or_default() += v;
    }
    t.delays_hours.extend(c.delays_hours.iter().copied());
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn figures(c: &Counters, source: Option<&str>, rtype: &str, share: impl Fn(u64, u64) -> Value) -> Value {
    let mut issues: Vec<(&String, &u64)> = c.issues.iter().collect();
    issues.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let completeness: serde_json::Map<String, Value> = c
        .must_support
        .iter()
        .map(|(k, (p, n))| (k.clone(), json!({"present": p, "of": n, "share": share(*p, *n)})))
        .collect();
    let (ms_present, ms_total) = c.must_support.values().fold((0, 0), |a, (p, n)| (a.0 + p, a.1 + n));
    let mut delays = c.delays_hours.clone();
    delays.sort_by(f64::total_cmp);
    let pct = |q: f64| -> Value {
        if delays.is_empty() {
            Value::Null
        } else {
            json!(round3(delays[((delays.len() - 1) as f64 * q).round() as usize]))
        }
    };
    let implausible: u64 = c.implausible.values().sum();
    let mut v = json!({
        "resourceType": rtype,
        "received": c.received,
        "accepted": c.accepted,
        "rejected": c.rejected,
        "completeness": {"mustSupport": completeness, "overall": share(ms_present, ms_total)},
        "conformance": {
            "withErrors": c.with_errors,
            "withWarnings": c.with_warnings,
            "shareWithErrors": share(c.with_errors, c.received),
            "shareWithWarnings": share(c.with_warnings, c.received),
            "topIssues": issues.iter().take(10).map(|(k, n)| json!({"issue": k, "count": n})).collect::<Vec<_>>(),
        },
        "plausibility": {
            "implausible": implausible,
            "share": share(implausible, c.received),
            "kinds": c.implausible,
        },
        "timeliness": {
            "measured": delays.len(),
            "delayHoursMedian": pct(0.5),
            "delayHoursP90": pct(0.9),
        },
    });
    if let Some(s) = source {
        v["source"] = json!(s);
    }
    v
}
