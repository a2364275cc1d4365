//! FHIRPath evaluation over borrowed JSON.

use super::parse::{BinOp, Expr, Literal};
use super::ChoiceModel;
use serde_json::Value;
use std::fmt;

/// One item of a FHIRPath collection.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    /// A node of the input resource; `ty` is its FHIR type when navigation knows it
    /// (from a choice element suffix or a `resourceType`).
    Node {
        value: &'a Value,
        ty: Option<&'a str>,
    },
    String(String),
    Integer(i64),
    Decimal(f64),
    Boolean(bool),
    /// What `resolve()` yields: a resource known only by its type.
    Resolved(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalError {}

const STRINGISH: [&str; 14] = [
    "string",
    "code",
    "id",
    "uri",
    "url",
    "canonical",
    "markdown",
    "date",
    "dateTime",
    "instant",
    "time",
    "oid",
    "uuid",
    "base64Binary",
];

impl<'a> Item<'a> {
    pub fn json(&self) -> Option<&'a Value> {
        match self {
            Item::Node { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The item as a string, for primitives; objects render as JSON.
    pub fn to_string_value(&self) -> String {
        match self {
            Item::Node { value, .. } => match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            Item::String(s) => s.clone(),
            Item::Integer(i) => i.to_string(),
            Item::Decimal(d) => d.to_string(),
            Item::Boolean(b) => b.to_string(),
            Item::Resolved(t) => t.clone(),
        }
    }

    fn as_bool(&self) -> Option<bool> {
        match self {
            Item::Boolean(b) => Some(*b),
            Item::Node {
                value: Value::Bool(b), ..
            } => Some(*b),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Item::String(s) => Some(s),
            Item::Node {
                value: Value::String(s),
                ..
            } => Some(s),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Item::Integer(i) => Some(*i as f64),
            Item::Decimal(d) => Some(*d),
            Item::Node {
                value: Value::Number(n),
                ..
            } => n.as_f64(),
            _ => None,
        }
    }

    /// Whether the item is of FHIR type `name`.
    pub fn is_type(&self, name: &str) -> bool {
        match self {
            Item::Node { value, ty } => {
                if let Some(t) = ty {
                    // `is Boolean` (the System type) holds for a FHIR boolean too.
                    let system_twin = name.starts_with(|c: char| c.is_ascii_uppercase())
                        && t.len() == name.len()
                        && t[1..] == name[1..]
                        && t.as_bytes()[0] == name.as_bytes()[0].to_ascii_lowercase();
                    return *t == name
                        || system_twin
                        || (name == "Resource" || name == "DomainResource") && value.get("resourceType").is_some();
                }
                match value {
                    Value::Object(o) => match o.get("resourceType").and_then(Value::as_str) {
                        Some(rt) => rt == name || name == "Resource" || name == "DomainResource",
                        None => false,
                    },
                    Value::String(_) => STRINGISH.contains(&name) || name == "String",
                    Value::Bool(_) => name == "boolean" || name == "Boolean",
                    Value::Number(n) => {
                        name == "decimal"
                            || name == "Decimal"
                            || (n.is_i64() && (name == "integer" || name == "Integer"))
                    }
                    _ => false,
                }
            }
            Item::String(_) => name == "string" || name == "String",
            Item::Integer(_) => name == "integer" || name == "Integer",
            Item::Decimal(_) => name == "decimal" || name == "Decimal",
            Item::Boolean(_) => name == "boolean" || name == "Boolean",
            Item::Resolved(t) => t == name || name == "Resource" || name == "DomainResource",
        }
    }
}

fn equal(a: &Item, b: &Item) -> bool {
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_bool(), b.as_bool()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
        return x == y;
    }
    match (a, b) {
        (Item::Node { value: x, .. }, Item::Node { value: y, .. }) => x == y,
        (Item::Resolved(x), Item::Resolved(y)) => x == y,
        _ => false,
    }
}

struct Ctx<'a, 'v> {
    model: &'a ChoiceModel,
    root: &'a Value,
    /// Environment variables (`%name`) given by the caller, e.g. a view's constants.
    vars: &'v [(String, Item<'a>)],
    /// Evaluation steps left before the expression is stopped.
    steps: std::cell::Cell<u64>,
}

/// Sub-expression evaluations one top-level evaluation may make. Nested
/// `where`/`select`/`descendants()` can make the work grow as a power of the
/// resource's size; this stops such an expression well under a second.
pub const MAX_EVALUATION_STEPS: u64 = 2_000_000;

