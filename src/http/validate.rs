//! `$validate` at type and instance level (`POST /fhir/{type}/$validate`,
//! `POST /fhir/{type}/{id}/$validate`): the resource as the body, or a
//! Parameters body with `resource`, `mode` and `profile`. The answer is always
//! an OperationOutcome with every issue (200), as the operation defines.

use super::error::FHIR_JSON;
use super::fhir::{blocking, json_body, parse_json, query_pairs, InstancePath, TypePath};
use super::AppState;
use crate::auth::NODE_ROUTES;
use crate::error::Error;
use crate::fhir::{outcome::operation_outcome, Id, Issue, IssueCode, ResourceType};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

pub fn configure(cfg: &mut web::ServiceConfig) {
    use super::access::route;
    route(
        cfg,
        NODE_ROUTES,
        "POST",
        "/fhir/{type}/$validate",
        web::post().to(type_level),
    );
    route(
        cfg,
        NODE_ROUTES,
        "POST",
        "/fhir/{type}/{id}/$validate",
        web::post().to(instance_level),
    );
}

async fn type_level(
    req: HttpRequest,
    path: TypePath,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    run(req, path.0, None, payload, state).await
}

async fn instance_level(
    req: HttpRequest,
    path: InstancePath,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    run(req, path.rtype, Some(path.id), payload, state).await
}

/// What a `$validate` request asks.
struct Request {
    resource: Option<Value>,
    mode: Option<String>,
    profile: Option<String>,
}

fn parse_request(body: Value, query: &[(String, String)]) -> Request {
    let from_query = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Request {
            resource: Some(body),
            mode: from_query("mode"),
            profile: from_query("profile"),
        };
    }
    let mut r = Request {
        resource: None,
        mode: from_query("mode"),
        profile: from_query("profile"),
    };
    for p in body["parameter"].as_array().into_iter().flatten() {
        let text = |p: &Value| {
            ["valueCode", "valueString", "valueUri", "valueCanonical"]
                .iter()
                .find_map(|k| p.get(*k).and_then(Value::as_str).map(str::to_string))
        };
        match p["name"].as_str() {
            Some("resource") => r.resource = p.get("resource").cloned(),
            Some("mode") => r.mode = text(p),
            Some("profile") => r.profile = text(p),
            _ => {}
        }
    }
    r
}

async fn run(
    req: HttpRequest,
    rtype: ResourceType,
    id: Option<Id>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let body = json_body(&req, payload, &state).await?;
    let query = query_pairs(&req);
    let service = state.service.clone();
    let issues = blocking(move || {
        let (value, _) = parse_json(&body)?;
        let request = parse_request(value, &query);
        let mut issues = Vec::new();
        let mode = request.mode.as_deref().unwrap_or("create");
        if !matches!(mode, "create" | "update" | "delete") {
            return Err(Error::invalid(Issue::error(
                IssueCode::Value,
                format!("mode '{mode}' is not one of create, update, delete"),
            )));
        }
        // The profile to check against: the one asked for, else the regional profile of the type.
        let base = format!("http://hl7.org/fhir/StructureDefinition/{rtype}");
        let profile = match &request.profile {
            Some(p) if p.split('|').next() == Some(base.as_str()) => None,
            Some(p) => match service.profiles.get(p) {
                Some(found) => Some(found),
                None => {
                    issues.push(Issue::error(
                        IssueCode::NotSupported,
                        format!("profile '{p}' is not loaded on this node"),
                    ));
                    None
                }
            },
            None => service.profiles.enforced(&rtype),
        };
        if mode == "delete" {
            // Nothing in this node's rules forbids a deletion; say whether there is anything to delete.
            match &id {
                Some(id) => {
                    service.read(rtype, id)?;
                }
                None => {
                    return Err(Error::invalid(Issue::error(
                        IssueCode::Required,
                        "mode delete needs an instance: POST [type]/[id]/$validate",
                    )))
                }
            }
            return Ok(issues);
        }
        let Some(resource) = request.resource else {
            return Err(Error::invalid(Issue::error(
                IssueCode::Required,
                "give the resource to validate as the body or as the 'resource' parameter",
            )));
        };
        let found = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        if found != rtype.as_str() {
            issues.push(
                Issue::error(
                    IssueCode::Invalid,
                    format!("the resource is a {found} but the URL is for {rtype}"),
                )
                .at("resourceType"),
            );
        }
        if mode == "update" {
            let body_id = resource.get("id").and_then(Value::as_str);
            match (body_id, &id) {
                (None, _) => issues.push(
                    Issue::error(IssueCode::Required, "an update needs the resource's id").at(format!("{rtype}.id")),
                ),
                (Some(b), Some(u)) if b != u.as_str() => issues.push(
                    Issue::error(
                        IssueCode::Invalid,
                        format!("the resource id '{b}' does not match the URL id '{u}'"),
                    )
                    .at(format!("{rtype}.id")),
                ),
                _ => {}
            }
        }
        issues.extend(crate::validation::validator().validate(&resource));
        if let Some(p) = profile {
            issues.extend(service.profiles.check(p, &resource));
        }
        Ok(issues)
    })
    .await?;
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(serde_json::to_vec(&operation_outcome(&issues)).unwrap_or_default()))
}
