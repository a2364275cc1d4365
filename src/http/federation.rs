//! The node's federation API: what the hub may ask. Only aggregates leave:
//! sufficient statistics per group, and counts. Every route requires the hub's
//! client certificate (verified by the TLS layer against the configured CA)
//! and records an AuditEvent.

use super::fhir::{blocking, json_body, parse_json, query_pairs, TypePath};
use super::AppState;
use crate::audit::AuditRecord;
use crate::error::Error;
use crate::federation::{
    counts, AggregateRequest, Disclosure, MeasureRequest, NodeAggregate, NodeCount, NodeMeasure, Plan,
};
use crate::fhir::time::format_instant;
use crate::fhir::{Issue, IssueCode};
use crate::node;
use crate::node::analytics::Budget;
use crate::search::parse_query;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use std::time::Duration;

/// Put in a connection's data when the client presented a certificate that
/// the TLS layer verified against the configured CA with the client-auth usage.
#[derive(Clone, Copy, Debug)]
pub struct VerifiedClientCert;

pub fn configure(cfg: &mut web::ServiceConfig) {
    use super::access::route;
    use crate::auth::NODE_ROUTES as T;
    route(cfg, T, "POST", "/federation/aggregate", web::post().to(aggregate));
    route(cfg, T, "POST", "/federation/measure", web::post().to(measure));
    route(cfg, T, "GET", "/federation/count/{type}", web::get().to(count));
    route(cfg, T, "GET", "/federation/quality", web::get().to(quality));
    route(cfg, T, "GET", "/quality", web::get().to(own_quality));
}

/// `GET /quality`: this node's data-quality figures.
async fn own_quality(state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let svc = state.service.clone();
    let region = state.config.region.to_string();
    // The figures are read from the store, on the blocking pool.
    let report = blocking(move || svc.quality_report(&region)).await?;
    Ok(HttpResponse::Ok().json(report))
}

/// `GET /federation/quality`: the figures per resource type for the hub (no per-source detail).
async fn quality(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    require_hub(&req, &state)?;
    let svc = state.service.clone();
    let region = state.config.region.to_string();
    // The store is read on the blocking pool (the PostgreSQL client blocks).
    let report = blocking(move || {
        let mut report = svc.quality_report(&region)?;
        if let Some(o) = report.as_object_mut() {
            o.remove("bySource");
        }
        // Validator messages may quote the values they found: they stay in the region.
        for t in report["byResourceType"].as_array_mut().into_iter().flatten() {
            if let Some(c) = t["conformance"].as_object_mut() {
                c.remove("topIssues");
            }
        }
        report["lastUpdated"] = json!(last_updated(&svc)?);
        Ok(report)
    })
    .await?;
    Ok(HttpResponse::Ok().json(report))
}

/// The paths a hub-certificate connection may reach on a node.
pub fn open_to_hub(path: &str) -> bool {
    path.starts_with("/federation/") || matches!(path, "/health" | "/ready" | "/fhir/metadata")
}

pub(super) fn require_hub(req: &HttpRequest, state: &AppState) -> Result<(), Error> {
    if state.config.tls.as_ref().and_then(|t| t.ca.as_ref()).is_none() {
        return Err(Error::forbidden(
            "federation is disabled on this node: it needs TLS with a CA (--tls-dir, or --tls-cert/--tls-key/--tls-ca) to recognise the hub",
        ));
    }
    if req.conn_data::<VerifiedClientCert>().is_none() {
        return Err(Error::forbidden(
            "the federation API answers only the hub, which must present its client certificate",
        ));
    }
    Ok(())
}

fn last_updated(svc: &node::FhirService) -> Result<Option<String>, Error> {
    Ok(svc.store.newest()?.map(format_instant))
}

/// Why the hub's settings are laxer than this node's floor, if they are (the number of
/// regions is the hub's business, not the node's).
pub(super) fn below_floor(floor: &Disclosure, asked: &Disclosure) -> Option<String> {
    let asked_here = Disclosure {
        min_regions: floor.min_regions,
        ..*asked
    };
    (!asked_here.at_least_as_strict_as(floor)).then(|| {
        format!(
            "this node releases only under minCell >= {}, rounding >= {} and noise >= {}; the hub asked for minCell {}, rounding {} and noise {}",
            floor.min_cell, floor.rounding, floor.noise, asked.min_cell, asked.rounding, asked.noise
        )
    })
}