/// The largest collection any sub-expression may produce.
pub const MAX_COLLECTION_ITEMS: usize = 500_000;

impl Ctx<'_, '_> {
    fn step(&self) -> Result<(), EvalError> {
        let left = self.steps.get();
        if left == 0 {
            return Err(EvalError(format!(
                "the expression needs more than {MAX_EVALUATION_STEPS} evaluation steps on one resource (the evaluation budget)"
            )));
        }
        self.steps.set(left - 1);
        Ok(())
    }

    /// Charges a pairwise comparison of two collections (union, distinct,
    /// intersect...) against the budget: one step per 64 comparisons.
    fn pairwise(&self, a: usize, b: usize) -> Result<(), EvalError> {
        let cost = (a as u64).saturating_mul(b as u64) / 64;
        let left = self.steps.get();
        if cost > left {
            return Err(EvalError(format!(
                "comparing collections of {a} and {b} items exceeds the evaluation budget"
            )));
        }
        self.steps.set(left - cost);
        Ok(())
    }
}

/// Evaluates `expr` with `resource` as both the input and `%resource`.
pub fn evaluate<'a>(expr: &Expr, resource: &'a Value, model: &'a ChoiceModel) -> Result<Vec<Item<'a>>, EvalError> {
    let ctx = Ctx {
        model,
        root: resource,
        vars: &[],
        steps: std::cell::Cell::new(MAX_EVALUATION_STEPS),
    };
    let input = vec![Item::Node {
        value: resource,
        ty: None,
    }];
    eval(&ctx, expr, &input, None)
}

/// Evaluates `expr` on `focus` (also `$this`), inside `root` (`%resource`), with
/// the environment variables `vars` (without their `%`).
pub fn evaluate_in<'a>(
    expr: &Expr,
    focus: &Item<'a>,
    root: &'a Value,
    model: &'a ChoiceModel,
    vars: &[(String, Item<'a>)],
) -> Result<Vec<Item<'a>>, EvalError> {
    let ctx = Ctx {
        model,
        root,
        vars,
        steps: std::cell::Cell::new(MAX_EVALUATION_STEPS),
    };
    eval(&ctx, expr, std::slice::from_ref(focus), Some(focus))
}

fn singleton_bool(items: &[Item]) -> Result<Option<bool>, EvalError> {
    match items {
        [] => Ok(None),
        [one] => Ok(Some(one.as_bool().unwrap_or(true))),
        _ => Err(EvalError("expected a single boolean, found a collection".into())),
    }
}

fn children<'a>(ctx: &Ctx<'a, '_>, item: &Item<'a>, name: &str, out: &mut Vec<Item<'a>>) {
    let Item::Node {
        value: Value::Object(obj),
        ..
    } = item
    else {
        return;
    };
    let push = |v: &'a Value, ty: Option<&'a str>, out: &mut Vec<Item<'a>>| match v {
        Value::Array(a) => out.extend(a.iter().filter(|x| !x.is_null()).map(|x| Item::Node { value: x, ty })),
        Value::Null => {}
        other => out.push(Item::Node { value: other, ty }),
    };
    if let Some(v) = obj.get(name) {
        push(v, None, out);
        return;
    }
    if ctx.model.choice_names.contains(name) {
        for (k, v) in obj {
            if let Some(ty) = ctx.model.choice_type(name, k) {
                push(v, Some(ty), out);
            }
        }
    }
}

fn looks_temporal(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 4 && b[..4].iter().all(u8::is_ascii_digit) && (b.len() == 4 || b[4] == b'-')
}

/// Dates and times compared as the instants they stand for; when their
/// precisions overlap (2020 against 2020-05-01) the answer is unknown (empty).
fn compare_temporal(x: &str, y: &str) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering;
    let (alo, ahi) = crate::fhir::time::parse_range(x)?;
    let (blo, bhi) = crate::fhir::time::parse_range(y)?;
    if (alo, ahi) == (blo, bhi) {
        Some(Ordering::Equal)
    } else if ahi < blo {
        Some(Ordering::Less)
    } else if alo > bhi {
        Some(Ordering::Greater)
    } else {
        None
    }
}

