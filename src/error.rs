//! THE error table. Every failure a client can be told about, from any layer (the
//! FHIR service, the feeds, the hub, the HTTP transport), is one variant of `Error`,
//! and `Error::outcome` gives each its HTTP status and OperationOutcome issues in one
//! match. REST responses, batch/transaction entries, HL7 v2 ACKs built from issues
//! and dead letters all read it from here. Lower layers keep their own error types
//! (`StoreError`, `QueryError`, ...) and arrive here through `From`.

use crate::fhir::{Issue, IssueCode};
use crate::search::QueryError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- the FHIR service ---
    #[error("unknown resource type '{0}'")]
    UnknownType(String),
    #[error("{0}/{1} is not known")]
    NotFound(String, String),
    #[error("{0}/{1} has been deleted")]
    Gone(String, String),
    /// The request is invalid (400).
    #[error("the request is invalid: {}", first(.0))]
    Invalid(Vec<Issue>),
    /// The resource does not fit the R4 model or a profile under `reject` (422).
    #[error("the resource is not valid: {}", first(.0))]
    Unprocessable(Vec<Issue>),
    #[error(transparent)]
    Query(#[from] QueryError),
    /// `If-Match` (or a feed's expected version) named another version than the
    /// current one (`None`: the resource does not exist). 412, as R4's HTTP page requires.
    #[error("{rtype}/{id} {}, not {expected}", match .current { Some(v) => format!("is at version {v}"), None => "does not exist, so it cannot be at version".to_string() })]
    VersionConflict {
        rtype: String,
        id: String,
        expected: u64,
        current: Option<u64>,
    },
    /// A write that conflicts with what is stored (other than a version).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    MultipleMatches(String),
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("storage failure: {0}")]
    Store(#[from] StoreError),
    /// A request that needs more work, rows or time than the node's budget allows.
    #[error("too costly: {0}")]
    TooCostly(String),
    /// A guarded transaction whose marker resource (named here) exists already.
    #[error("already applied: {0} exists")]
    AlreadyApplied(String),

    // --- access ---
    /// No valid access token: 401 with `WWW-Authenticate`.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Authenticated (or not) but not allowed: 403.
    #[error("forbidden: {}", .0.diagnostics)]
    Forbidden(Issue),
    /// Too many requests: 429 with `Retry-After` (seconds).
    #[error("rate limited: {message}")]
    RateLimited { retry_after: u64, message: String },

    // --- the HTTP transport ---
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The client closed the connection before the answer: the work was stopped
    /// (499, as proxies log it; nobody reads the body).
    #[error("the client closed the connection; the work was stopped")]
    ClientGone,
    #[error("{0}")]
    MediaType(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("malformed JSON: {0}")]
    Json(serde_json::Error),
    #[error("{0}")]
    NoRoute(String),
    /// A dependency (storage, a node) cannot be reached now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A worker failed (e.g. a panic on the blocking pool, an HTTPS client that
    /// cannot be built): opaque to the client, the cause goes to the log.
    #[error("internal error: {0}")]
    Internal(String),
}

fn first(issues: &[Issue]) -> &str {
    issues.first().map_or("", |i| i.diagnostics.as_str())
}

/// What a client is told about an error.
pub struct Outcome {
    pub status: u16,
    pub issues: Vec<Issue>,
}

const OPAQUE: &str = "an internal error occurred; it has been logged";

impl Error {
    /// A 400 with one issue.
    pub fn invalid(issue: Issue) -> Error {
        Error::Invalid(vec![issue])
    }

    /// A 403 with one `forbidden` issue.
    pub fn forbidden(message: impl Into<String>) -> Error {
        Error::Forbidden(Issue::error(IssueCode::Forbidden, message))
    }

