//! Statistical disclosure control: the one place every released number passes.
//!
//! Rules, in order:
//! 1. Primary suppression: a cell whose count (or the count behind its sum,
//!    mean or standard deviation) is above 0 and below `min_cell` is withheld.
//! 2. Secondary suppression, repeated until nothing changes: within a group,
//!    if exactly one region's cell is withheld while the pooled cell is
//!    released, the region's value could be recovered as pooled minus the
//!    others, so the smallest other released region cell is withheld too (or
//!    the pooled cell if there is none); the same rule runs down each column
//!    (one region, or pooled, across groups), which protects against
//!    differencing with a query that has no grouping.
//! 3. Released counts are rounded to the nearest `rounding`.
//! 4. Pooled rows need `min_regions` answering regions.
//!
//! Minimum and maximum are never computed, so never released.

use super::{AggregateQuery, Function, MeasureStats, PooledGroup};
use crate::views::decimal_value;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disclosure {
    pub min_cell: u64,
    pub rounding: u64,
    pub min_regions: usize,
}

impl Default for Disclosure {
    fn default() -> Self {
        Disclosure {
            min_cell: 10,
            rounding: 5,
            min_regions: 3,
        }
    }
}

/// What the gate lets out.
#[derive(Debug, Clone, Default)]
pub struct Released {
    pub rows: Vec<Value>,
    pub notes: Vec<String>,
    /// Whether pooled rows were produced.
    pub pooled: bool,
}

impl Disclosure {
    /// The stricter of two settings, field by field.
    pub fn stricter(self, other: Disclosure) -> Disclosure {
        Disclosure {
            min_cell: self.min_cell.max(other.min_cell),
            rounding: self.rounding.max(other.rounding),
            min_regions: self.min_regions.max(other.min_regions),
        }
    }

    /// Whether `self` is at least as strict as `other` in every field.
    pub fn at_least_as_strict_as(&self, other: &Disclosure) -> bool {
        self.min_cell >= other.min_cell && self.rounding >= other.rounding && self.min_regions >= other.min_regions
    }

    pub fn round(&self, n: u64) -> u64 {
        if self.rounding <= 1 {
            return n;
        }
        (n + self.rounding / 2) / self.rounding * self.rounding
    }

    fn primary(&self, support: u64) -> bool {
        support > 0 && support < self.min_cell
    }

