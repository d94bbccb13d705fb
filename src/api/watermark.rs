//! `POST /v1/watermark/detect`: is this text a watermarked completion of this server?
//!
//! Own scope (`watermark:detect`), counted against the caller's request rate like any request,
//! and logged (tenant, keys tested, verdict; never the text). The answer holds statistics only,
//! never key material or green lists.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::api::error::{rate_headers, ApiError};
use crate::api::extract::{ApiJson, Caller};
use crate::api::AppState;
use crate::auth::Scope;
use crate::watermark::{detect_any, WatermarkKey, WatermarkParams, DEFAULT_THRESHOLD};

/// Most key ids one request may test (each one weakens the corrected p-value).
const MAX_KEY_IDS: usize = 16;

/// `POST /v1/watermark/detect`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetectRequest {
    /// The text to test, at most the server's `limits.max_prompt_bytes` bytes.
    text: String,
    /// Key ids to test (1 to 16); default: every live key.
    #[schema(min_items = 1, max_items = 16)]
    key_ids: Option<Vec<String>>,
}

#[utoipa::path(
    post,
    path = "/v1/watermark/detect",
    tag = "watermark",
    request_body = DetectRequest,
    responses(
        (status = 200, description = "The detector's verdict and statistics.",
            body = crate::api::openapi::Detection),
        (status = 400, description = "Invalid body, unknown key id, or no watermark keys \
            configured.", body = crate::api::openapi::ErrorBody),
        (status = 429, description = "Over the tenant's request rate.",
            body = crate::api::openapi::ErrorBody, headers(
                ("retry-after" = u64, description = "Seconds to wait."),
                ("retry-after-ms" = u64, description = "Milliseconds to wait."))),
        (status = 500, description = "Internal error.", body = crate::api::openapi::ErrorBody),
    ),
)]
pub async fn detect(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<DetectRequest>,
) -> Result<Response, ApiError> {
    caller.principal.require(Scope::WatermarkDetect)?;
    let rate = app.gate.check_request(&caller.tenant)?;
    let ring = app.watermark.as_ref().ok_or(ApiError::InvalidRequest {
        message: "this server has no watermark keys configured".into(),
        param: None,
        code: Some("watermark_not_configured"),
    })?;
    if req.text.len() > app.limits.max_prompt_bytes {
        return Err(ApiError::InvalidRequest {
            message: format!(
                "`text` is longer than {} bytes",
                app.limits.max_prompt_bytes
            ),
            param: Some("text"),
            code: Some("string_above_max_length"),
        });
    }
    let keys = match &req.key_ids {
        None => ring.keys().iter().collect::<Vec<_>>(),
        Some(ids) if ids.is_empty() || ids.len() > MAX_KEY_IDS => {
            return Err(ApiError::invalid(
                format!("`key_ids` must list 1 to {MAX_KEY_IDS} ids"),
                Some("key_ids"),
            ))
        }
        Some(ids) => {
            let mut keys = Vec::with_capacity(ids.len());
            for id in ids {
                let key = ring.get(id).ok_or_else(|| {
                    ApiError::invalid("unknown watermark key id", Some("key_ids"))
                })?;
                if !keys.iter().any(|k: &&WatermarkKey| k.id() == key.id()) {
                    keys.push(key);
                }
            }
            keys
        }
    };
    let tokens = app
        .model
        .tokenizer
        .encode_text(&req.text)
        .map_err(|_| ApiError::invalid("the text could not be tokenized", Some("text")))?;
    let params = WatermarkParams::default();
    // ~2 HMACs per token (bounded by the text limit): off the async workers all the same.
    let owned: Vec<WatermarkKey> = keys.into_iter().cloned().collect();
    let keys_tested: Vec<String> = owned.iter().map(|k| k.id().to_string()).collect();
    let found = tokio::task::spawn_blocking(move || {
        let refs: Vec<&WatermarkKey> = owned.iter().collect();
        detect_any(&refs, &params, &tokens)
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(|_| ApiError::Internal)?;
    let detected = found.is_watermarked(DEFAULT_THRESHOLD);
    let tested: Vec<crate::audit::KeyId> = keys_tested
        .iter()
        .filter_map(|id| crate::audit::KeyId::new(id.clone()).ok())
        .collect();
    if let (Ok(tenant), Ok(key_ids)) = (
        crate::audit::TenantId::new(caller.tenant.id.clone()),
        crate::audit::KeyIds::new(tested),
    ) {
        app.gate
            .audit
            .record_in_background(crate::audit::AuditEvent::WatermarkDetect {
                tenant,
                key_ids,
                detected,
            });
    }
    tracing::info!(
        tenant = %caller.tenant.id,
        keys_tested = found.keys_tested,
        scored = found.detection.scored,
        detected,
        "watermark detection"
    );
    let mut resp = Json(json!({
        "object": "watermark.detection",
        "detected": detected,
        "threshold": DEFAULT_THRESHOLD,
        "key_id": found.key_id,
        "keys_tested": found.keys_tested,
        "p_value": found.p_value,
        "p_value_uncorrected": found.detection.p_value,
        "z": found.detection.z,
        "green": found.detection.green,
        "scored": found.detection.scored,
    }))
    .into_response();
    rate_headers(resp.headers_mut(), &[rate]);
    Ok(resp)
}
