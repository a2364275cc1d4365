//! `$regress`: the question (`RegressQuery`), the columns it uses in a view
//! (`Columns`), one node's usable rows (`Table`) with the disclosure rules a node
//! applies to them, the design both sides build from the levels the hub settles
//! (`Design`), and the reply. The fitting itself is `glm`; the node's sessions
//! are in `node::regress` and the hub's rounds in `hub::regress`. Pure: no I/O.
//!
//! Disclosure, at every node for its own rows (DataSHIELD's and Vantage6's rules):
//! at least `minCell` usable rows; at least `minCell` rows in every level of a
//! categorical predictor, in each value of a two-valued numeric predictor and in
//! each outcome class of a binomial model; at most one parameter per three rows;
//! and the rows of a model may not differ from those of an earlier fit of the
//! same model by fewer than `minCell` rows (two fits a few rows apart would give
//! those rows away). Only Xᵀ W X, Xᵀ W z, the deviance and the row count leave a
//! node; only the fitted model leaves the hub.

use super::glm::{Family, Part};
use super::{problem, QueryProblem, ViewSource};
use crate::views::frame::{CellRef, RowRef};
use crate::views::{ColumnRole, Row, View};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Limits on one model: a design this wide is not a model any more.
pub const MAX_PREDICTORS: usize = 16;
pub const MAX_PARAMETERS: usize = 64;
pub const MAX_LEVELS: usize = 50;
pub const MAX_ITERATIONS: u32 = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Predictor {
    pub column: String,
    #[serde(default)]
    pub categorical: bool,
    /// The reference level of a categorical predictor (default: the first in sorted order, as R's `factor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// `POST /fhir/$regress`, as a partner or analyst asks it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegressQuery {
    pub view: ViewSource,
    pub outcome: String,
    pub predictors: Vec<Predictor>,
    pub family: Family,
    pub offset: Option<String>,
    pub regions: Option<Vec<String>>,
    pub max_iterations: u32,
    pub tolerance: f64,
}

impl RegressQuery {
    pub fn parse(body: &Value) -> Result<RegressQuery, QueryProblem> {
        let obj = body
            .as_object()
            .ok_or_else(|| problem("", "the request body must be a JSON object"))?;
        const MEMBERS: [&str; 9] = [
            "view",
            "viewReference",
            "outcome",
            "predictors",
            "family",
            "offset",
            "regions",
            "maxIterations",
            "tolerance",
        ];
        if let Some(key) = obj.keys().find(|k| !MEMBERS.contains(&k.as_str())) {
            return Err(problem(
                key,
                format!("unknown member '{key}' (expected {})", MEMBERS.join(", ")),
            ));
        }
        let view = ViewSource::of(obj, "model")?;
        let text = |key: &str| -> Result<Option<String>, QueryProblem> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(_) => Err(problem(key, format!("'{key}' must be a column name"))),
            }
        };
        let outcome = text("outcome")?.ok_or_else(|| problem("outcome", "the model needs an 'outcome' column"))?;
        let family = match obj.get("family") {
            None => Family::Gaussian,
            Some(Value::String(f)) => Family::parse(f)
                .ok_or_else(|| problem("family", format!("unknown family '{f}' (gaussian, binomial, poisson)")))?,
            Some(_) => return Err(problem("family", "'family' must be a string")),
        };
        let offset = text("offset")?;
        if offset.is_some() && family != Family::Poisson {
            return Err(problem(
                "offset",
                "an offset (on the log scale) is for Poisson models of rates",
            ));
        }
        let list = match obj.get("predictors") {
            None => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(problem("predictors", "'predictors' must be an array")),
        };
        if list.len() > MAX_PREDICTORS {
            return Err(problem("predictors", format!("at most {MAX_PREDICTORS} predictors")));
        }
        let mut predictors: Vec<Predictor> = Vec::new();
        for (i, p) in list.iter().enumerate() {
            let at = format!("predictors[{i}]");
            let p = match p {
                Value::String(c) if !c.is_empty() => Predictor {
                    column: c.clone(),
                    categorical: false,
                    reference: None,
                },
                Value::Object(_) => serde_json::from_value::<Predictor>(p.clone()).map_err(|e| {
                    problem(
                        &at,
                        format!("a predictor is a column name or {{\"column\", \"categorical\", \"reference\"}}: {e}"),
                    )
                })?,
                _ => return Err(problem(&at, "a predictor is a column name or an object")),
            };
            if p.reference.is_some() && !p.categorical {
                return Err(problem(
                    &format!("{at}.reference"),
                    "only a categorical predictor has a reference level",
                ));
            }
            if p.column == outcome
                || Some(&p.column) == offset.as_ref()
                || predictors.iter().any(|q| q.column == p.column)
            {
                return Err(problem(&at, format!("'{}' is used twice in the model", p.column)));
            }
            predictors.push(p);
        }
        let regions = match obj.get("regions") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| problem(&format!("regions[{i}]"), "'regions' must list strings"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => return Err(problem("regions", "'regions' must be an array of strings")),
        };
        let max_iterations = match obj.get("maxIterations") {
            None => 25,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=MAX_ITERATIONS as u64).contains(n))
                .ok_or_else(|| {
                    problem(
                        "maxIterations",
                        format!("'maxIterations' must be a whole number from 1 to {MAX_ITERATIONS}"),
                    )
                })? as u32,
        };
        let tolerance = match obj.get("tolerance") {
            None => 1e-8,
            Some(v) => v
                .as_f64()
                .filter(|t| *t >= 1e-15 && *t <= 1e-2)
                .ok_or_else(|| problem("tolerance", "'tolerance' must be a number from 1e-15 to 0.01"))?,
        };
        Ok(RegressQuery {
            view,
            outcome,
            predictors,
            family,
            offset,
            regions,
            max_iterations,
            tolerance,
        })
    }

    /// The model without where its rows come from, as nodes are asked it.
    pub fn model(&self) -> Model {
        Model {
            outcome: self.outcome.clone(),
            predictors: self.predictors.clone(),
            family: self.family,
            offset: self.offset.clone(),
        }
    }
}

