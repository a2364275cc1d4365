//! HTTP errors: every 4xx/5xx body is an OperationOutcome. The status of each
//! kind is decided here (transport errors) or in `node::Error::status` (FHIR).

use crate::fhir::{outcome::operation_outcome, Issue, IssueCode};
use crate::node;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use std::fmt;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

#[derive(Debug)]
pub enum ApiError {
    Fhir(node::Error),
    TooLarge {
        limit: usize,
    },
    MediaType(String),
    NotAcceptable(String),
    MethodNotAllowed(String),
    Json(serde_json::Error),
    NoRoute(String),
    Invalid(Issue),
    Unavailable(String),
    /// No valid access token: 401 with `WWW-Authenticate`.
    Unauthorized(String),
    /// Authenticated (or not) but not allowed: 403.
    Forbidden(String),
    /// Too many requests: 429 with `Retry-After` (seconds).
    RateLimited {
        retry_after: u64,
        message: String,
    },
    /// A worker failed (e.g. a panic on the blocking pool): opaque to the client.
    Internal(String),
}

impl From<node::Error> for ApiError {
    fn from(e: node::Error) -> Self {
        ApiError::Fhir(e)
    }
}

impl From<crate::search::QueryError> for ApiError {
    fn from(e: crate::search::QueryError) -> Self {
        ApiError::Fhir(node::Error::Query(e))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Fhir(e) => write!(f, "{e}"),
            ApiError::TooLarge { limit } => write!(f, "body larger than {limit} bytes"),
            ApiError::MediaType(m)
            | ApiError::NotAcceptable(m)
            | ApiError::NoRoute(m)
            | ApiError::MethodNotAllowed(m) => f.write_str(m),
            ApiError::Json(e) => write!(f, "malformed JSON: {e}"),
            ApiError::Invalid(i) => f.write_str(&i.diagnostics),
            ApiError::Unavailable(m) => write!(f, "unavailable: {m}"),
            ApiError::Forbidden(m) => write!(f, "forbidden: {m}"),
            ApiError::Unauthorized(m) => write!(f, "unauthorized: {m}"),
            ApiError::RateLimited { message, .. } => write!(f, "rate limited: {message}"),
            ApiError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl ApiError {
    fn issues(&self) -> Vec<Issue> {
        match self {
            ApiError::Fhir(e) => e.issues(),
            ApiError::TooLarge { limit } => vec![Issue::error(
                IssueCode::TooLong,
                format!("the request body is larger than this node accepts ({limit} bytes)"),
            )],
            ApiError::MediaType(m) => vec![Issue::error(IssueCode::NotSupported, m.clone())],
            ApiError::NotAcceptable(m) => vec![Issue::error(IssueCode::NotSupported, m.clone())],
            ApiError::MethodNotAllowed(m) => vec![Issue::error(IssueCode::NotSupported, m.clone())],
            ApiError::Json(e) => vec![Issue::error(
                IssueCode::Structure,
                format!("malformed JSON at line {} column {}: {e}", e.line(), e.column()),
            )],
            ApiError::NoRoute(m) => vec![Issue::error(IssueCode::NotFound, m.clone())],
            ApiError::Invalid(i) => vec![i.clone()],
            ApiError::Unavailable(m) => vec![Issue::error(IssueCode::Transient, m.clone())],
            ApiError::Forbidden(m) => vec![Issue::error(IssueCode::Forbidden, m.clone())],
            ApiError::Unauthorized(m) => vec![Issue::error(IssueCode::Login, m.clone())],
            ApiError::RateLimited { message, .. } => vec![Issue::error(IssueCode::Throttled, message.clone())],
            ApiError::Internal(_) => vec![Issue::error(
                IssueCode::Exception,
                "an internal error occurred; it has been logged",
            )],
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        let code = match self {
            ApiError::Fhir(e) => e.status(),
            ApiError::TooLarge { .. } => 413,
            ApiError::MediaType(_) => 415,
            ApiError::NotAcceptable(_) => 406,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Json(_) => 400,
            ApiError::NoRoute(_) => 404,
            ApiError::Invalid(_) => 400,
            ApiError::Unavailable(_) => 503,
            ApiError::Forbidden(_) => 403,
            ApiError::Unauthorized(_) => 401,
            ApiError::RateLimited { .. } => 429,
            ApiError::Internal(_) => 500,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            // The cause chain goes to the log; the client gets an opaque outcome.
            match self {
                ApiError::Fhir(node::Error::Store(e)) => tracing::error!(error = %e, "storage failure"),
                other => tracing::error!(error = %other, "request failed"),
            }
        }
        let mut res = HttpResponse::build(status);
        match self {
            ApiError::Unauthorized(m) => {
                let description = m.replace(['"', '\\'], "'");
                res.insert_header((
                    "www-authenticate",
                    format!("Bearer realm=\"pennine\", error=\"invalid_token\", error_description=\"{description}\""),
                ));
            }
            ApiError::RateLimited { retry_after, .. } => {
                res.insert_header(("retry-after", retry_after.to_string()));
            }
            _ => {}
        }
        res.content_type(FHIR_JSON)
            .body(operation_outcome(&self.issues()).to_string())
    }
}