    /// Releases the pooled groups of `q`. `regions` names the columns of each
    /// group's `regions` (the answering regions, in order). `boolean[m]` says
    /// that measure `m` summarises a true/false column: its sum is then a count
    /// (rounded), and its sum and mean are protected by the smaller of the
    /// true and false counts, since a share of a rare event discloses it.
    pub fn release(
        &self,
        q: &AggregateQuery,
        regions: &[String],
        groups: &[PooledGroup],
        boolean: &[bool],
    ) -> Released {
        let support = |mi: usize, s: &MeasureStats| -> u64 {
            match s {
                MeasureStats::Moments(m) if boolean.get(mi).copied().unwrap_or(false) => {
                    let trues = m.sum().round().max(0.0) as u64;
                    if trues == 0 || trues >= m.n {
                        m.n
                    } else {
                        trues.min(m.n - trues)
                    }
                }
                other => other.support(),
            }
        };
        let pooled_allowed = regions.len() >= self.min_regions;
        let cols = regions.len() + 1; // column 0 is pooled
        let nm = q.measures.len();
        // support[g][c][m]: None where the cell does not exist.
        let support: Vec<Vec<Vec<Option<u64>>>> = groups
            .iter()
            .map(|g| {
                let mut row = vec![if pooled_allowed {
                    g.pooled
                        .iter()
                        .enumerate()
                        .map(|(mi, s)| Some(support(mi, s)))
                        .collect()
                } else {
                    vec![None; nm]
                }];
                for r in &g.regions {
                    row.push(match r {
                        Some(stats) => stats.iter().enumerate().map(|(mi, s)| Some(support(mi, s))).collect(),
                        None => vec![None; nm],
                    });
                }
                row
            })
            .collect();
        let mut hidden: Vec<Vec<Vec<bool>>> = support
            .iter()
            .map(|g| {
                g.iter()
                    .map(|c| c.iter().map(|s| s.is_some_and(|s| self.primary(s))).collect())
                    .collect()
            })
            .collect();
        let primary_count = hidden.iter().flatten().flatten().filter(|h| **h).count();
        self.secondary(&support, &mut hidden, cols, nm);
        let total_hidden = hidden.iter().flatten().flatten().filter(|h| **h).count();

        let mut rows = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            for c in 0..cols {
                let stats = if c == 0 {
                    if !pooled_allowed {
                        continue;
                    }
                    &g.pooled
                } else {
                    match &g.regions[c - 1] {
                        Some(s) => s,
                        None => continue,
                    }
                };
                let mut obj = Map::new();
                obj.insert(
                    "region".into(),
                    Value::String(if c == 0 {
                        "pooled".into()
                    } else {
                        regions[c - 1].clone()
                    }),
                );
                for (name, v) in q.group_by.iter().zip(&g.key) {
                    obj.insert(name.clone(), v.clone());
                }
                let mut suppressed = Vec::new();
                for (mi, m) in q.measures.iter().enumerate() {
                    let value = if hidden[gi][c][mi] {
                        suppressed.push(Value::String(m.name.clone()));
                        Value::Null
                    } else if m.function.is_count() {
                        Value::from(self.round(stats[mi].support()))
                    } else if m.function == Function::Sum && boolean.get(mi).copied().unwrap_or(false) {
                        let trues = stats[mi].value(Function::Sum).unwrap_or(0.0).round().max(0.0) as u64;
                        Value::from(self.round(trues))
                    } else {
                        stats[mi].value(m.function).map(decimal_value).unwrap_or(Value::Null)
                    };
                    obj.insert(m.name.clone(), value);
                }
                obj.insert("suppressed".into(), Value::Array(suppressed));
                rows.push(Value::Object(obj));
            }
        }
        let mut notes = vec![format!(
            "counts from 1 to {} are withheld; sums, means and standard deviations are withheld when the count behind them is",
            self.min_cell.saturating_sub(1)
        )];
        if self.rounding > 1 {
            notes.push(format!(
                "released counts (and sums of true/false columns) are rounded to the nearest {}; other sums, means and standard deviations are not",
                self.rounding
            ));
        }
        notes.push("minimum and maximum are never released".into());
        if primary_count > 0 {
            notes.push(format!("{primary_count} cell(s) withheld as small counts"));
        }
        if total_hidden > primary_count {
            notes.push(format!(
                "{} further cell(s) withheld so that withheld cells cannot be recovered from the others (secondary suppression)",
                total_hidden - primary_count
            ));
        }
        if !pooled_allowed {
            notes.push(format!(
                "pooled rows are withheld: they need at least {} answering regions and {} answered",
                self.min_regions,
                regions.len()
            ));
        }
        Released {
            rows,
            notes,
            pooled: pooled_allowed,
        }
    }

    fn secondary(&self, support: &[Vec<Vec<Option<u64>>>], hidden: &mut [Vec<Vec<bool>>], cols: usize, nm: usize) {
        // A released cell that may be withheld to protect another: it exists and is not zero.
        let candidate = |s: Option<u64>, h: bool| s.is_some_and(|s| s > 0) && !h;
        loop {
            let mut changed = false;
            for m in 0..nm {
                // Across regions within each group: pooled = sum of regions.
                for g in 0..support.len() {
                    let pooled_released = support[g][0][m].is_some() && !hidden[g][0][m];
                    let withheld = (1..cols).filter(|&c| hidden[g][c][m]).count();
                    if pooled_released && withheld == 1 {
                        let pick = (1..cols)
                            .filter(|&c| candidate(support[g][c][m], hidden[g][c][m]))
                            .min_by_key(|&c| support[g][c][m]);
                        hidden[g][pick.unwrap_or(0)][m] = true;
                        changed = true;
                    }
                }
                // Down each column across groups: a total over groups is known elsewhere.
                for c in 0..cols {
                    let withheld = (0..support.len()).filter(|&g| hidden[g][c][m]).count();
                    if withheld == 1 {
                        let pick = (0..support.len())
                            .filter(|&g| candidate(support[g][c][m], hidden[g][c][m]))
                            .min_by_key(|&g| support[g][c][m]);
                        if let Some(g) = pick {
                            hidden[g][c][m] = true;
                            changed = true;
                        }
                    }
                }
            }
            if !changed {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AggregateQuery, MeasureStats, PooledGroup};
    use super::*;
    use serde_json::json;

    fn q() -> AggregateQuery {
        AggregateQuery::parse(&json!({"viewReference": "v", "groupBy": ["g"],
            "measures": [{"name": "n", "function": "count"}]}))
        .unwrap()
    }

    fn group(key: &str, counts: &[u64]) -> PooledGroup {
        PooledGroup {
            key: vec![json!(key)],
            regions: counts.iter().map(|&n| Some(vec![MeasureStats::Count(n)])).collect(),
            pooled: vec![MeasureStats::Count(counts.iter().sum())],
        }
    }

    fn names() -> Vec<String> {
        ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_single_small_cell_takes_another_with_it() {
        let d = Disclosure::default();
        let groups = [group("x", &[3, 40, 50, 60]), group("y", &[30, 40, 50, 60])];
        let r = d.release(&q(), &names(), &groups, &[false]);
        let withheld: Vec<(String, String)> = r
            .rows
            .iter()
            .filter(|row| row["n"].is_null())
            .map(|row| {
                (
                    row["g"].as_str().unwrap().into(),
                    row["region"].as_str().unwrap().into(),
                )
            })
            .collect();
        // a/x is small; b/x (smallest other in group x) and a/y (only other in column a) follow;
        // then column b and group y each have one withheld cell, so b/y goes too.
        assert!(withheld.contains(&("x".into(), "a".into())));
        assert!(withheld.len() >= 3, "{withheld:?}");
        for row in &r.rows {
            if let Some(n) = row["n"].as_u64() {
                assert_eq!(n % 5, 0);
            }
        }
    }

    #[test]
    fn pooled_rows_need_enough_regions() {
        let d = Disclosure::default();
        let r = d.release(&q(), &names()[..2], &[group("x", &[30, 40])], &[false]);
        assert!(!r.pooled);
        assert!(r.rows.iter().all(|row| row["region"] != "pooled"));
        assert!(r.notes.iter().any(|n| n.contains("at least 3")));
    }
}