/// The model: what a node needs besides the view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Model {
    pub outcome: String,
    pub predictors: Vec<Predictor>,
    pub family: Family,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
}

/// Where the model's columns are in the view.
#[derive(Debug, Clone)]
pub struct Columns {
    pub outcome: usize,
    pub predictors: Vec<usize>,
    pub offset: Option<usize>,
    /// The provider of each row (pathway cohorts).
    pub provider: Option<usize>,
}

impl Model {
    /// Finds the model's columns in `view`. With `approved`, the view's roles are
    /// the rules: outcome, numeric predictors and the offset are measures;
    /// categorical predictors are dimensions; the subject column (a person's key)
    /// is never part of a model.
    pub fn columns(&self, view: &View, approved: bool) -> Result<Columns, QueryProblem> {
        let find = |c: &str, at: &str, numeric: bool| -> Result<usize, QueryProblem> {
            let (i, info) = view
                .columns
                .iter()
                .enumerate()
                .find(|(_, v)| v.name == c)
                .ok_or_else(|| problem(at, format!("the view has no column '{c}'")))?;
            if info.role == ColumnRole::Subject {
                return Err(problem(
                    at,
                    format!("'{c}' is the view's subject (a person's key): it is never part of a model"),
                ));
            }
            if approved {
                let want = if numeric {
                    ColumnRole::Measure
                } else {
                    ColumnRole::Dimension
                };
                if info.role != want {
                    let what = if numeric {
                        "a numeric column (a measure) of the approved view"
                    } else {
                        "a dimension of the approved view, which a categorical predictor must be"
                    };
                    return Err(problem(at, format!("'{c}' is not {what}")));
                }
            }
            if numeric
                && matches!(
                    info.ty.as_deref(),
                    Some("string" | "code" | "date" | "dateTime" | "instant")
                )
            {
                return Err(problem(
                    at,
                    format!(
                        "'{c}' holds text ({}); make it categorical or choose a numeric column",
                        info.ty.as_deref().unwrap_or("")
                    ),
                ));
            }
            Ok(i)
        };
        let outcome = find(&self.outcome, "outcome", true)?;
        let predictors = self
            .predictors
            .iter()
            .enumerate()
            .map(|(i, p)| find(&p.column, &format!("predictors[{i}]"), !p.categorical))
            .collect::<Result<Vec<_>, _>>()?;
        let offset = self.offset.as_deref().map(|o| find(o, "offset", true)).transpose()?;
        Ok(Columns {
            outcome,
            predictors,
            offset,
            provider: None,
        })
    }
}

/// A cell as a number: numbers and true/false (as 1/0); anything else is missing.
/// A cell as a level of a categorical predictor; null is missing.
fn level(v: CellRef<'_>) -> Option<String> {
    (!v.is_null()).then(|| v.text().into_owned())
}