/// Every child node of `item` (FHIRPath `children()`), primitive extensions included.
fn all_children<'a>(item: &Item<'a>, out: &mut Vec<Item<'a>>) {
    let Item::Node {
        value: Value::Object(obj),
        ..
    } = item
    else {
        return;
    };
    for (k, v) in obj {
        if k == "resourceType" {
            continue;
        }
        match v {
            Value::Array(a) => out.extend(
                a.iter()
                    .filter(|x| !x.is_null())
                    .map(|x| Item::Node { value: x, ty: None }),
            ),
            Value::Null => {}
            other => out.push(Item::Node { value: other, ty: None }),
        }
    }
}

/// Evaluates one sub-expression within the budget: a step, and a bounded result.
fn eval<'a>(
    ctx: &Ctx<'a, '_>,
    expr: &Expr,
    input: &[Item<'a>],
    this: Option<&Item<'a>>,
) -> Result<Vec<Item<'a>>, EvalError> {
    ctx.step()?;
    let out = eval_unchecked(ctx, expr, input, this)?;
    // Building a collection is work too: charge it (one step per eight items).
    ctx.pairwise(out.len(), 8)?;
    if out.len() > MAX_COLLECTION_ITEMS {
        return Err(EvalError(format!(
            "a sub-expression produced {} items; the limit is {MAX_COLLECTION_ITEMS}",
            out.len()
        )));
    }
    Ok(out)
}

fn eval_unchecked<'a>(
    ctx: &Ctx<'a, '_>,
    expr: &Expr,
    input: &[Item<'a>],
    this: Option<&Item<'a>>,
) -> Result<Vec<Item<'a>>, EvalError> {
    Ok(match expr {
        Expr::This => this.cloned().into_iter().collect(),
        Expr::Literal(l) => match l {
            Literal::String(s) => vec![Item::String(s.clone())],
            Literal::Integer(i) => vec![Item::Integer(*i)],
            Literal::Decimal(d) => vec![Item::Decimal(*d)],
            Literal::Boolean(b) => vec![Item::Boolean(*b)],
            Literal::Empty => vec![],
        },
        Expr::Constant(name) if ctx.vars.iter().any(|(n, _)| n == name) => ctx
            .vars
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect(),
        Expr::Constant(name) => match name.as_str() {
            "resource" | "rootResource" | "context" => vec![Item::Node {
                value: ctx.root,
                ty: None,
            }],
            "ucum" => vec![Item::String("http://unitsofmeasure.org".into())],
            "sct" => vec![Item::String("http://snomed.info/sct".into())],
            "loinc" => vec![Item::String("http://loinc.org".into())],
            other => return Err(EvalError(format!("unknown constant %{other}"))),
        },
        Expr::Ident(name) => {
            let mut out = Vec::new();
            for item in input {
                let is_type_filter = name.starts_with(|c: char| c.is_ascii_uppercase()) && item.is_type(name);
                if is_type_filter {
                    out.push(item.clone());
                } else {
                    children(ctx, item, name, &mut out);
                }
            }
            out
        }
        Expr::Member(target, name) => {
            let base = eval(ctx, target, input, this)?;
            let mut out = Vec::new();
            for item in &base {
                children(ctx, item, name, &mut out);
            }
            out
        }
        Expr::Index(target, idx) => {
            let base = eval(ctx, target, input, this)?;
            let i = eval(ctx, idx, input, this)?;
            match i.first().and_then(Item::as_f64) {
                Some(n) if n >= 0.0 => base.into_iter().nth(n as usize).into_iter().collect(),
                _ => vec![],
            }
        }
        Expr::Negate(e) => eval(ctx, e, input, this)?
            .into_iter()
            .map(|i| match i {
                Item::Integer(n) => Ok(Item::Integer(-n)),
                other => other
                    .as_f64()
                    .map(|d| Item::Decimal(-d))
                    .ok_or_else(|| EvalError("cannot negate a non-number".into())),
            })
            .collect::<Result<_, _>>()?,
        Expr::Is(e, ty) => {
            let v = eval(ctx, e, input, this)?;
            match v.as_slice() {
                [] => vec![],
                [one] => vec![Item::Boolean(one.is_type(ty))],
                _ => return Err(EvalError("'is' needs a single item".into())),
            }
        }
        Expr::As(e, ty) => eval(ctx, e, input, this)?
            .into_iter()
            .filter(|i| i.is_type(ty))
            .collect(),
        Expr::Binary(op, l, r) => binary(ctx, *op, l, r, input, this)?,
        Expr::Call { target, name, args } => {
            let base = match target {
                Some(t) => eval(ctx, t, input, this)?,
                None => input.to_vec(),
            };
            call(ctx, name, args, base, input, this)?
        }
    })
}

