//! `POST /fhir/ViewDefinition/$run`: the SQL-on-FHIR v2 `$run` operation, for
//! region-local users. Rows come from the stored data, or from `resource`
//! parameters given inline.

use super::fhir::{blocking, json_body, parse_json, query_pairs};
use super::AppState;
use crate::audit::AuditRecord;
use crate::error::Error;
use crate::fhir::{Issue, IssueCode};
use crate::node::analytics::{resolve_view, view_error};
use crate::views::{write_csv, write_json, write_ndjson, Format, View};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

pub fn configure(cfg: &mut web::ServiceConfig) {
    super::access::route(
        cfg,
        crate::auth::NODE_ROUTES,
        "POST",
        "/fhir/ViewDefinition/$run",
        web::post().to(run),
    );
}

fn invalid(message: impl Into<String>, expression: &str) -> Error {
    Error::invalid(Issue {
        expression: Some(expression.to_string()),
        ..Issue::error(IssueCode::Invalid, message)
    })
}

/// The parts of a `$run` Parameters body.
struct RunRequest {
    view: View,
    resources: Option<Vec<Value>>,
    format: Option<Format>,
    limit: Option<usize>,
}

fn parse_run(body: &Value) -> Result<RunRequest, Error> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(invalid("the body must be a Parameters resource", "resourceType"));
    }
    let params = body
        .get("parameter")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut view = None;
    let mut resources: Option<Vec<Value>> = None;
    let mut format = None;
    let mut limit = None;
    for (i, p) in params.iter().enumerate() {
        let at = format!("Parameters.parameter[{i}]");
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        match name {
            "viewResource" => {
                let r = p
                    .get("resource")
                    .ok_or_else(|| invalid("viewResource needs a 'resource'", &at))?;
                view = Some(View::compile(r).map_err(view_error)?);
            }
            "viewReference" => {
                let reference = p
                    .get("valueReference")
                    .and_then(|r| r.get("reference"))
                    .or_else(|| p.get("valueCanonical"))
                    .or_else(|| p.get("valueString"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("viewReference needs a valueReference or valueCanonical", &at))?;
                let (v, _) = resolve_view(&crate::federation::ViewSource::Reference(reference.to_string()))?;
                view = Some(v);
            }
            "resource" => {
                let r = p
                    .get("resource")
                    .ok_or_else(|| invalid("'resource' needs a resource", &at))?;
                resources.get_or_insert_with(Vec::new).push(r.clone());
            }
            "_format" => {
                let f = p
                    .get("valueCode")
                    .or_else(|| p.get("valueString"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                format = Some(
                    Format::parse(f)
                        .ok_or_else(|| invalid(format!("_format '{f}' is not supported (json, ndjson, csv)"), &at))?,
                );
            }
            "_limit" => {
                let n = p
                    .get("valueInteger")
                    .or_else(|| p.get("valuePositiveInt"))
                    .and_then(Value::as_u64)
                    .ok_or_else(|| invalid("_limit needs a positive valueInteger", &at))?;
                limit = Some(n as usize);
            }
            other => {
                return Err(invalid(
                    format!(
                        "parameter '{other}' is not supported (viewResource, viewReference, resource, _format, _limit)"
                    ),
                    &at,
                ))
            }
        }
    }
    let view = view.ok_or_else(|| invalid("give a viewResource or a viewReference", "Parameters.parameter"))?;
    Ok(RunRequest {
        view,
        resources,
        format,
        limit,
    })
}

async fn run(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let body = json_body(&req, payload, &state).await?;
    let query_format = match query_pairs(&req).into_iter().find(|(k, _)| k == "_format") {
        Some((_, f)) => Some(Format::parse(&f).ok_or_else(|| {
            Error::invalid(Issue::error(
                IssueCode::Invalid,
                format!("_format '{f}' is not supported (json, ndjson, csv)"),
            ))
        })?),
        None => None,
    };
    let svc = state.service.clone();
    let audit = state.audit.clone();
    let region = state.config.region.to_string();
    let who = super::access::who(super::access::principal_of(&req).as_ref(), &req);
    let (format, bytes) = blocking(move || {
        let (value, text) = parse_json(&body)?;
        let r = parse_run(&value)?;
        let format = r.format.or(query_format).unwrap_or(Format::Json);
        let budget = crate::node::analytics::Budget::new(&svc.settings);
        let rows = match &r.resources {
            Some(resources) => {
                let model = &crate::fhir::definitions::get().choice;
                let mut rows = Vec::new();
                for res in resources {
                    r.view.rows(res, model, &mut rows).map_err(view_error)?;
                    budget.check(rows.len())?;
                }
                if let Some(l) = r.limit {
                    rows.truncate(l);
                }
                rows
            }
            None => {
                let rows = svc.run_view(&r.view, r.limit, budget)?;
                audit.record_now(&AuditRecord {
                    action: "view-run",
                    who: &who,
                    observer: &format!("node {region}"),
                    outcome: Ok(()),
                    query: text,
                    details: vec![("rows", rows.len().to_string())],
                })?;
                rows
            }
        };
        let mut out = Vec::new();
        match format {
            Format::Json => write_json(&r.view.columns, &rows, &mut out),
            Format::Ndjson => write_ndjson(&r.view.columns, &rows, &mut out),
            Format::Csv => write_csv(&r.view.columns, &rows, &mut out),
        }
        Ok((format, out))
    })
    .await?;
    Ok(HttpResponse::Ok().content_type(format.content_type()).body(bytes))
}
