//! The search parameters a node supports, compiled from the R4 definitions.
//!
//! Each parameter's FHIRPath expression is parsed once; for multi-resource
//! parameters (`clinical-code` style unions) only the branches that apply to the
//! resource type are kept, so indexing evaluates no more than it must.

use crate::fhir::definitions::{self, SearchParamDefinition};
use crate::fhirpath::{self, BinOp, Expr};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamKind {
    Token,
    String,
    Date,
    Reference,
    Quantity,
    Number,
    Uri,
}

impl ParamKind {
    fn parse(s: &str) -> Option<ParamKind> {
        Some(match s {
            "token" => ParamKind::Token,
            "string" => ParamKind::String,
            "date" => ParamKind::Date,
            "reference" => ParamKind::Reference,
            "quantity" => ParamKind::Quantity,
            "number" => ParamKind::Number,
            "uri" => ParamKind::Uri,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ParamKind::Token => "token",
            ParamKind::String => "string",
            ParamKind::Date => "date",
            ParamKind::Reference => "reference",
            ParamKind::Quantity => "quantity",
            ParamKind::Number => "number",
            ParamKind::Uri => "uri",
        }
    }
}

/// One search parameter of one resource type.
#[derive(Debug)]
pub struct SearchParam {
    pub code: String,
    /// `Type.code`: the key its index rows are stored under.
    pub key: Arc<str>,
    pub kind: ParamKind,
    pub expression: String,
    pub compiled: Expr,
    pub targets: Vec<String>,
    /// Set when this parameter's rows would repeat another's: the key of the reference
    /// parameter, and the target type, whose rows are exactly this one's
    /// (`Observation.patient` is `Observation.subject.where(resolve() is Patient)`).
    /// No rows are stored for it; searches read the other's, of that target type.
    pub within: Option<(Arc<str>, String)>,
}

/// `X.where(resolve() is T)`: the path `X` and the type `T`.
fn resolve_filter(e: &Expr) -> Option<(&Expr, &str)> {
    let Expr::Call {
        target: Some(x),
        name,
        args,
    } = e
    else {
        return None;
    };
    match (name.as_str(), args.as_slice()) {
        ("where", [Expr::Is(inner, t)]) => match inner.as_ref() {
            Expr::Call {
                target: None,
                name,
                args,
            } if name == "resolve" && args.is_empty() => Some((x, t)),
            _ => None,
        },
        _ => None,
    }
}

/// Points each reference parameter that filters another by target type at it
/// (see `SearchParam::within`).
fn link_subsets(params: &mut BTreeMap<String, Arc<SearchParam>>) {
    let mut links = Vec::new();
    for (code, p) in params.iter() {
        if p.kind != ParamKind::Reference {
            continue;
        }
        let Some((path, t)) = resolve_filter(&p.compiled) else {
            continue;
        };
        let base = params
            .values()
            .find(|b| b.kind == ParamKind::Reference && b.key != p.key && b.compiled == *path);
        if let Some(b) = base {
            links.push((code.clone(), (b.key.clone(), t.to_string())));
        }
    }
    for (code, within) in links {
        if let Some(p) = params.get_mut(&code).and_then(Arc::get_mut) {
            p.within = Some(within);
        }
    }
}

/// All search parameters, by resource type and code.
pub struct Registry {
    by_type: HashMap<String, BTreeMap<String, Arc<SearchParam>>>,
}

/// Parameters with their own columns rather than index rows.
pub const SPECIAL: [&str; 2] = ["_id", "_lastUpdated"];

fn root_ident(e: &Expr) -> Option<&str> {
    match e {
        Expr::Ident(n) => Some(n),
        Expr::Member(t, _) | Expr::Index(t, _) | Expr::Is(t, _) | Expr::As(t, _) => root_ident(t),
        Expr::Call { target: Some(t), .. } => root_ident(t),
        Expr::Binary(_, l, _) => root_ident(l),
        _ => None,
    }
}

fn branches_for(expr: Expr, rtype: &str, out: &mut Vec<Expr>) {
    match expr {
        Expr::Binary(BinOp::Union, l, r) => {
            branches_for(*l, rtype, out);
            branches_for(*r, rtype, out);
        }
        other => {
            let keep = match root_ident(&other) {
                Some(root) if root.starts_with(|c: char| c.is_ascii_uppercase()) => {
                    root == rtype || root == "Resource" || root == "DomainResource"
                }
                _ => true,
            };
            if keep {
                out.push(other);
            }
        }
    }
}

fn compile_for(def: &SearchParamDefinition, rtype: &str) -> Option<Expr> {
    let parsed = fhirpath::parse(&def.expression).ok()?;
    let mut branches = Vec::new();
    branches_for(parsed, rtype, &mut branches);
    let mut it = branches.into_iter();
    let first = it.next()?;
    Some(it.fold(first, |acc, b| Expr::Binary(BinOp::Union, Box::new(acc), Box::new(b))))
}

impl Registry {
    /// The R4 parameters for every resource type.
    pub fn r4() -> Registry {
        let defs = definitions::get();
        let mut by_type: HashMap<String, BTreeMap<String, Arc<SearchParam>>> = HashMap::new();
        for def in &defs.search_parameters {
            let Some(kind) = ParamKind::parse(&def.kind) else {
                continue;
            };
            if def.expression.is_empty() {
                continue;
            }
            let mut types: Vec<&str> = Vec::new();
            for base in &def.base {
                match base.as_str() {
                    "Resource" => types.extend(defs.resource_type_list.iter().map(String::as_str)),
                    "DomainResource" => types.extend(
                        defs.resource_type_list
                            .iter()
                            .map(String::as_str)
                            .filter(|t| !matches!(*t, "Bundle" | "Parameters" | "Binary")),
                    ),
                    t => types.push(t),
                }
            }
            for rtype in types {
                let Some(compiled) = compile_for(def, rtype) else {
                    continue;
                };
                let param = SearchParam {
                    code: def.code.clone(),
                    key: Arc::from(format!("{rtype}.{}", def.code)),
                    kind,
                    expression: def.expression.clone(),
                    compiled,
                    targets: def.target.clone(),
                    within: None,
                };
                by_type
                    .entry(rtype.to_string())
                    .or_default()
                    .insert(def.code.clone(), Arc::new(param));
            }
        }
        for params in by_type.values_mut() {
            link_subsets(params);
        }
        Registry { by_type }
    }

    pub fn get(&self, rtype: &str, code: &str) -> Option<&Arc<SearchParam>> {
        self.by_type.get(rtype)?.get(code)
    }

    /// The parameters that store index rows for `rtype`: everything but `_id` and
    /// `_lastUpdated` (columns of their own) and the subsets of another's rows.
    pub fn indexed(&self, rtype: &str) -> impl Iterator<Item = &Arc<SearchParam>> {
        self.by_type
            .get(rtype)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|p| !SPECIAL.contains(&p.code.as_str()) && p.within.is_none())
    }

    /// Every parameter of `rtype`, sorted by code, for the CapabilityStatement.
    pub fn for_type(&self, rtype: &str) -> impl Iterator<Item = &Arc<SearchParam>> {
        self.by_type.get(rtype).into_iter().flat_map(|m| m.values())
    }
}