/// One node's usable rows of a model, column-wise.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub y: Vec<f64>,
    pub offset: Vec<f64>,
    /// Per predictor: its numbers (numeric) or its level's index in `levels` (categorical).
    pub values: Vec<Vec<f64>>,
    /// Per predictor: the levels seen here, sorted (empty for numeric predictors).
    pub levels: Vec<Vec<String>>,
    /// Per row: its record key (for the differencing rule).
    pub keys: Vec<u64>,
    /// Per row: the provider (pathway cohorts only, for expected counts per provider).
    pub providers: Vec<String>,
    /// Rows dropped for a missing outcome, predictor or offset.
    pub missing: u64,
    /// Rows dropped for an outcome the family does not admit (a binomial outcome other than 0/1,
    /// a negative or fractional Poisson count).
    pub out_of_range: u64,
}

impl Table {
    /// The usable rows of `rows` (each with its stored resource's key and its place
    /// among that resource's rows, in the order `HeldRows::rows` gives them: key order).
    pub fn build<'r>(
        model: &Model,
        columns: &Columns,
        rows: impl IntoIterator<Item = (i64, usize, RowRef<'r>)>,
        keys: &super::RecordKeys,
    ) -> Table {
        Table::from_rows(
            model,
            columns,
            rows.into_iter()
                .map(|(resource, ri, row)| (keys.record(resource, ri), row)),
        )
    }

