//! Federated aggregation: the query a partner asks, the sufficient statistics a
//! node computes over its own rows, exact pooling of those statistics at the
//! hub, and the one disclosure gate every released number passes through.
//!
//! Pure: no I/O. The node (`node::analytics`) feeds rows in; the hub
//! (`hub`) pools node answers and releases them through `disclosure`.

pub mod disclosure;
mod stats;

pub use disclosure::{Disclosure, Released};
pub use stats::Moments;

use crate::views::{Row, View};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Function {
    Count,
    CountDistinct,
    Sum,
    Mean,
    Stddev,
}

impl Function {
    fn parse(s: &str) -> Option<Function> {
        Some(match s {
            "count" => Function::Count,
            "count_distinct" => Function::CountDistinct,
            "sum" => Function::Sum,
            "mean" => Function::Mean,
            "stddev" => Function::Stddev,
            _ => return None,
        })
    }

    /// Whether the released value is itself a count (and so rounded).
    pub fn is_count(self) -> bool {
        matches!(self, Function::Count | Function::CountDistinct)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    pub name: String,
    pub function: Function,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
}

/// Where the view comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewSource {
    Inline(Value),
    /// A name in the view library (`profiles/views`).
    Reference(String),
}

/// `POST /fhir/$aggregate` as the hub receives it (and, without `regions`, as
/// it forwards it to each node).
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateQuery {
    pub view: ViewSource,
    pub group_by: Vec<String>,
    pub measures: Vec<Measure>,
    pub regions: Option<Vec<String>>,
}

/// A problem with a query, with the JSON member it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryProblem {
    pub message: String,
    pub expression: String,
}

fn problem(expression: &str, message: impl Into<String>) -> QueryProblem {
    QueryProblem {
        message: message.into(),
        expression: expression.to_string(),
    }
}

impl AggregateQuery {
    pub fn parse(body: &Value) -> Result<AggregateQuery, QueryProblem> {
        let obj = body
            .as_object()
            .ok_or_else(|| problem("", "the request body must be a JSON object"))?;
        for key in obj.keys() {
            if !["view", "viewReference", "groupBy", "measures", "regions"].contains(&key.as_str()) {
                return Err(problem(
                    key,
                    format!("unknown member '{key}' (expected view or viewReference, groupBy, measures, regions)"),
                ));
            }
        }
        let view = match (obj.get("view"), obj.get("viewReference")) {
            (Some(v @ Value::Object(_)), None) => ViewSource::Inline(v.clone()),
            (None, Some(Value::String(name))) => ViewSource::Reference(name.clone()),
            (Some(_), Some(_)) => return Err(problem("view", "give either 'view' or 'viewReference', not both")),
            (Some(_), None) => return Err(problem("view", "'view' must be a ViewDefinition object")),
            (None, Some(_)) => return Err(problem("viewReference", "'viewReference' must be a string")),
            (None, None) => return Err(problem("view", "the query needs a 'view' or a 'viewReference'")),
        };
        let strings = |key: &str| -> Result<Option<Vec<String>>, QueryProblem> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(a)) => a
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| problem(&format!("{key}[{i}]"), format!("'{key}' must list strings")))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(problem(key, format!("'{key}' must be an array of strings"))),
            }
        };
        let group_by = strings("groupBy")?.unwrap_or_default();
        let regions = strings("regions")?;
        let measures_json = match obj.get("measures") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            _ => return Err(problem("measures", "'measures' must be a non-empty array")),
        };
        let mut measures: Vec<Measure> = Vec::new();
        for (i, m) in measures_json.iter().enumerate() {
            let at = format!("measures[{i}]");
            let name = m
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| problem(&at, "a measure needs a 'name'"))?;
            let f = m.get("function").and_then(Value::as_str).unwrap_or_default();
            let function = Function::parse(f).ok_or_else(|| {
                problem(
                    &format!("{at}.function"),
                    format!("unknown function '{f}' (count, count_distinct, sum, mean, stddev; min and max are never released)"),
                )
            })?;
            let column = m.get("column").and_then(Value::as_str).map(str::to_string);
            if function != Function::Count && column.is_none() {
                return Err(problem(&at, format!("measure '{name}' ({f}) needs a 'column'")));
            }
            if measures.iter().any(|x| x.name == name) || group_by.iter().any(|g| g == name) || RESERVED.contains(&name)
            {
                return Err(problem(
                    &at,
                    format!("measure name '{name}' is used twice or is reserved"),
                ));
            }
            measures.push(Measure {
                name: name.to_string(),
                function,
                column,
            });
        }
        Ok(AggregateQuery {
            view,
            group_by,
            measures,
            regions,
        })
    }

    /// The JSON form (the request body nodes receive, without `regions`).
    pub fn to_node_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        match &self.view {
            ViewSource::Inline(v) => m.insert("view".into(), v.clone()),
            ViewSource::Reference(r) => m.insert("viewReference".into(), Value::String(r.clone())),
        };
        m.insert("groupBy".into(), serde_json::json!(self.group_by));
        m.insert(
            "measures".into(),
            serde_json::to_value(&self.measures).unwrap_or_default(),
        );
        Value::Object(m)
    }

    /// Checks the columns the query names against the view's.
    pub fn check_columns(&self, view: &View) -> Result<(), QueryProblem> {
        let known = |c: &str| view.columns.iter().any(|v| v.name == c);
        for (i, g) in self.group_by.iter().enumerate() {
            if !known(g) {
                return Err(problem(
                    &format!("groupBy[{i}]"),
                    format!("the view has no column '{g}'"),
                ));
            }
        }
        for (i, m) in self.measures.iter().enumerate() {
            if let Some(c) = &m.column {
                if !known(c) {
                    return Err(problem(
                        &format!("measures[{i}].column"),
                        format!("the view has no column '{c}'"),
                    ));
                }
            }
        }
        Ok(())
    }
}

