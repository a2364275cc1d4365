//! The pathways on a node: `GET|POST /fhir/Measure/{id}/$evaluate-measure` (a
//! summary MeasureReport of exact counts over the region's own data, for its
//! analysts). The pathways' Measures are served beside stored Measures by the
//! ordinary read and search (`node::builtin`).

use super::error::FHIR_JSON;
use super::fhir::{blocking, query_pairs, read_body};
use super::AppState;
use crate::error::Error;
use crate::fhir::{Issue, IssueCode};
use crate::node::analytics::Budget;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

pub fn configure(cfg: &mut web::ServiceConfig) {
    use super::access::route;
    use crate::auth::NODE_ROUTES as T;
    route(
        cfg,
        T,
        "GET",
        "/fhir/Measure/{id}/$evaluate-measure",
        web::get().to(evaluate),
    );
    route(
        cfg,
        T,
        "POST",
        "/fhir/Measure/{id}/$evaluate-measure",
        web::post().to(evaluate),
    );
}

/// The reporting period of `$evaluate-measure`, as inclusive days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub start: String,
    pub end: String,
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        _ => 31,
    }
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD` as the first (`end` false) or last day it covers.
fn bound(name: &str, v: &str, end: bool) -> Result<String, Error> {
    let bad = || {
        Error::invalid(Issue {
            expression: Some(name.to_string()),
            ..Issue::error(
                IssueCode::Value,
                format!("{name} '{v}' is not a date (YYYY, YYYY-MM or YYYY-MM-DD)"),
            )
        })
    };
    crate::fhir::time::parse_range(v).ok_or_else(bad)?;
    let parts: Vec<&str> = v.split('-').collect();
    let num = |s: &str| s.parse::<u32>().map_err(|_| bad());
    Ok(match parts.as_slice() {
        [y] if y.len() == 4 => {
            if end {
                format!("{y}-12-31")
            } else {
                format!("{y}-01-01")
            }
        }
        [y, m] if y.len() == 4 && m.len() == 2 => {
            if end {
                format!("{y}-{m}-{:02}", days_in_month(num(y)?, num(m)?))
            } else {
                format!("{y}-{m}-01")
            }
        }
        [y, m, d] if y.len() == 4 && m.len() == 2 && d.len() == 2 => v.to_string(),
        _ => return Err(bad()),
    })
}

/// The period of a request: its query string and, when sent, its Parameters body.
pub(super) fn period_of_request(pairs: &[(String, String)], body: &[u8]) -> Result<Period, Error> {
    let parsed = if body.is_empty() {
        None
    } else {
        Some(serde_json::from_slice::<Value>(body).map_err(Error::Json)?)
    };
    period_of(pairs, parsed.as_ref())
}

/// The operation's parameters, from the query string and (POST) a Parameters body.
pub fn period_of(pairs: &[(String, String)], body: Option<&Value>) -> Result<Period, Error> {
    let mut values: Vec<(String, String)> = pairs.to_vec();
    if let Some(b) = body {
        if b["resourceType"] != "Parameters" {
            return Err(Error::invalid(Issue::error(
                IssueCode::Invalid,
                "the body of $evaluate-measure must be a Parameters resource",
            )));
        }
        for p in b["parameter"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            let value = ["valueDate", "valueDateTime", "valueString", "valueCode"]
                .iter()
                .find_map(|k| p[*k].as_str())
                .unwrap_or_default()
                .to_string();
            values.push((name, value));
        }
    }
    let get = |k: &str| values.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Some(t) = get("reportType").filter(|t| *t != "summary") {
        return Err(Error::NotSupported(format!(
            "reportType '{t}': only summary reports are produced (no patient-level reports)"
        )));
    }
    for (k, _) in &values {
        if !matches!(k.as_str(), "periodStart" | "periodEnd" | "reportType" | "_format") {
            return Err(Error::invalid(Issue {
                expression: Some(k.clone()),
                ..Issue::error(IssueCode::NotSupported, format!("unknown parameter '{k}'"))
            }));
        }
    }
    let need = |k: &str| {
        get(k).ok_or_else(|| {
            Error::invalid(Issue {
                expression: Some(k.to_string()),
                ..Issue::error(IssueCode::Required, format!("{k} is required"))
            })
        })
    };
    let period = Period {
        start: bound("periodStart", need("periodStart")?, false)?,
        end: bound("periodEnd", need("periodEnd")?, true)?,
    };
    if period.start > period.end {
        return Err(Error::invalid(Issue::error(
            IssueCode::Value,
            format!("periodStart {} is after periodEnd {}", period.start, period.end),
        )));
    }
    Ok(period)
}

async fn evaluate(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let id = path.into_inner();
    let pathway = state
        .service
        .pathways
        .get(&id)
        .cloned()
        .ok_or_else(|| Error::NotFound("Measure".into(), id.clone()))?;
    let body = read_body(&req, payload, state.config.max_body_bytes).await?;
    let period = period_of_request(&query_pairs(&req), &body)?;
    let svc = state.service.clone();
    let budget = Budget::new(&svc.settings);
    let reporter = format!("node {}", state.config.region);
    let report = blocking(move || {
        let episodes = svc.episodes(budget)?;
        let counts = pathway.count(episodes.iter(), &period.start, &period.end);
        let now = crate::fhir::time::format_instant(crate::fhir::time::now_millis());
        Ok(crate::pathways::measure_report(
            &pathway,
            &counts,
            &period.start,
            &period.end,
            &reporter,
            &now,
        ))
    })
    .await?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(report.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_cover_whole_days() {
        let p = |s: &str, e: &str| {
            period_of(
                &[("periodStart".into(), s.into()), ("periodEnd".into(), e.into())],
                None,
            )
        };
        assert_eq!(
            p("2025", "2025").unwrap(),
            Period {
                start: "2025-01-01".into(),
                end: "2025-12-31".into()
            }
        );
        assert_eq!(p("2024-02", "2024-02").unwrap().end, "2024-02-29");
        assert_eq!(p("2025-02", "2025-02").unwrap().end, "2025-02-28");
        assert_eq!(p("2025-03-04", "2025-03-05").unwrap().start, "2025-03-04");
        assert!(p("2025-13", "2025").is_err());
        assert!(p("2026", "2025").is_err());
        assert!(p("soon", "2025").is_err());
        assert!(period_of(&[("periodEnd".into(), "2025".into())], None).is_err());
    }
}