    /// The usable rows of keyed rows, in the order given.
    pub fn from_rows<'r>(model: &Model, columns: &Columns, rows: impl IntoIterator<Item = (u64, RowRef<'r>)>) -> Table {
        let mut t = Table {
            values: vec![Vec::new(); columns.predictors.len()],
            levels: vec![Vec::new(); columns.predictors.len()],
            ..Table::default()
        };
        let mut level_text: Vec<Vec<String>> = vec![Vec::new(); columns.predictors.len()];
        'rows: for (key, row) in rows {
            let Some(y) = row.get(columns.outcome).number() else {
                t.missing += 1;
                continue;
            };
            let offset = match columns.offset {
                Some(o) => match row.get(o).number() {
                    Some(v) => v,
                    None => {
                        t.missing += 1;
                        continue;
                    }
                },
                None => 0.0,
            };
            let mut cells = Vec::with_capacity(columns.predictors.len());
            for (pi, &c) in columns.predictors.iter().enumerate() {
                let ok = if model.predictors[pi].categorical {
                    level(row.get(c)).map(Cell::Level)
                } else {
                    row.get(c).number().map(Cell::Number)
                };
                match ok {
                    Some(v) => cells.push(v),
                    None => {
                        t.missing += 1;
                        continue 'rows;
                    }
                }
            }
            if !model.family.admits(y) {
                t.out_of_range += 1;
                continue;
            }
            t.y.push(y);
            t.offset.push(offset);
            t.keys.push(key);
            if let Some(p) = columns.provider {
                t.providers.push(level(row.get(p)).unwrap_or_default());
            }
            for (pi, cell) in cells.into_iter().enumerate() {
                match cell {
                    Cell::Number(x) => t.values[pi].push(x),
                    Cell::Level(s) => {
                        level_text[pi].push(s);
                    }
                }
            }
        }
        // Levels sorted, as R's `factor` orders them; rows hold each level's index.
        for (pi, texts) in level_text.into_iter().enumerate() {
            if !model.predictors[pi].categorical {
                continue;
            }
            let mut levels: Vec<String> = texts.clone();
            levels.sort();
            levels.dedup();
            t.values[pi] = texts
                .iter()
                .map(|s| levels.binary_search(s).unwrap_or(0) as f64)
                .collect();
            t.levels[pi] = levels;
        }
        t
    }

    pub fn n(&self) -> u64 {
        self.y.len() as u64
    }

    /// Why this node may not take part in fitting `model` with `min_cell`, if it may not.
    pub fn refusal(&self, model: &Model, min_cell: u64) -> Option<String> {
        let n = self.n();
        if n < min_cell {
            return Some(format!(
                "fewer than minCell ({min_cell}) usable rows (rows with the outcome and every predictor present)"
            ));
        }
        for (pi, p) in model.predictors.iter().enumerate() {
            let values = &self.values[pi];
            if p.categorical {
                if self.levels[pi].len() > MAX_LEVELS {
                    return Some(format!(
                        "'{}' has more than {MAX_LEVELS} levels: it is not a categorical predictor",
                        p.column
                    ));
                }
                let mut counts = vec![0u64; self.levels[pi].len()];
                for v in values {
                    counts[*v as usize] += 1;
                }
                if counts.iter().any(|c| *c < min_cell) {
                    return Some(format!(
                        "a level of '{}' has fewer than minCell ({min_cell}) rows here",
                        p.column
                    ));
                }
            } else if let Some((a, b)) = two_values(values) {
                // A two-valued number is a category in disguise: each value needs minCell rows.
                let na = values.iter().filter(|v| **v == a).count() as u64;
                if na < min_cell || (values.len() as u64 - na) < min_cell {
                    return Some(format!(
                        "'{}' takes two values ({a} and {b}) and one of them has fewer than minCell ({min_cell}) rows here",
                        p.column
                    ));
                }
            }
        }
        if model.family == Family::Binomial {
            let ones = self.y.iter().filter(|y| **y == 1.0).count() as u64;
            if ones < min_cell || n - ones < min_cell {
                return Some(format!(
                    "an outcome class of '{}' has fewer than minCell ({min_cell}) rows here",
                    model.outcome
                ));
            }
        }
        None
    }

    /// The design matrix (row-major, n × `design.p()`), or why a row cannot be placed.
    pub fn matrix(&self, design: &Design) -> Result<Vec<f64>, String> {
        let p = design.p();
        let n = self.y.len();
        // The design comes from the hub: it must be one this table's model can have.
        if p == 0 || p > MAX_PARAMETERS || design.predictors.len() != self.values.len() {
            return Err(format!(
                "the design ({} predictors, {p} terms) does not fit the model asked ({} predictors)",
                design.predictors.len(),
                self.values.len()
            ));
        }
        for (pi, spec) in design.predictors.iter().enumerate() {
            let width = spec.levels.as_ref().map_or(1, |l| l.len().saturating_sub(1));
            let categorical_here = !self.levels[pi].is_empty() || self.values[pi].is_empty();
            if spec.first == 0
                || spec.first + width > p
                || (spec.levels.is_some() != categorical_here && !self.values[pi].is_empty())
            {
                return Err(format!(
                    "the design's terms for '{}' do not fit the model asked",
                    spec.column
                ));
            }
        }
        let mut x = vec![0.0; n * p];
        // Per predictor, where each local level goes in the design (None: the reference).
        let mut maps: Vec<Vec<Option<usize>>> = Vec::new();
        for (pi, spec) in design.predictors.iter().enumerate() {
            let mut map = Vec::new();
            if let Some(levels) = &spec.levels {
                for l in &self.levels[pi] {
                    match levels.iter().position(|g| g == l) {
                        Some(0) => map.push(None),
                        Some(k) => map.push(Some(spec.first + k - 1)),
                        None => return Err(format!("the hub's design has no level '{l}' of '{}'", spec.column)),
                    }
                }
            }
            maps.push(map);
        }
        for r in 0..n {
            let row = &mut x[r * p..(r + 1) * p];
            if !design.null {
                for (pi, spec) in design.predictors.iter().enumerate() {
                    let v = self.values[pi][r];
                    if spec.levels.is_some() {
                        if let Some(c) = maps[pi][v as usize] {
                            row[c] = 1.0;
                        }
                    } else {
                        row[spec.first] = v;
                    }
                }
            }
            row[0] = 1.0;
        }
        Ok(x)
    }
}

enum Cell {
    Number(f64),
    Level(String),
}

/// The two values a column takes, if it takes exactly two.
fn two_values(values: &[f64]) -> Option<(f64, f64)> {
    let a = *values.first()?;
    let mut b = None;
    for v in values {
        if *v != a {
            match b {
                None => b = Some(*v),
                Some(b) if b != *v => return None,
                _ => {}
            }
        }
    }
    b.map(|b| (a, b))
}

/// One predictor in the design: where its terms start and, for a categorical one,
/// every level across the regions, the reference first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TermSpec {
    pub column: String,
    pub first: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub levels: Option<Vec<String>>,
}

/// The columns of X, which the hub settles from every region's levels and every
/// node builds the same way. `null`: the intercept-only model (for the null deviance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Design {
    pub predictors: Vec<TermSpec>,
    pub terms: Vec<String>,
    #[serde(default)]
    pub null: bool,
}

