//! A search request judged against one resource in memory, with the same
//! meaning as the store's SQL (`store::sql`): for resources a server serves
//! without storing them (the pathways' Measures and ValueSets on a node, the
//! hub's list). The store stays the one place stored resources are searched.

use super::index::{DateRow, IndexRows, QuantityRow, RefRow};
use super::params::ParamKind;
use super::query::{Condition, DateCond, NumCond, Prefix, RefValue, StringMode, SystemMatch, UriMode};

/// What a resource offers to the conditions of a search.
pub struct Candidate<'a> {
    pub id: &'a str,
    pub last_updated: i64,
    pub rows: &'a IndexRows,
}

/// Whether the resource meets every condition. A chain (`subject:Patient.name=`)
/// looks into other resources and is never met here.
pub fn matches_all(conditions: &[Condition], c: &Candidate) -> bool {
    conditions.iter().all(|cond| matches(cond, c))
}

fn matches(cond: &Condition, c: &Candidate) -> bool {
    let rows = c.rows;
    match cond {
        Condition::Id { values, not } => values.iter().any(|v| v == c.id) != *not,
        Condition::LastUpdated(values) => values.iter().any(|v| date(c.last_updated, c.last_updated, v)),
        Condition::Token { key, not, values } => {
            let found = rows.tokens.iter().filter(|r| r.param == *key).any(|r| {
                values.iter().any(|v| {
                    v.code.as_ref().is_none_or(|code| r.code.as_ref() == Some(code))
                        && match &v.system {
                            SystemMatch::Any => true,
                            SystemMatch::Absent => r.system.is_none(),
                            SystemMatch::Is(s) => r.system.as_ref() == Some(s),
                        }
                })
            });
            found != *not
        }
        Condition::TokenText { key, values } => rows.tokens.iter().filter(|r| r.param == *key).any(|r| {
            r.text
                .as_ref()
                .is_some_and(|t| values.iter().any(|v| t.contains(v.as_str())))
        }),
        Condition::String { key, mode, values } => rows.strings.iter().filter(|r| r.param == *key).any(|r| {
            values.iter().any(|v| match mode {
                StringMode::StartsWith => r.norm.starts_with(v.as_str()),
                StringMode::Exact => r.exact == *v,
                StringMode::Contains => r.norm.contains(v.as_str()),
            })
        }),
        Condition::Date { key, values } => rows
            .dates
            .iter()
            .filter(|r| r.param == *key)
            .any(|r: &DateRow| values.iter().any(|v| date(r.lo, r.hi, v))),
        Condition::Quantity { key, values, .. } => quantities(rows)
            .filter(|r| r.param == *key)
            .any(|r| values.iter().any(|v| number(r, v))),
        Condition::Uri { key, mode, values } => rows.uris.iter().filter(|r| r.param == *key).any(|r| {
            values.iter().any(|v| match mode {
                UriMode::Exact => r.value == *v,
                UriMode::Below => r.value.starts_with(v.as_str()),
                UriMode::Above => v.starts_with(r.value.as_str()),
            })
        }),
        Condition::Reference { key, values, only_type } => refs_of(rows, key, only_type).any(|r| {
            values.iter().any(|v| match v {
                RefValue::Local { target_type, id } => {
                    r.target_id.as_ref() == Some(id)
                        && target_type.as_ref().is_none_or(|t| r.target_type.as_ref() == Some(t))
                }
                RefValue::Url(u) => r.url.as_ref() == Some(u),
            })
        }),
        Condition::Chain { .. } => false,
        Condition::Missing {
            key,
            kind,
            missing,
            only_type,
        } => {
            let present = match kind {
                ParamKind::Token => rows.tokens.iter().any(|r| r.param == *key),
                ParamKind::String => rows.strings.iter().any(|r| r.param == *key),
                ParamKind::Date => rows.dates.iter().any(|r| r.param == *key),
                ParamKind::Reference => refs_of(rows, key, only_type).next().is_some(),
                ParamKind::Quantity | ParamKind::Number => quantities(rows).any(|r| r.param == *key),
                ParamKind::Uri => rows.uris.iter().any(|r| r.param == *key),
            };
            present != *missing
        }
    }
}

