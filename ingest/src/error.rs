//! The HTTP error contract: `{"error": {"code", "message", "field"?}}` with the status that
//! fits, built from parse failures, business rejections and engine errors.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use refill_ledger::rejection::{Rejection, RejectionKind};
use serde_json::json;

use crate::engine::EngineError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What was expected and what was found.
    pub message: String,
    /// The field at fault.
    pub field: Option<String>,
}

impl ApiError {
    /// 400 naming a field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    /// 500: a bug or broken stored data, never the client's fault.
    pub fn internal(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 503 (with `Retry-After`): a dependency failed; the request may be sent again.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 404.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code,
            message: message.into(),
            field: None,
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let status = match rejection.kind() {
            RejectionKind::NotFound => StatusCode::NOT_FOUND,
            RejectionKind::Invalid => StatusCode::BAD_REQUEST,
            RejectionKind::Conflict => StatusCode::CONFLICT,
            RejectionKind::Rule => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self {
            status,
            code: rejection.code(),
            message: rejection.to_string(),
            field: rejection.field().map(str::to_owned),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Timeout { .. } => Self::unavailable("timeout", error.to_string()),
            EngineError::NotOwner { .. } => Self::unavailable(
                "not_owner",
                format!(
                    "{error}: send this customer's requests to the worker that owns its \
                     refill.usage partition"
                ),
            ),
            EngineError::Busy { .. } => Self::unavailable("busy", error.to_string()),
            other => Self::unavailable("unavailable", other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"code": self.code, "message": self.message});
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        let mut response = (self.status, Json(json!({ "error": body }))).into_response();
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Turns a serde_json error into a 400 naming the field it stopped at.
pub fn from_json_error(error: &serde_json::Error, context: &str) -> ApiError {
    let message = error.to_string();
    // serde names the field in its message ("missing field `x`", "unknown field `x`").
    let field = message
        .split('`')
        .nth(1)
        .map(str::to_owned)
        .unwrap_or_else(|| context.to_owned());
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid",
        message,
        field: Some(field),
    }
}