/// `POST /federation/measure`: a pathway's exact counts and cell keys for the hub's gate.
async fn measure(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    require_hub(&req, &state)?;
    let body = json_body(&req, payload, &state).await?;
    let svc = state.service.clone();
    let audit = state.audit.clone();
    let config = state.config.clone();
    let answer = blocking(move || {
        let (_, text) = parse_json(&body)?;
        let text = text.to_string();
        let request: MeasureRequest = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(Issue::error(
                IssueCode::Structure,
                format!("not a measure request from a hub of this version: {e}"),
            ))
        })?;
        let observer = format!("node {}", config.region);
        let floor = config.disclosure;
        if let Some(why) = below_floor(&floor, &request.disclosure) {
            audit.record_now(&AuditRecord {
                action: "evaluate-measure",
                who: "hub (mTLS)",
                observer: &observer,
                outcome: Err(&why),
                query: &text,
                details: vec![],
            })?;
            return Ok(Err(why));
        }
        let pathway = svc
            .pathways
            .get(&request.measure)
            .cloned()
            .ok_or_else(|| Error::NotFound("Measure".into(), request.measure.clone()))?;
        let counts = if pathway.version == request.version {
            let period = super::pathways::period_of(
                &[
                    ("periodStart".into(), request.period_start.clone()),
                    ("periodEnd".into(), request.period_end.clone()),
                ],
                None,
            )?;
            let answer_by = std::time::Instant::now() + Duration::from_millis(request.deadline_ms);
            let episodes = svc.episodes(Budget::new(&svc.settings))?;
            if std::time::Instant::now() > answer_by {
                return Err(Error::TooCostly(
                    "the hub's deadline passed while this node read its episodes".into(),
                ));
            }
            Some(pathway.count(episodes.iter(), &period.start, &period.end))
        } else {
            None
        };
        audit.record_now(&AuditRecord {
            action: "evaluate-measure",
            who: "hub (mTLS)",
            observer: &observer,
            outcome: Ok(()),
            query: &text,
            details: vec![(
                "released",
                match &counts {
                    Some(_) => format!(
                        "counts per group and stratum of {} {}; no episodes",
                        pathway.id, pathway.version
                    ),
                    None => format!("nothing: this node runs {} {}", pathway.id, pathway.version),
                },
            )],
        })?;
        Ok(Ok(NodeMeasure {
            region: config.region.to_string(),
            measure: pathway.id.clone(),
            version: pathway.version.clone(),
            counts,
            last_updated: last_updated(&svc)?,
            completeness: svc.completeness("Encounter"),
            disclosure: floor,
        }))
    })
    .await?;
    match answer {
        Ok(a) => Ok(HttpResponse::Ok().json(a)),
        Err(why) => Err(Error::forbidden(why)),
    }
}

async fn aggregate(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    require_hub(&req, &state)?;
    let body = json_body(&req, payload, &state).await?;
    let svc = state.service.clone();
    let audit = state.audit.clone();
    let config = state.config.clone();
    let answer = blocking(move || {
        let (_, text) = parse_json(&body)?;
        let text = text.to_string();
        let request: AggregateRequest = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(Issue::error(
                IssueCode::Structure,
                format!("not an aggregate request from a hub of this version: {e}"),
            ))
        })?;
        let observer = format!("node {}", config.region);
        let floor = config.disclosure;
        let asked = request.disclosure;
        if let Some(why) = below_floor(&floor, &asked) {
            audit.record_now(&AuditRecord {
                action: "aggregate",
                who: "hub (mTLS)",
                observer: &observer,
                outcome: Err(&why),
                query: &text,
                details: vec![],
            })?;
            return Ok(Err(why));
        }
        let plan = Plan::from_request(&request).map_err(crate::node::analytics::problem_error)?;
        // The view's rows are built under the node's own budget, not the hub's deadline: they
        // are kept for every later question, and an approved view's cost is bounded by its
        // design. The hub's deadline ends only the wait; past it, the answer is not sent.
        let answer_by = std::time::Instant::now() + Duration::from_millis(request.deadline_ms);
        let groups = svc.aggregate(&plan, Budget::new(&svc.settings))?;
        if std::time::Instant::now() > answer_by {
            return Err(Error::TooCostly(
                "the hub's deadline passed while this node built the view's rows; they are kept for the next question"
                    .into(),
            ));
        }
        audit.record_now(&AuditRecord {
            action: "aggregate",
            who: "hub (mTLS)",
            observer: &observer,
            outcome: Ok(()),
            query: &text,
            details: vec![(
                "released",
                format!(
                    "sufficient statistics (counts, sums, moments) for {} group(s) of view {} {}; no rows",
                    groups.len(),
                    plan.approved.name,
                    plan.approved.version
                ),
            )],
        })?;
        Ok(Ok(NodeAggregate {
            region: config.region.to_string(),
            last_updated: last_updated(&svc)?,
            completeness: svc.completeness(&plan.approved.view.resource),
            groups,
            disclosure: floor,
        }))
    })
    .await?;
    match answer {
        Ok(a) => Ok(HttpResponse::Ok().json(a)),
        Err(why) => Err(Error::forbidden(why)),
    }
}

async fn count(req: HttpRequest, path: TypePath, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    require_hub(&req, &state)?;
    let rtype = path.0;
    let pairs: Vec<(String, String)> = query_pairs(&req)
        .into_iter()
        .filter(|(k, _)| k != "_summary" && k != "_count" && k != "_format")
        .collect();
    // The node checks the approved parameters too: it does not rely on the hub alone.
    counts::check(&rtype, &pairs).map_err(|p| {
        Error::invalid(Issue {
            expression: Some(p.expression),
            ..Issue::error(IssueCode::NotSupported, p.message)
        })
    })?;
    // Strict: a parameter this node cannot apply must not silently widen the count.
    let parsed = parse_query(
        &state.service.registry,
        &rtype,
        &pairs,
        true,
        state.service.settings.max_count,
    )?;
    let svc = state.service.clone();
    let audit = state.audit.clone();
    let config = state.config.clone();
    let query = format!("{rtype}?{}", req.query_string());
    let rtype_for_quality = rtype;
    let body: NodeCount = blocking(move || {
        let matched = svc.store.search(&parsed, svc.settings.max_results)?;
        let n = if matched.len() < svc.settings.max_results {
            matched.len() as u64
        } else {
            svc.store.count(&parsed)?
        };
        let cell_key = matched
            .iter()
            .fold(0u64, |k, &key| k.wrapping_add(svc.record_keys.record(key, 0)));
        audit.record_now(&AuditRecord {
            action: "count",
            who: "hub (mTLS)",
            observer: &format!("node {}", config.region),
            outcome: Ok(()),
            query: &query,
            details: vec![("released", "one count".into())],
        })?;
        Ok(NodeCount {
            region: config.region.to_string(),
            count: n,
            cell_key,
            last_updated: last_updated(&svc)?,
            completeness: svc.completeness(&rtype_for_quality),
            disclosure: config.disclosure,
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(body))
}
