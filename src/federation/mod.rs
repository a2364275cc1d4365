//! Federated aggregation: the query a partner asks, the sufficient statistics a
//! node computes over its own rows, exact pooling of those statistics at the
//! hub, and the one disclosure gate every released number passes through.
//!
//! Pure: no I/O. The node (`node::analytics`) feeds rows in; the hub
//! (`hub`) pools node answers and releases them through `disclosure`.

pub mod cellkey;
pub mod counts;
pub mod disclosure;
pub mod glm;
pub mod regress;
mod stats;
pub mod wire;

pub use cellkey::RecordKeys;
pub use disclosure::{Disclosure, Release};
pub use stats::Moments;
pub use wire::{AggregateRequest, GroupStats, MeasureRequest, NodeAggregate, NodeCount, NodeMeasure};

use crate::views::frame::{CellRef, RowRef};
use crate::views::{library, ColumnInfo, ColumnRole, View};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
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

impl ViewSource {
    /// The `view` or `viewReference` member of a question (`what` names it in the message).
    pub fn of(obj: &serde_json::Map<String, Value>, what: &str) -> Result<ViewSource, QueryProblem> {
        match (obj.get("view"), obj.get("viewReference")) {
            (Some(v @ Value::Object(_)), None) => Ok(ViewSource::Inline(v.clone())),
            (None, Some(Value::String(name))) => Ok(ViewSource::Reference(name.clone())),
            (Some(_), Some(_)) => Err(problem("view", "give either 'view' or 'viewReference', not both")),
            (Some(_), None) => Err(problem("view", "'view' must be a ViewDefinition object")),
            (None, Some(_)) => Err(problem("viewReference", "'viewReference' must be a string")),
            (None, None) => Err(problem(
                "view",
                format!("the {what} needs a 'view' or a 'viewReference'"),
            )),
        }
    }
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
        let view = ViewSource::of(obj, "query")?;
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
        if group_by.len() > MAX_GROUP_BY {
            return Err(problem(
                "groupBy",
                format!("at most {MAX_GROUP_BY} columns may be grouped by"),
            ));
        }
        // A released row names its region in `region` (and lists `suppressed`): a view
        // column of either name would overwrite the label.
        if let Some((i, g)) = group_by
            .iter()
            .enumerate()
            .find(|(_, g)| RESERVED.contains(&g.as_str()))
        {
            return Err(problem(
                &format!("groupBy[{i}]"),
                format!("'{g}' is reserved in released rows (the answering region); rename the column in the view"),
            ));
        }
        let regions = strings("regions")?;
        let measures_json = match obj.get("measures") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            _ => return Err(problem("measures", "'measures' must be a non-empty array")),
        };
        if measures_json.len() > MAX_MEASURES {
            return Err(problem(
                "measures",
                format!("at most {MAX_MEASURES} measures may be asked at once"),
            ));
        }
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

    /// Checks the query against the approved view it names: partners group by
    /// declared dimensions only, summarise declared measures only and count
    /// distinct subjects only. Inline views are refused here: they are for a
    /// region's analysts at their own node (`ViewDefinition/$run`).
    pub fn plan(&self) -> Result<Plan, QueryProblem> {
        let name = match &self.view {
            ViewSource::Reference(name) => name,
            ViewSource::Inline(_) => {
                return Err(problem(
                    "view",
                    format!(
                        "federated questions run approved views only: name one with 'viewReference' ({}); \
                         inline views are for a region's own analysts (ViewDefinition/$run at their node)",
                        library::names().collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
        };
        let approved = library::approved(name)
            .ok_or_else(|| {
                problem(
                    "viewReference",
                    format!(
                        "no approved view named '{name}' (approved: {})",
                        library::names().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?
            .map_err(|e| problem("viewReference", e.message))?;
        let view = &approved.view;
        let column = |c: &str, at: &str| -> Result<(usize, &ColumnInfo), QueryProblem> {
            view.columns
                .iter()
                .enumerate()
                .find(|(_, v)| v.name == c)
                .ok_or_else(|| problem(at, format!("the view '{}' has no column '{c}'", approved.name)))
        };
        // A column that must have `role` in the approved view.
        let with_role = |c: &str, at: &str, role: ColumnRole| -> Result<(usize, &ColumnInfo), QueryProblem> {
            let (ci, info) = column(c, at)?;
            if info.role != role {
                let (what, plural) = match role {
                    ColumnRole::Dimension => ("a dimension (something to group by)", "dimensions"),
                    ColumnRole::Measure => ("a measure (something to sum or average)", "measures"),
                    ColumnRole::Subject => ("the subject (what count_distinct counts)", "subject"),
                    ColumnRole::None => ("usable", "usable columns"),
                };
                return Err(problem(
                    at,
                    format!(
                        "'{c}' is not {what} of the view '{}' ({plural}: {})",
                        approved.name,
                        names_with(view, role)
                    ),
                ));
            }
            Ok((ci, info))
        };
        // One subject per view: the person a row is about.
        let subject = view.columns.iter().position(|c| c.role == ColumnRole::Subject);
        if view.columns.iter().filter(|c| c.role == ColumnRole::Subject).count() > 1 {
            return Err(problem(
                "viewReference",
                format!("the view '{}' declares more than one subject column", approved.name),
            ));
        }
        let mut group_by = Vec::new();
        for (i, g) in self.group_by.iter().enumerate() {
            let at = format!("groupBy[{i}]");
            let (ci, _) = with_role(g, &at, ColumnRole::Dimension)?;
            if group_by.contains(&ci) {
                return Err(problem(&at, format!("'{g}' is grouped by twice")));
            }
            group_by.push(ci);
        }
        let mut measures = Vec::new();
        for (i, m) in self.measures.iter().enumerate() {
            let at = format!("measures[{i}].column");
            let (column, kind) = match (m.function, m.column.as_deref()) {
                (Function::Count, None) => (None, Kind::Count),
                (Function::Count, Some(c)) => {
                    // Counts rows; a column named here is only checked to exist.
                    column(c, &at)?;
                    (None, Kind::Count)
                }
                (Function::CountDistinct, Some(c)) => (Some(with_role(c, &at, ColumnRole::Subject)?.0), Kind::Distinct),
                (_, Some(c)) => {
                    let (ci, info) = with_role(c, &at, ColumnRole::Measure)?;
                    let boolean = info.ty.as_deref() == Some("boolean");
                    if boolean && m.function == Function::Stddev {
                        return Err(problem(
                            &at,
                            format!("'{c}' is true/false: ask its sum (a count) or mean (a share)"),
                        ));
                    }
                    (Some(ci), if boolean { Kind::Boolean } else { Kind::Numeric })
                }
                (_, None) => return Err(problem(&at, format!("measure '{}' needs a 'column'", m.name))),
            };
            measures.push(PlannedMeasure {
                name: m.name.clone(),
                function: m.function,
                column,
                kind,
            });
        }

        Ok(Plan {
            group_by_names: self.group_by.clone(),
            group_by,
            measures,
            subject,
            approved,
        })
    }
}

fn names_with(view: &View, role: ColumnRole) -> String {
    let names: Vec<&str> = view
        .columns
        .iter()
        .filter(|c| c.role == role)
        .map(|c| c.name.as_str())
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

const RESERVED: [&str; 2] = ["region", "suppressed"];
/// Limits on one question: a table this wide is not an aggregate any more.
pub const MAX_GROUP_BY: usize = 6;
pub const MAX_MEASURES: usize = 16;

/// What a measure summarises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Rows.
    Count,
    /// Distinct subjects.
    Distinct,
    /// A number column.
    Numeric,
    /// A true/false column: its sum is a count, its mean a share.
    Boolean,
}

#[derive(Debug, Clone)]
pub struct PlannedMeasure {
    pub name: String,
    pub function: Function,
    pub column: Option<usize>,
    pub kind: Kind,
}

/// A question checked against its approved view, with column positions resolved:
/// the hub checks it before asking, each node checks it again before computing.
#[derive(Debug, Clone)]
pub struct Plan {
    pub approved: library::Approved,
    pub group_by_names: Vec<String>,
    pub group_by: Vec<usize>,
    pub measures: Vec<PlannedMeasure>,
    /// The view's subject column: contributors are counted by it.
    pub subject: Option<usize>,
}

impl Plan {
    /// One empty statistic per measure, to accumulate rows or pool regions into.
    fn empty_stats(&self) -> Vec<MeasureStats> {
        self.measures
            .iter()
            .map(|m| match m.kind {
                Kind::Count => MeasureStats::Count(0),
                Kind::Distinct => MeasureStats::Distinct(0),
                Kind::Numeric | Kind::Boolean => MeasureStats::Moments(Moments::default()),
            })
            .collect()
    }

    /// The request the hub sends each node.
    pub fn request(&self, disclosure: Disclosure, deadline_ms: u64) -> wire::AggregateRequest {
        wire::AggregateRequest {
            view_reference: self.approved.name.to_string(),
            view_digest: self.approved.digest.clone(),
            group_by: self.group_by_names.clone(),
            measures: self
                .measures
                .iter()
                .map(|m| Measure {
                    name: m.name.clone(),
                    function: m.function,
                    column: m.column.map(|c| self.approved.view.columns[c].name.clone()),
                })
                .collect(),
            disclosure,
            deadline_ms,
        }
    }

    /// The plan a node makes of the hub's request; the view must be exactly the
    /// definition the hub checked the question against.
    pub fn from_request(r: &wire::AggregateRequest) -> Result<Plan, QueryProblem> {
        let q = AggregateQuery {
            view: ViewSource::Reference(r.view_reference.clone()),
            group_by: r.group_by.clone(),
            measures: r.measures.clone(),
            regions: None,
        };
        let plan = q.plan()?;
        if plan.approved.digest != r.view_digest {
            return Err(problem(
                "viewDigest",
                format!(
                    "this node carries another definition of view '{}' (version {}) than the hub",
                    plan.approved.name, plan.approved.version
                ),
            ));
        }
        Ok(plan)
    }
}

/// What a node knows about one measure in one group: enough to pool exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MeasureStats {
    Count(u64),
    Distinct(u64),
    Moments(Moments),
}

impl MeasureStats {
    /// The count behind the number.
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

fn key_of(v: &[Value]) -> String {
    Value::Array(v.to_vec()).to_string()
}

/// A cell as a hashable, borrowed key (no allocation per row for strings).
#[derive(PartialEq, Eq, Hash)]
enum Cell<'a> {
    Null,
    Bool(bool),
    /// Strings as themselves; numbers and other JSON by their text.
    Text(&'a str),
    Json(Cow<'a, str>),
}

fn cell(v: CellRef<'_>) -> Cell<'_> {
    match v {
        CellRef::Null => Cell::Null,
        CellRef::Bool(b) => Cell::Bool(b),
        CellRef::Str(s) => Cell::Text(s),
        other => Cell::Json(other.text()),
    }
}

/// Computes one node's statistics over the rows of the plan's view: each row with
/// its stored resource's key and its place among that resource's rows
/// (`HeldRows::rows`). A value that is not a finite number in a measure column
/// counts as missing: one bad stored value cannot disable a region's answer.
pub fn compute<'r>(
    plan: &Plan,
    rows: impl IntoIterator<Item = (i64, usize, RowRef<'r>)>,
    keys: &RecordKeys,
) -> Vec<GroupStats> {
    use std::collections::{HashMap, HashSet};
    struct Acc<'a> {
        key: Vec<Value>,
        stats: Vec<MeasureStats>,
        contributors: HashSet<Cell<'a>>,
        resources: HashSet<i64>,
        cell_key: u64,
    }
    let mut groups: HashMap<Vec<Cell<'r>>, Acc<'r>> = HashMap::new();
    for (resource, ri, row) in rows {
        let key: Vec<Cell> = plan.group_by.iter().map(|&i| cell(row.get(i))).collect();
        let acc = groups.entry(key).or_insert_with(|| Acc {
            key: plan.group_by.iter().map(|&i| row.get(i).to_value()).collect(),
            stats: plan.empty_stats(),
            contributors: HashSet::new(),
            resources: HashSet::new(),
            cell_key: 0,
        });
        acc.cell_key = acc.cell_key.wrapping_add(keys.record(resource, ri));
        match plan.subject.map(|s| row.get(s)) {
            Some(subject) if !subject.is_null() => {
                acc.contributors.insert(cell(subject));
            }
            // Without a subject, each resource counts as one contributor.
            _ => {
                acc.resources.insert(resource);
            }
        }
        for (mi, m) in plan.measures.iter().enumerate() {
            let value = m.column.map(|c| row.get(c));
            match (&mut acc.stats[mi], value) {
                (MeasureStats::Count(n), _) => *n += 1,
                // Distinct subjects are the contributors, counted once above.
                (MeasureStats::Distinct(_), _) => {}
                (MeasureStats::Moments(mo), Some(v)) => {
                    if let Some(x) = v.number() {
                        mo.push(x);
                    }
                }
                _ => {}
            }
        }
    }
    // In key order, so that answers are deterministic.
    let mut out: Vec<(String, GroupStats)> = groups
        .into_values()
        .map(|mut acc| {
            for s in acc.stats.iter_mut() {
                if let MeasureStats::Distinct(n) = s {
                    *n = acc.contributors.len() as u64;
                }
            }
            (
                key_of(&acc.key),
                GroupStats {
                    key: acc.key,
                    contributors: (acc.contributors.len() + acc.resources.len()) as u64,
                    cell_key: acc.cell_key,
                    measures: acc.stats,
                },
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, g)| g).collect()
}

/// One cell of a group: one region's statistics, or the pooled ones.
#[derive(Debug, Clone, PartialEq)]
pub struct CellStats {
    /// Distinct people behind the cell (the subject column), or resources.
    pub contributors: u64,
    /// The wrapping sum of the cell's record keys (see `cellkey`).
    pub cell_key: u64,
    pub measures: Vec<MeasureStats>,
}

/// One group across regions: each answering region's statistics (absent when
/// the region has no rows in the group) and their pooled statistics.
#[derive(Debug, Clone)]
pub struct PooledGroup {
    pub key: Vec<Value>,
    pub regions: Vec<Option<CellStats>>,
    pub pooled: CellStats,
}

/// Pools the answers of several nodes group by group. `answers` are in region
/// order; the result's `regions` follow the same order.
pub fn pool(plan: &Plan, answers: &[&[GroupStats]]) -> Result<Vec<PooledGroup>, String> {
    let mut out: BTreeMap<String, PooledGroup> = BTreeMap::new();
    for (ri, groups) in answers.iter().enumerate() {
        for g in groups.iter() {
            if g.measures.len() != plan.measures.len() || g.key.len() != plan.group_by.len() {
                return Err("a node answered with a different shape than asked".into());
            }
            let entry = out.entry(key_of(&g.key)).or_insert_with(|| PooledGroup {
                key: g.key.clone(),
                regions: vec![None; answers.len()],
                pooled: CellStats {
                    contributors: 0,
                    cell_key: 0,
                    measures: plan.empty_stats(),
                },
            });
            if entry.regions[ri].is_some() {
                return Err("a node answered the same group twice".into());
            }
            for (p, s) in entry.pooled.measures.iter_mut().zip(&g.measures) {
                p.merge(s)?;
            }
            // A person belongs to one region, so contributors add up.
            entry.pooled.contributors += g.contributors;
            entry.pooled.cell_key = entry.pooled.cell_key.wrapping_add(g.cell_key);
            entry.regions[ri] = Some(CellStats {
                contributors: g.contributors,
                cell_key: g.cell_key,
                measures: g.measures.clone(),
            });
        }
    }
    Ok(out.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::frame::plain_rows;
    use crate::views::Row;
    use serde_json::json;

    fn plan() -> Plan {
        AggregateQuery::parse(&json!({
            "viewReference": "observation_values",
            "groupBy": ["code"],
            "measures": [{"name": "n", "function": "count"}, {"name": "d", "function": "count_distinct", "column": "patient"},
                         {"name": "m", "function": "mean", "column": "value"}, {"name": "s", "function": "stddev", "column": "value"},
                         {"name": "t", "function": "sum", "column": "value"}]
        }))
        .unwrap()
        .plan()
        .unwrap()
    }

    /// Rows shaped like the observation_values view: patient, code, display, status, value, unit, year.
    fn row(i: usize) -> Row {
        vec![
            json!(format!("p{}", i % 50)),
            json!(if i.is_multiple_of(3) { "a" } else { "b" }),
            Value::Null,
            json!("final"),
            json!(1e6 + (i as f64) * 0.37),
            json!("mg"),
            json!("2020"),
        ]
    }

    #[test]
    fn pooled_statistics_equal_those_of_all_rows_together() {
        let plan = plan();
        let keys = RecordKeys::from_secret([1; 16]);
        let rows: Vec<(i64, Vec<Row>)> = (0..200).map(|i| (i as i64, vec![row(i)])).collect();
        let whole = compute(&plan, rows.iter().flat_map(|(k, r)| plain_rows(*k, r)), &keys);
        // Split by patient, as regions hold different people.
        let parts: Vec<Vec<GroupStats>> = (0..4)
            .map(|part| {
                compute(
                    &plan,
                    rows.iter()
                        .filter(|(k, _)| (*k as usize % 50) % 4 == part)
                        .flat_map(|(k, r)| plain_rows(*k, r)),
                    &keys,
                )
            })
            .collect();
        let refs: Vec<&[GroupStats]> = parts.iter().map(Vec::as_slice).collect();
        let pooled = pool(&plan, &refs).unwrap();
        assert_eq!(pooled.len(), whole.len());
        for (p, w) in pooled.iter().zip(&whole) {
            assert_eq!(p.key, w.key);
            assert_eq!(p.pooled.contributors, w.contributors);
            assert_eq!(p.pooled.cell_key, w.cell_key, "the pooled cell key is the whole cell's");
            for (mi, m) in plan.measures.iter().enumerate() {
                let (a, b) = (
                    p.pooled.measures[mi].value(m.function).unwrap(),
                    w.measures[mi].value(m.function).unwrap(),
                );
                assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{}: {a} vs {b}", m.name);
            }
        }
    }

    #[test]
    fn partners_ask_approved_views_by_declared_roles_only() {
        let ask = |q: Value| {
            AggregateQuery::parse(&q)
                .and_then(|q| q.plan())
                .map(|_| ())
                .unwrap_err()
        };
        let e = AggregateQuery::parse(
            &json!({"viewReference": "x", "measures": [{"name": "a", "function": "max", "column": "w"}]}),
        )
        .unwrap_err();
        assert_eq!(e.expression, "measures[0].function");
        let inline = ask(
            json!({"view": {"resource": "Patient", "select": [{"column": [{"name": "g", "path": "gender"}]}]},
            "groupBy": ["g"], "measures": [{"name": "n", "function": "count"}]}),
        );
        assert_eq!(inline.expression, "view");
        let key = ask(json!({"viewReference": "patient_demographics", "groupBy": ["patient"],
            "measures": [{"name": "n", "function": "count"}]}));
        assert_eq!(key.expression, "groupBy[0]", "{key:?}");
        let sum_of_dimension = ask(json!({"viewReference": "patient_demographics",
            "measures": [{"name": "n", "function": "sum", "column": "gender"}]}));
        assert_eq!(sum_of_dimension.expression, "measures[0].column");
        let distinct_of_dimension = ask(json!({"viewReference": "patient_demographics",
            "measures": [{"name": "n", "function": "count_distinct", "column": "gender"}]}));
        assert_eq!(distinct_of_dimension.expression, "measures[0].column");
        // `region` labels released rows: a column of that name may not be grouped by.
        let region = ask(
            json!({"viewReference": "patient_demographics", "groupBy": ["gender", "region"],
            "measures": [{"name": "n", "function": "count"}]}),
        );
        assert_eq!(region.expression, "groupBy[1]", "{region:?}");
        let unknown = ask(json!({"viewReference": "nope", "measures": [{"name": "n", "function": "count"}]}));
        assert_eq!(unknown.expression, "viewReference");
    }

    #[test]
    fn a_bad_value_is_missing_not_fatal() {
        let plan = plan();
        let keys = RecordKeys::from_secret([1; 16]);
        let mut bad = row(0);
        bad[4] = json!("not a number");
        let rows = [(1i64, vec![row(0)]), (2, vec![bad])];
        let out = compute(&plan, rows.iter().flat_map(|(k, r)| plain_rows(*k, r)), &keys);
        assert_eq!(out[0].measures[0], MeasureStats::Count(2));
        assert_eq!(out[0].measures[2].support(), 1);
    }
}