const RESERVED: [&str; 2] = ["region", "suppressed"];

/// What a node knows about one measure in one group: enough to pool exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MeasureStats {
    Count(u64),
    Distinct(u64),
    Moments(Moments),
}

impl MeasureStats {
    /// The count behind the number (what disclosure control looks at).
    pub fn support(&self) -> u64 {
        match self {
            MeasureStats::Count(n) | MeasureStats::Distinct(n) => *n,
            MeasureStats::Moments(m) => m.n,
        }
    }

    fn merge(&mut self, other: &MeasureStats) -> Result<(), String> {
        match (self, other) {
            (MeasureStats::Count(a), MeasureStats::Count(b)) => *a += b,
            // A patient belongs to one region, so distinct counts add up.
            (MeasureStats::Distinct(a), MeasureStats::Distinct(b)) => *a += b,
            (MeasureStats::Moments(a), MeasureStats::Moments(b)) => a.merge(b),
            _ => return Err("nodes answered with different statistics for one measure".into()),
        }
        Ok(())
    }

    /// The measure's value, before disclosure control.
    pub fn value(&self, f: Function) -> Option<f64> {
        match (self, f) {
            (MeasureStats::Count(n) | MeasureStats::Distinct(n), _) => Some(*n as f64),
            (MeasureStats::Moments(m), Function::Sum) => Some(m.sum()),
            (MeasureStats::Moments(m), Function::Mean) => m.mean(),
            (MeasureStats::Moments(m), Function::Stddev) => m.sample_stddev(),
            _ => None,
        }
    }
}

/// One group's statistics at one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStats {
    pub key: Vec<Value>,
    pub measures: Vec<MeasureStats>,
}

/// A node's answer over the federation API: aggregates only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAggregate {
    pub region: String,
    #[serde(default)]
    pub last_updated: Option<String>,
    /// Share of the regional profile's must-support elements present in the
    /// resources of the view's type that this node has received.
    #[serde(default)]
    pub completeness: Option<f64>,
    pub groups: Vec<GroupStats>,
    /// The node's own disclosure settings (the hub applies the stricter).
    pub disclosure: Disclosure,
}

