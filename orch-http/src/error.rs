//! [`ApiError`]: every error the API returns, as `{"error": "...", "field": ...}` with the right
//! status. orch-core's [`Error`](orch_core::Error) and the user store's
//! [`UserError`] map here at the edge.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::users::UserError;

/// An error response: a status, a message, the offending field when there is one, and for
/// 429/503 a `Retry-After` in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field, header or parameter at fault.
    pub field: Option<String>,
    /// Seconds until a retry may succeed (429 and 503).
    pub retry_after: Option<u64>,
}

/// The JSON body of every error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// The request field, header or parameter at fault, if any.
    pub field: Option<String>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// Names the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Sets `Retry-After` (at least 1 s).
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// 400 naming `field`.
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message).with_field(field)
    }

    /// 422 naming `field`.
    pub fn unprocessable(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message).with_field(field)
    }

    /// 401 with a message.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403 with a message.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404 with a message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409 with a message.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 500; the details go to the log, not to the client.
    pub fn internal(context: &str, detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "{context}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            field: self.field,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"orch\""),
            );
        }
        response
    }
}

impl From<orch_core::Error> for ApiError {
    fn from(error: orch_core::Error) -> Self {
        use orch_core::Error as E;
        let message = error.to_string();
        match error {
            E::TaskNotFound(_) => Self::not_found(message).with_field("task_id"),
            E::WorkflowNotFound(_) => Self::not_found(message).with_field("workflow_id"),
            E::IllegalTransition { .. } => Self::conflict(message).with_field("status"),
            E::LeaseLost(_) => Self::conflict(message).with_field("lease_token"),
            E::Invalid { field, .. } => Self::unprocessable(field, message),
            E::EngineExists(_) | E::PluginExists(_) => Self::conflict(message),
            E::NotLockHolder { .. } => Self::conflict(message).with_field("fencing_token"),
            E::LockTimeout(_) | E::LockHeld { .. } => Self::conflict(message),
            E::WaitTimeout(_) | E::WorkflowWaitTimeout(_) => {
                Self::new(StatusCode::REQUEST_TIMEOUT, message)
            }
            E::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, message).with_retry_after(5)
            }
            E::PluginNotFound(_) => Self::not_found(message),
            E::EngineNotFound(_) => Self::not_found(message).with_field("engine"),
            E::Unavailable { .. } => {
                // The details (host, port, driver text) go to the log, not to the caller.
                tracing::warn!(error = %message, "the database is unreachable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unreachable; try again later",
                )
                .with_retry_after(5)
            }
            other => Self::internal("orchestrator error", other),
        }
    }
}

impl From<UserError> for ApiError {
    fn from(error: UserError) -> Self {
        let message = error.to_string();
        match error {
            UserError::InvalidUsername => Self::unprocessable("username", message),
            UserError::InvalidPassword => Self::unprocessable("password", message),
            UserError::AlreadyExists(_) => Self::conflict(message).with_field("username"),
            UserError::NotFound(_) => Self::not_found(message).with_field("username"),
            UserError::LastAdmin(_) => Self::conflict(message).with_field("username"),
            UserError::Busy(_) | UserError::GuardLost(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, message).with_retry_after(1)
            }
            UserError::Backend(error) => error.into(),
            other => Self::internal("user store", chain(&other)),
        }
    }
}

/// `error: its source: its source ...`, for the log.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
