//! The one mapping from errors to HTTP responses, in OpenAI's error shape:
//! `{"error": {"message", "type", "param", "code"}}`.
//!
//! Messages are written for API clients: they never include tokens, key material, prompts or
//! internal details of the model or of which integrity check failed.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::auth::AuthError;
use crate::engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed or semantically invalid request body or parameter.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
        code: Option<&'static str>,
    },
    #[error("the model `{0}` does not exist or you do not have access to it")]
    ModelNotFound(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("tenant is not allowed to use this server")]
    UnknownTenant,
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("unknown request URL; see the API reference for the routes this server offers")]
    UnknownRoute,
    #[error("the server failed to process the request")]
    Internal,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param,
            code: None,
        }
    }

    /// Stable error type string, also used as a metric label.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. }
            | ApiError::ModelNotFound(_)
            | ApiError::UnknownRoute => "invalid_request_error",
            ApiError::Auth(e) if e.http_status() == 403 => "permission_error",
            ApiError::Auth(_) => "authentication_error",
            ApiError::UnknownTenant => "permission_error",
            ApiError::Engine(EngineError::QueueFull) => "rate_limit_error",
            ApiError::Engine(EngineError::Stopped) | ApiError::Internal => "server_error",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) | ApiError::UnknownRoute => StatusCode::NOT_FOUND,
            ApiError::Auth(e) => {
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            ApiError::UnknownTenant => StatusCode::FORBIDDEN,
            ApiError::Engine(EngineError::QueueFull) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Engine(EngineError::Stopped) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { code, .. } => *code,
            ApiError::ModelNotFound(_) => Some("model_not_found"),
            ApiError::Auth(e) => Some(e.code()),
            ApiError::UnknownTenant => Some("unknown_tenant"),
            ApiError::Engine(EngineError::QueueFull) => Some("server_busy"),
            ApiError::Engine(EngineError::Stopped) => Some("engine_stopped"),
            ApiError::UnknownRoute => Some("unknown_url"),
            ApiError::Internal => None,
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { param, .. } => *param,
            ApiError::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    /// The JSON body, also sent as an SSE event when a stream fails after it started.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.to_string(),
                "type": self.error_type(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, Json(self.body())).into_response();
        match &self {
            ApiError::Auth(e) if e.http_status() == 401 => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"cloister\""),
                );
            }
            ApiError::Engine(EngineError::QueueFull) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_request_has_openai_shape() {
        let e = ApiError::invalid("`max_tokens` must be at least 1", Some("max_tokens"));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let b = e.body();
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["param"], "max_tokens");
        assert!(b["error"]["code"].is_null());
        assert!(b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_tokens")));
    }

    #[test]
    fn queue_full_is_429_with_retry_after() {
        let r = ApiError::Engine(EngineError::QueueFull).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
