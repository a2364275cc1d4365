//! Statistical disclosure control: the one place every released number passes.
//!
//! The gate decides per row — one group in one region, or pooled — and releases
//! a row only when every one of its cells passes; a withheld row is left out
//! whole, its group key included, so a partner cannot tell a withheld group
//! from an empty one. Rules, in order (SECURITY.md gives the reasons):
//! 1. Contributors: a row is withheld when the distinct people behind it (the
//!    view's subject column) number from 1 to `min_cell − 1`.
//! 2. Small counts: the same for every count, the count behind every sum, mean
//!    and standard deviation, and both the true and the false count of a
//!    true/false measure.
//! 3. Dominance: a sum or mean is withheld when its two largest contributions
//!    make up more than 85% of its total magnitude (unless `min_cell` is 1, a
//!    setting that releases single people's figures by design).
//! 4. Secondary suppression, repeated until nothing changes: where one row of a
//!    group is withheld beside a released pooled row, or one row of a column
//!    (one region, or pooled, across groups), another row goes too.
//! 5. Pooled rows need `min_regions` answering regions and a question put to
//!    every region (a pooled row over a subset would difference with the whole).
//! 6. Released counts are perturbed by cell-key noise of at most `noise` (the
//!    same records always get the same noise) and rounded to `rounding`. Every
//!    other figure is consistent with the released counts: a sum of true/false
//!    values is a count; a share is the released count over the released count;
//!    a sum is the released mean times the released count; means and standard
//!    deviations keep three significant figures. With `rounding` 1 and `noise` 0
//!    the figures are exact.
//!
//! Minimum and maximum are never computed, so never released.

use super::cellkey::perturbation;
use super::{CellStats, Function, Kind, MeasureStats, Plan, PooledGroup};
use crate::views::decimal_value;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disclosure {
    pub min_cell: u64,
    pub rounding: u64,
    /// Largest perturbation of a released count; 0 switches noise off.
    pub noise: u64,
    pub min_regions: usize,
}

impl Default for Disclosure {
    fn default() -> Self {
        Disclosure {
            min_cell: 10,
            rounding: 5,
            noise: 2,
            min_regions: 3,
        }
    }
}

/// A sum or mean whose two largest contributions exceed this share of its total
/// magnitude is withheld (the (2, 85%) dominance rule).
pub const DOMINANCE: f64 = 0.85;

/// Significant figures kept in released means, standard deviations and sums.
pub const SIGNIFICANT_FIGURES: i32 = 3;

/// Why a row was withheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    FewContributors,
    SmallCount,
    Dominated,
    Secondary,
}

impl Reason {
    fn text(self, d: &Disclosure) -> String {
        let below = d.min_cell.saturating_sub(1);
        match self {
            Reason::FewContributors => format!("fewer than {} people behind them (1 to {below})", d.min_cell),
            Reason::SmallCount => format!("a count, or the count behind a figure, from 1 to {below}"),
            Reason::Dominated => format!(
                "a sum or mean dominated by its two largest contributions (over {:.0}%)",
                DOMINANCE * 100.0
            ),
            Reason::Secondary => {
                "secondary suppression, so that withheld rows cannot be recovered from the others".into()
            }
        }
    }
}

/// One released row: a region (or `pooled`), its group key and one value per measure.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleasedRow {
    region: String,
    key: Vec<Value>,
    cells: Vec<Value>,
}

impl ReleasedRow {
    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn cell(&self, measure: usize) -> Option<&Value> {
        self.cells.get(measure)
    }
}

/// What the gate lets out. Only the gate makes one; everyone else can read and
/// serialise it, never add to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    group_by: Vec<String>,
    measures: Vec<String>,
    rows: Vec<ReleasedRow>,
    withheld: Vec<(Reason, usize)>,
    notes: Vec<String>,
    pooled: bool,
}

impl Release {
    pub fn rows(&self) -> &[ReleasedRow] {
        &self.rows
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Whether pooled rows could be produced.
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// How many rows were withheld (for the audit trail, not for partners).
    pub fn withheld_rows(&self) -> usize {
        self.withheld.iter().map(|(_, n)| n).sum()
    }

    /// The rows as JSON objects: `region`, the group key, the measures, and an
    /// empty `suppressed` (kept for clients that read it: rows with a withheld
    /// cell are never released).
    pub fn rows_json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    let mut o = Map::new();
                    o.insert("region".into(), Value::String(r.region.clone()));
                    for (name, v) in self.group_by.iter().zip(&r.key) {
                        o.insert(name.clone(), v.clone());
                    }
                    for (name, v) in self.measures.iter().zip(&r.cells) {
                        o.insert(name.clone(), v.clone());
                    }
                    o.insert("suppressed".into(), Value::Array(vec![]));
                    Value::Object(o)
                })
                .collect(),
        )
    }

    /// The rows as CSV with a header line.
    pub fn csv(&self) -> Vec<u8> {
        use crate::views::output::{csv_text, write_csv_line};
        let mut out = Vec::new();
        // `suppressed` stays as the last column (always empty), as in the JSON rows.
        let header: Vec<&str> = std::iter::once("region")
            .chain(self.group_by.iter().map(String::as_str))
            .chain(self.measures.iter().map(String::as_str))
            .chain(std::iter::once("suppressed"))
            .collect();
        write_csv_line(header.into_iter(), &mut out);
        for r in &self.rows {
            let fields: Vec<String> = std::iter::once(r.region.clone())
                .chain(r.key.iter().map(csv_text))
                .chain(r.cells.iter().map(csv_text))
                .chain(std::iter::once(String::new()))
                .collect();
            write_csv_line(fields.iter().map(String::as_str), &mut out);
        }
        out
    }
}

