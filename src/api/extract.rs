//! Request extractors: the authenticated caller and JSON bodies with OpenAI-shaped errors.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::audit::{AuditEvent, AuthFailReason};
use crate::auth::{bearer_from_header, AuthError, Principal};
use crate::tenant::Tenant;

/// An authenticated caller of a known tenant.
#[derive(Debug)]
pub struct Caller {
    pub principal: Principal,
    pub tenant: Arc<Tenant>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, app).inspect_err(|e| audit_failure(app, e))
    }
}

/// Records a refused authentication (reason only: never the token).
fn audit_failure(app: &AppState, e: &ApiError) {
    let reason = match e {
        ApiError::Auth(AuthError::Missing) => AuthFailReason::Missing,
        ApiError::Auth(AuthError::Malformed) => AuthFailReason::Malformed,
        ApiError::Auth(AuthError::Expired) => AuthFailReason::Expired,
        ApiError::Auth(AuthError::NotYetValid) => AuthFailReason::NotYetValid,
        ApiError::Auth(AuthError::WrongIssuer) => AuthFailReason::WrongIssuer,
        ApiError::Auth(AuthError::WrongAudience) => AuthFailReason::WrongAudience,
        ApiError::Auth(AuthError::InsufficientScope(_)) => AuthFailReason::InsufficientScope,
        ApiError::UnknownTenant => AuthFailReason::UnknownTenant,
        _ => AuthFailReason::BadSignature,
    };
    app.gate.audit.record_in_background(AuditEvent::AuthFailed {
        reason_code: reason,
        tenant: None,
    });
}

fn authenticate(parts: &Parts, app: &AppState) -> Result<Caller, ApiError> {
    {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::Malformed)?;
        let token = bearer_from_header(header)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let principal = app.verifier.load().verify(token, now).inspect_err(|e| {
            tracing::info!(reason = e.code(), "authentication refused");
        })?;
        let Some(tenant) = app.tenants.load().get(principal.tenant.as_str()).cloned() else {
            tracing::info!(tenant = %principal.tenant.as_str(), "unknown tenant refused");
            return Err(ApiError::UnknownTenant);
        };
        Ok(Caller { principal, tenant })
    }
}

/// `axum::Json` with rejections mapped to [`ApiError`].
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, app).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_error(rejection)),
        }
    }
}

fn json_error(rejection: JsonRejection) -> ApiError {
    let message = match &rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body with `Content-Type: application/json`".to_string()
        }
        JsonRejection::JsonSyntaxError(_) => {
            "We could not parse the JSON body of your request.".to_string()
        }
        // Data errors name the field and the problem (serde's message), never echo the body.
        _ => rejection.body_text(),
    };
    ApiError::InvalidRequest {
        message,
        param: None,
        code: Some("invalid_json"),
    }
}
