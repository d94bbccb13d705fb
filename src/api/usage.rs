//! `GET /v1/usage` (scope `usage:read`): the caller's own tenant, never another's; and
//! `GET /metrics` (scope `admin`): Prometheus text for operators.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::extract::Caller;
use crate::api::AppState;
use crate::auth::Scope;
use crate::store::PeriodUsage;

fn period(p: &PeriodUsage) -> Value {
    json!({
        "used_tokens": p.used,
        "reserved_tokens": p.reserved,
        "limit_tokens": p.limit,
        "remaining_tokens": p.remaining(),
        "period_start": p.period_start,
        "resets_at": p.resets_at,
    })
}

#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "usage",
    responses(
        (status = 200, description = "The caller's tenant's token usage and quotas.",
            body = crate::api::openapi::TenantUsage),
        (status = 500, description = "Internal error.", body = crate::api::openapi::ErrorBody),
    ),
)]
pub async fn usage(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.principal.require(Scope::UsageRead)?;
    // The tenant comes from the verified token only: there is no parameter to ask for another.
    let tenant = caller.tenant.id.clone();
    let ledger = app.gate.ledger.clone();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = tenant.clone();
    let usage = tokio::task::spawn_blocking(move || ledger.usage(&t, now))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|e| {
            tracing::error!(error = %e, "reading usage failed");
            ApiError::Internal
        })?;
    Ok(Json(json!({
        "object": "usage",
        "tenant": tenant,
        "plan": caller.tenant.plan_name,
        "day": period(&usage.day),
        "month": period(&usage.month),
        "in_flight_requests": caller.tenant.in_flight(),
    })))
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus metrics (scope `admin`).",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)),
)]
pub async fn metrics(State(app): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.principal.require(Scope::Admin)?;
    Ok((
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.gate.metrics.render(),
    )
        .into_response())
}
