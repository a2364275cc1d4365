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
//! sending application or mapping. Figures live in the store: a unit of work
//! adds its writes' figures in its own transaction (`QualityDelta`), so they
//! count exactly what committed, survive restarts and are shared by every
//! process on one PostgreSQL database. Refusals have no transaction: they wait
//! in memory and go with the next unit of work (the report adds those waiting).

use crate::fhir::{Issue, Severity};
use crate::store::{QualityCounts, QualityDelta, QualityTotals};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
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
    /// Delay bucket → (resources, sum of delays in ms).
    delays: BTreeMap<u32, (u64, i64)>,
}

/// Timeliness buckets: one per hour for a week, then one per day.
fn delay_bucket(ms: i64) -> u32 {
    let hours = (ms / 3_600_000).max(0) as u64;
    if hours < 168 {
        hours as u32
    } else {
        (168 + (hours - 168) / 24).min(100_000) as u32
    }
}

/// What a refused resource adds to the figures.
fn refused(f: &Facts) -> QualityDelta {
    QualityDelta {
        counts: counts(f, false),
        patients: Vec::new(),
    }
}

/// What a checked resource adds to the quality figures once it is written, worked out
/// on the request thread so that the single writer only sums figures.
#[derive(Debug, Default)]
pub struct Recorded {
    pub counts: QualityCounts,
    /// For patients: their keys (kind, key) for the uniqueness rule.
    pub patient_keys: Option<Vec<(String, String)>>,
}

impl Recorded {
    pub fn of(f: &Facts) -> Recorded {
        Recorded {
            counts: counts(f, true),
            patient_keys: patient_keys(f),
        }
    }
}

fn counts(f: &Facts, accepted: bool) -> QualityCounts {
    let mut counts = QualityCounts::new();
    let mut add = |metric: String, n: i64| {
        *counts.entry((f.source.clone(), f.rtype.clone(), metric)).or_default() += n;
    };
    add("received".into(), 1);
    add(if accepted { "accepted" } else { "rejected" }.into(), 1);
    if f.errors > 0 {
        add("errors".into(), 1);
    }
    if f.warnings > 0 {
        add("warnings".into(), 1);
    }
    for k in &f.issue_kinds {
        add(format!("issue\t{k}"), 1);
    }
    for (path, present) in &f.must_support {
        add(format!("ms\t{path}"), 1);
        if *present {
            add(format!("ms+\t{path}"), 1);
        }
    }
    for i in &f.implausible {
        add(format!("implausible\t{i}"), 1);
    }
    if let Some(ms) = f.delay_ms.filter(|d| *d >= 0) {
        let b = delay_bucket(ms);
        add(format!("delay\t{b}"), 1);
        add(format!("delayms\t{b}"), ms);
    }
    counts
}

fn patient_keys(f: &Facts) -> Option<Vec<(String, String)>> {
    let (ids, demo) = f.patient.as_ref()?;
    let mut keys: Vec<(String, String)> = ids.iter().map(|k| ("identifier".to_string(), k.clone())).collect();
    if let Some(demo) = demo {
        keys.push(("demographics".into(), demo.clone()));
    }
    Some(keys)
}

impl Counters {
    fn add(&mut self, metric: &str, n: i64) {
        let u = n.max(0) as u64;
        let (kind, rest) = metric.split_once('\t').unwrap_or((metric, ""));
        match kind {
            "received" => self.received += u,
            "accepted" => self.accepted += u,
            "rejected" => self.rejected += u,
            "errors" => self.with_errors += u,
            "warnings" => self.with_warnings += u,
            "issue" => *self.issues.entry(rest.to_string()).or_default() += u,
            "ms" => self.must_support.entry(rest.to_string()).or_default().1 += u,
            "ms+" => self.must_support.entry(rest.to_string()).or_default().0 += u,
            "implausible" => *self.implausible.entry(rest.to_string()).or_default() += u,
            "delay" => {
                if let Ok(b) = rest.parse() {
                    self.delays.entry(b).or_default().0 += u;
                }
            }
            "delayms" => {
                if let Ok(b) = rest.parse() {
                    self.delays.entry(b).or_default().1 += n;
                }
            }
            _ => {}
        }
    }
}