fn binary<'a>(
    ctx: &Ctx<'a, '_>,
    op: BinOp,
    l: &Expr,
    r: &Expr,
    input: &[Item<'a>],
    this: Option<&Item<'a>>,
) -> Result<Vec<Item<'a>>, EvalError> {
    let lv = eval(ctx, l, input, this)?;
    let rv = eval(ctx, r, input, this)?;
    let boolean = |b: Option<bool>| b.map(Item::Boolean).into_iter().collect::<Vec<_>>();
    Ok(match op {
        BinOp::Union => {
            ctx.pairwise(lv.len() + rv.len(), lv.len() + rv.len())?;
            let mut out = lv;
            for item in rv {
                if !out.iter().any(|o| equal(o, &item)) {
                    out.push(item);
                }
            }
            out
        }
        BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Implies => {
            let a = singleton_bool(&lv)?;
            let b = singleton_bool(&rv)?;
            boolean(match op {
                BinOp::And => match (a, b) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
                BinOp::Or => match (a, b) {
                    (Some(true), _) | (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
                BinOp::Xor => a.zip(b).map(|(x, y)| x != y),
                _ => match (a, b) {
                    (Some(false), _) | (_, Some(true)) => Some(true),
                    (Some(true), Some(false)) => Some(false),
                    _ => None,
                },
            })
        }
        BinOp::Eq | BinOp::Ne | BinOp::Equiv | BinOp::NotEquiv => {
            let equivalent = matches!(op, BinOp::Equiv | BinOp::NotEquiv);
            if lv.is_empty() || rv.is_empty() {
                if equivalent {
                    vec![Item::Boolean((lv.is_empty() && rv.is_empty()) == (op == BinOp::Equiv))]
                } else {
                    vec![]
                }
            } else {
                let same = lv.len() == rv.len()
                    && lv.iter().zip(&rv).all(|(a, b)| {
                        if equivalent {
                            match (a.as_str(), b.as_str()) {
                                (Some(x), Some(y)) => x.trim().eq_ignore_ascii_case(y.trim()),
                                _ => equal(a, b),
                            }
                        } else {
                            equal(a, b)
                        }
                    });
                vec![Item::Boolean(same == matches!(op, BinOp::Eq | BinOp::Equiv))]
            }
        }
        BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => {
            let (Some(a), Some(b)) = (lv.first(), rv.first()) else {
                return Ok(vec![]);
            };
            let ord = match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => x.partial_cmp(&y),
                _ => match (a.as_str(), b.as_str()) {
                    (Some(x), Some(y)) if looks_temporal(x) && looks_temporal(y) => compare_temporal(x, y),
                    (Some(x), Some(y)) => Some(x.cmp(y)),
                    _ => None,
                },
            };
            boolean(ord.map(|o| match op {
                BinOp::Lt => o.is_lt(),
                BinOp::Gt => o.is_gt(),
                BinOp::Le => o.is_le(),
                _ => o.is_ge(),
            }))
        }
        BinOp::In | BinOp::Contains => {
            let (needle, hay) = if op == BinOp::In { (&lv, &rv) } else { (&rv, &lv) };
            match needle.as_slice() {
                [] => vec![],
                [n] => vec![Item::Boolean(hay.iter().any(|h| equal(h, n)))],
                _ => return Err(EvalError("membership needs a single item".into())),
            }
        }
        BinOp::Concat => {
            let s = |v: &[Item]| v.first().map(Item::to_string_value).unwrap_or_default();
            vec![Item::String(s(&lv) + &s(&rv))]
        }
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::IntDiv | BinOp::Mod => {
            let (Some(a), Some(b)) = (lv.first(), rv.first()) else {
                return Ok(vec![]);
            };
            if op == BinOp::Add {
                if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
                    return Ok(vec![Item::String(format!("{x}{y}"))]);
                }
            }
            let both_int = matches!((a, b), (Item::Integer(_), Item::Integer(_)));
            let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) else {
                return Err(EvalError("arithmetic needs numbers".into()));
            };
            let v = match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div if y == 0.0 => return Ok(vec![]),
                BinOp::Div => return Ok(vec![Item::Decimal(x / y)]),
                BinOp::IntDiv if y == 0.0 => return Ok(vec![]),
                BinOp::IntDiv => return Ok(vec![Item::Integer((x / y).trunc() as i64)]),
                _ if y == 0.0 => return Ok(vec![]),
                _ => x % y,
            };
            vec![if both_int {
                Item::Integer(v as i64)
            } else {
                Item::Decimal(v)
            }]
        }
    })
}