/// A reference parameter's rows, of one target type when it is stored within another's.
fn refs_of<'r>(rows: &'r IndexRows, key: &'r str, only_type: &'r Option<String>) -> impl Iterator<Item = &'r RefRow> {
    rows.refs
        .iter()
        .filter(move |r| &*r.param == key && only_type.as_ref().is_none_or(|t| r.target_type.as_ref() == Some(t)))
}

fn quantities(rows: &IndexRows) -> impl Iterator<Item = &QuantityRow> {
    rows.quantities.iter().chain(&rows.numbers)
}

/// `store::sql::date_pred`, on values.
fn date(lo: i64, hi: i64, c: &DateCond) -> bool {
    match c.prefix {
        Prefix::Eq => lo >= c.lo && hi <= c.hi,
        Prefix::Ne => !(lo >= c.lo && hi <= c.hi),
        Prefix::Gt => hi > c.hi,
        Prefix::Lt => lo < c.lo,
        Prefix::Ge => hi >= c.lo,
        Prefix::Le => lo <= c.hi,
        Prefix::Sa => lo > c.hi,
        Prefix::Eb => hi < c.lo,
        Prefix::Ap => {
            let gap = ((crate::fhir::time::now_millis() - c.lo).abs() / 10).max(86_400_000);
            lo <= c.hi.saturating_add(gap) && hi >= c.lo.saturating_sub(gap)
        }
    }
}

/// `store::sql::number_pred`, on values.
fn number(r: &QuantityRow, c: &NumCond) -> bool {
    let v = r.value;
    let in_range = match c.prefix {
        Prefix::Eq => v >= c.lo && v < c.hi,
        Prefix::Ne => !(v >= c.lo && v < c.hi),
        Prefix::Gt | Prefix::Sa => v > c.value,
        Prefix::Lt | Prefix::Eb => v < c.value,
        Prefix::Ge => v >= c.value,
        Prefix::Le => v <= c.value,
        Prefix::Ap => {
            let d = (c.value * 0.1).abs();
            v >= c.value - d && v <= c.value + d
        }
    };
    in_range
        && match (&c.system, &c.code) {
            (Some(s), Some(code)) => r.system.as_ref() == Some(s) && r.code.as_ref() == Some(code),
            (None, Some(code)) => r.code.as_ref() == Some(code) || r.unit.as_ref() == Some(code),
            (Some(s), None) => r.system.as_ref() == Some(s),
            (None, None) => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{extract, parse_query, Registry};
    use serde_json::json;

    fn judge(query: &str, resource: &serde_json::Value) -> bool {
        let registry = Registry::r4();
        let rtype = resource["resourceType"].as_str().unwrap();
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let req = parse_query(&registry, rtype, &pairs, false, 100).unwrap();
        let rows = extract(&registry, rtype, resource);
        matches_all(
            &req.conditions,
            &Candidate {
                id: resource["id"].as_str().unwrap(),
                last_updated: crate::fhir::time::parse_range("2025-06-01T00:00:00Z").unwrap().0,
                rows: &rows,
            },
        )
    }

    #[test]
    fn means_what_the_store_means() {
        let m = json!({
            "resourceType": "Measure", "id": "chc-copd", "url": "https://pennine.example/Measure/chc-copd",
            "version": "1.0.0", "name": "ChcCopd", "title": "COPD emergency admissions", "status": "active",
            "date": "2025-03-01"
        });
        for (q, want) in [
            ("", true),
            ("_id=chc-copd", true),
            ("_id=chc-arld,chc-copd", true),
            ("_id:not=chc-copd", false),
            ("url=https://pennine.example/Measure/chc-copd", true),
            ("url=https://pennine.example/Measure", false),
            ("url:below=https://pennine.example/Measure", true),
            ("version=1.0.0", true),
            ("version=2", false),
            ("status=active", true),
            ("status=draft", false),
            ("status:not=draft", true),
            ("name=chc", true),
            ("name:exact=ChcCopd", true),
            ("name:exact=chccopd", false),
            ("title:contains=emergency", true),
            ("title=emergency", false),
            ("date=2025-03", true),
            ("date=gt2025-03-01", false),
            ("date=ge2025-03-01", true),
            ("_lastUpdated=2025-06", true),
            ("_lastUpdated=lt2025-01-01", false),
            ("publisher:missing=true", true),
            ("status:missing=true", false),
            ("status=active&version=2", false),
        ] {
            assert_eq!(judge(q, &m), want, "{q}");
        }
    }
}
