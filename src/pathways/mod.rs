//! Pathways: the regions' published coding algorithms (COPD, ARLD, epilepsy) as
//! versioned definitions that every node runs identically. Pure: no I/O.
//!
//! A pathway file (`profiles/pathways/<id>.json`) holds a FHIR `Measure` and its
//! rules in Pennine's rule form:
//!
//! - `cohort`: the initial population's filters — `admissionMethod` and (optionally)
//!   `treatmentFunction` are ValueSet URLs, `lastEpisode` keeps only a spell's last
//!   episode (whose diagnoses are the spell's);
//! - `lists`: short names for the code-list ValueSets the rules use;
//! - `categories`: named conjunctions of conditions on diagnosis positions
//!   (`P` the primary, `S1`…`S12` the secondaries; later positions are never read):
//!   `{"at": "S1", "in": [lists], "notIn": [lists], "codes": [codes]}` (every member
//!   given must hold; an empty position is in no list, so `notIn` holds for it) and
//!   `{"anyOf": "S2-S12", "in": [lists]}` (some position in the range is in a list);
//! - `groups`: each MeasureReport group (`admissions`, `primary`, …) as the categories
//!   that put an episode in it (`any`) and those that keep it out (`none`).
//!
//! Every measure also has the group `mortality`: deaths in hospital (discharge
//! method 4) among the `admissions` group. ValueSets come from
//! `profiles/pathways/valuesets.json`; a new pathway is a file, not a release.

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// The highest position the algorithms read: the primary and twelve secondaries.
pub const POSITIONS: usize = 13;

const BUILT_IN: [(&str, &str); 3] = [
    ("chc-copd.json", include_str!("../../profiles/pathways/chc-copd.json")),
    ("chc-arld.json", include_str!("../../profiles/pathways/chc-arld.json")),
    (
        "chc-epilepsy.json",
        include_str!("../../profiles/pathways/chc-epilepsy.json"),
    ),
];
const BUILT_IN_VALUESETS: &str = include_str!("../../profiles/pathways/valuesets.json");

/// The group every measure has besides its rule groups.
pub const MORTALITY: &str = "mortality";
/// The rule group whose members the mortality group follows.
pub const ADMISSIONS: &str = "admissions";

pub const GROUP_SYSTEM: &str = "https://pennine.nhs.example/fhir/CodeSystem/pathway-group";
pub const STRATIFIER_SYSTEM: &str = "https://pennine.nhs.example/fhir/CodeSystem/pathway-stratifier";
const POPULATION_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/measure-population";

/// The stratifiers of every report (the hub adds `region`).
pub const STRATIFIERS: [&str; 4] = ["provider", "age-band", "sex", MONTH];
/// The stratifier of admission months (`YYYY-MM`).
pub const MONTH: &str = "month";

