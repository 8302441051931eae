//! The one error shape of the API: `{"error":{"code","message","request_id"}}`, with a
//! machine-readable `code` clients branch on and a `message` for humans. Handlers
//! return [`ApiError`]; extractor rejections are mapped into it too, so no framework
//! text/plain error ever leaks out.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

/// The body of every error.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `unauthorized`, `forbidden`, `not_found`,
    /// `invalid_request`, `rate_limited`, `otp_locked`, ...
    pub code: String,
    pub message: String,
    /// The `x-request-id` of the request, for support.
    #[serde(default)]
    pub request_id: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "admins only")
    }
    /// Also what another org's ids get: their existence is not revealed.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn too_many(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }
    /// A store or Kafka failed: logged in full here, reported vaguely to the client.
    pub fn unavailable(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "backend unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "a backend is unavailable; retry later",
        )
    }
}

impl From<mongodb::error::Error> for ApiError {
    fn from(err: mongodb::error::Error) -> Self {
        Self::unavailable(err)
    }
}

impl From<runtime::kafka::KafkaError> for ApiError {
    fn from(err: runtime::kafka::KafkaError) -> Self {
        Self::unavailable(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The request id is filled in by the edge layer (`app::fill_request_id`),
        // which sees the header; handlers do not need to carry it.
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                request_id: String::new(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response.extensions_mut().insert(IsApiError);
        response
    }
}

/// Marks responses whose body is an [`ErrorBody`] (the edge adds the request id).
#[derive(Debug, Clone, Copy)]
pub struct IsApiError;

pub type ApiResult<T> = Result<T, ApiError>;
