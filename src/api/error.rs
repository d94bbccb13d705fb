//! The one mapping from errors to HTTP responses, in OpenAI's error shape:
//! `{"error": {"message", "type", "param", "code"}}`.
//!
//! Messages are written for API clients: they never include tokens, key material, prompts or
//! internal details of the model or of which integrity check failed.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use std::time::Duration;

use crate::auth::AuthError;
use crate::engine::EngineError;
use crate::limits::{RateDenied, RateInfo};

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
    #[error("Rate limit reached for {} (limit {}); please try again in {:.3}s", .0.kind.as_str(), .0.limit, .0.retry_after.as_secs_f64())]
    RateLimited(RateDenied),
    #[error("Request too large: it needs {requested} {kind} but the plan allows at most {capacity} at once")]
    RequestTooLarge {
        kind: &'static str,
        requested: u32,
        capacity: u32,
    },
    #[error(
        "You exceeded your {period} token quota of {limit}; it resets at unix time {reset_at}"
    )]
    QuotaExceeded {
        period: &'static str,
        limit: u64,
        reset_at: u64,
    },
    #[error("too many requests of this tenant are in progress; retry shortly")]
    TenantQueueFull,
    #[error("logprob requests of this tenant are paused for a while by the extraction-detection policy; retry without `logprobs` or later")]
    ExtractionThrottled,
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
            ApiError::Engine(EngineError::QueueFull | EngineError::KvPoolExhausted)
            | ApiError::TenantQueueFull
            | ApiError::ExtractionThrottled => "rate_limit_error",
            ApiError::RateLimited(d) => d.kind.as_str(),
            ApiError::RequestTooLarge { .. } => "invalid_request_error",
            ApiError::QuotaExceeded { .. } => "insufficient_quota",
            ApiError::Engine(EngineError::Stopped | EngineError::Failed) | ApiError::Internal => {
                "server_error"
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) | ApiError::UnknownRoute => StatusCode::NOT_FOUND,
            ApiError::Auth(e) => {
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            ApiError::UnknownTenant => StatusCode::FORBIDDEN,
            ApiError::Engine(EngineError::QueueFull | EngineError::KvPoolExhausted)
            | ApiError::TenantQueueFull
            | ApiError::ExtractionThrottled
            | ApiError::RateLimited(_)
            | ApiError::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTooLarge { .. } => StatusCode::BAD_REQUEST,
            ApiError::Engine(EngineError::Stopped) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Engine(EngineError::Failed) | ApiError::Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// Stable error code (OpenAI's `code`), also a metric label.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { code, .. } => *code,
            ApiError::ModelNotFound(_) => Some("model_not_found"),
            ApiError::Auth(e) => Some(e.code()),
            ApiError::UnknownTenant => Some("unknown_tenant"),
            ApiError::Engine(EngineError::QueueFull) => Some("server_busy"),
            ApiError::Engine(EngineError::KvPoolExhausted) => Some("kv_pool_exhausted"),
            ApiError::TenantQueueFull => Some("tenant_queue_full"),
            ApiError::ExtractionThrottled => Some("extraction_throttled"),
            ApiError::RateLimited(_) => Some("rate_limit_exceeded"),
            ApiError::RequestTooLarge { .. } => Some("request_too_large"),
            ApiError::QuotaExceeded { .. } => Some("insufficient_quota"),
            ApiError::Engine(EngineError::Stopped) => Some("engine_stopped"),
            ApiError::Engine(EngineError::Failed) => None,
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
            ApiError::Engine(EngineError::QueueFull) | ApiError::TenantQueueFull => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RateLimited(d) => {
                let h = resp.headers_mut();
                // Whole seconds, rounded up (never 0), plus the millisecond form the OpenAI
                // SDKs prefer.
                let secs = d.retry_after.as_millis().div_ceil(1000).max(1);
                insert(h, "retry-after", secs.to_string());
                insert(
                    h,
                    "retry-after-ms",
                    d.retry_after.as_millis().max(1).to_string(),
                );
                let kind = d.kind.as_str();
                insert(h, &format!("x-ratelimit-limit-{kind}"), d.limit.to_string());
                insert(
                    h,
                    &format!("x-ratelimit-remaining-{kind}"),
                    d.remaining.to_string(),
                );
                insert(
                    h,
                    &format!("x-ratelimit-reset-{kind}"),
                    format_reset(d.reset),
                );
            }
            ApiError::QuotaExceeded { .. } => {
                // Retrying cannot help before the period resets: tell SDKs not to.
                insert(resp.headers_mut(), "x-should-retry", "false".into());
            }
            _ => {}
        }
        resp
    }
}

fn insert(h: &mut axum::http::HeaderMap, name: &str, value: String) {
    if let (Ok(n), Ok(v)) = (
        axum::http::HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(&value),
    ) {
        h.insert(n, v);
    }
}

/// OpenAI's reset format: `250ms`, `1.5s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// `x-ratelimit-*` headers for a successful response.
pub fn rate_headers(h: &mut axum::http::HeaderMap, infos: &[RateInfo]) {
    for i in infos {
        let kind = i.kind.as_str();
        insert(h, &format!("x-ratelimit-limit-{kind}"), i.limit.to_string());
        insert(
            h,
            &format!("x-ratelimit-remaining-{kind}"),
            i.remaining.to_string(),
        );
        insert(
            h,
            &format!("x-ratelimit-reset-{kind}"),
            format_reset(i.reset),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::LimitKind;

    #[test]
    fn rate_limited_has_retry_after_and_ratelimit_headers() {
        let r = ApiError::RateLimited(RateDenied {
            kind: LimitKind::Requests,
            retry_after: Duration::from_millis(200),
            limit: 5,
            remaining: 0,
            reset: Duration::from_millis(1000),
        })
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = r.headers();
        assert_eq!(h["retry-after"], "1");
        assert_eq!(h["retry-after-ms"], "200");
        assert_eq!(h["x-ratelimit-limit-requests"], "5");
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        assert_eq!(h["x-ratelimit-reset-requests"], "1s");
    }

    #[test]
    fn quota_error_is_insufficient_quota_and_not_retried() {
        let e = ApiError::QuotaExceeded {
            period: "day",
            limit: 100,
            reset_at: 1_800_000_000,
        };
        assert_eq!(e.body()["error"]["code"], "insufficient_quota");
        assert_eq!(e.body()["error"]["type"], "insufficient_quota");
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["x-should-retry"], "false");
    }

    #[test]
    fn reset_format_matches_openai() {
        assert_eq!(format_reset(Duration::from_millis(250)), "250ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }

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
