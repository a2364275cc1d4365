//! The errors of the FHIR service. The HTTP layer maps each variant to a status
//! and an OperationOutcome in one table (`http::error`).

use crate::fhir::Issue;
use crate::search::QueryError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown resource type '{0}'")]
    UnknownType(String),
    #[error("{0}/{1} is not known")]
    NotFound(String, String),
    #[error("{0}/{1} has been deleted")]
    Gone(String, String),
    #[error("the request is invalid")]
    Invalid(Vec<Issue>),
    #[error("the resource is not valid")]
    Unprocessable(Vec<Issue>),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("version conflict: {0}")]
    Conflict(String),
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    MultipleMatches(String),
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("storage failure")]
    Store(#[from] StoreError),
    #[error("forbidden")]
    Forbidden(Issue),
    /// A request that needs more work, rows or time than the node's budget allows.
    #[error("too costly: {0}")]
    TooCostly(String),
    /// A guarded transaction whose marker resource (named here) exists already.
    #[error("already applied: {0} exists")]
    AlreadyApplied(String),
}

impl Error {
    pub fn invalid(issue: Issue) -> Error {
        Error::Invalid(vec![issue])
    }
}

impl Error {
    /// The HTTP status of each error: the one table every interface uses
    /// (REST responses and batch/transaction entries alike).
    pub fn status(&self) -> u16 {
        match self {
            Error::UnknownType(_) => 404,
            Error::NotFound(..) => 404,
            Error::Gone(..) => 410,
            Error::Invalid(_) => 400,
            Error::Unprocessable(_) => 422,
            Error::Query(_) => 400,
            Error::Conflict(_) => 409,
            Error::PreconditionFailed(_) => 412,
            Error::MultipleMatches(_) => 412,
            Error::NotSupported(_) => 501,
            Error::Store(StoreError::Conflict(_)) => 409,
            Error::Store(_) => 500,
            Error::Forbidden(_) => 403,
            Error::AlreadyApplied(_) => 200,
            Error::TooCostly(_) => 400,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self.status() {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            409 => "Conflict",
            403 => "Forbidden",
            410 => "Gone",
            412 => "Precondition Failed",
            422 => "Unprocessable Entity",
            501 => "Not Implemented",
            _ => "Internal Server Error",
        }
    }

    /// The OperationOutcome issues for this error. Storage failures are opaque:
    /// their cause goes to the log, not to the client.
    pub fn issues(&self) -> Vec<Issue> {
        use crate::fhir::IssueCode;
        match self {
            Error::UnknownType(t) => vec![Issue::error(
                IssueCode::NotSupported,
                format!("'{t}' is not a resource type this server supports"),
            )],
            Error::NotFound(t, id) => vec![Issue::error(IssueCode::NotFound, format!("{t}/{id} is not known"))],
            Error::Gone(t, id) => vec![Issue::error(IssueCode::Deleted, format!("{t}/{id} has been deleted"))],
            Error::Invalid(issues) | Error::Unprocessable(issues) => issues.clone(),
            Error::Forbidden(issue) => vec![issue.clone()],
            Error::Query(q) => {
                let issue = Issue::error(
                    match q {
                        QueryError::UnknownParameter(_) | QueryError::UnsupportedModifier { .. } => {
                            IssueCode::NotSupported
                        }
                        QueryError::InvalidValue { .. } => IssueCode::Value,
                    },
                    q.to_string(),
                );
                vec![issue]
            }
            Error::Conflict(m) => vec![Issue::error(IssueCode::Conflict, m.clone())],
            Error::PreconditionFailed(m) => vec![Issue::error(IssueCode::Conflict, m.clone())],
            Error::MultipleMatches(m) => vec![Issue::error(IssueCode::MultipleMatches, m.clone())],
            Error::AlreadyApplied(m) => vec![Issue::information(
                IssueCode::Duplicate,
                format!("already applied ({m}); nothing was written again"),
            )],
            Error::NotSupported(m) => vec![Issue::error(IssueCode::NotSupported, format!("not supported: {m}"))],
            Error::TooCostly(m) => vec![Issue::error(IssueCode::TooCostly, m.clone())],
            Error::Store(_) => vec![Issue::error(
                IssueCode::Exception,
                "an internal error occurred; it has been logged",
            )],
        }
    }
}