/// A pathway file that cannot be used, with the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("pathway {file}: {reason}")]
pub struct PathwayError {
    pub file: String,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    measure: Value,
    rules: RawRules,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRules {
    cohort: RawCohort,
    lists: BTreeMap<String, String>,
    categories: BTreeMap<String, RawCategory>,
    groups: BTreeMap<String, RawGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCohort {
    admission_method: String,
    #[serde(default)]
    treatment_function: Option<String>,
    #[serde(default)]
    last_episode: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCategory {
    all: Vec<RawCondition>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCondition {
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    any_of: Option<String>,
    #[serde(default, rename = "in")]
    in_lists: Vec<String>,
    #[serde(default)]
    not_in: Vec<String>,
    #[serde(default)]
    codes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    any: Vec<String>,
    #[serde(default)]
    none: Vec<String>,
}

type CodeSet = Arc<HashSet<String>>;

/// One condition on the diagnosis positions, over code-list bits: each code list
/// (and each explicit code set) of a pathway is one bit, and a code's mask has the
/// bits of the lists it is in (`Pathway::masks`), so a condition is a few bit
/// operations, not a set lookup per list and position.
#[derive(Debug, Clone)]
enum Condition {
    /// The code at `pos` is in one of the `in_lists` (when non-zero), in none of
    /// `not_in`, and in `codes` (when non-zero).
    At {
        pos: usize,
        in_lists: u64,
        not_in: u64,
        codes: u64,
    },
    /// Some position from `from` to `to` holds a code in one of `in_lists`.
    AnyOf { from: usize, to: usize, in_lists: u64 },
}

impl Condition {
    fn holds(&self, masks: &[u64; POSITIONS]) -> bool {
        match *self {
            Condition::At {
                pos,
                in_lists,
                not_in,
                codes,
            } => {
                let m = masks[pos];
                (in_lists == 0 || m & in_lists != 0) && m & not_in == 0 && (codes == 0 || m & codes != 0)
            }
            Condition::AnyOf { from, to, in_lists } => masks[from..=to].iter().any(|m| m & in_lists != 0),
        }
    }
}

/// The code lists of a pathway as bits, in order of first use.
#[derive(Default)]
struct ListBits(Vec<CodeSet>);

impl ListBits {
    fn bit(&mut self, set: &CodeSet) -> Result<u64, String> {
        let i = match self.0.iter().position(|s| Arc::ptr_eq(s, set)) {
            Some(i) => i,
            None => {
                self.0.push(set.clone());
                self.0.len() - 1
            }
        };
        if i >= 64 {
            return Err("a pathway may use at most 64 code lists and code sets".into());
        }
        Ok(1 << i)
    }

    fn mask(&mut self, sets: &[CodeSet]) -> Result<u64, String> {
        sets.iter().try_fold(0, |m, s| Ok(m | self.bit(s)?))
    }

    /// Each code's mask: the bits of the lists it is in.
    fn code_masks(&self) -> HashMap<String, u64> {
        let mut out: HashMap<String, u64> = HashMap::new();
        for (i, set) in self.0.iter().enumerate() {
            for code in set.iter() {
                *out.entry(code.clone()).or_default() |= 1 << i;
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
struct Group {
    code: String,
    any: Vec<usize>,
    none: Vec<usize>,
}

/// A compiled pathway.
#[derive(Debug, Clone)]
pub struct Pathway {
    pub id: String,
    pub version: String,
    pub url: String,
    /// The Measure resource, as served.
    pub measure: Value,
    admission_methods: HashSet<String>,
    treatment_functions: Option<HashSet<String>>,
    last_episode: bool,
    categories: Vec<(String, Vec<Condition>)>,
    groups: Vec<Group>,
    /// ICD-10 code → the bits of the pathway's lists it is in (`ListBits`).
    code_masks: HashMap<String, u64>,
}

/// One admitted patient care episode, as the algorithms read it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Episode {
    /// The provider's ODS code (`unknown` when absent).
    pub provider: String,
    pub admission_method: Option<String>,
    pub treatment_function: Option<String>,
    /// Whether this is the last episode of its spell.
    pub last_episode: bool,
    /// The spell's discharge date, `YYYY-MM-DD`.
    pub discharge_date: Option<String>,
    /// Discharge method 4: died in hospital.
    pub died: bool,
    pub age: Option<u32>,
    /// `male`, `female`, `other`, `unknown`.
    pub sex: Option<String>,
    /// ICD-10 codes in the 4-character form by position: 0 = primary, 1..=12 = S1..S12.
    pub diagnoses: [Option<String>; POSITIONS],
    /// The episode's record key (cell-key noise; `federation::cellkey`).
    pub key: u64,
}

/// The position index of `P`, `S1` … `S12`.
fn position(name: &str) -> Option<usize> {
    match name {
        "P" => Some(0),
        s => s
            .strip_prefix('S')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..POSITIONS).contains(n)),
    }
}

/// ValueSets by URL: the codes of their `compose.include[].concept[]`.
pub fn value_sets(bundle: &Value) -> Result<HashMap<String, CodeSet>, String> {
    let mut out = HashMap::new();
    for e in bundle["entry"].as_array().ok_or("a Bundle of ValueSets is expected")? {
        let vs = &e["resource"];
        let url = vs["url"].as_str().ok_or("a ValueSet without url")?;
        let mut codes = HashSet::new();
        for inc in vs["compose"]["include"].as_array().into_iter().flatten() {
            for c in inc["concept"].as_array().into_iter().flatten() {
                codes.insert(c["code"].as_str().ok_or("a concept without code")?.to_string());
            }
        }
        out.insert(url.to_string(), Arc::new(codes));
    }
    Ok(out)
}

impl Pathway {
    /// Compiles one pathway file against the ValueSets.
    pub fn compile(file: &str, text: &str, sets: &HashMap<String, CodeSet>) -> Result<Pathway, PathwayError> {
        let fail = |reason: String| PathwayError {
            file: file.to_string(),
            reason,
        };
        let f: File = serde_json::from_str(text).map_err(|e| fail(e.to_string()))?;
        let m = &f.measure;
        if m["resourceType"] != "Measure" {
            return Err(fail("`measure` must be a Measure resource".into()));
        }
        let text_of = |k: &str| {
            m[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| fail(format!("the Measure has no {k}")))
        };
        let (id, version, url) = (text_of("id")?, text_of("version")?, text_of("url")?);
        if !crate::fhir::is_valid_id(&id) {
            return Err(fail(format!("'{id}' is not a valid id")));
        }
        let set = |url: &str| sets.get(url).cloned().ok_or_else(|| fail(format!("no ValueSet {url}")));
        let lists: HashMap<String, CodeSet> = f
            .rules
            .lists
            .iter()
            .map(|(k, u)| Ok((k.clone(), set(u)?)))
            .collect::<Result<_, PathwayError>>()?;
        let list = |k: &str| lists.get(k).cloned().ok_or_else(|| fail(format!("no list named {k}")));
        let mut bits = ListBits::default();
        let mut categories = Vec::new();
        for (name, cat) in &f.rules.categories {
            let mut conds = Vec::new();
            for c in &cat.all {
                let in_sets = c.in_lists.iter().map(|l| list(l)).collect::<Result<Vec<_>, _>>()?;
                let in_lists = bits.mask(&in_sets).map_err(fail)?;
                let cond = match (&c.at, &c.any_of) {
                    (Some(at), None) => Condition::At {
                        pos: position(at).ok_or_else(|| fail(format!("{name}: '{at}' is not P or S1..S12")))?,
                        in_lists,
                        not_in: {
                            let sets = c.not_in.iter().map(|l| list(l)).collect::<Result<Vec<_>, _>>()?;
                            bits.mask(&sets).map_err(fail)?
                        },
                        codes: if c.codes.is_empty() {
                            0
                        } else {
                            bits.bit(&Arc::new(c.codes.iter().cloned().collect())).map_err(fail)?
                        },
                    },
                    (None, Some(range)) => {
                        let (a, b) = range
                            .split_once('-')
                            .and_then(|(a, b)| Some((position(a)?, position(b)?)))
                            .filter(|(a, b)| a <= b)
                            .ok_or_else(|| fail(format!("{name}: '{range}' is not a range such as S2-S12")))?;
                        if in_sets.is_empty() || !c.not_in.is_empty() || !c.codes.is_empty() {
                            return Err(fail(format!("{name}: anyOf takes `in` lists only")));
                        }
                        Condition::AnyOf {
                            from: a,
                            to: b,
                            in_lists,
                        }
                    }
                    _ => return Err(fail(format!("{name}: each condition needs exactly one of at, anyOf"))),
                };
                conds.push(cond);
            }
            if conds.is_empty() {
                return Err(fail(format!("category {name} has no conditions")));
            }
            categories.push((name.clone(), conds));
        }
        let index = |n: &str| {
            categories
                .iter()
                .position(|(c, _)| c == n)
                .ok_or_else(|| fail(format!("no category named {n}")))
        };
        let mut groups = Vec::new();
        for (code, g) in &f.rules.groups {
            if code == MORTALITY {
                return Err(fail("the mortality group is built in; do not define it".into()));
            }
            groups.push(Group {
                code: code.clone(),
                any: g.any.iter().map(|n| index(n)).collect::<Result<_, _>>()?,
                none: g.none.iter().map(|n| index(n)).collect::<Result<_, _>>()?,
            });
        }
        if categories.len() > 128 {
            return Err(fail("at most 128 categories".into()));
        }
        if groups.len() > 60 {
            return Err(fail("at most 60 groups".into()));
        }
        if !groups.iter().any(|g| g.code == ADMISSIONS) {
            return Err(fail("a pathway needs an `admissions` group".into()));
        }
        // The Measure's groups and the rules' must agree, mortality included.
        let declared: Vec<String> = m["group"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["code"]["coding"][0]["code"].as_str().map(str::to_string))
            .collect();
        let mut expected: Vec<String> = groups.iter().map(|g| g.code.clone()).collect();
        expected.push(MORTALITY.into());
        let (mut a, mut b) = (declared.clone(), expected.clone());
        a.sort();
        b.sort();
        if a != b {
            return Err(fail(format!(
                "the Measure's groups ({}) differ from the rules' ({})",
                declared.join(", "),
                expected.join(", ")
            )));
        }
        // Report groups in the Measure's order.
        groups.sort_by_key(|g| declared.iter().position(|d| *d == g.code));
        let set_codes = |u: &str| set(u).map(|s| (*s).clone());
        Ok(Pathway {
            id,
            version,
            url,
            measure: f.measure.clone(),
            admission_methods: set_codes(&f.rules.cohort.admission_method)?,
            treatment_functions: f
                .rules
                .cohort
                .treatment_function
                .as_deref()
                .map(set_codes)
                .transpose()?,
            last_episode: f.rules.cohort.last_episode,
            categories,
            groups,
            code_masks: bits.code_masks(),
        })
    }

    /// Each position's mask (`ListBits`): 0 for an empty position or a code in no list.
    fn masks(&self, e: &Episode) -> [u64; POSITIONS] {
        let mut out = [0; POSITIONS];
        for (m, code) in out.iter_mut().zip(&e.diagnoses) {
            if let Some(c) = code {
                *m = self.code_masks.get(c.as_str()).copied().unwrap_or(0);
            }
        }
        out
    }

    /// The group codes of a report, in order (mortality last).
    pub fn group_codes(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.groups.iter().map(|g| g.code.as_str()).collect();
        v.push(MORTALITY);
        v
    }

    /// Whether `e` passes the cohort's filters (the period aside).
    pub fn in_cohort(&self, e: &Episode) -> bool {
        (!self.last_episode || e.last_episode)
            && e.admission_method
                .as_ref()
                .is_some_and(|m| self.admission_methods.contains(m))
            && self
                .treatment_functions
                .as_ref()
                .is_none_or(|tf| e.treatment_function.as_ref().is_some_and(|t| tf.contains(t)))
    }

    /// The categories `e`'s diagnoses fall in, by name.
    pub fn categories_of(&self, e: &Episode) -> Vec<&str> {
        let masks = self.masks(e);
        self.categories
            .iter()
            .filter(|(_, conds)| conds.iter().all(|c| c.holds(&masks)))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// For each rule group (in report order), whether `e` is in it, as bits.
    fn membership(&self, e: &Episode) -> u64 {
        let masks = self.masks(e);
        let mut hits = 0u128;
        for (i, (_, conds)) in self.categories.iter().enumerate() {
            if conds.iter().all(|c| c.holds(&masks)) {
                hits |= 1 << i;
            }
        }
        let hit = |i: &usize| hits & (1 << i) != 0;
        self.groups.iter().enumerate().fold(0, |bits, (gi, g)| {
            if g.any.iter().any(hit) && !g.none.iter().any(hit) {
                bits | (1 << gi)
            } else {
                bits
            }
        })
    }

    /// Whether `e` is in `group`'s population over [`start`, `end`], and if so whether it is
    /// in its numerator (for `mortality`: an admission, and a death) — a row of a risk model.
    pub fn outcome_in(&self, e: &Episode, group: &str, start: &str, end: &str) -> Option<bool> {
        let d = e.discharge_date.as_deref()?;
        if d < start || d > end || !self.in_cohort(e) {
            return None;
        }
        let bits = self.membership(e);
        if group == MORTALITY {
            let admissions = self.groups.iter().position(|g| g.code == ADMISSIONS)?;
            return (bits & (1 << admissions) != 0).then_some(e.died);
        }
        let gi = self.groups.iter().position(|g| g.code == group)?;
        Some(bits & (1 << gi) != 0)
    }

    /// Counts over `episodes` discharged within [`start`, `end`] (`YYYY-MM-DD`, inclusive).
    pub fn count<'a>(&self, episodes: impl IntoIterator<Item = &'a Episode>, start: &str, end: &str) -> Counts {
        let codes = self.group_codes();
        let mut counts = Counts {
            groups: codes.iter().map(|c| (c.to_string(), GroupCounts::default())).collect(),
        };
        let admissions = self.groups.iter().position(|g| g.code == ADMISSIONS).unwrap_or(0);
        // First the episodes by what the report tells apart (strata, groups, death), with
        // borrowed keys; then one cell update per distinct combination, not per episode.
        type Combination<'e> = (&'e str, &'static str, &'e str, &'e str, u64, bool);
        let mut combos: HashMap<Combination<'a>, (u64, u64)> = HashMap::new();
        for e in episodes {
            let Some(d) = e.discharge_date.as_deref() else { continue };
            if d < start || d > end || !self.in_cohort(e) {
                continue;
            }
            let bits = self.membership(e);
            let key = (
                e.provider.as_str(),
                e.age.map_or("unknown", age_band),
                e.sex.as_deref().unwrap_or("unknown"),
                d.get(..7).unwrap_or("unknown"),
                bits,
                e.died,
            );
            let c = combos.entry(key).or_default();
            c.0 += 1;
            c.1 = c.1.wrapping_add(e.key);
        }
        let rules = self.groups.len();
        for ((provider, band, sex, month, bits, died), (n, keys)) in combos {
            let member = |i: usize| bits & (1 << i) != 0;
            for (gi, g) in counts.groups.iter_mut().enumerate() {
                let (in_population, in_numerator) = if gi < rules {
                    (true, member(gi))
                } else {
                    // Mortality: deaths among the admissions group.
                    (member(admissions), member(admissions) && died)
                };
                if !in_population {
                    continue;
                }
                g.1.total.add_many(in_numerator, n, keys);
                g.1.cross
                    .entry((provider.to_string(), band.to_string(), sex.to_string()))
                    .or_default()
                    .add_many(in_numerator, n, keys);
                for (s, v) in [
                    ("provider", provider),
                    ("age-band", band),
                    ("sex", sex),
                    ("month", month),
                ] {
                    g.1.strata
                        .entry((s.to_string(), v.to_string()))
                        .or_default()
                        .add_many(in_numerator, n, keys);
                }
            }
        }
        counts
    }
}

/// The published age bands.
pub fn age_band(age: u32) -> &'static str {
    match age {
        0..=44 => "0-44",
        45..=64 => "45-64",
        65..=74 => "65-74",
        75..=84 => "75-84",
        _ => "85+",
    }
}

/// Population and numerator of one cell (the denominator is the population), with
/// the cell keys of each (wrapping sums of their episodes' record keys).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cell {
    pub population: u64,
    pub numerator: u64,
    #[serde(default)]
    pub population_key: u64,
    #[serde(default)]
    pub numerator_key: u64,
}

impl Cell {
    /// Adds `n` episodes whose record keys sum to `keys`.
    fn add_many(&mut self, numerator: bool, n: u64, keys: u64) {
        self.population += n;
        self.population_key = self.population_key.wrapping_add(keys);
        if numerator {
            self.numerator += n;
            self.numerator_key = self.numerator_key.wrapping_add(keys);
        }
    }

    /// The sum of two cells (pooling regions).
    pub fn plus(self, o: Cell) -> Cell {
        Cell {
            population: self.population + o.population,
            numerator: self.numerator + o.numerator,
            population_key: self.population_key.wrapping_add(o.population_key),
            numerator_key: self.numerator_key.wrapping_add(o.numerator_key),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupCounts {
    pub total: Cell,
    /// (stratifier, value) → cell.
    #[serde(with = "strata_as_list")]
    pub strata: BTreeMap<(String, String), Cell>,
    /// (provider, age band, sex) → cell: what risk adjustment needs (`benchmark`).
    #[serde(default, with = "cross_as_list")]
    pub cross: BTreeMap<(String, String, String), Cell>,
}

mod cross_as_list {
    use super::Cell;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    type Key = (String, String, String);

    pub fn serialize<S: Serializer>(m: &BTreeMap<Key, Cell>, s: S) -> Result<S::Ok, S::Error> {
        m.iter()
            .map(|((p, a, x), c)| (p, a, x, c))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Key, Cell>, D::Error> {
        let v: Vec<(String, String, String, Cell)> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|(p, a, x, c)| ((p, a, x), c)).collect())
    }
}

/// Exact counts of one evaluation, per group in report order.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub groups: Vec<(String, GroupCounts)>,
}

mod strata_as_list {
    use super::Cell;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(m: &BTreeMap<(String, String), Cell>, s: S) -> Result<S::Ok, S::Error> {
        m.iter().map(|((k, v), c)| (k, v, c)).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<(String, String), Cell>, D::Error> {
        let v: Vec<(String, String, Cell)> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|(k, s, c)| ((k, s), c)).collect())
    }
}

fn coding(system: &str, code: &str) -> Value {
    json!({"coding": [{"system": system, "code": code}]})
}

fn populations(c: &Cell) -> Value {
    json!([
        {"code": coding(POPULATION_SYSTEM, "initial-population"), "count": c.population},
        {"code": coding(POPULATION_SYSTEM, "denominator"), "count": c.population},
        {"code": coding(POPULATION_SYSTEM, "numerator"), "count": c.numerator},
    ])
}

fn score(c: &Cell) -> Option<Value> {
    (c.population > 0).then(|| json!({"value": c.numerator as f64 / c.population as f64}))
}

/// A summary MeasureReport of exact counts (a node's own data, for its analysts).
pub fn measure_report(p: &Pathway, counts: &Counts, start: &str, end: &str, reporter: &str, now: &str) -> Value {
    let groups: Vec<Value> = counts
        .groups
        .iter()
        .map(|(code, g)| {
            let mut stratifiers = Vec::new();
            for s in STRATIFIERS {
                let strata: Vec<Value> = g
                    .strata
                    .iter()
                    .filter(|((k, _), _)| k == s)
                    .map(|((_, v), c)| {
                        let mut stratum = json!({"value": {"text": v}, "population": populations(c)});
                        if let Some(sc) = score(c) {
                            stratum["measureScore"] = sc;
                        }
                        stratum
                    })
                    .collect();
                stratifiers.push(json!({"code": [coding(STRATIFIER_SYSTEM, s)], "stratum": strata}));
            }
            let mut group = json!({
                "code": coding(GROUP_SYSTEM, code),
                "population": populations(&g.total),
                "stratifier": stratifiers,
            });
            if let Some(sc) = score(&g.total) {
                group["measureScore"] = sc;
            }
            group
        })
        .collect();
    json!({
        "resourceType": "MeasureReport",
        "status": "complete",
        "type": "summary",
        "measure": format!("{}|{}", p.url, p.version),
        "date": now,
        "reporter": {"display": reporter},
        "period": {"start": start, "end": end},
        "group": groups,
    })
}

/// The pathways a server runs: the built-in set, or a folder's.
#[derive(Debug, Clone)]
pub struct Library {
    pub origin: String,
    pathways: Vec<Arc<Pathway>>,
}

impl Library {
    /// The pathways compiled into the binary (`profiles/pathways/`).
    pub fn built_in() -> Arc<Library> {
        static LIB: std::sync::OnceLock<Arc<Library>> = std::sync::OnceLock::new();
        LIB.get_or_init(|| {
            let sets = value_sets(&serde_json::from_str(BUILT_IN_VALUESETS).expect("valuesets.json is well-formed"))
                .expect("built-in value sets are checked by a test");
            let pathways = BUILT_IN
                .iter()
                .map(|(f, t)| {
                    Pathway::compile(f, t, &sets)
                        .map(Arc::new)
                        .expect("built-in pathways are checked by a test")
                })
                .collect();
            Arc::new(Library {
                origin: "built-in".into(),
                pathways,
            })
        })
        .clone()
    }

    /// Every `*.json` pathway file of `dir`, with its `valuesets.json`. A broken
    /// file stops the load, naming the file and the reason.
    pub fn load_dir(dir: &Path) -> Result<Library, PathwayError> {
        let fail = |file: &Path, reason: String| PathwayError {
            file: file.display().to_string(),
            reason,
        };
        let vs_path = dir.join("valuesets.json");
        let vs_text = std::fs::read_to_string(&vs_path).map_err(|e| fail(&vs_path, e.to_string()))?;
        let vs_json: Value = serde_json::from_str(&vs_text).map_err(|e| fail(&vs_path, e.to_string()))?;
        let sets = value_sets(&vs_json).map_err(|e| fail(&vs_path, e))?;
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| fail(dir, e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json") && p.file_name().is_some_and(|n| n != "valuesets.json")
            })
            .collect();
        files.sort();
        let mut pathways: Vec<Arc<Pathway>> = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| fail(&f, e.to_string()))?;
            let p = Pathway::compile(&f.display().to_string(), &text, &sets)?;
            if pathways.iter().any(|q| q.id == p.id) {
                return Err(fail(&f, format!("a second pathway with id {}", p.id)));
            }
            pathways.push(Arc::new(p));
        }
        Ok(Library {
            origin: dir.display().to_string(),
            pathways,
        })
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Pathway>> {
        self.pathways.iter().find(|p| p.id == id)
    }

    pub fn all(&self) -> &[Arc<Pathway>] {
        &self.pathways
    }
}

pub mod benchmark;

#[cfg(test)]
mod tests;