impl Design {
    /// The design from each region's levels per predictor (`levels[region][predictor]`).
    pub fn settle(model: &Model, levels: &[&[Vec<String>]]) -> Result<Design, QueryProblem> {
        let mut terms = vec!["(Intercept)".to_string()];
        let mut predictors = Vec::new();
        for (pi, p) in model.predictors.iter().enumerate() {
            let first = terms.len();
            if !p.categorical {
                terms.push(p.column.clone());
                predictors.push(TermSpec {
                    column: p.column.clone(),
                    first,
                    levels: None,
                });
                continue;
            }
            let mut all: Vec<String> = levels
                .iter()
                .flat_map(|r| r.get(pi).into_iter().flatten().cloned())
                .collect();
            all.sort();
            all.dedup();
            if all.len() > MAX_LEVELS {
                return Err(problem(
                    &format!("predictors[{pi}]"),
                    format!("'{}' has more than {MAX_LEVELS} levels across the regions", p.column),
                ));
            }
            let reference = match &p.reference {
                Some(r) => r.clone(),
                None => all.first().cloned().unwrap_or_default(),
            };
            let Some(at) = all.iter().position(|l| *l == reference) else {
                return Err(problem(
                    &format!("predictors[{pi}].reference"),
                    format!(
                        "'{}' has no level '{reference}' in the rows (levels: {})",
                        p.column,
                        all.join(", ")
                    ),
                ));
            };
            let r = all.remove(at);
            all.insert(0, r);
            for l in all.iter().skip(1) {
                terms.push(format!("{}[{l}]", p.column));
            }
            predictors.push(TermSpec {
                column: p.column.clone(),
                first,
                levels: Some(all),
            });
        }
        if terms.len() > MAX_PARAMETERS {
            return Err(problem(
                "predictors",
                format!("the model has {} parameters; at most {MAX_PARAMETERS}", terms.len()),
            ));
        }
        Ok(Design {
            predictors,
            terms,
            null: false,
        })
    }

    pub fn p(&self) -> usize {
        if self.null {
            1
        } else {
            self.terms.len()
        }
    }

    /// The intercept-only model with the same rows.
    pub fn null_model(&self) -> Design {
        Design {
            null: true,
            ..self.clone()
        }
    }
}

/// A node's rows, fixed for the fit, with X built per design.
pub struct Fit {
    pub table: Table,
    full: Option<(Design, Vec<f64>)>,
}

impl Fit {
    pub fn new(table: Table) -> Fit {
        Fit { table, full: None }
    }

    /// This node's part of a round at `beta` (`None`: the starting round).
    pub fn part(&mut self, family: Family, design: &Design, beta: Option<&[f64]>) -> Result<Part, String> {
        let p = design.p();
        if beta.is_some_and(|b| b.len() != p || b.iter().any(|v| !v.is_finite())) {
            return Err(format!("the coefficients do not fit a design of {p} terms"));
        }
        let t = &self.table;
        if design.null {
            let mut acc = super::glm::Accumulator::new(family, 1, beta);
            for i in 0..t.y.len() {
                acc.add(&[1.0], t.y[i], t.offset[i]);
            }
            return Ok(acc.finish());
        }
        if self.full.as_ref().is_none_or(|(d, _)| d != design) {
            let x = t.matrix(design)?;
            self.full = Some((design.clone(), x));
        }
        let x = &self.full.as_ref().map(|(_, x)| x).expect("built above");
        let mut acc = super::glm::Accumulator::new(family, p, beta);
        for i in 0..t.y.len() {
            acc.add(&x[i * p..(i + 1) * p], t.y[i], t.offset[i]);
        }
        Ok(acc.finish())
    }
}

/// What a pathway's risk model may adjust for, per episode: (name, categorical).
pub const EPISODE_PREDICTORS: [(&str, bool); 5] = [
    ("age", false),
    ("sex", true),
    ("age_band", true),
    ("treatment_function", true),
    ("admission_method", true),
];