    /// The one table: each error's HTTP status and OperationOutcome issues.
    /// Storage and internal failures are opaque: their cause goes to the log.
    pub fn outcome(&self) -> Outcome {
        let one = |status: u16, code: IssueCode, message: String| Outcome {
            status,
            issues: vec![Issue::error(code, message)],
        };
        match self {
            Error::UnknownType(t) => one(
                404,
                IssueCode::NotSupported,
                format!("'{t}' is not a resource type this server supports"),
            ),
            Error::NotFound(t, id) => one(404, IssueCode::NotFound, format!("{t}/{id} is not known")),
            Error::Gone(t, id) => one(410, IssueCode::Deleted, format!("{t}/{id} has been deleted")),
            Error::Invalid(issues) => Outcome {
                status: 400,
                issues: issues.clone(),
            },
            Error::Unprocessable(issues) => Outcome {
                status: 422,
                issues: issues.clone(),
            },
            Error::Query(q) => one(
                400,
                match q {
                    QueryError::UnknownParameter(_) | QueryError::UnsupportedModifier { .. } => IssueCode::NotSupported,
                    QueryError::InvalidValue { .. } => IssueCode::Value,
                },
                q.to_string(),
            ),
            Error::VersionConflict { .. } => one(412, IssueCode::Conflict, self.to_string()),
            Error::Conflict(m) => one(409, IssueCode::Conflict, m.clone()),
            Error::PreconditionFailed(m) => one(412, IssueCode::Conflict, m.clone()),
            Error::MultipleMatches(m) => one(412, IssueCode::MultipleMatches, m.clone()),
            Error::NotSupported(m) => one(501, IssueCode::NotSupported, format!("not supported: {m}")),
            Error::Store(StoreError::Conflict(m)) => one(409, IssueCode::Conflict, m.clone()),
            Error::Store(_) => one(500, IssueCode::Exception, OPAQUE.into()),
            Error::TooCostly(m) => one(400, IssueCode::TooCostly, m.clone()),
            Error::AlreadyApplied(m) => Outcome {
                status: 200,
                issues: vec![Issue::information(
                    IssueCode::Duplicate,
                    format!("already applied ({m}); nothing was written again"),
                )],
            },
            Error::Unauthorized(m) => one(401, IssueCode::Login, m.clone()),
            Error::Forbidden(issue) => Outcome {
                status: 403,
                issues: vec![issue.clone()],
            },
            Error::RateLimited { message, .. } => one(429, IssueCode::Throttled, message.clone()),
            Error::TooLarge { limit } => one(
                413,
                IssueCode::TooLong,
                format!("the request body is larger than this server accepts ({limit} bytes)"),
            ),
            Error::ClientGone => one(
                499,
                IssueCode::Incomplete,
                "the client closed the connection; the work was stopped".to_string(),
            ),
            Error::MediaType(m) => one(415, IssueCode::NotSupported, m.clone()),
            Error::NotAcceptable(m) => one(406, IssueCode::NotSupported, m.clone()),
            Error::MethodNotAllowed(m) => one(405, IssueCode::NotSupported, m.clone()),
            Error::Json(e) => one(
                400,
                IssueCode::Structure,
                format!("malformed JSON at line {} column {}: {e}", e.line(), e.column()),
            ),
            Error::NoRoute(m) => one(404, IssueCode::NotFound, m.clone()),
            Error::Unavailable(m) => one(503, IssueCode::Transient, m.clone()),
            Error::Internal(_) => one(500, IssueCode::Exception, OPAQUE.into()),
        }
    }

    /// The HTTP status (from the table).
    pub fn status(&self) -> u16 {
        self.outcome().status
    }

    /// The OperationOutcome issues (from the table).
    pub fn issues(&self) -> Vec<Issue> {
        self.outcome().issues
    }

    /// The status line's reason phrase, as a batch/transaction entry's `response.status` carries it.
    pub fn reason(&self) -> &'static str {
        reason_phrase(self.status())
    }
}