/// The node's quality figures: refusals waiting for the next unit of work, and a
/// short-lived cache of the stored totals.
#[derive(Debug, Default)]
pub struct Book {
    pending: Mutex<QualityDelta>,
    /// Delta rows this process added since it last folded them.
    pub(super) added: std::sync::atomic::AtomicU64,
    cache: Mutex<Option<(std::time::Instant, std::sync::Arc<QualityTotals>)>>,
}

/// Stored totals are read again after this long (each federated question asks for completeness).
const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl Book {
    /// Records a resource the node refused; it is stored with the next unit of work.
    /// Returns whether so many wait that they should be stored now.
    pub fn rejected(&self, f: &Facts) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.merge(refused(f));
        pending.counts.len() > 1_000
    }

    /// The refusals waiting to be stored (taken: give them back if the unit fails).
    pub(super) fn take_pending(&self) -> QualityDelta {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(super) fn give_back(&self, d: QualityDelta) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).merge(d);
    }

    /// The stored totals, read at most once a `CACHE_FOR`.
    pub(super) fn totals(
        &self,
        read: impl FnOnce() -> Result<QualityTotals, crate::store::StoreError>,
    ) -> Result<std::sync::Arc<QualityTotals>, crate::store::StoreError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, t)) = cache.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return Ok(t.clone());
            }
        }
        let t = std::sync::Arc::new(read()?);
        *cache = Some((std::time::Instant::now(), t.clone()));
        Ok(t)
    }

    /// Forgets the cached totals (after this process wrote, its own reads see it at once).
    pub(super) fn invalidate(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Per (source, type) counters from the stored totals and the refusals waiting.
    fn counters(&self, totals: &QualityTotals) -> HashMap<(String, String), Counters> {
        let mut counters: HashMap<(String, String), Counters> = HashMap::new();
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner()).counts.clone();
        let stored = totals.counts.iter().map(|(k, n)| (k, *n));
        for ((source, rtype, metric), n) in stored.chain(pending.iter().map(|(k, n)| (k, *n))) {
            counters
                .entry((source.clone(), rtype.clone()))
                .or_default()
                .add(metric, n);
        }
        counters
    }

    /// The figures as JSON (`GET /quality`).
    pub fn report(&self, totals: &QualityTotals, region: &str) -> Value {
        let counters = self.counters(totals);
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
        let mut by_type: BTreeMap<String, Counters> = BTreeMap::new();
        for key in keys {
            let c = &counters[key];
            sources.push(figures(c, Some(&key.0), &key.1, share));
            merge_into(by_type.entry(key.1.clone()).or_default(), c);
        }
        let by_type: Vec<Value> = by_type.iter().map(|(t, c)| figures(c, None, t, share)).collect();
        let since = totals.since.unwrap_or_else(crate::fhir::time::now_millis);
        json!({
            "region": region,
            "since": crate::fhir::time::format_instant(since),
            "generatedAt": crate::fhir::time::format_instant(crate::fhir::time::now_millis()),
            "byResourceType": by_type,
            "bySource": sources,
            "uniqueness": {
                "patients": totals.patients,
                "likelyDuplicatePairs": totals.pairs,
                "share": share(totals.pairs, totals.patients),
                "rule": "a patient whose identifier (system|value) or whose family name, first given name, birth date and gender match another patient's"
            }
        })
    }

    /// Share of must-support elements present over all resources of `rtype` (None: none seen).
    pub fn completeness(&self, totals: &QualityTotals, rtype: &str) -> Option<f64> {
        let (mut present, mut total) = (0u64, 0u64);
        for ((_, t), c) in self.counters(totals) {
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
    for (b, (n, ms)) in &c.delays {
        let e = t.delays.entry(*b).or_default();
        e.0 += n;
        e.1 += ms;
    }
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
    // A percentile is the mean delay of the bucket it falls in: exact to within an hour
    // below a week, a day beyond.
    let measured: u64 = c.delays.values().map(|(n, _)| n).sum();
    let pct = |q: f64| -> Value {
        if measured == 0 {
            return Value::Null;
        }
        let rank = ((measured - 1) as f64 * q).round() as u64;
        let mut seen = 0;
        for (n, ms) in c.delays.values() {
            seen += n;
            if rank < seen {
                return json!(round3(*ms as f64 / *n as f64 / 3_600_000.0));
            }
        }
        Value::Null
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
            "measured": measured,
            "delayHoursMedian": pct(0.5),
            "delayHoursP90": pct(0.9),
        },
    });
    if let Some(s) = source {
        v["source"] = json!(s);
    }
    v
}
