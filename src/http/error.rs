//! How an error goes out over HTTP: the status and OperationOutcome come from the
//! one table (`crate::error::Error::outcome`); here only the headers that some
//! statuses carry are added, and server failures are logged with their cause chain.

use crate::error::Error;
use crate::fhir::outcome::operation_outcome;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let outcome = self.outcome();
        let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            // The cause chain goes to the log; the client gets an opaque outcome.
            let mut chain = self.to_string();
            let mut source = std::error::Error::source(self);
            while let Some(s) = source {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                source = s.source();
            }
            tracing::error!(error = %chain, "request failed");
        }
        let mut res = HttpResponse::build(status);
        match self {
            Error::Unauthorized(m) => {
                let description = m.replace(['"', '\\'], "'");
                res.insert_header((
                    "www-authenticate",
                    format!("Bearer realm=\"pennine\", error=\"invalid_token\", error_description=\"{description}\""),
                ));
            }
            Error::RateLimited { retry_after, .. } => {
                res.insert_header(("retry-after", retry_after.to_string()));
            }
            _ => {}
        }
        res.content_type(FHIR_JSON)
            .body(operation_outcome(&outcome.issues).to_string())
    }
}