/// A logistic model of a pathway group's outcome (`predictors` from `EPISODE_PREDICTORS`).
pub fn cohort_model(predictors: &[String]) -> Result<Model, QueryProblem> {
    let mut out: Vec<Predictor> = Vec::new();
    for name in predictors {
        let Some((_, categorical)) = EPISODE_PREDICTORS.iter().find(|(n, _)| n == name) else {
            return Err(problem(
                "predictors",
                format!(
                    "the risk model cannot adjust for '{name}' (it can for {})",
                    EPISODE_PREDICTORS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if out.iter().any(|p| p.column == *name) {
            return Err(problem("predictors", format!("'{name}' is named twice")));
        }
        out.push(Predictor {
            column: name.clone(),
            categorical: *categorical,
            reference: None,
        });
    }
    Ok(Model {
        outcome: "outcome".into(),
        predictors: out,
        family: Family::Binomial,
        offset: None,
    })
}

/// An episode as a row of its pathway's risk model: the outcome, each of
/// `EPISODE_PREDICTORS`, and the provider.
pub fn cohort_row(e: &crate::pathways::Episode, outcome: bool) -> Row {
    let text = |v: &Option<String>| v.as_ref().map_or(Value::Null, |s| Value::String(s.clone()));
    vec![
        Value::Bool(outcome),
        e.age.map_or(Value::Null, |a| json!(a)),
        text(&e.sex),
        e.age.map_or(Value::Null, |a| json!(crate::pathways::age_band(a))),
        text(&e.treatment_function),
        text(&e.admission_method),
        Value::String(e.provider.clone()),
    ]
}

/// Where `cohort_row` puts the model's columns.
pub fn cohort_columns(model: &Model) -> Columns {
    Columns {
        outcome: 0,
        predictors: model
            .predictors
            .iter()
            .map(|p| 1 + EPISODE_PREDICTORS.iter().position(|(n, _)| *n == p.column).unwrap_or(0))
            .collect(),
        offset: None,
        provider: Some(1 + EPISODE_PREDICTORS.len()),
    }
}

/// Bins of the fitted probability for the c-statistic: fine enough that binning moves it
/// by less than 1/BINS.
pub const BINS: usize = 1000;

/// A node's expected counts per provider at the fitted model, and its rows' fitted
/// probabilities binned by outcome class (for the c-statistic; never released).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expected {
    pub providers: Vec<ProviderExpected>,
    pub bins: Vec<[u64; 2]>,
}

/// One provider's rows of the model: how many, how many with the outcome, the sum of
/// their fitted probabilities, and the cell keys of both counts (for the gate's noise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderExpected {
    pub provider: String,
    pub n: u64,
    pub observed: u64,
    pub expected: f64,
    pub n_key: u64,
    pub observed_key: u64,
}

impl Fit {
    /// Expected outcomes per provider and binned probabilities at `beta`.
    pub fn expected(&mut self, family: Family, design: &Design, beta: &[f64]) -> Result<Expected, String> {
        let p = design.p();
        if beta.len() != p || beta.iter().any(|b| !b.is_finite()) || design.null {
            return Err(format!("the coefficients do not fit a design of {p} terms"));
        }
        if self.full.as_ref().is_none_or(|(d, _)| d != design) {
            let x = self.table.matrix(design)?;
            self.full = Some((design.clone(), x));
        }
        let t = &self.table;
        let x = self.full.as_ref().map(|(_, x)| x.as_slice()).unwrap_or_default();
        let mut by: std::collections::BTreeMap<&str, ProviderExpected> = std::collections::BTreeMap::new();
        let mut bins = vec![[0u64; 2]; BINS];
        for i in 0..t.y.len() {
            let eta: f64 = x[i * p..(i + 1) * p].iter().zip(beta).map(|(a, b)| a * b).sum::<f64>() + t.offset[i];
            let mu = family.inverse_link(eta);
            if let Some(provider) = t.providers.get(i) {
                let e = by.entry(provider.as_str()).or_default();
                let case = t.y[i] > 0.5;
                e.n += 1;
                e.observed += case as u64;
                e.expected += mu;
                e.n_key = e.n_key.wrapping_add(t.keys[i]);
                if case {
                    e.observed_key = e.observed_key.wrapping_add(t.keys[i]);
                }
            }
            let bin = ((mu * BINS as f64) as usize).min(BINS - 1);
            bins[bin][(t.y[i] > 0.5) as usize] += 1;
        }
        Ok(Expected {
            providers: by
                .into_iter()
                .map(|(k, v)| ProviderExpected {
                    provider: k.to_string(),
                    ..v
                })
                .collect(),
            bins,
        })
    }
}

/// The c-statistic (area under the ROC curve) from pooled bins: the chance that a row
/// with the outcome has a higher fitted probability than one without (ties count half).
pub fn c_statistic(bins: &[[u64; 2]]) -> Option<f64> {
    let (mut below, mut concordant) = (0f64, 0f64);
    let (mut cases, mut controls) = (0f64, 0f64);
    for [neg, pos] in bins {
        let (neg, pos) = (*neg as f64, *pos as f64);
        concordant += pos * (below + 0.5 * neg);
        below += neg;
        cases += pos;
        controls += neg;
    }
    (cases > 0.0 && controls > 0.0).then(|| concordant / (cases * controls))
}

/// Why rows of a new fit are too close to an earlier fit's rows: the number of rows in one
/// and not the other (sorted keys).
pub fn rows_apart(a: &[u64], b: &[u64]) -> u64 {
    let (mut i, mut j, mut d) = (0, 0, 0u64);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less => {
                d += 1;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                d += 1;
                j += 1;
            }
        }
    }
    d + (a.len() - i) as u64 + (b.len() - j) as u64
}

