//! `$regress` on a node: `POST /federation/regress` (the hub's rounds, over
//! approved views) and `POST /fhir/$regress` (the region's analysts, over their
//! own rows, inline views allowed as for `ViewDefinition/$run`). Both apply the
//! node's disclosure rules (`federation::regress`) and record every fit.

use super::fhir::{blocking, json_body, parse_json, query_pairs};
use super::AppState;
use crate::audit::AuditRecord;
use crate::error::Error;
use crate::federation::regress::{self, not_fitted, problem_text, Design, RegionPart, RegressQuery};
use crate::federation::wire::{NodeRegress, RegressRequest, RegressStep};
use crate::federation::ViewSource;
use crate::fhir::{Issue, IssueCode};
use crate::node::analytics::{problem_error, resolve_view};
use crate::views::library;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

pub fn configure(cfg: &mut web::ServiceConfig) {
    use super::access::route;
    use crate::auth::NODE_ROUTES as T;
    route(cfg, T, "POST", "/federation/regress", web::post().to(federated));
    route(cfg, T, "POST", "/fhir/$regress", web::post().to(here));
}

/// Whether the reply is the coefficient table as CSV (`_format=csv`).
pub(super) fn wants_csv(req: &HttpRequest) -> Result<bool, Error> {
    match query_pairs(req).into_iter().find(|(k, _)| k == "_format") {
        None => Ok(false),
        Some((_, f)) if f == "json" || f == "application/json" => Ok(false),
        Some((_, f)) if f == "csv" || f == "text/csv" => Ok(true),
        Some((_, f)) => Err(Error::invalid(Issue::error(
            IssueCode::Invalid,
            format!("_format '{f}' is not supported here (json, csv)"),
        ))),
    }
}

pub(super) fn reply(reply: &Value, csv: bool) -> HttpResponse {
    if csv {
        HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .body(regress::coefficients_csv(reply))
    } else {
        HttpResponse::Ok().json(reply)
    }
}

/// `POST /fhir/$regress` at a node: the region's analysts over their own rows.
async fn here(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let csv = wants_csv(&req)?;
    let body = json_body(&req, payload, &state).await?;
    let svc = state.service.clone();
    let audit = state.audit.clone();
    let config = state.config.clone();
    let who = super::access::who(super::access::principal_of(&req).as_ref(), &req);
    let out = blocking(move || {
        let (value, text) = parse_json(&body)?;
        let q = RegressQuery::parse(&value).map_err(problem_error)?;
        if q.regions.is_some() {
            return Err(Error::invalid(Issue {
                expression: Some("regions".into()),
                ..Issue::error(
                    IssueCode::Invalid,
                    "a node fits over its own region's rows; 'regions' is for the hub",
                )
            }));
        }
        let (view, key, approved) = match &q.view {
            ViewSource::Reference(name) => match library::approved(name) {
                Some(Ok(a)) => (a.view.clone(), format!("approved {}", a.digest), true),
                _ => {
                    let (view, json) = resolve_view(&q.view)?;
                    (view, format!("inline {json}"), false)
                }
            },
            ViewSource::Inline(_) => {
                let (view, json) = resolve_view(&q.view)?;
                (view, format!("inline {json}"), false)
            }
        };
        let model = q.model();
        let columns = model.columns(&view, approved).map_err(problem_error)?;
        let observer = format!("node {}", config.region);
        let min_cell = config.disclosure.min_cell;
        let record = |outcome: Result<(), &str>, details: Vec<(&str, String)>| {
            audit.record_now(&AuditRecord {
                action: "regress",
                who: &who,
                observer: &observer,
                outcome,
                query: text,
                details,
            })
        };
        let region = config.region.to_string();
        let table = match svc.regression_rows(&key, &view, &model, &columns, min_cell)? {
            Ok(t) => t,
            Err(why) => {
                record(Err(&why), vec![])?;
                let part = RegionPart {
                    region,
                    status: "refused".into(),
                    n: None,
                    reason: Some(why),
                };
                return Err(not_fitted("this region's rows may not be modelled".into(), &[part]));
            }
        };
        let design = Design::settle(&model, &[&table.levels]).map_err(problem_error)?;
        let n = table.n();
        if design.p() as u64 * 3 > n {
            let why = format!(
                "the model has {} parameters: more than one per three of this region's {n} rows",
                design.p()
            );
            record(Err(&why), vec![])?;
            return Err(Error::Unprocessable(vec![Issue::error(IssueCode::Processing, why)]));
        }
        let dropped = table.missing + table.out_of_range;
        let fit = crate::node::regress::fit_all(table, model.family, &design, q.tolerance, q.max_iterations)
            .map_err(Error::Internal)?;
        let fit = match fit {
            Ok(f) => f,
            Err(p) => {
                let why = problem_text(&p, &design.terms);
                record(Err(&why), vec![])?;
                return Err(Error::Unprocessable(vec![Issue::error(IssueCode::Processing, why)]));
            }
        };
        record(
            Ok(()),
            vec![(
                "released",
                format!(
                    "a {} model of {} term(s) over {n} row(s) ({dropped} dropped); no rows",
                    model.family.as_str(),
                    design.terms.len()
                ),
            )],
        )?;
        let regions = [RegionPart {
            region,
            status: "ok".into(),
            n: Some(n),
            reason: None,
        }];
        let mut reply = regress::reply_json(
            "complete",
            &regions,
            model.family,
            &fit.fitted,
            &fit.summary,
            fit.null_deviance,
            json!({"minCell": min_cell}),
        );
        reply["dropped"] = json!(dropped);
        Ok(reply)
    })
    .await?;
    Ok(reply(&out, csv))
}