/// RFC 9110's reason phrase of a status this table uses (499, which only logs see,
/// by the name proxies give it).
pub fn reason_phrase(status: u16) -> &'static str {
    if status == 499 {
        return "Client Closed Request";
    }
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of every variant. The match below has no wildcard, so a new variant
    /// fails to compile here until it is added to the walk.
    fn every_variant() -> Vec<Error> {
        let issue = || Issue::error(IssueCode::Invalid, "x");
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let all = vec![
            Error::UnknownType("Foo".into()),
            Error::NotFound("Patient".into(), "1".into()),
            Error::Gone("Patient".into(), "1".into()),
            Error::Invalid(vec![issue()]),
            Error::Unprocessable(vec![issue()]),
            Error::Query(QueryError::UnknownParameter("x".into())),
            Error::VersionConflict {
                rtype: "Patient".into(),
                id: "1".into(),
                expected: 1,
                current: Some(2),
            },
            Error::Conflict("c".into()),
            Error::PreconditionFailed("p".into()),
            Error::MultipleMatches("m".into()),
            Error::NotSupported("n".into()),
            Error::Store(StoreError::Conflict("c".into())),
            Error::Store(StoreError::Closed),
            Error::Store(StoreError::Internal("secret detail".into())),
            Error::TooCostly("t".into()),
            Error::AlreadyApplied("Provenance/1".into()),
            Error::Unauthorized("u".into()),
            Error::Forbidden(issue()),
            Error::RateLimited {
                retry_after: 3,
                message: "r".into(),
            },
            Error::TooLarge { limit: 1024 },
            Error::ClientGone,
            Error::MediaType("m".into()),
            Error::NotAcceptable("n".into()),
            Error::MethodNotAllowed("m".into()),
            Error::Json(json),
            Error::NoRoute("n".into()),
            Error::Unavailable("u".into()),
            Error::Internal("secret detail".into()),
        ];
        for e in &all {
            match e {
                Error::UnknownType(_)
                | Error::NotFound(..)
                | Error::Gone(..)
                | Error::Invalid(_)
                | Error::Unprocessable(_)
                | Error::Query(_)
                | Error::VersionConflict { .. }
                | Error::Conflict(_)
                | Error::PreconditionFailed(_)
                | Error::MultipleMatches(_)
                | Error::NotSupported(_)
                | Error::Store(_)
                | Error::TooCostly(_)
                | Error::AlreadyApplied(_)
                | Error::Unauthorized(_)
                | Error::Forbidden(_)
                | Error::RateLimited { .. }
                | Error::TooLarge { .. }
                | Error::ClientGone
                | Error::MediaType(_)
                | Error::NotAcceptable(_)
                | Error::MethodNotAllowed(_)
                | Error::Json(_)
                | Error::NoRoute(_)
                | Error::Unavailable(_)
                | Error::Internal(_) => {}
            }
        }
        all
    }

    #[test]
    fn every_variant_has_a_status_a_reason_and_issues() {
        for e in every_variant() {
            let o = e.outcome();
            assert!(
                (200..600).contains(&o.status) && o.status != 204,
                "{e:?} -> {}",
                o.status
            );
            assert_ne!(
                e.reason(),
                "Unknown",
                "{e:?} has status {} without a reason phrase",
                o.status
            );
            assert!(!o.issues.is_empty(), "{e:?} has no issues");
            assert!(o.issues.iter().all(|i| !i.diagnostics.is_empty()), "{e:?}");
            if o.status >= 500 {
                // Server failures never tell the client their cause.
                assert!(
                    o.issues.iter().all(|i| !i.diagnostics.contains("secret detail")),
                    "{e:?} leaks its cause"
                );
            }
        }
    }

    #[test]
    fn statuses_are_the_ones_clients_script_against() {
        let status = |e: Error| e.status();
        assert_eq!(status(Error::UnknownType("X".into())), 404);
        assert_eq!(status(Error::Gone("Patient".into(), "1".into())), 410);
        assert_eq!(
            status(Error::VersionConflict {
                rtype: "Patient".into(),
                id: "1".into(),
                expected: 1,
                current: None
            }),
            412
        );
        assert_eq!(status(Error::PreconditionFailed("x".into())), 412);
        assert_eq!(status(Error::Store(StoreError::Conflict("x".into()))), 409);
        assert_eq!(status(Error::TooLarge { limit: 1 }), 413);
        assert_eq!(status(Error::AlreadyApplied("x".into())), 200);
    }
}