impl Disclosure {
    /// The stricter of two settings, field by field.
    pub fn stricter(self, other: Disclosure) -> Disclosure {
        Disclosure {
            min_cell: self.min_cell.max(other.min_cell),
            rounding: self.rounding.max(other.rounding),
            noise: self.noise.max(other.noise),
            min_regions: self.min_regions.max(other.min_regions),
        }
    }

    /// Whether `self` is at least as strict as `other` in every field.
    pub fn at_least_as_strict_as(&self, other: &Disclosure) -> bool {
        self.min_cell >= other.min_cell
            && self.rounding >= other.rounding
            && self.noise >= other.noise
            && self.min_regions >= other.min_regions
    }

    /// Whether released figures are exact (no rounding, no noise).
    pub fn exact(&self) -> bool {
        self.rounding <= 1 && self.noise == 0
    }

    pub fn round(&self, n: u64) -> u64 {
        if self.rounding <= 1 {
            return n;
        }
        (n + self.rounding / 2) / self.rounding * self.rounding
    }

    fn small(&self, n: u64) -> bool {
        n > 0 && n < self.min_cell
    }

    /// A count as released: perturbed by the cell's key, never below `min_cell`
    /// when the true count is not, then rounded. The perturbation depends on the
    /// cell's records and the true value only, so every figure derived from the
    /// same count (a count, a share's denominator, a sum) sees the same released
    /// value and the noise cannot be averaged away across them.
    pub fn release_count(&self, n: u64, cell_key: u64) -> u64 {
        let mut v = (n as i64 + perturbation(cell_key, 0, n, self.noise)).max(0) as u64;
        if n >= self.min_cell {
            v = v.max(self.min_cell);
        }
        self.round(v)
    }

    /// Why a cell may not be released, if it may not.
    fn check(&self, plan: &Plan, cell: &CellStats) -> Result<u64, Reason> {
        if self.small(cell.contributors) {
            return Err(Reason::FewContributors);
        }
        let mut support = cell.contributors;
        for (m, stats) in plan.measures.iter().zip(&cell.measures) {
            match (m.kind, stats) {
                (Kind::Boolean, MeasureStats::Moments(mo)) => {
                    let trues = mo.sum().round().clamp(0.0, mo.n as f64) as u64;
                    if self.small(mo.n) || self.small(trues) || self.small(mo.n - trues) {
                        return Err(Reason::SmallCount);
                    }
                    support = support.min(mo.n);
                }
                (_, MeasureStats::Moments(mo)) => {
                    if self.small(mo.n) {
                        return Err(Reason::SmallCount);
                    }
                    // With min_cell 1 the governance releases single people's figures anyway.
                    if self.min_cell > 1 && mo.n > 0 && mo.top_two_share() > DOMINANCE {
                        return Err(Reason::Dominated);
                    }
                    support = support.min(mo.n);
                }
                (_, other) => {
                    if self.small(other.support()) {
                        return Err(Reason::SmallCount);
                    }
                    support = support.min(other.support());
                }
            }
        }
        Ok(support)
    }

    /// The released value of one measure of a cell that passed.
    fn value(&self, plan: &Plan, mi: usize, cell: &CellStats) -> Value {
        let m = &plan.measures[mi];
        let stats = &cell.measures[mi];
        let exact = self.exact();
        match (m.kind, stats) {
            (Kind::Count | Kind::Distinct, s) => Value::from(self.release_count(s.support(), cell.cell_key)),
            (Kind::Boolean, MeasureStats::Moments(mo)) => {
                let trues = mo.sum().round().clamp(0.0, mo.n as f64) as u64;
                let t = self.release_count(trues, cell.cell_key);
                match m.function {
                    Function::Mean => {
                        let n = self.release_count(mo.n, cell.cell_key);
                        if n == 0 {
                            Value::Null
                        } else if exact {
                            decimal_value(trues as f64 / mo.n as f64)
                        } else {
                            decimal_value(significant(t as f64 / n as f64))
                        }
                    }
                    _ => Value::from(t),
                }
            }
            (_, MeasureStats::Moments(mo)) => {
                let figure = match m.function {
                    Function::Mean => mo.mean().map(|x| if exact { x } else { significant(x) }),
                    Function::Stddev => mo.sample_stddev().map(|x| if exact { x } else { significant(x) }),
                    _ if exact => Some(mo.sum()),
                    // A sum consistent with the released count: sum ÷ mean gives that count, not the true one.
                    _ => mo
                        .mean()
                        .map(|mean| significant(significant(mean) * self.release_count(mo.n, cell.cell_key) as f64)),
                };
                figure.map(decimal_value).unwrap_or(Value::Null)
            }
            (_, s) => Value::from(self.release_count(s.support(), cell.cell_key)),
        }
    }

