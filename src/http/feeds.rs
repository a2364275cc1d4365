//! The feeds API of a node: `POST /feeds/hl7v2` (ER7 messages), `POST
//! /feeds/csv/{mapping}` (CSV extracts), and the dead letters
//! (`GET /feeds/dead-letters`, `GET /feeds/dead-letters/{id}`,
//! `POST /feeds/dead-letters/{id}/$replay`).

use super::fhir::{blocking, query_pairs, read_body};
use super::AppState;
use crate::auth::NODE_ROUTES;
use crate::error::Error;
use crate::feeds::hl7v2::split_messages;
use crate::feeds::{decode_text, Source};
use crate::fhir::{Issue, IssueCode};

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

pub fn configure(cfg: &mut web::ServiceConfig) {
    use super::access::route;
    route(cfg, NODE_ROUTES, "POST", "/feeds/hl7v2", web::post().to(hl7v2));
    route(cfg, NODE_ROUTES, "POST", "/feeds/csv/{mapping}", web::post().to(csv));
    route(cfg, NODE_ROUTES, "GET", "/feeds/dead-letters", web::get().to(list));
    route(cfg, NODE_ROUTES, "GET", "/feeds/dead-letters/{id}", web::get().to(get));
    route(
        cfg,
        NODE_ROUTES,
        "POST",
        "/feeds/dead-letters/{id}/$replay",
        web::post().to(replay),
    );
}

fn media_type(req: &HttpRequest) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn json_response(status: actix_web::http::StatusCode, value: &serde_json::Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(super::error::FHIR_JSON)
        .body(serde_json::to_vec(value).unwrap_or_default())
}

async fn hl7v2(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let mt = media_type(&req);
    if !matches!(
        mt.as_str(),
        "x-application/hl7-v2+er7" | "application/hl7-v2" | "application/hl7-v2+er7" | "text/plain" | ""
    ) {
        return Err(Error::MediaType(format!(
            "Content-Type '{mt}' is not accepted here: send ER7 as x-application/hl7-v2+er7 or text/plain"
        )));
    }
    let body = read_body(&req, payload, state.config.max_body_bytes).await?;
    let text = decode_text(&body);
    let feeds = state.feeds.clone();
    let who = super::access::who(super::access::principal_of(&req).as_ref(), &req);
    let entries = blocking(move || {
        let messages = split_messages(&text);
        if messages.is_empty() {
            // Kept all the same (within the sender's quota): what was received is never lost.
            let why = Issue::error(
                IssueCode::Structure,
                "the body holds no HL7 v2 message (each must start with an MSH segment)",
            );
            return Err(Error::invalid(feeds.keep_garbage("http", Some(who), text, why)));
        }
        let source = Source::new("http", Some(who));
        Ok(messages
            .iter()
            .map(|m| feeds.hl7v2(m, &source).to_entry())
            .collect::<Vec<_>>())
    })
    .await?;
    let bundle = json!({"resourceType": "Bundle", "type": "batch-response", "entry": entries});
    Ok(json_response(actix_web::http::StatusCode::OK, &bundle))
}

async fn csv(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let mt = media_type(&req);
    if !matches!(mt.as_str(), "text/csv" | "text/plain" | "application/csv" | "") {
        return Err(Error::MediaType(format!(
            "Content-Type '{mt}' is not accepted here: send text/csv"
        )));
    }
    let mapping = path.into_inner();
    let body = read_body(&req, payload, state.config.max_body_bytes).await?;
    let text = decode_text(&body);
    let feeds = state.feeds.clone();
    let who = super::access::who(super::access::principal_of(&req).as_ref(), &req);
    let summary = blocking(move || feeds.csv(&mapping, &text, &Source::new("http", Some(who)))).await?;
    Ok(json_response(actix_web::http::StatusCode::OK, &summary.to_json()))
}

async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let q = query_pairs(&req);
    let status = q.iter().find(|(k, _)| k == "status").map(|(_, v)| v.clone());
    if let Some(s) = &status {
        if s != "open" && s != "replayed" {
            return Err(Error::invalid(Issue::error(
                IssueCode::Value,
                format!("status '{s}' is not known (open, replayed)"),
            )));
        }
    }
    let limit = match q.iter().find(|(k, _)| k == "_count") {
        Some((_, v)) => v
            .parse::<usize>()
            .map_err(|_| Error::invalid(Issue::error(IssueCode::Value, format!("_count '{v}' is not a number"))))?,
        None => 100,
    };
    let dead = state.feeds.dead.clone();
    let (letters, total) = blocking(move || dead.list(status.as_deref(), limit).map_err(Error::Store)).await?;
    Ok(json_response(
        actix_web::http::StatusCode::OK,
        &json!({ "total": total, "deadLetters": letters }),
    ))
}

async fn get(path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let id = path.into_inner();
    let dead = state.feeds.dead.clone();
    let lookup = id.clone();
    let letter = blocking(move || dead.get(&lookup).map_err(Error::Store)).await?;
    match letter {
        Some(l) => Ok(json_response(actix_web::http::StatusCode::OK, &json!(l))),
        None => Err(Error::NotFound("dead letter".into(), id)),
    }
}

async fn replay(
    req: HttpRequest,
    path: web::Path<(String,)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let id = path.into_inner().0;
    let feeds = state.feeds.clone();
    let who = super::access::who(super::access::principal_of(&req).as_ref(), &req);
    let lookup = id.clone();
    let result = blocking(move || feeds.replay(&lookup, Some(who))).await?;
    match result {
        Some((letter, outcome)) => Ok(json_response(
            actix_web::http::StatusCode::OK,
            &json!({ "deadLetter": letter, "outcome": outcome }),
        )),
        None => Err(Error::NotFound("dead letter".into(), id)),
    }
}
