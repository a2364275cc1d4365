//! SQL-on-FHIR v2 ViewDefinitions: compile a view once, then flatten resources
//! into rows with it.
//!
//! `compile` checks everything that can be checked before data is seen (the
//! target resource, FHIRPath syntax, constants, column names that `unionAll`
//! branches must share); `View::rows` evaluates one resource. Pure: no I/O.

pub mod frame;
pub mod library;
pub mod output;

pub use output::{write_csv, write_json, write_ndjson, Format};

use crate::fhirpath::{self, ChoiceModel, Expr, Item};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ViewError {
    pub message: String,
    /// Where in the ViewDefinition (a JSON path like `select[0].column[1].path`).
    pub location: String,
}

fn err(location: &str, message: impl Into<String>) -> ViewError {
    ViewError {
        message: message.into(),
        location: location.to_string(),
    }
}

/// A column of the view's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// The declared FHIR type, if any (`string`, `integer`, `boolean`, ...).
    pub ty: Option<String>,
    pub collection: bool,
    /// What federated questions may do with the column (the `pennine/role` tag).
    pub role: ColumnRole,
}

/// The role an approved view declares for a column with the column tag
/// `{"name": "pennine/role", "value": ...}`: what partners may group by, what
/// they may summarise, and which column identifies the person a row is about.
/// Columns without the tag serve only a region's own analysts (`$run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnRole {
    /// Not usable in federated questions.
    None,
    /// A generalised dimension (sex, age band, year, code): may be grouped by.
    Dimension,
    /// A number or a true/false value: may be summed, averaged, or its spread taken.
    Measure,
    /// The key of the person the row is about: only distinct counts; the gate
    /// counts contributors by it.
    Subject,
}

/// The tag that declares a column's role.
pub const ROLE_TAG: &str = "pennine/role";

/// Limits on what a ViewDefinition may ask, checked when it is compiled.
pub const MAX_SELECT_DEPTH: usize = 16;
pub const MAX_COLUMNS: usize = 256;
/// Rows one resource may produce; nested `forEach` over large collections
/// multiply, and a view that passes this is refused at evaluation.
pub const MAX_ROWS_PER_RESOURCE: usize = 10_000;

#[derive(Debug, Clone)]
struct Column {
    expr: Expr,
    path: String,
    collection: bool,
    location: String,
}

#[derive(Debug, Clone)]
enum Iteration {
    /// The node's focus is its parent's focus.
    None,
    ForEach(Expr),
    ForEachOrNull(Expr),
    /// Every node reached by repeatedly following any of the paths, depth first.
    Repeat(Vec<Expr>),
}

#[derive(Debug, Clone)]
struct Select {
    iteration: Iteration,
    columns: Vec<Column>,
    selects: Vec<Select>,
    union_all: Vec<Select>,
    /// How many output columns this node produces (its own and its children's).
    width: usize,
}