    /// Releases the pooled groups of a question. `regions` names the answering
    /// regions, in the order of each group's `regions`; `every_region_asked` says
    /// whether the question went to every region the hub federates.
    pub fn release(
        &self,
        plan: &Plan,
        regions: &[String],
        groups: &[PooledGroup],
        every_region_asked: bool,
    ) -> Release {
        let pooled_allowed = regions.len() >= self.min_regions && every_region_asked;
        let cols = regions.len() + 1; // column 0 is pooled
        fn cell_of(g: &PooledGroup, c: usize, pooled_allowed: bool) -> Option<&CellStats> {
            if c == 0 {
                pooled_allowed.then_some(&g.pooled)
            } else {
                g.regions[c - 1].as_ref()
            }
        }
        // support[g][c]: None where the row does not exist; reason[g][c]: why it is withheld.
        let mut support: Vec<Vec<Option<u64>>> = Vec::with_capacity(groups.len());
        let mut reason: Vec<Vec<Option<Reason>>> = Vec::with_capacity(groups.len());
        for g in groups {
            let mut s = Vec::with_capacity(cols);
            let mut r = Vec::with_capacity(cols);
            for c in 0..cols {
                match cell_of(g, c, pooled_allowed).map(|cell| self.check(plan, cell)) {
                    None => {
                        s.push(None);
                        r.push(None);
                    }
                    Some(Ok(n)) => {
                        s.push(Some(n));
                        r.push(None);
                    }
                    Some(Err(why)) => {
                        s.push(Some(cell_of(g, c, pooled_allowed).map_or(0, |cell| cell.contributors)));
                        r.push(Some(why));
                    }
                }
            }
            support.push(s);
            reason.push(r);
        }
        secondary(&support, &mut reason, cols);

        let mut rows = Vec::new();
        let mut withheld: Vec<(Reason, usize)> = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            for c in 0..cols {
                let Some(cell) = cell_of(g, c, pooled_allowed) else {
                    continue;
                };
                if let Some(why) = reason[gi][c] {
                    match withheld.iter_mut().find(|(r, _)| *r == why) {
                        Some((_, n)) => *n += 1,
                        None => withheld.push((why, 1)),
                    }
                    continue;
                }
                rows.push(ReleasedRow {
                    region: if c == 0 {
                        "pooled".into()
                    } else {
                        regions[c - 1].clone()
                    },
                    key: g.key.clone(),
                    cells: (0..plan.measures.len()).map(|mi| self.value(plan, mi, cell)).collect(),
                });
            }
        }
        withheld.sort();
        let mut notes = vec![
            "a row is released only when every figure in it passes; withheld rows are left out, so a missing row may be empty or withheld".to_string(),
            format!(
                "rows with {} are withheld",
                Reason::FewContributors.text(self)
            ),
        ];
        for why in [Reason::SmallCount, Reason::Dominated, Reason::Secondary] {
            notes.push(format!("rows with {} are withheld", why.text(self)));
        }
        if self.exact() {
            notes.push("released figures are exact".into());
        } else {
            if self.noise > 0 {
                notes.push(format!(
                    "counts are perturbed by at most {} (the same records always get the same perturbation)",
                    self.noise
                ));
            }
            if self.rounding > 1 {
                notes.push(format!(
                    "counts (and sums of true/false columns) are rounded to the nearest {}",
                    self.rounding
                ));
            }
            notes.push(format!(
                "means, standard deviations and sums keep {SIGNIFICANT_FIGURES} significant figures; shares and sums are computed from the released counts"
            ));
        }
        notes.push("minimum and maximum are never released".into());
        if !pooled_allowed {
            notes.push(if every_region_asked {
                format!(
                    "pooled rows are withheld: they need at least {} answering regions and {} answered",
                    self.min_regions,
                    regions.len()
                )
            } else {
                "pooled rows are withheld: they are released only for questions put to every region".into()
            });
        }
        Release {
            group_by: plan.group_by_names.clone(),
            measures: plan.measures.iter().map(|m| m.name.clone()).collect(),
            rows,
            withheld,
            notes,
            pooled: pooled_allowed,
        }
    }
}

/// A federated count as released: the pooled total and each region's count,
/// `None` where withheld.
#[derive(Debug, Clone, PartialEq)]
pub struct CountRelease {
    total: Option<u64>,
    regions: Vec<Option<u64>>,
    notes: Vec<String>,
}