/// `lowBoundary()` / `highBoundary()`: the least or greatest value an imprecise
/// decimal, date, dateTime or time could stand for.
fn boundary<'a>(item: &Item<'a>, high: bool) -> Option<Item<'a>> {
    let (text, ty) = match item {
        Item::Node {
            value: Value::Number(n),
            ..
        } => return decimal_boundary(&n.to_string(), high),
        Item::Decimal(d) => return decimal_boundary(&d.to_string(), high),
        Item::Integer(i) => return decimal_boundary(&i.to_string(), high),
        Item::Node {
            value: Value::String(s),
            ty,
        } => (s.as_str(), *ty),
        Item::String(s) => (s.as_str(), None),
        _ => return None,
    };
    let is_time = ty == Some("time") || (ty.is_none() && text.len() >= 5 && text.as_bytes().get(2) == Some(&b':'));
    if is_time {
        return Some(Item::String(time_boundary(text, high)?));
    }
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: Option<u32> = parts.next().map(str::parse).transpose().ok()?;
    let day: Option<u32> = parts.next().map(str::parse).transpose().ok()?;
    let month_v = month.unwrap_or(if high { 12 } else { 1 });
    let day_v = day.unwrap_or(if high { days_in_month(year, month_v) } else { 1 });
    let full_date = format!("{year:04}-{month_v:02}-{day_v:02}");
    if ty == Some("date") || (ty.is_none() && time.is_none()) {
        return Some(Item::String(full_date));
    }
    match time {
        None => Some(Item::String(format!(
            "{full_date}T{}",
            if high {
                "23:59:59.999-12:00"
            } else {
                "00:00:00.000+14:00"
            }
        ))),
        Some(t) => {
            let zone_at = t.find(['Z', '+', '-']).unwrap_or(t.len());
            let (clock, zone) = t.split_at(zone_at);
            let zone = if zone.is_empty() {
                if high {
                    "-12:00"
                } else {
                    "+14:00"
                }
            } else {
                zone
            };
            Some(Item::String(format!(
                "{full_date}T{}{zone}",
                time_boundary(clock, high)?
            )))
        }
    }
}