/// A compiled ViewDefinition.
#[derive(Debug, Clone)]
pub struct View {
    pub name: Option<String>,
    pub resource: String,
    pub columns: Vec<ColumnInfo>,
    constants: Vec<(String, Item<'static>)>,
    wheres: Vec<(Expr, String)>,
    root: Select,
}

/// One output row: a value per column, in `View::columns` order.
pub type Row = Vec<Value>;

impl View {
    /// Compiles a ViewDefinition resource (its JSON).
    pub fn compile(def: &Value) -> Result<View, ViewError> {
        let obj = def
            .as_object()
            .ok_or_else(|| err("", "a ViewDefinition must be a JSON object"))?;
        if let Some(rt) = obj.get("resourceType").and_then(Value::as_str) {
            if rt != "ViewDefinition" {
                return Err(err("resourceType", format!("expected a ViewDefinition, found {rt}")));
            }
        }
        let resource = match obj.get("resource") {
            Some(Value::String(s)) if is_type_name(s) => s.clone(),
            Some(other) => return Err(err("resource", format!("'{other}' is not a resource type"))),
            None => return Err(err("resource", "the view names no resource type ('resource')")),
        };
        let mut constants = Vec::new();
        for (i, c) in array(obj, "constant", "")?.iter().enumerate() {
            constants.push(constant(c, &format!("constant[{i}]"))?);
        }
        let names: Vec<&str> = constants.iter().map(|(n, _)| n.as_str()).collect();
        let mut wheres = Vec::new();
        for (i, w) in array(obj, "where", "")?.iter().enumerate() {
            let loc = format!("where[{i}].path");
            let path = w
                .get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| err(&loc, "a where clause needs a FHIRPath 'path'"))?;
            wheres.push((expression(path, &loc, &names)?, path.to_string()));
        }
        let mut columns = Vec::new();
        let root = select_node(obj, "", &names, &mut columns, true)?;
        let mut seen = std::collections::HashSet::new();
        for c in &columns {
            if !seen.insert(c.name.as_str()) {
                return Err(err("select", format!("column name '{}' is used twice", c.name)));
            }
        }
        Ok(View {
            name: obj.get("name").and_then(Value::as_str).map(str::to_string),
            resource,
            columns,
            constants,
            wheres,
            root,
        })
    }

    /// Appends the rows `resource` produces to `out`. A resource of another
    /// type, or one that a `where` clause excludes, produces none.
    pub fn rows(&self, resource: &Value, model: &ChoiceModel, out: &mut Vec<Row>) -> Result<(), ViewError> {
        if resource.get("resourceType").and_then(Value::as_str) != Some(self.resource.as_str()) {
            return Ok(());
        }
        let mut vars: Vec<(String, Item)> = self.constants.clone();
        vars.push(("rowIndex".into(), Item::Integer(0)));
        let focus = Item::Node {
            value: resource,
            ty: None,
        };
        for (expr, path) in &self.wheres {
            let r = fhirpath::evaluate_in(expr, &focus, resource, model, &vars)
                .map_err(|e| err("where", format!("where '{path}': {e}")))?;
            match r.as_slice() {
                [] => return Ok(()),
                [one] => match boolean(one) {
                    Some(true) => {}
                    Some(false) => return Ok(()),
                    None => {
                        return Err(err(
                            "where",
                            format!(
                                "where '{path}' must give a boolean, it gave '{}'",
                                one.to_string_value()
                            ),
                        ))
                    }
                },
                _ => return Err(err("where", format!("where '{path}' gave several values"))),
            }
        }
        let env = Env { root: resource, model };
        let rows = env.node_rows(&self.root, &focus, &mut vars)?;
        out.extend(rows);
        Ok(())
    }
}

fn is_type_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn array<'v>(obj: &'v Map<String, Value>, key: &str, at: &str) -> Result<&'v [Value], ViewError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(err(&join(at, key), format!("'{key}' must be an array"))),
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

fn expression(path: &str, loc: &str, constants: &[&str]) -> Result<Expr, ViewError> {
    let expr = fhirpath::parse(path).map_err(|e| err(loc, format!("invalid FHIRPath '{path}': {e}")))?;
    let mut unknown = None;
    visit_constants(&expr, &mut |name| {
        if !constants.contains(&name) && !BUILTIN_VARIABLES.contains(&name) && unknown.is_none() {
            unknown = Some(name.to_string());
        }
    });
    match unknown {
        Some(name) => Err(err(
            loc,
            format!("'{path}' uses %{name}, which the view does not define"),
        )),
        None => Ok(expr),
    }
}

const BUILTIN_VARIABLES: [&str; 7] = [
    "resource",
    "rootResource",
    "context",
    "rowIndex",
    "ucum",
    "sct",
    "loinc",
];