impl CountRelease {
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// The released count of the `i`th answering region.
    pub fn region(&self, i: usize) -> Option<u64> {
        self.regions.get(i).copied().flatten()
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

impl Disclosure {
    /// Releases one count per answering region (count, cell key) and their
    /// total. Unlike grouped rows, a count below `min_cell` is withheld even
    /// when it is zero: otherwise "0" beside "withheld" tells which region holds
    /// a person the question singles out.
    pub fn release_counts(&self, counts: &[(u64, u64)], every_region_asked: bool) -> CountRelease {
        let mut hidden: Vec<bool> = counts.iter().map(|(n, _)| *n < self.min_cell).collect();
        let total: u64 = counts.iter().map(|(n, _)| n).sum();
        let total_key = counts.iter().fold(0u64, |k, (_, c)| k.wrapping_add(*c));
        let pooled_allowed = counts.len() >= self.min_regions && every_region_asked;
        let mut total_hidden = !pooled_allowed || total < self.min_cell;
        if !total_hidden && hidden.iter().filter(|h| **h).count() == 1 {
            // The withheld region would be the total minus the others.
            let pick = (0..counts.len()).filter(|&i| !hidden[i]).min_by_key(|&i| counts[i].0);
            match pick {
                Some(i) => hidden[i] = true,
                None => total_hidden = true,
            }
        }
        let mut notes = vec![
            format!(
                "counts below {} (zero included) are withheld, and others with them where a withheld one could be recovered",
                self.min_cell
            ),
            "federated counts accept approved parameters only, with whole-year date ranges".into(),
        ];
        if self.noise > 0 {
            notes.push(format!("counts are perturbed by at most {}", self.noise));
        }
        if self.rounding > 1 {
            notes.push(format!("counts are rounded to the nearest {}", self.rounding));
        }
        if !pooled_allowed {
            notes.push(format!(
                "the total needs at least {} answering regions",
                self.min_regions
            ));
        }
        CountRelease {
            total: (!total_hidden).then(|| self.release_count(total, total_key)),
            regions: counts
                .iter()
                .zip(&hidden)
                .map(|((n, key), h)| (!h).then(|| self.release_count(*n, *key)))
                .collect(),
            notes,
        }
    }
}

impl Disclosure {
    /// Data-quality figures as the hub releases them: counts of records from 1
    /// to `min_cell − 1` are withheld (`null`) and the others rounded; a share
    /// or other fraction beside a withheld count is withheld too (it would give
    /// the count back), and the rest keep two decimal places.
    pub fn release_quality(&self, v: &mut Value) {
        match v {
            Value::Array(items) => items.iter_mut().for_each(|i| self.release_quality(i)),
            Value::Object(o) => {
                let mut withheld_here = false;
                for (_, x) in o.iter_mut() {
                    if let Some(n) = x.as_u64() {
                        if self.small(n) {
                            *x = Value::Null;
                            withheld_here = true;
                        } else {
                            *x = Value::from(self.round(n));
                        }
                    }
                }
                for (_, x) in o.iter_mut() {
                    match x {
                        Value::Number(n) if n.as_u64().is_none() => {
                            *x = if withheld_here {
                                Value::Null
                            } else {
                                // Kept a decimal (1.0, not 1), so a share never reads as a count.
                                n.as_f64()
                                    .and_then(|f| serde_json::Number::from_f64((f * 100.0).round() / 100.0))
                                    .map_or(Value::Null, Value::Number)
                            };
                        }
                        Value::Array(_) | Value::Object(_) => self.release_quality(x),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// Rounds to `SIGNIFICANT_FIGURES` significant figures.
pub fn significant(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let magnitude = x.abs().log10().floor() as i32;
    let scale = 10f64.powi(SIGNIFICANT_FIGURES - 1 - magnitude);
    let r = (x * scale).round() / scale;
    // Trim the binary noise of the division (0.30000000000000004).
    format!("{r:.*e}", (SIGNIFICANT_FIGURES - 1) as usize)
        .parse()
        .unwrap_or(r)
}

/// Withholds further rows until no withheld row can be recovered by
/// subtraction: across regions within a group (pooled = sum of regions) and
/// down each column across groups (a total over groups is known elsewhere).
fn secondary(support: &[Vec<Option<u64>>], reason: &mut [Vec<Option<Reason>>], cols: usize) {
    // A released row that may be withheld to protect another: it exists and is not empty.
    let candidate = |s: Option<u64>, r: Option<Reason>| s.is_some_and(|s| s > 0) && r.is_none();
    loop {
        let mut changed = false;
        for g in 0..support.len() {
            let pooled_released = support[g][0].is_some() && reason[g][0].is_none();
            let withheld = (1..cols).filter(|&c| reason[g][c].is_some()).count();
            if pooled_released && withheld == 1 {
                let pick = (1..cols)
                    .filter(|&c| candidate(support[g][c], reason[g][c]))
                    .min_by_key(|&c| support[g][c]);
                reason[g][pick.unwrap_or(0)] = Some(Reason::Secondary);
                changed = true;
            }
        }
        for c in 0..cols {
            let withheld = (0..support.len()).filter(|&g| reason[g][c].is_some()).count();
            if withheld == 1 {
                let pick = (0..support.len())
                    .filter(|&g| candidate(support[g][c], reason[g][c]))
                    .min_by_key(|&g| support[g][c]);
                if let Some(g) = pick {
                    reason[g][c] = Some(Reason::Secondary);
                    changed = true;
                }
            }
        }
        if !changed {
            return;
        }
    }
}

/// The stratifier of the region × month table (monthly admissions per region); its
/// values are `region|month`.
pub const REGION_MONTH: &str = "region-month";

/// Withholds further cells of the region × month table until none withheld can be
/// recovered by subtraction from a released margin: a region's row adds up to the
/// region's released total, a month's column to the pooled month. A row or column
/// with exactly one withheld cell beside its released margin gets its smallest other
/// cell withheld too, and again until nothing changes (withholding in a row can leave
/// a column with one, and so on). A margin that is itself withheld protects its cells.
fn table_suppression(
    pooled: &std::collections::BTreeMap<(Option<String>, String), Vec<crate::pathways::Cell>>,
    reasons: &mut std::collections::BTreeMap<(Option<String>, String), String>,
    secondary: &str,
) {
    type Key = (Option<String>, String);
    let cells: Vec<(&Key, &str, &str, u64)> = pooled
        .iter()
        .filter(|(k, _)| k.0.as_deref() == Some(REGION_MONTH))
        .filter_map(|(k, c)| {
            let (r, m) = k.1.split_once('|')?;
            Some((k, r, m, c.iter().map(|c| c.population).sum::<u64>()))
        })
        .collect();
    let margin_released = |stratifier: &str, value: &str| {
        let key = (Some(stratifier.to_string()), value.to_string());
        pooled.contains_key(&key) && !reasons.contains_key(&key)
    };
    let lines: Vec<Vec<usize>> = {
        let mut by_region: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        let mut by_month: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for (i, (_, r, m, _)) in cells.iter().enumerate() {
            if margin_released("region", r) {
                by_region.entry(r).or_default().push(i);
            }
            if margin_released(crate::pathways::MONTH, m) {
                by_month.entry(m).or_default().push(i);
            }
        }
        by_region.into_values().chain(by_month.into_values()).collect()
    };
    loop {
        let mut changed = false;
        for line in &lines {
            let withheld = line.iter().filter(|&&i| reasons.contains_key(cells[i].0)).count();
            if withheld != 1 {
                continue;
            }
            let pick = line
                .iter()
                .filter(|&&i| !reasons.contains_key(cells[i].0) && cells[i].3 > 0)
                .min_by_key(|&&i| cells[i].3);
            if let Some(&i) = pick {
                reasons.insert(cells[i].0.clone(), secondary.to_string());
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
}

/// One released cell of a MeasureReport: population (= denominator) and numerator
/// as released, and the score.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleasedCell {
    pub population: u64,
    pub numerator: u64,
    pub score: Option<f64>,
}

/// A row of a measure release: one stratum (or the total) across every group.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureRow {
    /// `None` for the total; else the stratifier (`provider`, `region`, ...).
    pub stratifier: Option<String>,
    pub value: String,
    /// Per group, in report order: the released cell, or `None` when the group has
    /// no one in this stratum.
    cells: Option<Vec<Option<ReleasedCell>>>,
    /// Why the row is withheld.
    withheld: Option<String>,
}

impl MeasureRow {
    /// The released cell of group `g`, if the row is released and the group present.
    pub fn cell(&self, g: usize) -> Option<&ReleasedCell> {
        self.cells.as_ref()?.get(g)?.as_ref()
    }

    pub fn withheld(&self) -> Option<&str> {
        self.withheld.as_deref()
    }
}

/// What the gate releases of a pathway's pooled counts. Only the gate builds one.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureRelease {
    groups: Vec<String>,
    rows: Vec<MeasureRow>,
    notes: Vec<String>,
}

impl MeasureRelease {
    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    pub fn rows(&self) -> &[MeasureRow] {
        &self.rows
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

impl Disclosure {
    /// Releases a pathway's counts from the regions that answered with the version
    /// asked. A row (the total, or one stratum) is released whole across the groups
    /// or not at all: every cell needs a population of at least `min_cell`, and its
    /// numerator and the rest of its population each 0 or at least `min_cell` (so a
    /// proportion cannot single out a few people either way). Strata of a stratifier
    /// add up to the total, so a stratifier never has exactly one withheld stratum
    /// beside a released total (the smallest other is withheld with it); when the
    /// total is withheld, nothing is released. Pooled rows need `min_regions`
    /// answering regions of a question put to all. Counts are perturbed by their
    /// cell keys and rounded; scores are released over released counts.
    pub fn release_measure(
        &self,
        groups: &[String],
        regions: &[(String, &crate::pathways::Counts)],
        every_region_asked: bool,
    ) -> MeasureRelease {
        use crate::pathways::Cell;
        use std::collections::BTreeMap;
        // Pooled cells per row key: (stratifier, value) -> per group.
        let mut pooled: BTreeMap<(Option<String>, String), Vec<Cell>> = BTreeMap::new();
        let blank = || vec![Cell::default(); groups.len()];
        for (region, counts) in regions {
            for (gi, code) in groups.iter().enumerate() {
                let Some((_, g)) = counts.groups.iter().find(|(c, _)| c == code) else {
                    continue;
                };
                let total = pooled.entry((None, "total".into())).or_insert_with(blank);
                total[gi] = total[gi].plus(g.total);
                let by_region = pooled
                    .entry((Some("region".into()), region.clone()))
                    .or_insert_with(blank);
                by_region[gi] = by_region[gi].plus(g.total);
                for ((s, v), c) in &g.strata {
                    let row = pooled.entry((Some(s.clone()), v.clone())).or_insert_with(blank);
                    row[gi] = row[gi].plus(*c);
                    if s == crate::pathways::MONTH {
                        // The region's own month: a cell of the region × month table.
                        let cross = pooled
                            .entry((Some(REGION_MONTH.into()), format!("{region}|{v}")))
                            .or_insert_with(blank);
                        cross[gi] = cross[gi].plus(*c);
                    }
                }
            }
        }
        let pooled_allowed = every_region_asked && regions.len() >= self.min_regions;
        let small = |n: u64| n > 0 && n < self.min_cell;
        let mut reasons: BTreeMap<(Option<String>, String), String> = BTreeMap::new();
        for (key, cells) in &pooled {
            let is_region = key.0.as_deref() == Some("region");
            if !is_region && !pooled_allowed {
                reasons.insert(
                    key.clone(),
                    format!("pooled figures need at least {} answering regions", self.min_regions),
                );
                continue;
            }
            let bad = cells
                .iter()
                .filter(|c| c.population > 0)
                .any(|c| c.population < self.min_cell || small(c.numerator) || small(c.population - c.numerator));
            if bad {
                reasons.insert(key.clone(), Reason::SmallCount.text(self));
            }
        }
        // Secondary suppression within each stratifier.
        let total_key = (None, "total".to_string());
        if reasons.contains_key(&total_key) || !pooled.contains_key(&total_key) {
            for key in pooled.keys() {
                reasons
                    .entry(key.clone())
                    .or_insert_with(|| "the total is withheld, and with it every stratum".into());
            }
        } else {
            let mut stratifiers: Vec<String> = pooled.keys().filter_map(|(s, _)| s.clone()).collect();
            stratifiers.dedup();
            // The region × month table has two margins of its own (below).
            stratifiers.retain(|s| s != REGION_MONTH);
            for s in stratifiers {
                loop {
                    let rows: Vec<&(Option<String>, String)> = pooled
                        .keys()
                        .filter(|(k, _)| k.as_deref() == Some(s.as_str()))
                        .collect();
                    let withheld = rows.iter().filter(|k| reasons.contains_key(**k)).count();
                    if withheld != 1 {
                        break;
                    }
                    let pick = rows
                        .iter()
                        .filter(|k| !reasons.contains_key(**k))
                        .min_by_key(|k| pooled[**k].iter().map(|c| c.population).sum::<u64>())
                        .map(|k| (*k).clone());
                    match pick {
                        Some(k) => {
                            reasons.insert(k, Reason::Secondary.text(self));
                        }
                        None => break,
                    }
                }
            }
        }
        if !reasons.contains_key(&total_key) {
            table_suppression(&pooled, &mut reasons, &Reason::Secondary.text(self));
        }
        let exact = self.exact();
        let release = |c: &Cell| {
            if c.population == 0 {
                return None;
            }
            let population = self.release_count(c.population, c.population_key);
            let numerator = self.release_count(c.numerator, c.numerator_key).min(population);
            let score = if exact {
                Some(c.numerator as f64 / c.population as f64)
            } else {
                (population > 0).then(|| significant(numerator as f64 / population as f64))
            };
            Some(ReleasedCell {
                population,
                numerator,
                score,
            })
        };
        let rows = pooled
            .iter()
            .map(|(key, cells)| {
                let withheld = reasons.get(key).cloned();
                MeasureRow {
                    stratifier: key.0.clone(),
                    value: key.1.clone(),
                    cells: withheld.is_none().then(|| cells.iter().map(release).collect()),
                    withheld,
                }
            })
            .collect();
        let mut notes = vec![format!(
            "a stratum is released whole across the groups or withheld: populations below {} and numerators, or the rest of a population, from 1 to {} are withheld",
            self.min_cell,
            self.min_cell.saturating_sub(1)
        )];
        if self.noise > 0 {
            notes.push(format!("counts are perturbed by at most {}", self.noise));
        }
        if self.rounding > 1 {
            notes.push(format!(
                "counts are rounded to the nearest {}; scores are computed from the released counts",
                self.rounding
            ));
        }
        MeasureRelease {
            groups: groups.to_vec(),
            rows,
            notes,
        }
    }
}

/// One provider row of a released benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkRow {
    provider: String,
    region: String,
    figures: Option<Value>,
    withheld: Option<String>,
}

/// What the gate releases of a benchmark. Only the gate builds one.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkRelease {
    rows: Vec<BenchmarkRow>,
    funnel: Vec<crate::pathways::benchmark::FunnelPoint>,
    notes: Vec<String>,
}

impl BenchmarkRelease {
    /// The provider table: released rows with their figures, withheld rows with
    /// provider, region and the reason only.
    pub fn providers_json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    let mut o = Map::new();
                    o.insert("provider".into(), Value::from(r.provider.clone()));
                    o.insert("region".into(), Value::from(r.region.clone()));
                    if let Some(Value::Object(f)) = &r.figures {
                        o.extend(f.clone());
                    }
                    o.insert(
                        "withheld".into(),
                        r.withheld.clone().map(Value::from).unwrap_or(Value::Null),
                    );
                    Value::Object(o)
                })
                .collect(),
        )
    }

    pub fn funnel_json(&self) -> Value {
        Value::Array(
            self.funnel
                .iter()
                .map(|p| {
                    serde_json::json!({"expected": p.expected, "lower95": p.lower95, "upper95": p.upper95,
                        "lower998": p.lower998, "upper998": p.upper998})
                })
                .collect(),
        )
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn released(&self) -> usize {
        self.rows.iter().filter(|r| r.figures.is_some()).count()
    }

    pub fn withheld(&self) -> usize {
        self.rows.len() - self.released()
    }

    /// The provider table as CSV (withheld rows keep provider, region and the reason).
    pub fn csv(&self) -> Vec<u8> {
        let mut w = ::csv::Writer::from_writer(Vec::new());
        let cols = ["n", "observed", "expected", "smr", "flag95", "flag998"];
        let _ = w.write_record(
            ["provider", "region"]
                .iter()
                .chain(cols.iter())
                .chain(["withheld"].iter()),
        );
        for r in &self.rows {
            let mut rec = vec![r.provider.clone(), r.region.clone()];
            for c in cols {
                rec.push(match r.figures.as_ref().map(|f| &f[c]) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(v) => v.to_string(),
                });
            }
            rec.push(r.withheld.clone().unwrap_or_default());
            let rec: Vec<String> = rec
                .iter()
                .map(|f| crate::views::output::spreadsheet_safe(f).into_owned())
                .collect();
            let _ = w.write_record(&rec);
        }
        w.into_inner().unwrap_or_default()
    }
}

impl Disclosure {
    /// Releases providers' risk-adjusted figures. A provider's row is released only
    /// when its cohort, its deaths (the numerator) and its survivors are each at least
    /// `min_cell`, and the pooled rates behind `expected` come from at least
    /// `min_regions` regions; otherwise the provider is named with the reason and no
    /// figure. `n` and `observed` are released as counts (perturbed and rounded as
    /// the settings say); the ratio and the flags are computed from the exact values;
    /// the pooled rates themselves are never released.
    pub fn release_benchmark(
        &self,
        figures: &[crate::pathways::benchmark::ProviderFigures],
        regions_answering: usize,
    ) -> BenchmarkRelease {
        use crate::pathways::benchmark::{flag, funnel};
        let pooled_ok = regions_answering >= self.min_regions;
        let exact = self.exact();
        let mut rows = Vec::new();
        let mut spans: Vec<f64> = Vec::new();
        for f in figures {
            let survivors = f.n - f.observed;
            let withheld = if !pooled_ok {
                Some(format!(
                    "expected counts need pooled rates from at least {} answering regions",
                    self.min_regions
                ))
            } else if f.n < self.min_cell || f.observed < self.min_cell || survivors < self.min_cell {
                Some(format!(
                    "the cohort, its deaths and its survivors must each be at least {}",
                    self.min_cell
                ))
            } else {
                None
            };
            let figures = withheld.is_none().then(|| {
                spans.push(f.expected);
                let smr = f.ratio();
                let shown = |x: f64| if exact { x } else { significant(x) };
                serde_json::json!({
                    "n": self.release_count(f.n, f.n_key),
                    "observed": self.release_count(f.observed, f.observed_key),
                    "expected": shown(f.expected),
                    "smr": smr.map(shown),
                    "flag95": flag(f.observed, f.expected, 0.05),
                    "flag998": flag(f.observed, f.expected, 0.002),
                })
            });
            rows.push(BenchmarkRow {
                provider: f.provider.clone(),
                region: f.region.clone(),
                figures,
                withheld,
            });
        }
        let lo = spans.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = spans.iter().cloned().fold(0.0, f64::max);
        let funnel = if spans.is_empty() {
            funnel(1.0, 10.0, 12)
        } else {
            funnel(lo, hi, 12)
        };
        let mut notes = vec![format!(
            "a provider is released when its cohort, deaths and survivors are each at least {}; expected counts use the pooled rate of each age band and sex across the answering regions, which is not released",
            self.min_cell
        )];
        if !exact {
            notes.push(format!(
                "n and observed are released perturbed (at most {}) and rounded to {}; expected, smr and the flags are computed from the exact values (3 significant figures)",
                self.noise, self.rounding
            ));
        }
        BenchmarkRelease { rows, funnel, notes }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AggregateQuery, CellStats, MeasureStats, Moments, Plan, PooledGroup};
    use super::*;
    use serde_json::json;

    fn plan(measures: Value) -> Plan {
        AggregateQuery::parse(&json!({"viewReference": "patient_demographics", "groupBy": ["gender"],
            "measures": measures}))
        .unwrap()
        .plan()
        .unwrap()
    }

    fn counts() -> Plan {
        plan(json!([{"name": "n", "function": "count"}]))
    }

    fn cell(n: u64, key: u64) -> CellStats {
        CellStats {
            contributors: n,
            cell_key: key,
            measures: vec![MeasureStats::Count(n)],
        }
    }

    fn group(key: &str, counts: &[u64]) -> PooledGroup {
        PooledGroup {
            key: vec![json!(key)],
            regions: counts
                .iter()
                .enumerate()
                .map(|(i, &n)| Some(cell(n, i as u64)))
                .collect(),
            pooled: cell(counts.iter().sum(), (0..counts.len() as u64).sum()),
        }
    }

    fn names() -> Vec<String> {
        ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect()
    }

    fn released(r: &Release) -> Vec<(String, String)> {
        r.rows()
            .iter()
            .map(|row| (row.key[0].as_str().unwrap().to_string(), row.region().to_string()))
            .collect()
    }

    #[test]
    fn a_withheld_row_takes_its_key_and_another_row_with_it() {
        let d = Disclosure::default();
        let groups = [group("x", &[3, 40, 50, 60]), group("y", &[30, 40, 50, 60])];
        let r = d.release(&counts(), &names(), &groups, true);
        let out = released(&r);
        assert!(
            !out.contains(&("x".into(), "a".into())),
            "the small row is not released"
        );
        // b/x (smallest other in group x) and a/y (only other in column a) follow.
        assert!(r.withheld_rows() >= 3, "{out:?}");
        assert!(!r.rows_json().to_string().contains("null"), "no withheld cell is shown");
        for row in r.rows() {
            let n = row.cell(0).unwrap().as_u64().unwrap();
            assert_eq!(n % 5, 0);
        }
    }

    #[test]
    fn pooled_rows_need_enough_regions_and_every_region_asked() {
        let d = Disclosure::default();
        let r = d.release(&counts(), &names()[..2], &[group("x", &[30, 40])], true);
        assert!(!r.pooled());
        assert!(r.rows().iter().all(|row| row.region() != "pooled"));
        let r = d.release(&counts(), &names()[..3], &[group("x", &[30, 40, 50])], false);
        assert!(!r.pooled(), "a subset of regions gets no pooled row");
    }

    #[test]
    fn noise_follows_the_records_and_exact_settings_are_exact() {
        let d = Disclosure::default();
        let same = (0..20).map(|_| d.release_count(37, 12345)).collect::<Vec<_>>();
        assert!(
            same.windows(2).all(|w| w[0] == w[1]),
            "asking again gives the same figure"
        );
        let spread: std::collections::BTreeSet<u64> = (0..200).map(|k| d.release_count(37, k)).collect();
        assert!(spread.len() >= 2, "different records, different noise: {spread:?}");
        assert!(spread.iter().all(|v| v % 5 == 0 && (30..=40).contains(v)), "{spread:?}");
        let exact = Disclosure {
            min_cell: 1,
            rounding: 1,
            noise: 0,
            min_regions: 1,
        };
        assert_eq!(exact.release_count(37, 99), 37);
    }

    #[test]
    fn sums_and_shares_are_consistent_with_released_counts() {
        let p = plan(json!([{"name": "n", "function": "count"},
            {"name": "deaths", "function": "sum", "column": "deceased"},
            {"name": "share", "function": "mean", "column": "deceased"}]));
        let mut m = Moments::default();
        for i in 0..37 {
            m.push(if i < 12 { 1.0 } else { 0.0 });
        }
        let c = CellStats {
            contributors: 37,
            cell_key: 7,
            measures: vec![
                MeasureStats::Count(37),
                MeasureStats::Moments(m.clone()),
                MeasureStats::Moments(m),
            ],
        };
        let d = Disclosure::default();
        let n = d.value(&p, 0, &c).as_u64().unwrap();
        let deaths = d.value(&p, 1, &c).as_u64().unwrap();
        let share = d.value(&p, 2, &c).as_f64().unwrap();
        assert_eq!(n % 5, 0);
        assert_eq!(deaths % 5, 0, "a sum of true/false values is a count");
        assert_ne!(share, 12.0 / 37.0, "the exact share would reveal the exact count");
        let few = CellStats {
            contributors: 37,
            cell_key: 7,
            measures: {
                let mut m = Moments::default();
                for i in 0..37 {
                    m.push(if i < 3 { 1.0 } else { 0.0 });
                }
                vec![
                    MeasureStats::Count(37),
                    MeasureStats::Moments(m.clone()),
                    MeasureStats::Moments(m),
                ]
            },
        };
        assert_eq!(
            d.check(&p, &few),
            Err(Reason::SmallCount),
            "three deaths are a small count"
        );
    }

    #[test]
    fn a_zero_count_looks_like_a_small_one() {
        let d = Disclosure::default();
        let r = d.release_counts(&[(0, 1), (3, 2), (0, 3), (0, 4)], true);
        assert_eq!(r.total(), None);
        assert!((0..4).all(|i| r.region(i).is_none()), "0 and 3 look alike");
        let r = d.release_counts(&[(40, 1), (50, 2), (60, 3), (1, 4)], true);
        assert!(r.total().is_some());
        assert_eq!(r.region(3), None);
        assert_eq!(r.region(0), None, "the smallest other region goes too");
    }

    #[test]
    fn the_region_by_month_table_is_suppressed_until_no_cell_can_be_recovered() {
        use crate::pathways::Cell;
        type Key = (Option<String>, String);
        let cell = |n: u64| {
            vec![Cell {
                population: n,
                ..Cell::default()
            }]
        };
        // Regions a, b, c over months 1..3. Only a|1 is small. Withholding the smallest
        // other cell of a's row (a|2) leaves month 2 with one withheld cell, which takes
        // b|2 (smaller than c|2), which leaves b's row with one... and so on until every
        // line has none or at least two.
        let table = [("a", [3, 20, 40]), ("b", [50, 15, 60]), ("c", [70, 90, 30])];
        let mut pooled: std::collections::BTreeMap<Key, Vec<Cell>> = Default::default();
        for (r, counts) in table {
            pooled.insert((Some("region".into()), r.into()), cell(counts.iter().sum()));
            for (m, n) in counts.iter().enumerate() {
                pooled.insert((Some(REGION_MONTH.into()), format!("{r}|{}", m + 1)), cell(*n));
            }
        }
        for m in 1..=3 {
            let n: u64 = table.iter().map(|(_, c)| c[m - 1]).sum();
            pooled.insert((Some("month".into()), m.to_string()), cell(n));
        }
        let key = |r: &str, m: usize| (Some(REGION_MONTH.to_string()), format!("{r}|{m}"));
        let mut reasons: std::collections::BTreeMap<Key, String> = Default::default();
        reasons.insert(key("a", 1), "small".into());
        table_suppression(&pooled, &mut reasons, "secondary");
        // Every released margin's line has zero or at least two withheld cells.
        for r in ["a", "b", "c"] {
            let w = (1..=3).filter(|m| reasons.contains_key(&key(r, *m))).count();
            assert_ne!(w, 1, "row {r}: {reasons:?}");
        }
        for m in 1..=3 {
            let w = ["a", "b", "c"]
                .iter()
                .filter(|r| reasons.contains_key(&key(r, m)))
                .count();
            assert_ne!(w, 1, "month {m}: {reasons:?}");
        }
        // It took more than one pass: b|2 protects a|2 in month 2.
        assert!(reasons.contains_key(&key("b", 2)), "{reasons:?}");
        // A withheld margin protects its line: with region a withheld, a's row needs
        // nothing more, but month 1 needs a second withheld cell (b|1), which leaves b's
        // row with one (b|2, the smallest); months 2 and 3 are withheld, so that is all.
        let mut reasons: std::collections::BTreeMap<Key, String> = Default::default();
        reasons.insert((Some("region".into()), "a".into()), "small".into());
        reasons.insert((Some("month".into()), "2".into()), "small".into());
        reasons.insert((Some("month".into()), "3".into()), "small".into());
        reasons.insert(key("a", 1), "small".into());
        table_suppression(&pooled, &mut reasons, "secondary");
        assert!(
            reasons.contains_key(&key("b", 1)) && reasons.contains_key(&key("b", 2)),
            "{reasons:?}"
        );
        assert_eq!(reasons.len(), 6, "{reasons:?}");
    }

    #[test]
    fn significant_figures() {
        assert_eq!(significant(41.297297), 41.3);
        assert_eq!(significant(0.0012345), 0.00123);
        assert_eq!(significant(123456.0), 123000.0);
        assert_eq!(significant(-5.4321), -5.43);
    }
}
