//! Parsing a FHIR search query string into a typed `SearchRequest`.
//!
//! This is the edge where text becomes types: after it, the store only sees
//! parameters that exist, modifiers that apply and values that parsed.

use super::params::{ParamKind, Registry, SearchParam};
use crate::fhir::{self, time};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SystemMatch {
    Any,
    /// `|code`: the system must be absent.
    Absent,
    Is(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenValue {
    pub system: SystemMatch,
    pub code: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DateCond {
    pub prefix: Prefix,
    pub lo: i64,
    pub hi: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NumCond {
    pub prefix: Prefix,
    pub value: f64,
    /// The range implied by the value's precision (`5.4` is [5.35, 5.45)).
    pub lo: f64,
    pub hi: f64,
    pub system: Option<String>,
    pub code: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RefValue {
    Local { target_type: Option<String>, id: String },
    Url(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMode {
    StartsWith,
    Exact,
    Contains,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMode {
    Exact,
    Below,
    Above,
}

/// One AND-ed condition; the values inside each are OR-ed.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Id {
        values: Vec<String>,
        not: bool,
    },
    LastUpdated(Vec<DateCond>),
    Token {
        key: Arc<str>,
        not: bool,
        values: Vec<TokenValue>,
    },
    TokenText {
        key: Arc<str>,
        values: Vec<String>,
    },
    String {
        key: Arc<str>,
        mode: StringMode,
        values: Vec<String>,
    },
    Date {
        key: Arc<str>,
        values: Vec<DateCond>,
    },
    Quantity {
        key: Arc<str>,
        number: bool,
        values: Vec<NumCond>,
    },
    Uri {
        key: Arc<str>,
        mode: UriMode,
        values: Vec<String>,
    },
    Reference {
        key: Arc<str>,
        values: Vec<RefValue>,
        /// Only references to this type count (a parameter stored within another's rows:
        /// `SearchParam::within`).
        only_type: Option<String>,
    },
    /// `subject:Patient.name=x`: resources whose reference `key` points at a
    /// resource of one of the target types that matches that type's condition.
    Chain {
        key: Arc<str>,
        targets: Vec<(String, Condition)>,
    },
    Missing {
        key: Arc<str>,
        kind: ParamKind,
        missing: bool,
        /// As for `Reference`.
        only_type: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    Id,
    LastUpdated,
    Param { key: Arc<str>, kind: ParamKind },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Summary {
    #[default]
    False,
    True,
    Count,
    Data,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub source_type: String,
    /// `Type.code` of the reference parameter.
    pub key: Arc<str>,
    pub target_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub rtype: String,
    pub conditions: Vec<Condition>,
    pub sort: Vec<Sort>,
    pub count: Option<usize>,
    pub summary: Summary,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    pub elements: Option<Vec<String>>,
    /// Parameters ignored under lenient handling, reported back to the client.
    pub ignored: Vec<String>,
    /// `_total=accurate`: count every match even beyond the paging limit.
    pub total_accurate: bool,
}

impl SearchRequest {
    pub fn new(rtype: &str) -> SearchRequest {
        SearchRequest {
            rtype: rtype.to_string(),
            conditions: vec![],
            sort: vec![],
            count: None,
            summary: Summary::False,
            includes: vec![],
            revincludes: vec![],
            elements: None,
            ignored: vec![],
            total_accurate: false,
        }
    }

    /// Resources of `rtype` with any of `identifiers` (the `identifier` token
    /// parameter), built from the values themselves: nothing is formatted into a
    /// query string and parsed back. An identifier without a system matches only
    /// stored identifiers without one (`|value`).
    pub fn by_identifiers(
        registry: &Registry,
        rtype: &str,
        identifiers: &[fhir::Identifier],
    ) -> Result<SearchRequest, QueryError> {
        let p = registry
            .get(rtype, "identifier")
            .ok_or_else(|| QueryError::UnknownParameter(format!("{rtype}.identifier")))?;
        let mut req = SearchRequest::new(rtype);
        req.conditions.push(Condition::Token {
            key: p.key.clone(),
            not: false,
            values: identifiers
                .iter()
                .map(|i| TokenValue {
                    system: match &i.system {
                        Some(s) => SystemMatch::Is(s.clone()),
                        None => SystemMatch::Absent,
                    },
                    code: Some(i.value.clone()),
                })
                .collect(),
        });
        Ok(req)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("unknown search parameter '{0}'")]
    UnknownParameter(String),
    #[error("invalid value for search parameter '{param}': {message}")]
    InvalidValue { param: String, message: String },
    #[error("modifier ':{modifier}' is not supported on search parameter '{param}'")]
    UnsupportedModifier { param: String, modifier: String },
}

fn bad(param: &str, message: impl Into<String>) -> QueryError {
    QueryError::InvalidValue {
        param: param.to_string(),
        message: message.into(),
    }
}

/// Splits on `sep` not preceded by a backslash, and unescapes `\,` `\|` `\$` `\\`.
fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some(&n) if n == sep => {
                    // Keep the escape for later splitting levels unless it is this separator.
                    out.last_mut().unwrap().push(n);
                    chars.next();
                }
                Some(&n) => {
                    out.last_mut().unwrap().push('\\');
                    out.last_mut().unwrap().push(n);
                    chars.next();
                }
                None => out.last_mut().unwrap().push('\\'),
            }
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut().unwrap().push(c);
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn split_prefix(v: &str) -> (Prefix, &str) {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (p, prefix) in prefixes {
        if let Some(rest) = v.strip_prefix(p) {
            if rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') {
                return (prefix, rest);
            }
        }
    }
    (Prefix::Eq, v)
}

pub fn parse_date(param: &str, v: &str) -> Result<DateCond, QueryError> {
    let (prefix, rest) = split_prefix(v);
    let (lo, hi) = time::parse_range(rest).ok_or_else(|| bad(param, format!("'{v}' is not a valid date")))?;
    Ok(DateCond { prefix, lo, hi })
}

fn parse_number(param: &str, v: &str) -> Result<NumCond, QueryError> {
    let parts = split_escaped(v, '|');
    let (prefix, num) = split_prefix(&parts[0]);
    let value: f64 = num
        .parse()
        .map_err(|_| bad(param, format!("'{num}' is not a number")))?;
    if !value.is_finite() {
        return Err(bad(param, "number out of range"));
    }
    // Implicit precision: half a unit of the last significant digit either way.
    let mantissa = num.split(['e', 'E']).next().unwrap_or(num);
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
    let exp: i32 = num
        .split_once(['e', 'E'])
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    let half = 0.5 * 10f64.powi(exp - decimals);
    let nonempty = |s: Option<&String>| s.filter(|s| !s.is_empty()).map(|s| unescape(s));
    Ok(NumCond {
        prefix,
        value,
        lo: value - half,
        hi: value + half,
        system: nonempty(parts.get(1)),
        code: nonempty(parts.get(2)),
    })
}

fn parse_token(v: &str) -> TokenValue {
    let parts = split_escaped(v, '|');
    if parts.len() >= 2 {
        let system = if parts[0].is_empty() {
            SystemMatch::Absent
        } else {
            SystemMatch::Is(unescape(&parts[0]))
        };
        let code = parts[1..].join("|");
        TokenValue {
            system,
            code: (!code.is_empty()).then(|| unescape(&code)),
        }
    } else {
        TokenValue {
            system: SystemMatch::Any,
            code: Some(unescape(&parts[0])),
        }
    }
}

fn parse_reference(param: &str, v: &str, type_modifier: Option<&str>) -> Result<RefValue, QueryError> {
    let v = unescape(v);
    if v.is_empty() {
        return Err(bad(param, "empty reference"));
    }
    if let Some(t) = type_modifier {
        return Ok(RefValue::Local {
            target_type: Some(t.to_string()),
            id: v,
        });
    }
    match fhir::refs::parse(&v) {
        fhir::refs::Target::Resource { rtype, id, base: None } => Ok(RefValue::Local {
            target_type: Some(rtype.to_string()),
            id: id.to_string(),
        }),
        _ if fhir::is_valid_id(&v) => Ok(RefValue::Local {
            target_type: None,
            id: v,
        }),
        _ => Ok(RefValue::Url(v)),
    }
}

/// Where a parameter's rows are: its own key, or the key of the parameter whose rows
/// of one target type are its rows (`SearchParam::within`) and that type.
fn stored_key(p: &SearchParam) -> (Arc<str>, Option<String>) {
    match &p.within {
        Some((key, t)) => (key.clone(), Some(t.clone())),
        None => (p.key.clone(), None),
    }
}

/// Values of one parameter, parsed for its kind and modifier.
fn condition(name: &str, p: &SearchParam, modifier: Option<&str>, raw: &str) -> Result<Condition, QueryError> {
    if modifier == Some("missing") {
        let missing = match raw {
            "true" => true,
            "false" => false,
            _ => return Err(bad(name, ":missing takes true or false")),
        };
        let (key, only_type) = stored_key(p);
        return Ok(Condition::Missing {
            key,
            kind: p.kind,
            missing,
            only_type,
        });
    }
    let values: Vec<String> = split_escaped(raw, ',');
    if values.iter().any(String::is_empty) {
        return Err(bad(name, "empty value"));
    }
    let unsupported = |m: &str| QueryError::UnsupportedModifier {
        param: name.to_string(),
        modifier: m.to_string(),
    };
    let key = p.key.clone();
    Ok(match p.kind {
        ParamKind::Token => match modifier {
            None => Condition::Token {
                key,
                not: false,
                values: values.iter().map(|v| parse_token(v)).collect(),
            },
            Some("not") => Condition::Token {
                key,
                not: true,
                values: values.iter().map(|v| parse_token(v)).collect(),
            },
            Some("text") => Condition::TokenText {
                key,
                values: values.iter().map(|v| super::index::normalize(&unescape(v))).collect(),
            },
            Some(m) => return Err(unsupported(m)),
        },
        ParamKind::String => {
            let mode = match modifier {
                None => StringMode::StartsWith,
                Some("exact") => StringMode::Exact,
                Some("contains") => StringMode::Contains,
                Some(m) => return Err(unsupported(m)),
            };
            let values = values
                .iter()
                .map(|v| {
                    let v = unescape(v);
                    if mode == StringMode::Exact {
                        v
                    } else {
                        super::index::normalize(&v)
                    }
                })
                .collect();
            Condition::String { key, mode, values }
        }
        ParamKind::Date => {
            if let Some(m) = modifier {
                return Err(unsupported(m));
            }
            Condition::Date {
                key,
                values: values.iter().map(|v| parse_date(name, v)).collect::<Result<_, _>>()?,
            }
        }
        ParamKind::Quantity | ParamKind::Number => {
            if let Some(m) = modifier {
                return Err(unsupported(m));
            }
            Condition::Quantity {
                key,
                number: p.kind == ParamKind::Number,
                values: values.iter().map(|v| parse_number(name, v)).collect::<Result<_, _>>()?,
            }
        }
        ParamKind::Uri => {
            let mode = match modifier {
                None => UriMode::Exact,
                Some("below") => UriMode::Below,
                Some("above") => UriMode::Above,
                Some(m) => return Err(unsupported(m)),
            };
            Condition::Uri {
                key,
                mode,
                values: values.iter().map(|v| unescape(v)).collect(),
            }
        }
        ParamKind::Reference => {
            let type_modifier = match modifier {
                None => None,
                Some(m) if fhir::is_resource_type(m) => Some(m),
                Some(m) => return Err(unsupported(m)),
            };
            let (key, only_type) = stored_key(p);
            Condition::Reference {
                key,
                values: values
                    .iter()
                    .map(|v| parse_reference(name, v, type_modifier))
                    .collect::<Result<_, _>>()?,
                only_type,
            }
        }
    })
}

/// Parses one `name=value` search parameter of `rtype` (with modifiers and one
/// level of chaining) into a condition.
pub fn parse_condition(registry: &Registry, rtype: &str, name: &str, raw: &str) -> Result<Condition, QueryError> {
    parse_condition_at(registry, rtype, name, raw, 0)
}

fn parse_condition_at(
    registry: &Registry,
    rtype: &str,
    name: &str,
    raw: &str,
    depth: usize,
) -> Result<Condition, QueryError> {
    // Chaining: `subject:Patient.name` or `subject.name`.
    if let Some((head, rest)) = name.split_once('.') {
        if depth > 0 {
            return Err(bad(name, "only one level of chaining is supported"));
        }
        let (code, type_mod) = match head.split_once(':') {
            Some((c, t)) => (c, Some(t)),
            None => (head, None),
        };
        let p = registry
            .get(rtype, code)
            .ok_or_else(|| QueryError::UnknownParameter(name.to_string()))?;
        if p.kind != ParamKind::Reference {
            return Err(bad(name, "chaining needs a reference parameter"));
        }
        let candidates: Vec<String> = match type_mod {
            Some(t) => {
                if !fhir::is_resource_type(t) {
                    return Err(QueryError::UnsupportedModifier {
                        param: code.to_string(),
                        modifier: t.to_string(),
                    });
                }
                vec![t.to_string()]
            }
            None => p.targets.clone(),
        };
        // The chained parameter must exist on the target type(s); with several
        // candidates, keep those where it does (as HAPI and Blaze do).
        let inner_code = rest.split(':').next().unwrap_or(rest);
        let targets: Vec<String> = candidates
            .into_iter()
            .filter(|t| registry.get(t, inner_code).is_some())
            .collect();
        if targets.is_empty() {
            return Err(QueryError::UnknownParameter(name.to_string()));
        }
        let mut targets = targets
            .into_iter()
            .map(|t| {
                let inner = parse_condition_at(registry, &t, rest, raw, depth + 1)?;
                Ok((t, inner))
            })
            .collect::<Result<Vec<_>, QueryError>>()?;
        // A parameter stored within another's rows reads them for its own target type
        // only. Asked for other types only, it keeps its own key, under which rows are no
        // longer stored (and older ones are all of its own type): nothing matches, as
        // nothing can.
        let key = match &p.within {
            Some((base, only)) if targets.iter().any(|(t, _)| t == only) => {
                targets.retain(|(t, _)| t == only);
                base.clone()
            }
            _ => p.key.clone(),
        };
        return Ok(Condition::Chain { key, targets });
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    match code {
        "_id" => {
            let not = match modifier {
                None => false,
                Some("not") => true,
                Some(m) => {
                    return Err(QueryError::UnsupportedModifier {
                        param: code.into(),
                        modifier: m.into(),
                    })
                }
            };
            let values = split_escaped(raw, ',');
            if values.iter().any(|v| !fhir::is_valid_id(v)) {
                return Err(bad(code, "not a valid id"));
            }
            return Ok(Condition::Id { values, not });
        }
        "_lastUpdated" => {
            if let Some(m) = modifier {
                return Err(QueryError::UnsupportedModifier {
                    param: code.into(),
                    modifier: m.into(),
                });
            }
            return Ok(Condition::LastUpdated(
                split_escaped(raw, ',')
                    .iter()
                    .map(|v| parse_date(code, v))
                    .collect::<Result<_, _>>()?,
            ));
        }
        _ => {}
    }
    let p = registry
        .get(rtype, code)
        .ok_or_else(|| QueryError::UnknownParameter(name.to_string()))?;
    condition(name, p, modifier, raw)
}

fn sort_key(registry: &Registry, rtype: &str, code: &str) -> Result<SortKey, QueryError> {
    match code {
        "_id" => Ok(SortKey::Id),
        "_lastUpdated" => Ok(SortKey::LastUpdated),
        _ => {
            let p = registry
                .get(rtype, code)
                .ok_or_else(|| QueryError::UnknownParameter(format!("_sort={code}")))?;
            match p.kind {
                ParamKind::Date | ParamKind::String | ParamKind::Token | ParamKind::Number | ParamKind::Quantity => {
                    Ok(SortKey::Param {
                        key: p.key.clone(),
                        kind: p.kind,
                    })
                }
                _ => Err(bad(
                    "_sort",
                    format!("cannot sort by {} parameter '{code}'", p.kind.as_str()),
                )),
            }
        }
    }
}

fn include(registry: &Registry, spec: &str, name: &str) -> Result<Include, QueryError> {
    let mut parts = spec.split(':');
    let (Some(source), Some(code)) = (parts.next(), parts.next()) else {
        return Err(bad(name, "expected Type:parameter[:targetType]"));
    };
    let target = parts.next();
    if !fhir::is_resource_type(source) {
        return Err(bad(name, format!("unknown resource type '{source}'")));
    }
    let p = registry
        .get(source, code)
        .filter(|p| p.kind == ParamKind::Reference)
        .ok_or_else(|| bad(name, format!("'{source}:{code}' is not a reference search parameter")))?;
    if let Some(t) = target {
        if !fhir::is_resource_type(t) {
            return Err(bad(name, format!("unknown resource type '{t}'")));
        }
    }
    // A parameter stored within another's rows includes that one's targets of its own
    // type; asked for another type, it keeps its own key, under which rows are no longer
    // stored (and older ones are all of its own type): nothing is included.
    let (key, target_type) = match (&p.within, target) {
        (Some((base, only)), None) => (base.clone(), Some(only.clone())),
        (Some((base, only)), Some(t)) if t == only => (base.clone(), Some(only.clone())),
        (_, t) => (p.key.clone(), t.map(str::to_string)),
    };
    Ok(Include {
        source_type: source.to_string(),
        key,
        target_type,
    })
}

/// Result parameters that control the response, not the match.
const CONTROL: [&str; 6] = [
    "_format",
    "_pretty",
    "_contained",
    "_containedType",
    "_getpages",
    "_getpagesoffset",
];

/// Parses a whole query. Under `strict` handling an unknown parameter is an error;
/// otherwise it is skipped and listed in `ignored`.
/// Limits on one search, checked before anything is parsed: each parameter
/// becomes a join or a subquery, and each comma-separated value a branch.
pub const MAX_SEARCH_PARAMETERS: usize = 64;
pub const MAX_SEARCH_VALUE_BYTES: usize = 4096;
pub const MAX_SEARCH_ALTERNATIVES: usize = 256;

pub fn parse_query(
    registry: &Registry,
    rtype: &str,
    pairs: &[(String, String)],
    strict: bool,
    max_count: usize,
) -> Result<SearchRequest, QueryError> {
    if pairs.len() > MAX_SEARCH_PARAMETERS {
        return Err(bad(
            &pairs[MAX_SEARCH_PARAMETERS].0,
            format!("a search may have at most {MAX_SEARCH_PARAMETERS} parameters (the limit)"),
        ));
    }
    for (name, value) in pairs {
        if name.len() + value.len() > MAX_SEARCH_VALUE_BYTES {
            return Err(bad(
                name,
                format!("the value is longer than {MAX_SEARCH_VALUE_BYTES} bytes (the limit)"),
            ));
        }
        if value.split(',').count() > MAX_SEARCH_ALTERNATIVES {
            return Err(bad(
                name,
                format!("at most {MAX_SEARCH_ALTERNATIVES} comma-separated values (the limit)"),
            ));
        }
    }
    let mut req = SearchRequest::new(rtype);
    for (name, value) in pairs {
        match name.as_str() {
            "_count" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| bad("_count", "must be a non-negative integer"))?;
                req.count = Some(n.min(max_count));
            }
            "_sort" => {
                for part in value.split(',').filter(|s| !s.is_empty()) {
                    let (desc, code) = match part.strip_prefix('-') {
                        Some(c) => (true, c),
                        None => (false, part),
                    };
                    req.sort.push(Sort {
                        key: sort_key(registry, rtype, code)?,
                        descending: desc,
                    });
                }
            }
            "_summary" => {
                req.summary = match value.as_str() {
                    "true" => Summary::True,
                    "false" => Summary::False,
                    "count" => Summary::Count,
                    "data" => Summary::Data,
                    "text" => Summary::Text,
                    _ => return Err(bad("_summary", "expected true, false, count, data or text")),
                }
            }
            "_total" => {
                req.total_accurate = match value.as_str() {
                    "accurate" => true,
                    "none" | "estimate" => false,
                    _ => return Err(bad("_total", "expected none, estimate or accurate")),
                }
            }
            "_include" | "_include:iterate" => req.includes.push(include(registry, value, name)?),
            "_revinclude" | "_revinclude:iterate" => req.revincludes.push(include(registry, value, name)?),
            "_elements" => {
                req.elements = Some(
                    value
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                )
            }
            n if CONTROL.contains(&n) => {}
            _ => match parse_condition(registry, rtype, name, value) {
                Ok(c) => req.conditions.push(c),
                Err(QueryError::UnknownParameter(p)) if !strict => req.ignored.push(p),
                Err(e) => return Err(e),
            },
        }
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<SearchRequest, QueryError> {
        let reg = Registry::r4();
        let pairs: Vec<(String, String)> = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        parse_query(&reg, "Observation", &pairs, true, 1000)
    }

    #[test]
    fn parses_tokens_dates_and_chains() {
        let r = q(&[
            ("code", "http://loinc.org|29463-7,1234"),
            ("date", "ge2020-01-01"),
            ("subject:Patient.identifier", "urn:x|42"),
            ("_count", "5"),
        ])
        .unwrap();
        assert_eq!(r.conditions.len(), 3);
        match &r.conditions[0] {
            Condition::Token { values, .. } => {
                assert_eq!(values[0].system, SystemMatch::Is("http://loinc.org".into()));
                assert_eq!(values[1].system, SystemMatch::Any);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&r.conditions[1], Condition::Date { values, .. } if values[0].prefix == Prefix::Ge));
        assert!(
            matches!(&r.conditions[2], Condition::Chain { targets, .. } if targets.len() == 1 && targets[0].0 == "Patient")
        );
        assert_eq!(r.count, Some(5));
    }

    #[test]
    fn searches_past_the_limits_are_refused_naming_them() {
        let reg = Registry::r4();
        let many: Vec<(String, String)> = (0..100).map(|i| ("gender".to_string(), format!("g{i}"))).collect();
        let e = parse_query(&reg, "Patient", &many, false, 100).unwrap_err();
        assert!(e.to_string().contains("at most 64"), "{e}");
        let long = vec![("family".to_string(), "x".repeat(10_000))];
        assert!(parse_query(&reg, "Patient", &long, false, 100)
            .unwrap_err()
            .to_string()
            .contains("limit"));
        let ors = vec![("gender".to_string(), vec!["male"; 1000].join(","))];
        assert!(parse_query(&reg, "Patient", &ors, false, 100)
            .unwrap_err()
            .to_string()
            .contains("limit"));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(q(&[("nonsense", "1")]), Err(QueryError::UnknownParameter(_))));
        assert!(matches!(
            q(&[("date", "yesterday")]),
            Err(QueryError::InvalidValue { .. })
        ));
        assert!(matches!(
            q(&[("code:exact", "1")]),
            Err(QueryError::UnsupportedModifier { .. })
        ));
        assert!(q(&[("_count", "-1")]).is_err());
    }

    #[test]
    fn number_precision_defines_the_range() {
        let r = q(&[("value-quantity", "5.4|http://unitsofmeasure.org|mg")]).unwrap();
        let Condition::Quantity { values, .. } = &r.conditions[0] else {
            panic!()
        };
        assert!((values[0].lo - 5.35).abs() < 1e-9 && (values[0].hi - 5.45).abs() < 1e-9);
        assert_eq!(values[0].code.as_deref(), Some("mg"));
    }
}
