//! The manager's errors, and how each reaches a caller: an HTTP status with a JSON body
//! `{"message": ...}` on the REST API, a gRPC status on the control plane.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The request is malformed or asks for something impossible.
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or credentials that are wrong, revoked or expired.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials without the scope the endpoint needs.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with what exists (a name taken).
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    /// Anything else on the manager's side.
    #[error("{0}")]
    Internal(String),
}

impl ManagerError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Database(sqlx::Error::Database(e)) if e.is_unique_violation() => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn to_status(&self) -> tonic::Status {
        match self {
            Self::BadRequest(m) => tonic::Status::invalid_argument(m.clone()),
            Self::NotFound(m) => tonic::Status::not_found(m.clone()),
            Self::Unauthorized(m) => tonic::Status::unauthenticated(m.clone()),
            Self::Forbidden(m) => tonic::Status::permission_denied(m.clone()),
            other => tonic::Status::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ManagerError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Self::Database(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                "that name is taken; choose another".to_owned()
            }
            e if status.is_server_error() => {
                tracing::warn!(error = %e, "request failed on the manager's side");
                e.to_string()
            }
            e => e.to_string(),
        };
        let mut resp = (status, axum::Json(serde_json::json!({ "message": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