fn key_of(v: &[Value]) -> String {
    Value::Array(v.to_vec()).to_string()
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

/// A cell as a hashable, borrowed key (no allocation per row).
#[derive(PartialEq, Eq, Hash)]
enum Cell<'a> {
    Null,
    Bool(bool),
    /// Numbers and other JSON by their text; strings as themselves.
    Text(&'a str),
    Json(String),
}

fn cell(v: &Value) -> Cell<'_> {
    match v {
        Value::Null => Cell::Null,
        Value::Bool(b) => Cell::Bool(*b),
        Value::String(s) => Cell::Text(s),
        Value::Number(n) => Cell::Json(n.to_string()),
        other => Cell::Json(other.to_string()),
    }
}

/// Computes one node's statistics over the rows of `view`.
pub fn compute<'r>(
    view: &View,
    rows: impl IntoIterator<Item = &'r Row>,
    q: &AggregateQuery,
) -> Result<Vec<GroupStats>, QueryProblem> {
    use std::collections::{HashMap, HashSet};
    q.check_columns(view)?;
    let index = |c: &str| view.columns.iter().position(|v| v.name == c).unwrap_or(0);
    let group_cols: Vec<usize> = q.group_by.iter().map(|g| index(g)).collect();
    let measure_cols: Vec<Option<usize>> = q.measures.iter().map(|m| m.column.as_deref().map(index)).collect();
    struct Acc<'a> {
        key: Vec<Value>,
        stats: Vec<MeasureStats>,
        distinct: Vec<HashSet<Cell<'a>>>,
    }
    let mut groups: HashMap<Vec<Cell<'r>>, Acc<'r>> = HashMap::new();
    for row in rows {
        let key: Vec<Cell> = group_cols.iter().map(|&i| cell(&row[i])).collect();
        let acc = groups.entry(key).or_insert_with(|| Acc {
            key: group_cols.iter().map(|&i| row[i].clone()).collect(),
            stats: q
                .measures
                .iter()
                .map(|m| match m.function {
                    Function::Count => MeasureStats::Count(0),
                    Function::CountDistinct => MeasureStats::Distinct(0),
                    _ => MeasureStats::Moments(Moments::default()),
                })
                .collect(),
            distinct: q.measures.iter().map(|_| HashSet::new()).collect(),
        });
        for (mi, m) in q.measures.iter().enumerate() {
            let value = measure_cols[mi].map(|c| &row[c]);
            match (&mut acc.stats[mi], value) {
                (MeasureStats::Count(n), _) => *n += 1,
                (MeasureStats::Distinct(_), Some(v)) if !v.is_null() => {
                    acc.distinct[mi].insert(cell(v));
                }
                (MeasureStats::Moments(mo), Some(v)) if !v.is_null() => {
                    let x = number(v).ok_or_else(|| {
                        problem(
                            &format!("measures[{mi}].column"),
                            format!(
                                "measure '{}' needs numbers, but column '{}' holds {v}",
                                m.name,
                                m.column.as_deref().unwrap_or_default()
                            ),
                        )
                    })?;
                    if !x.is_finite() {
                        return Err(problem(&format!("measures[{mi}].column"), "a value is not finite"));
                    }
                    mo.push(x);
                }
                _ => {}
            }
        }
    }
    // In key order, so that answers are deterministic.
    let mut out: Vec<(String, GroupStats)> = groups
        .into_values()
        .map(|mut acc| {
            for (mi, set) in acc.distinct.iter().enumerate() {
                if let MeasureStats::Distinct(n) = &mut acc.stats[mi] {
                    *n = set.len() as u64;
                }
            }
            (
                key_of(&acc.key),
                GroupStats {
                    key: acc.key,
                    measures: acc.stats,
                },
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out.into_iter().map(|(_, g)| g).collect())
}

/// One group across regions: each answering region's statistics (absent when
/// the region has no rows in the group) and their pooled statistics.
#[derive(Debug, Clone)]
pub struct PooledGroup {
    pub key: Vec<Value>,
    pub regions: Vec<Option<Vec<MeasureStats>>>,
    pub pooled: Vec<MeasureStats>,
}

/// Pools the answers of several nodes group by group. `answers` are in region
/// order; the result's `regions` follow the same order.
pub fn pool(q: &AggregateQuery, answers: &[&[GroupStats]]) -> Result<Vec<PooledGroup>, String> {
    let mut out: BTreeMap<String, PooledGroup> = BTreeMap::new();
    for (ri, groups) in answers.iter().enumerate() {
        for g in groups.iter() {
            if g.measures.len() != q.measures.len() || g.key.len() != q.group_by.len() {
                return Err("a node answered with a different shape than asked".into());
            }
            let entry = out.entry(key_of(&g.key)).or_insert_with(|| PooledGroup {
                key: g.key.clone(),
                regions: vec![None; answers.len()],
                pooled: q
                    .measures
                    .iter()
                    .map(|m| match m.function {
                        Function::Count => MeasureStats::Count(0),
                        Function::CountDistinct => MeasureStats::Distinct(0),
                        _ => MeasureStats::Moments(Moments::default()),
                    })
                    .collect(),
            });
            if entry.regions[ri].is_some() {
                return Err("a node answered the same group twice".into());
            }
            for (p, s) in entry.pooled.iter_mut().zip(&g.measures) {
                p.merge(s)?;
            }
            entry.regions[ri] = Some(g.measures.clone());
        }
    }
    Ok(out.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn query() -> AggregateQuery {
        AggregateQuery::parse(&json!({
            "view": {"resource": "Patient", "select": [{"column": [
                {"name": "g", "path": "gender"}, {"name": "w", "path": "w"}, {"name": "p", "path": "id"}]}]},
            "groupBy": ["g"],
            "measures": [{"name": "n", "function": "count"}, {"name": "d", "function": "count_distinct", "column": "p"},
                         {"name": "m", "function": "mean", "column": "w"}, {"name": "s", "function": "stddev", "column": "w"}]
        }))
        .unwrap()
    }

    fn view(q: &AggregateQuery) -> View {
        match &q.view {
            ViewSource::Inline(v) => View::compile(v).unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn pooled_statistics_equal_those_of_all_rows_together() {
        let q = query();
        let v = view(&q);
        let rows: Vec<Row> = (0..200)
            .map(|i| {
                vec![
                    json!(if i % 3 == 0 { "f" } else { "m" }),
                    json!(1e6 + (i as f64) * 0.37),
                    json!(i),
                ]
            })
            .collect();
        let whole = compute(&v, &rows, &q).unwrap();
        let parts: Vec<Vec<GroupStats>> = rows.chunks(37).map(|c| compute(&v, c, &q).unwrap()).collect();
        let refs: Vec<&[GroupStats]> = parts.iter().map(Vec::as_slice).collect();
        let pooled = pool(&q, &refs).unwrap();
        assert_eq!(pooled.len(), whole.len());
        for (p, w) in pooled.iter().zip(&whole) {
            assert_eq!(p.key, w.key);
            for (mi, m) in q.measures.iter().enumerate() {
                let (a, b) = (
                    p.pooled[mi].value(m.function).unwrap(),
                    w.measures[mi].value(m.function).unwrap(),
                );
                assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{}: {a} vs {b}", m.name);
            }
        }
    }

    #[test]
    fn refuses_unknown_functions_and_columns() {
        let e = AggregateQuery::parse(
            &json!({"viewReference": "x", "measures": [{"name": "a", "function": "max", "column": "w"}]}),
        )
        .unwrap_err();
        assert_eq!(e.expression, "measures[0].function");
        let q = AggregateQuery::parse(
            &json!({"view": {"resource": "Patient", "select": [{"column": [{"name": "g", "path": "gender"}]}]},
            "groupBy": ["nope"], "measures": [{"name": "n", "function": "count"}]}),
        )
        .unwrap();
        assert!(q.check_columns(&view(&q)).is_err());
    }
}
