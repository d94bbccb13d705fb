//! The admin API (scope `admin`), served on its own listener (config `[admin] listen`), never on
//! the public port: reloads, key and rewrap status, the audit head and checkpoints, tenant plans.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::extract::Caller;
use crate::api::AppState;
use crate::audit::{AuditEvent, Label, TenantId};
use crate::auth::Scope;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/admin/status", get(status))
        .route("/admin/reload", post(reload))
        .route("/admin/audit/head", get(audit_head))
        .route("/admin/audit/checkpoint", post(audit_checkpoint))
        .route("/admin/tenants", get(tenants))
        .route("/metrics", get(crate::api::usage::metrics))
        .fallback(|| async { ApiError::UnknownRoute })
        .with_state(state)
}

fn admin(app: &AppState, caller: &Caller, action: &str) -> Result<(), ApiError> {
    caller.principal.require(Scope::Admin)?;
    if let (Ok(tenant), Ok(action)) = (TenantId::new(caller.tenant.id.clone()), Label::new(action))
    {
        app.gate
            .audit
            .record(AuditEvent::AdminAction { tenant, action });
    }
    Ok(())
}

async fn status(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    admin(&app, &caller, "status")?;
    let ops = &app.ops;
    let cfg = ops.config.clone();
    // The file's current KEK (after an offline `model rewrap`) next to the one in memory.
    let file_kek = tokio::task::spawn_blocking(move || {
        let keys = crate::model::key_provider(&cfg).ok()?;
        let trusted = crate::model::load_trusted(&cfg).ok()?;
        crate::model::sealed_kek(&cfg.sealed_model, keys.as_ref(), &trusted).ok()
    })
    .await
    .map_err(|_| ApiError::Internal)?;
    let kids: Vec<String> = app
        .verifier
        .load()
        .jwks()
        .kids()
        .map(str::to_string)
        .collect();
    Ok(Json(json!({
        "model": app.model.id,
        "loaded_kek": { "id": ops.loaded_kek.id, "version": ops.loaded_kek.version },
        "sealed_file_kek": file_kek.map(|k| json!({ "id": k.id, "version": k.version })),
        "jwks_kids": kids,
    })))
}

async fn reload(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    admin(&app, &caller, "reload")?;
    app.ops.reload.notify_waiters();
    Ok(Json(json!({ "reload": "triggered" })))
}

async fn audit_head(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    admin(&app, &caller, "audit_head")?;
    let head = app.gate.audit.head();
    Ok(Json(json!({
        "next_seq": head.map(|h| h.0),
        "head_hash": head.map(|h| hex::encode(h.1)),
    })))
}

async fn audit_checkpoint(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    admin(&app, &caller, "audit_checkpoint")?;
    app.gate.audit.checkpoint().map_err(|e| {
        tracing::error!(error = %e, "audit checkpoint failed");
        ApiError::Internal
    })?;
    let head = app.gate.audit.head();
    Ok(Json(json!({ "checkpointed_count": head.map(|h| h.0) })))
}

async fn tenants(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    admin(&app, &caller, "tenants")?;
    let list: Vec<Value> = app
        .tenants
        .load()
        .iter()
        .map(|t| {
            json!({
                "id": t.id,
                "plan": t.plan_name,
                "requests_per_second": t.plan.requests_per_second.get(),
                "tokens_per_minute": t.plan.tokens_per_minute.get(),
                "quota_tokens_per_day": t.plan.quota_tokens_per_day,
                "quota_tokens_per_month": t.plan.quota_tokens_per_month,
                "max_context_tokens": t.plan.max_context_tokens,
                "max_tokens": t.plan.max_tokens,
                "max_queued": t.plan.max_queued,
                "kv_pool_bytes": t.plan.kv_pool_bytes,
                "in_flight": t.in_flight(),
            })
        })
        .collect();
    Ok(Json(json!({ "tenants": list })))
}