fn visit_constants(e: &Expr, f: &mut dyn FnMut(&str)) {
    match e {
        Expr::Constant(n) => f(n),
        Expr::This | Expr::Literal(_) | Expr::Ident(_) => {}
        Expr::Member(t, _) | Expr::Negate(t) | Expr::Is(t, _) | Expr::As(t, _) => visit_constants(t, f),
        Expr::Index(a, b) | Expr::Binary(_, a, b) => {
            visit_constants(a, f);
            visit_constants(b, f);
        }
        Expr::Call { target, args, .. } => {
            if let Some(t) = target {
                visit_constants(t, f);
            }
            for a in args {
                visit_constants(a, f);
            }
        }
    }
}

/// A view constant: `name` and one `value[x]`.
fn constant(c: &Value, loc: &str) -> Result<(String, Item<'static>), ViewError> {
    let name = c
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err(loc, "a constant needs a 'name'"))?;
    let obj = c.as_object().ok_or_else(|| err(loc, "a constant must be an object"))?;
    let (key, value) = obj
        .iter()
        .find(|(k, _)| k.starts_with("value"))
        .ok_or_else(|| err(loc, format!("constant '{name}' has no value[x]")))?;
    let item = match (key.as_str(), value) {
        ("valueBoolean", Value::Bool(b)) => Item::Boolean(*b),
        ("valueInteger" | "valuePositiveInt" | "valueUnsignedInt" | "valueInteger64", Value::Number(n))
            if n.as_i64().is_some() =>
        {
            Item::Integer(n.as_i64().unwrap_or_default())
        }
        ("valueDecimal", Value::Number(n)) => Item::Decimal(n.as_f64().unwrap_or_default()),
        (_, Value::String(s)) => Item::String(s.clone()),
        (k, v) => return Err(err(loc, format!("constant '{name}': {k} cannot hold {v}"))),
    };
    Ok((name.to_string(), item))
}