/// One region's part in a reply.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionPart {
    pub region: String,
    /// ok, refused, timeout, unreachable, error.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A fit that could not be made: 422 with the reason (and each region's, at the hub).
pub fn not_fitted(main: String, regions: &[RegionPart]) -> crate::error::Error {
    use crate::fhir::{Issue, IssueCode};
    let mut issues = vec![Issue::error(IssueCode::Processing, main)];
    for r in regions.iter().filter(|r| r.reason.is_some()) {
        issues.push(Issue {
            expression: Some(format!("regions[{}]", r.region)),
            ..Issue::error(
                IssueCode::Processing,
                format!("{} ({}): {}", r.region, r.status, r.reason.as_deref().unwrap_or("")),
            )
        });
    }
    crate::error::Error::Unprocessable(issues)
}

/// What a fit problem means to the person who asked.
pub fn problem_text(p: &super::glm::FitProblem, terms: &[String]) -> String {
    match p {
        super::glm::FitProblem::Separation { extreme } => format!(
            "separation: the predictors separate the outcome classes (fitted probabilities of {extreme} row(s) are 0 or 1), \
             so the estimates do not exist; drop or merge the predictor that predicts the outcome perfectly"
        ),
        super::glm::FitProblem::Singular(i) => format!(
            "the design is singular: '{}' is constant or a combination of the other terms",
            terms.get(*i).map_or("a term", String::as_str)
        ),
        super::glm::FitProblem::Malformed => "a region's sums do not fit the model".into(),
    }
}

/// The reply of a fitted model.
pub fn reply_json(
    status: &str,
    regions: &[RegionPart],
    family: Family,
    fit: &super::glm::Fitted,
    summary: &super::glm::Summary,
    null_deviance: f64,
    disclosure: Value,
) -> Value {
    json!({
        "status": status,
        "regions": regions,
        "family": family.as_str(),
        "link": family.link(),
        "n": fit.n,
        "iterations": fit.iterations,
        "converged": fit.converged,
        "coefficients": summary.coefficients,
        "deviance": fit.deviance,
        "nullDeviance": null_deviance,
        "dfResidual": summary.df_residual,
        "dispersion": summary.dispersion,
        "aic": summary.aic,
        "disclosure": disclosure,
    })
}