fn time_boundary(t: &str, high: bool) -> Option<String> {
    let mut parts = t.split(':');
    let h: u32 = parts.next()?.parse().ok()?;
    let m: u32 = parts
        .next()
        .map(str::parse)
        .transpose()
        .ok()?
        .unwrap_or(if high { 59 } else { 0 });
    let (sec, frac) = match parts.next() {
        Some(s) => match s.split_once('.') {
            Some((s, f)) => (s.parse::<u32>().ok()?, format!("{f:0<3}")),
            None => (s.parse::<u32>().ok()?, if high { "999".into() } else { "000".into() }),
        },
        None => (
            if high { 59 } else { 0 },
            if high { "999".into() } else { "000".into() },
        ),
    };
    Some(format!("{h:02}:{m:02}:{sec:02}.{frac}"))
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn decimal_boundary<'a>(text: &str, high: bool) -> Option<Item<'a>> {
    let value: f64 = text.parse().ok()?;
    let places = text
        .split_once('.')
        .map_or(0, |(_, f)| f.trim_end_matches(|c: char| !c.is_ascii_digit()).len());
    let half = 0.5 * 10f64.powi(-(places as i32));
    let bound = if high { value + half } else { value - half };
    format!("{bound:.*}", places + 1).parse().ok().map(Item::Decimal)
}

/// The type and id a reference points at (`Type/id`, also inside a full URL).
fn reference_key(item: &Item) -> Option<(String, String)> {
    let value = item.json()?;
    let reference = match value {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o.get("reference")?.as_str()?,
        _ => return None,
    };
    let path = reference.split(['?', '#']).next().unwrap_or(reference);
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.len() >= 4 && parts[parts.len() - 2] == "_history" {
        parts.truncate(parts.len() - 2);
    }
    match parts.as_slice() {
        [.., ty, id] if ty.starts_with(|c: char| c.is_ascii_uppercase()) && !id.is_empty() => {
            Some((ty.to_string(), id.to_string()))
        }
        _ => None,
    }
}

fn reference_type(item: &Item) -> Option<String> {
    reference_key(item).map(|(ty, _)| ty)
}

/// The functions `call` evaluates (keep in step with its `match`).
pub const FUNCTIONS: &[&str] = &[
    "where",
    "select",
    "exists",
    "all",
    "empty",
    "hasValue",
    "count",
    "trace",
    "htmlChecks",
    "children",
    "descendants",
    "isDistinct",
    "allTrue",
    "anyTrue",
    "allFalse",
    "anyFalse",
    "combine",
    "intersect",
    "exclude",
    "toInteger",
    "ln",
    "exp",
    "sqrt",
    "abs",
    "replaceMatches",
    "first",
    "last",
    "tail",
    "single",
    "distinct",
    "not",
    "ofType",
    "as",
    "is",
    "resolve",
    "getResourceKey",
    "getReferenceKey",
    "substring",
    "lowBoundary",
    "highBoundary",
    "length",
    "extension",
    "join",
    "toString",
    "lower",
    "upper",
    "startsWith",
    "endsWith",
    "contains",
    "matches",
    "iif",
];

fn call<'a>(
    ctx: &Ctx<'a, '_>,
    name: &str,
    args: &[Expr],
    base: Vec<Item<'a>>,
    input: &[Item<'a>],
    this: Option<&Item<'a>>,
) -> Result<Vec<Item<'a>>, EvalError> {
    let arity = |n: usize| -> Result<(), EvalError> {
        if args.len() == n {
            Ok(())
        } else {
            Err(EvalError(format!("{name}() takes {n} argument(s)")))
        }
    };
    let type_arg = || -> Result<String, EvalError> {
        match args {
            [Expr::Ident(t)] => Ok(t.clone()),
            [Expr::Member(_, t)] => Ok(t.clone()),
            [Expr::Literal(Literal::String(t))] => Ok(t.clone()),
            _ => Err(EvalError(format!("{name}() needs a type name"))),
        }
    };
    Ok(match name {
        "where" => {
            arity(1)?;
            let mut out = Vec::new();
            for item in base {
                let r = eval(ctx, &args[0], std::slice::from_ref(&item), Some(&item))?;
                if singleton_bool(&r)? == Some(true) {
                    out.push(item);
                }
            }
            out
        }
        "select" => {
            arity(1)?;
            let mut out = Vec::new();
            for item in &base {
                out.extend(eval(ctx, &args[0], std::slice::from_ref(item), Some(item))?);
            }
            out
        }
        "exists" => {
            let any = if args.is_empty() {
                !base.is_empty()
            } else {
                let mut found = false;
                for item in &base {
                    let r = eval(ctx, &args[0], std::slice::from_ref(item), Some(item))?;
                    if singleton_bool(&r)? == Some(true) {
                        found = true;
                        break;
                    }
                }
                found
            };
            vec![Item::Boolean(any)]
        }
        "all" => {
            arity(1)?;
            let mut all = true;
            for item in &base {
                let r = eval(ctx, &args[0], std::slice::from_ref(item), Some(item))?;
                if singleton_bool(&r)? != Some(true) {
                    all = false;
                    break;
                }
            }
            vec![Item::Boolean(all)]
        }
        "empty" => vec![Item::Boolean(base.is_empty())],
        "hasValue" => vec![Item::Boolean(matches!(
            base.as_slice(),
            [Item::Node {
                value: Value::String(_) | Value::Bool(_) | Value::Number(_),
                ..
            }] | [Item::String(_) | Item::Integer(_) | Item::Decimal(_) | Item::Boolean(_)]
        ))],
        "count" => vec![Item::Integer(base.len() as i64)],
        // Diagnostics only: the input passes through.
        "trace" => base,
        // Narrative rules are checked by the structural validator (txt-1, txt-2).
        "htmlChecks" => vec![Item::Boolean(true)],
        "children" => {
            let mut out = Vec::new();
            for item in &base {
                all_children(item, &mut out);
            }
            out
        }
        "descendants" => {
            let mut out = Vec::new();
            let mut frontier = base;
            while !frontier.is_empty() {
                let mut next = Vec::new();
                for item in &frontier {
                    all_children(item, &mut next);
                    if out.len() + next.len() > MAX_COLLECTION_ITEMS {
                        return Err(EvalError(format!(
                            "descendants() reached more than {MAX_COLLECTION_ITEMS} items; the limit is {MAX_COLLECTION_ITEMS}"
                        )));
                    }
                }
                ctx.step()?;
                out.extend(next.iter().cloned());
                frontier = next;
            }
            out
        }
        "isDistinct" => {
            ctx.pairwise(base.len(), base.len())?;
            let mut seen: Vec<&Item> = Vec::new();
            let mut distinct = true;
            for item in &base {
                if seen.iter().any(|o| equal(o, item)) {
                    distinct = false;
                    break;
                }
                seen.push(item);
            }
            vec![Item::Boolean(distinct)]
        }
        "allTrue" | "anyTrue" | "allFalse" | "anyFalse" => {
            let want = name.ends_with("True");
            let hits = base.iter().filter(|i| i.as_bool() == Some(want)).count();
            vec![Item::Boolean(if name.starts_with("all") {
                hits == base.len()
            } else {
                hits > 0
            })]
        }
        "combine" | "intersect" | "exclude" => {
            arity(1)?;
            let other = eval(ctx, &args[0], input, this)?;
            ctx.pairwise(base.len() + other.len(), base.len() + other.len())?;
            match name {
                "combine" => base.into_iter().chain(other).collect(),
                "intersect" => {
                    let mut out: Vec<Item> = Vec::new();
                    for item in base {
                        if other.iter().any(|o| equal(o, &item)) && !out.iter().any(|o| equal(o, &item)) {
                            out.push(item);
                        }
                    }
                    out
                }
                _ => base
                    .into_iter()
                    .filter(|i| !other.iter().any(|o| equal(o, i)))
                    .collect(),
            }
        }
        "toInteger" => match base.as_slice() {
            [] => vec![],
            [one] => match one {
                Item::Integer(n) => vec![Item::Integer(*n)],
                Item::Boolean(b) => vec![Item::Integer(*b as i64)],
                other => other
                    .to_string_value()
                    .trim()
                    .parse::<i64>()
                    .map(Item::Integer)
                    .into_iter()
                    .collect(),
            },
            _ => return Err(EvalError("toInteger() needs a single item".into())),
        },
        // FHIRPath's math functions (N2) that models need: a log-scale offset, a transform.
        "ln" | "exp" | "sqrt" | "abs" => match base.as_slice() {
            [] => vec![],
            [one] => {
                let Some(x) = one.as_f64() else {
                    return Err(EvalError(format!("{name}() needs a number")));
                };
                let y = match name {
                    "ln" => x.ln(),
                    "exp" => x.exp(),
                    "sqrt" => x.sqrt(),
                    _ => x.abs(),
                };
                match one {
                    Item::Integer(n) if name == "abs" => vec![Item::Integer(n.saturating_abs())],
                    // Undefined results (ln of 0 or less, sqrt of a negative) are empty, as the specification says.
                    _ if y.is_finite() => vec![Item::Decimal(y)],
                    _ => vec![],
                }
            }
            _ => return Err(EvalError(format!("{name}() needs a single item"))),
        },
        "replaceMatches" => {
            arity(2)?;
            let pattern = eval(ctx, &args[0], input, this)?;
            let with = eval(ctx, &args[1], input, this)?;
            let (Some(p), Some(w)) = (pattern.first(), with.first()) else {
                return Ok(vec![]);
            };
            let re = regex::Regex::new(&p.to_string_value()).map_err(|e| EvalError(format!("replaceMatches: {e}")))?;
            base.iter()
                .map(|i| {
                    Item::String(
                        re.replace_all(&i.to_string_value(), w.to_string_value().as_str())
                            .into_owned(),
                    )
                })
                .collect()
        }
        "first" => base.into_iter().take(1).collect(),
        "last" => base.into_iter().last().into_iter().collect(),
        "tail" => base.into_iter().skip(1).collect(),
        "single" => match base.len() {
            0 | 1 => base,
            _ => return Err(EvalError("single() on a collection of several items".into())),
        },
        "distinct" => {
            ctx.pairwise(base.len(), base.len())?;
            let mut out: Vec<Item> = Vec::new();
            for item in base {
                if !out.iter().any(|o| equal(o, &item)) {
                    out.push(item);
                }
            }
            out
        }
        "not" => match singleton_bool(&base)? {
            Some(b) => vec![Item::Boolean(!b)],
            None => vec![],
        },
        "ofType" => {
            arity(1)?;
            let ty = type_arg()?;
            base.into_iter().filter(|i| i.is_type(&ty)).collect()
        }
        "as" => {
            arity(1)?;
            let ty = type_arg()?;
            base.into_iter().filter(|i| i.is_type(&ty)).collect()
        }
        "is" => {
            arity(1)?;
            let ty = type_arg()?;
            match base.as_slice() {
                [] => vec![],
                [one] => vec![Item::Boolean(one.is_type(&ty))],
                _ => return Err(EvalError("is() needs a single item".into())),
            }
        }
        "resolve" => base.iter().filter_map(reference_type).map(Item::Resolved).collect(),
        "getResourceKey" => base
            .iter()
            .filter_map(|i| {
                let v = i.json()?;
                v.get("resourceType")?;
                Some(Item::String(v.get("id")?.as_str()?.to_string()))
            })
            .collect(),
        "getReferenceKey" => {
            let wanted = if args.is_empty() { None } else { Some(type_arg()?) };
            base.iter()
                .filter_map(|i| {
                    let (ty, id) = reference_key(i)?;
                    match &wanted {
                        Some(w) if *w != ty => None,
                        _ => Some(Item::String(id)),
                    }
                })
                .collect()
        }
        "substring" => {
            if args.is_empty() || args.len() > 2 {
                return Err(EvalError("substring() takes 1 or 2 arguments".into()));
            }
            let number = |e: &Expr| -> Result<Option<i64>, EvalError> {
                Ok(eval(ctx, e, input, this)?
                    .first()
                    .and_then(Item::as_f64)
                    .map(|f| f as i64))
            };
            let (Some(s), Some(start)) = (base.first().and_then(Item::as_str), number(&args[0])?) else {
                return Ok(vec![]);
            };
            let chars: Vec<char> = s.chars().collect();
            if start < 0 || start as usize >= chars.len() {
                return Ok(vec![]);
            }
            let len = match args.get(1) {
                Some(e) => number(e)?.unwrap_or(0).max(0) as usize,
                None => chars.len(),
            };
            let end = (start as usize).saturating_add(len).min(chars.len());
            vec![Item::String(chars[start as usize..end].iter().collect())]
        }
        "lowBoundary" | "highBoundary" => {
            let high = name == "highBoundary";
            base.iter().filter_map(|i| boundary(i, high)).collect()
        }
        "length" => base
            .first()
            .and_then(Item::as_str)
            .map(|s| Item::Integer(s.chars().count() as i64))
            .into_iter()
            .collect(),
        "extension" => {
            arity(1)?;
            let url = eval(ctx, &args[0], input, this)?;
            let url = url.first().and_then(Item::as_str).unwrap_or_default().to_string();
            let mut exts = Vec::new();
            for item in &base {
                children(ctx, item, "extension", &mut exts);
            }
            exts.into_iter()
                .filter(|e| e.json().and_then(|v| v.get("url")).and_then(Value::as_str) == Some(url.as_str()))
                .collect()
        }
        "join" => {
            let sep = match args.first() {
                Some(a) => eval(ctx, a, input, this)?
                    .first()
                    .map(Item::to_string_value)
                    .unwrap_or_default(),
                None => String::new(),
            };
            let parts: Vec<String> = base.iter().map(Item::to_string_value).collect();
            vec![Item::String(parts.join(&sep))]
        }
        "toString" => base.iter().map(|i| Item::String(i.to_string_value())).collect(),
        "lower" => base
            .iter()
            .map(|i| Item::String(i.to_string_value().to_lowercase()))
            .collect(),
        "upper" => base
            .iter()
            .map(|i| Item::String(i.to_string_value().to_uppercase()))
            .collect(),
        "startsWith" | "endsWith" | "contains" | "matches" => {
            arity(1)?;
            let arg = eval(ctx, &args[0], input, this)?;
            let (Some(s), Some(a)) = (base.first().and_then(Item::as_str), arg.first().and_then(Item::as_str)) else {
                return Ok(vec![]);
            };
            vec![Item::Boolean(match name {
                "startsWith" => s.starts_with(a),
                "endsWith" => s.ends_with(a),
                "contains" => s.contains(a),
                _ => return Err(EvalError("matches() is not supported".into())),
            })]
        }
        "iif" => {
            if args.len() < 2 {
                return Err(EvalError("iif() takes 2 or 3 arguments".into()));
            }
            let c = eval(ctx, &args[0], &base, this)?;
            if singleton_bool(&c)? == Some(true) {
                eval(ctx, &args[1], &base, this)?
            } else if let Some(e) = args.get(2) {
                eval(ctx, e, &base, this)?
            } else {
                vec![]
            }
        }
        other => return Err(EvalError(format!("function {other}() is not supported"))),
    })
}