fn select_node(
    obj: &Map<String, Value>,
    at: &str,
    constants: &[&str],
    out_columns: &mut Vec<ColumnInfo>,
    root: bool,
) -> Result<Select, ViewError> {
    let path_of = |key: &str| -> Result<Option<Expr>, ViewError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(p)) => expression(p, &join(at, key), constants).map(Some),
            Some(other) => Err(err(
                &join(at, key),
                format!("'{key}' must be a FHIRPath string, not {other}"),
            )),
        }
    };
    let depth = at.matches("select[").count() + at.matches("unionAll[").count();
    if depth > MAX_SELECT_DEPTH {
        return Err(err(
            at,
            format!("selects nest more than {MAX_SELECT_DEPTH} levels deep (the limit)"),
        ));
    }
    let mut iteration = Iteration::None;
    if !root {
        let for_each = path_of("forEach")?;
        let or_null = path_of("forEachOrNull")?;
        let repeat = match obj.get("repeat") {
            None | Some(Value::Null) => None,
            Some(Value::Array(paths)) => {
                let mut exprs = Vec::new();
                for (i, p) in paths.iter().enumerate() {
                    let loc = format!("{}[{i}]", join(at, "repeat"));
                    let p = p.as_str().ok_or_else(|| err(&loc, "repeat paths must be strings"))?;
                    exprs.push(expression(p, &loc, constants)?);
                }
                Some(exprs)
            }
            Some(_) => return Err(err(&join(at, "repeat"), "'repeat' must be an array of paths")),
        };
        iteration = match (for_each, or_null, repeat) {
            (None, None, None) => Iteration::None,
            (Some(e), None, None) => Iteration::ForEach(e),
            (None, Some(e), None) => Iteration::ForEachOrNull(e),
            (None, None, Some(r)) => Iteration::Repeat(r),
            _ => {
                return Err(err(
                    at,
                    "a select may have only one of forEach, forEachOrNull and repeat",
                ))
            }
        };
    }
    let start = out_columns.len();
    let mut columns = Vec::new();
    if !root {
        for (i, c) in array(obj, "column", at)?.iter().enumerate() {
            let loc = format!("{}[{i}]", join(at, "column"));
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| err(&loc, "a column needs a 'name'"))?;
            if name.is_empty() || !name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                return Err(err(
                    &loc,
                    format!("column name '{name}' must be letters, digits and '_'"),
                ));
            }
            let path = c
                .get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| err(&loc, format!("column '{name}' needs a FHIRPath 'path'")))?;
            let collection = match c.get("collection") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(err(&loc, "'collection' must be true or false")),
            };
            let ty = c.get("type").and_then(Value::as_str).map(str::to_string);
            let role = column_role(c, &loc)?;
            if out_columns.len() >= MAX_COLUMNS {
                return Err(err(
                    &loc,
                    format!("the view has more than {MAX_COLUMNS} columns (the limit)"),
                ));
            }
            columns.push(Column {
                expr: expression(path, &format!("{loc}.path"), constants)?,
                path: path.to_string(),
                collection,
                location: loc,
            });
            out_columns.push(ColumnInfo {
                name: name.to_string(),
                ty,
                collection,
                role,
            });
        }
    }
    let mut selects = Vec::new();
    for (i, s) in array(obj, "select", at)?.iter().enumerate() {
        let loc = format!("{}[{i}]", join(at, "select"));
        let s = s.as_object().ok_or_else(|| err(&loc, "a select must be an object"))?;
        selects.push(select_node(s, &loc, constants, out_columns, false)?);
    }
    let mut union_all = Vec::new();
    let mut first_branch: Option<Vec<ColumnInfo>> = None;
    for (i, s) in array(obj, "unionAll", at)?.iter().enumerate() {
        let loc = format!("{}[{i}]", join(at, "unionAll"));
        let s = s
            .as_object()
            .ok_or_else(|| err(&loc, "a unionAll branch must be an object"))?;
        let mut branch_columns = Vec::new();
        union_all.push(select_node(s, &loc, constants, &mut branch_columns, false)?);
        match &first_branch {
            None => first_branch = Some(branch_columns),
            Some(first) => {
                let names = |c: &[ColumnInfo]| c.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
                if names(first) != names(&branch_columns) {
                    return Err(err(
                        &loc,
                        format!(
                            "unionAll branches must have the same columns in the same order: {:?} vs {:?}",
                            names(first),
                            names(&branch_columns)
                        ),
                    ));
                }
            }
        }
    }
    out_columns.extend(first_branch.unwrap_or_default());
    Ok(Select {
        iteration,
        columns,
        selects,
        union_all,
        width: out_columns.len() - start,
    })
}

/// The `pennine/role` tag of a column, if it has one.
fn column_role(c: &Value, loc: &str) -> Result<ColumnRole, ViewError> {
    let mut role = ColumnRole::None;
    for (i, t) in c.get("tag").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if t.get("name").and_then(Value::as_str) != Some(ROLE_TAG) {
            continue;
        }
        role = match t.get("value").and_then(Value::as_str) {
            Some("dimension") => ColumnRole::Dimension,
            Some("measure") => ColumnRole::Measure,
            Some("subject") => ColumnRole::Subject,
            other => {
                return Err(err(
                    &format!("{loc}.tag[{i}]"),
                    format!("unknown {ROLE_TAG} {other:?} (dimension, measure, subject)"),
                ))
            }
        };
    }
    Ok(role)
}

fn boolean(item: &Item) -> Option<bool> {
    match item {
        Item::Boolean(b) => Some(*b),
        Item::Node {
            value: Value::Bool(b), ..
        } => Some(*b),
        _ => None,
    }
}

/// The JSON a FHIRPath item becomes in a row.
pub fn item_value(item: &Item) -> Value {
    match item {
        Item::Node { value, .. } => (*value).clone(),
        Item::String(s) | Item::Resolved(s) => Value::String(s.clone()),
        Item::Integer(i) => Value::from(*i),
        Item::Decimal(d) => decimal_value(*d),
        Item::Boolean(b) => Value::Bool(*b),
    }
}