/// The coefficient table as CSV (`_format=csv`).
pub fn coefficients_csv(reply: &Value) -> Vec<u8> {
    let mut out = String::from("term,estimate,stdError,statistic,pValue,ciLower,ciUpper\n");
    for c in reply["coefficients"].as_array().into_iter().flatten() {
        let term = c["term"].as_str().unwrap_or_default();
        let term = crate::views::output::spreadsheet_safe(term);
        let quoted = format!("\"{}\"", term.replace('"', "\"\""));
        out.push_str(&quoted);
        for k in ["estimate", "stdError", "statistic", "pValue", "ciLower", "ciUpper"] {
            out.push(',');
            if let Some(v) = c[k].as_f64() {
                out.push_str(&format!("{v:e}"));
            }
        }
        out.push('\n');
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_checked_member_by_member() {
        let bad = |v: Value| RegressQuery::parse(&v).unwrap_err().expression;
        assert_eq!(bad(json!({"viewReference": "v"})), "outcome");
        assert_eq!(
            bad(json!({"viewReference": "v", "outcome": "y", "family": "gamma"})),
            "family"
        );
        assert_eq!(
            bad(json!({"viewReference": "v", "outcome": "y", "offset": "t"})),
            "offset"
        );
        assert_eq!(
            bad(json!({"viewReference": "v", "outcome": "y", "predictors": ["x", "x"]})),
            "predictors[1]"
        );
        assert_eq!(
            bad(json!({"viewReference": "v", "outcome": "y", "predictors": [{"column": "x", "reference": "a"}]})),
            "predictors[0].reference"
        );
        assert_eq!(
            bad(json!({"viewReference": "v", "outcome": "y", "maxIterations": 0})),
            "maxIterations"
        );
        assert_eq!(
            bad(json!({"viewReference": "v", "outcome": "y", "weights": "w"})),
            "weights"
        );
        let q = RegressQuery::parse(&json!({"viewReference": "v", "outcome": "y",
            "predictors": ["x", {"column": "c", "categorical": true, "reference": "b"}], "family": "binomial"}))
        .unwrap();
        assert_eq!(q.max_iterations, 25);
        assert_eq!(q.predictors[1].reference.as_deref(), Some("b"));
    }

    #[test]
    fn the_design_names_terms_as_r_does_with_the_reference_first() {
        let model = Model {
            outcome: "y".into(),
            predictors: vec![
                Predictor {
                    column: "age".into(),
                    categorical: false,
                    reference: None,
                },
                Predictor {
                    column: "class".into(),
                    categorical: true,
                    reference: Some("IMP".into()),
                },
            ],
            family: Family::Binomial,
            offset: None,
        };
        let a = vec![vec![], vec!["AMB".to_string(), "IMP".to_string()]];
        let b = vec![vec![], vec!["EMER".to_string(), "IMP".to_string()]];
        let d = Design::settle(&model, &[&a, &b]).unwrap();
        assert_eq!(d.terms, ["(Intercept)", "age", "class[AMB]", "class[EMER]"]);
        assert_eq!(d.predictors[1].levels.as_ref().unwrap()[0], "IMP");
        let mut wrong = model.clone();
        wrong.predictors[1].reference = Some("XYZ".into());
        assert_eq!(
            Design::settle(&wrong, &[&a]).unwrap_err().expression,
            "predictors[1].reference"
        );
    }

    #[test]
    fn the_c_statistic_counts_concordant_pairs() {
        let mut bins = vec![[0u64; 2]; BINS];
        bins[100] = [3, 0];
        bins[900] = [0, 2];
        assert_eq!(c_statistic(&bins), Some(1.0));
        bins[100] = [1, 1];
        bins[900] = [1, 1];
        // Pairs (case, control): 4; concordant 1 (case at 900, control at 100), 2 ties.
        assert_eq!(c_statistic(&bins), Some((1.0 + 0.5 * 2.0) / 4.0));
        assert_eq!(c_statistic(&[[1, 0]; 3]), None);
    }

    #[test]
    fn a_design_that_does_not_fit_the_rows_is_refused_not_a_panic() {
        let model = Model {
            outcome: "y".into(),
            predictors: vec![
                Predictor {
                    column: "x".into(),
                    categorical: false,
                    reference: None,
                },
                Predictor {
                    column: "c".into(),
                    categorical: true,
                    reference: None,
                },
            ],
            family: Family::Gaussian,
            offset: None,
        };
        let columns = Columns {
            outcome: 0,
            predictors: vec![1, 2],
            offset: None,
            provider: None,
        };
        let rows: Vec<Row> = (0..6)
            .map(|i| vec![json!(i), json!(i * 2), json!(if i % 2 == 0 { "a" } else { "b" })])
            .collect();
        let t = Table::from_rows(
            &model,
            &columns,
            rows.iter().enumerate().map(|(i, r)| (i as u64, RowRef::Plain(r))),
        );
        let good = Design::settle(&model, &[&t.levels]).unwrap();
        assert_eq!(t.matrix(&good).unwrap().len(), 6 * 3);
        let mut swapped = good.clone();
        swapped.predictors[0].levels = Some(vec!["a".into(), "b".into()]);
        swapped.predictors[1].levels = None;
        assert!(t.matrix(&swapped).is_err());
        let mut beyond = good.clone();
        beyond.predictors[1].first = 7;
        assert!(t.matrix(&beyond).is_err());
        let mut fewer = good.clone();
        fewer.predictors.pop();
        assert!(t.matrix(&fewer).is_err());
    }

    #[test]
    fn rows_apart_counts_the_symmetric_difference() {
        assert_eq!(rows_apart(&[1, 2, 3], &[1, 2, 3]), 0);
        assert_eq!(rows_apart(&[1, 2, 3], &[1, 2, 3, 4]), 1);
        assert_eq!(rows_apart(&[1, 3, 5], &[2, 3, 4]), 4);
        assert_eq!(rows_apart(&[], &[7]), 1);
    }
}