/// `POST /federation/regress`: one step of a fit the hub drives.
async fn federated(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    super::federation::require_hub(&req, &state)?;
    let body = json_body(&req, payload, &state).await?;
    let svc = state.service.clone();
    let audit = state.audit.clone();
    let config = state.config.clone();
    let answer = blocking(move || {
        let (_, text) = parse_json(&body)?;
        let request: RegressRequest = serde_json::from_str(text).map_err(|e| {
            Error::invalid(Issue::error(
                IssueCode::Structure,
                format!("not a regression request from a hub of this version: {e}"),
            ))
        })?;
        let observer = format!("node {}", config.region);
        let floor = config.disclosure;
        let region = config.region.to_string();
        let answer = |refused: Option<String>| NodeRegress {
            region: region.clone(),
            refused,
            disclosure: floor,
            ..NodeRegress::default()
        };
        if let Some(why) = super::federation::below_floor(&floor, &request.disclosure) {
            audit.record_now(&AuditRecord {
                action: "regress",
                who: "hub (mTLS)",
                observer: &observer,
                outcome: Err(&why),
                query: text,
                details: vec![],
            })?;
            return Ok(answer(Some(why)));
        }
        let min_cell = floor.min_cell.max(request.disclosure.min_cell);
        // An opened fit is audited with what it will release, and answered with its row
        // count and levels (or why this region does not take part).
        let opened_reply = |opened: Result<crate::node::regress::Opened, String>,
                            released: &dyn Fn(&crate::node::regress::Opened) -> String|
         -> Result<NodeRegress, Error> {
            audit.record_now(&AuditRecord {
                action: "regress",
                who: "hub (mTLS)",
                observer: &observer,
                outcome: opened.as_ref().map(|_| ()).map_err(String::as_str),
                query: text,
                details: match &opened {
                    Ok(o) => vec![("released", released(o))],
                    Err(_) => vec![],
                },
            })?;
            Ok(match opened {
                Ok(o) => NodeRegress {
                    n: Some(o.n),
                    dropped: Some(o.missing + o.out_of_range),
                    levels: Some(o.levels),
                    ..answer(None)
                },
                Err(why) => answer(Some(why)),
            })
        };
        match request.step {
            RegressStep::Open {
                view_reference,
                view_digest,
                model,
            } => {
                let approved = match library::approved(&view_reference) {
                    Some(Ok(a)) => a,
                    _ => {
                        return Err(Error::invalid(Issue::error(
                            IssueCode::NotFound,
                            format!("no approved view named '{view_reference}' on this node"),
                        )))
                    }
                };
                if approved.digest != view_digest {
                    return Ok(answer(Some(format!(
                        "this node carries another definition of view '{}' (version {}) than the hub",
                        approved.name, approved.version
                    ))));
                }
                let columns = model.columns(&approved.view, true).map_err(problem_error)?;
                let key = format!("approved {}", approved.digest);
                let opened = svc.regress_open(&request.fit, &key, &approved.view, &model, &columns, min_cell)?;
                let (name, version) = (approved.name, approved.version.clone());
                opened_reply(opened, &|o| {
                    format!(
                        "Xᵀ W X, Xᵀ W z, deviance and row count per round over {} row(s) of view {name} {version}, and the levels of categorical predictors; no rows",
                        o.n
                    )
                })
            }
            RegressStep::OpenCohort {
                measure,
                version,
                period_start,
                period_end,
                group,
                model,
            } => {
                let pathway = svc
                    .pathways
                    .get(&measure)
                    .cloned()
                    .ok_or_else(|| Error::NotFound("Measure".into(), measure.clone()))?;
                if pathway.version != version {
                    return Ok(answer(Some(format!(
                        "this node runs {} {}, not {version}",
                        pathway.id, pathway.version
                    ))));
                }
                let opened = svc.regress_open_cohort(
                    &request.fit,
                    &pathway,
                    &period_start,
                    &period_end,
                    &group,
                    &model,
                    min_cell,
                )?;
                opened_reply(opened, &|o| {
                    format!(
                        "a risk model's sums per round over {} episode(s) of {} {} ({group}), then expected counts per provider; no episodes",
                        o.n, pathway.id, pathway.version
                    )
                })
            }
            RegressStep::Expected { design, beta } => match svc.regress_expected(&request.fit, &design, &beta)? {
                Ok(expected) => Ok(NodeRegress {
                    expected: Some(expected),
                    ..answer(None)
                }),
                Err(why) => Ok(answer(Some(why))),
            },
            RegressStep::Round { design, beta } => match svc.regress_round(&request.fit, &design, beta.as_deref())? {
                Ok(part) => Ok(NodeRegress {
                    part: Some(part),
                    ..answer(None)
                }),
                Err(why) => {
                    svc.regressions.close(&request.fit);
                    Ok(answer(Some(why)))
                }
            },
            RegressStep::Close => {
                svc.regressions.close(&request.fit);
                Ok(answer(None))
            }
        }
    })
    .await?;
    Ok(HttpResponse::Ok().json(answer))
}