/// A float as JSON, written as an integer when it is one.
pub fn decimal_value(d: f64) -> Value {
    if d.fract() == 0.0 && d.abs() < 9.0e15 {
        Value::from(d as i64)
    } else {
        serde_json::Number::from_f64(d)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

struct Env<'a> {
    root: &'a Value,
    model: &'a ChoiceModel,
}

impl<'a> Env<'a> {
    fn eval(&self, expr: &Expr, focus: &Item<'a>, vars: &[(String, Item<'a>)]) -> Result<Vec<Item<'a>>, String> {
        fhirpath::evaluate_in(expr, focus, self.root, self.model, vars).map_err(|e| e.to_string())
    }

    /// The rows `node` produces for one focus item of its parent.
    fn node_rows(
        &self,
        node: &Select,
        parent: &Item<'a>,
        vars: &mut Vec<(String, Item<'a>)>,
    ) -> Result<Vec<Row>, ViewError> {
        let loc = "select";
        let foci: Vec<Item<'a>> = match &node.iteration {
            Iteration::None => return self.focus_rows(node, parent, vars),
            Iteration::ForEach(e) | Iteration::ForEachOrNull(e) => self
                .eval(e, parent, vars)
                .map_err(|m| err(loc, format!("forEach: {m}")))?,
            Iteration::Repeat(paths) => {
                let mut out = Vec::new();
                self.repeat(paths, parent, vars, &mut out, 0)?;
                out
            }
        };
        if foci.is_empty() {
            return match node.iteration {
                Iteration::ForEachOrNull(_) => self.null_row(node, vars),
                _ => Ok(vec![]),
            };
        }
        let mut rows = Vec::new();
        let saved = set_row_index(vars, 0);
        for (i, focus) in foci.iter().enumerate() {
            set_row_index(vars, i as i64);
            rows.extend(self.focus_rows(node, focus, vars)?);
            too_many_rows(rows.len())?;
        }
        set_row_index(vars, saved);
        Ok(rows)
    }

    /// The one row `forEachOrNull` keeps when there is nothing to iterate: its
    /// own columns evaluated on an empty focus (so `%rowIndex` still reads 0),
    /// nulls for everything nested.
    fn null_row(&self, node: &Select, vars: &mut [(String, Item<'a>)]) -> Result<Vec<Row>, ViewError> {
        static NULL: Value = Value::Null;
        let saved = set_row_index(vars, 0);
        let empty = Item::Node { value: &NULL, ty: None };
        let mut row = Vec::with_capacity(node.width);
        for c in &node.columns {
            let values = self
                .eval(&c.expr, &empty, vars)
                .map_err(|m| err(&c.location, format!("column path '{}': {m}", c.path)))?;
            row.push(match values.as_slice() {
                [one] if !c.collection => item_value(one),
                _ if c.collection => Value::Array(values.iter().map(item_value).collect()),
                _ => Value::Null,
            });
        }
        row.resize(node.width, Value::Null);
        set_row_index(vars, saved);
        Ok(vec![row])
    }

    fn repeat(
        &self,
        paths: &[Expr],
        item: &Item<'a>,
        vars: &[(String, Item<'a>)],
        out: &mut Vec<Item<'a>>,
        depth: usize,
    ) -> Result<(), ViewError> {
        if depth > 64 {
            return Err(err("repeat", "repeat nests more than 64 levels deep"));
        }
        for p in paths {
            for child in self.eval(p, item, vars).map_err(|m| err("repeat", m))? {
                out.push(child.clone());
                self.repeat(paths, &child, vars, out, depth + 1)?;
            }
        }
        Ok(())
    }

    /// The rows of `node` at one focus: its columns, times each nested select's
    /// rows, times the rows of its unionAll branches.
    fn focus_rows(
        &self,
        node: &Select,
        focus: &Item<'a>,
        vars: &mut Vec<(String, Item<'a>)>,
    ) -> Result<Vec<Row>, ViewError> {
        let mut own = Vec::with_capacity(node.columns.len());
        for c in &node.columns {
            let values = self
                .eval(&c.expr, focus, vars)
                .map_err(|m| err(&c.location, format!("column path '{}': {m}", c.path)))?;
            own.push(if c.collection {
                Value::Array(values.iter().map(item_value).collect())
            } else {
                match values.as_slice() {
                    [] => Value::Null,
                    [one] => item_value(one),
                    _ => {
                        return Err(err(
                            &c.location,
                            format!(
                                "column path '{}' gave {} values; mark the column \"collection\": true or pick one",
                                c.path,
                                values.len()
                            ),
                        ))
                    }
                }
            });
        }
        let mut rows = vec![own];
        for s in &node.selects {
            let part = self.node_rows(s, focus, vars)?;
            too_many_rows(rows.len().saturating_mul(part.len()))?;
            rows = product(rows, &part);
            if rows.is_empty() {
                return Ok(rows);
            }
        }
        if !node.union_all.is_empty() {
            let mut union = Vec::new();
            for branch in &node.union_all {
                union.extend(self.node_rows(branch, focus, vars)?);
                too_many_rows(union.len())?;
            }
            too_many_rows(rows.len().saturating_mul(union.len()))?;
            rows = product(rows, &union);
        }
        Ok(rows)
    }
}

fn too_many_rows(n: usize) -> Result<(), ViewError> {
    if n > MAX_ROWS_PER_RESOURCE {
        return Err(err(
            "select",
            format!("one resource produces more than {MAX_ROWS_PER_RESOURCE} rows (the limit per resource)"),
        ));
    }
    Ok(())
}

fn set_row_index<'a>(vars: &mut [(String, Item<'a>)], i: i64) -> i64 {
    for (name, value) in vars.iter_mut() {
        if name == "rowIndex" {
            let old = match value {
                Item::Integer(n) => *n,
                _ => 0,
            };
            *value = Item::Integer(i);
            return old;
        }
    }
    0
}

fn product(left: Vec<Row>, right: &[Row]) -> Vec<Row> {
    let mut out = Vec::with_capacity(left.len() * right.len());
    for l in &left {
        for r in right {
            let mut row = l.clone();
            row.extend(r.iter().cloned());
            out.push(row);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(view: Value, resources: &[Value]) -> Result<Vec<Row>, ViewError> {
        let v = View::compile(&view)?;
        let mut out = Vec::new();
        for r in resources {
            v.rows(r, &crate::fhir::definitions::get().choice, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn for_each_or_null_keeps_a_row_of_nulls() {
        let view = json!({"resource":"Patient","select":[{"column":[{"name":"id","path":"id"}]},
            {"forEachOrNull":"name","column":[{"name":"family","path":"family"}]}]});
        let rows = run(
            view,
            &[
                json!({"resourceType":"Patient","id":"a","name":[{"family":"X"},{"family":"Y"}]}),
                json!({"resourceType":"Patient","id":"b"}),
            ],
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![
                vec![json!("a"), json!("X")],
                vec![json!("a"), json!("Y")],
                vec![json!("b"), Value::Null]
            ]
        );
    }

    #[test]
    fn refuses_bad_views_before_running() {
        assert!(View::compile(&json!({"select":[]})).is_err());
        let e = View::compile(&json!({"resource":"Patient","select":[{"column":[{"name":"x","path":"%nope"}]}]}))
            .unwrap_err();
        assert!(e.message.contains("%nope"), "{e:?}");
        let e = View::compile(
            &json!({"resource":"Patient","select":[{"column":[{"name":"x","path":"id"},{"name":"x","path":"id"}]}]}),
        )
        .unwrap_err();
        assert!(e.message.contains("twice"), "{e:?}");
    }
}
