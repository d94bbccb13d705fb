//! The HTTP adapter: routes, extractors, DTOs and the one error mapping.
//!
//! Every `/v1/*` route (and `/metrics`) needs a valid tenant JWT; `/healthz`, `/readyz` and
//! `/openapi.json` are open and say nothing about tenants or the model.

pub mod admin;
pub mod admission;
// Public (hidden) only so the `request_json` fuzz target can deserialize the exact wire types.
#[doc(hidden)]
pub mod dto;
mod error;
mod extract;
mod handlers;
pub mod openapi;
pub(crate) mod usage;
pub mod validate;
mod watermark;

use std::sync::Arc;

use arc_swap::ArcSwap;

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

pub use error::ApiError;
pub use validate::RequestLimits;

use crate::api::admission::Gate;
use crate::auth::JwtVerifier;
use crate::engine::EngineHandle;
use crate::tenant::{Tenant, TenantRegistry};
use crate::tokenizer::{ChatTemplate, ModelTokenizer};

/// Largest accepted request body; prompt limits are enforced again, per field, by validation.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The model as the API sees it.
#[derive(Debug)]
pub struct ServedModel {
    pub id: String,
    pub tokenizer: Arc<ModelTokenizer>,
    pub chat: ChatTemplate,
    pub context_length: usize,
    /// Unix time the model was loaded (OpenAI's `created`).
    pub created: u64,
}

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    pub engine: EngineHandle,
    pub model: Arc<ServedModel>,
    /// Swapped whole when the JWKS file changes.
    pub verifier: Arc<ArcSwap<JwtVerifier>>,
    pub tenants: Arc<ArcSwap<TenantRegistry>>,
    pub limits: RequestLimits,
    /// Logprob-bearing requests per tenant and UTC day (in memory; a restart resets it).
    pub logprob_budget: Arc<std::sync::Mutex<crate::limits::LogprobBudget>>,
    /// Per-tenant extraction-detection windows (in memory).
    pub extraction: Arc<std::sync::Mutex<crate::limits::ExtractionMonitor>>,
    /// Watermark keys (`None`: not configured, nothing is watermarked).
    pub watermark: Option<Arc<crate::watermark::WatermarkKeyring>>,
    /// Secret behind the per-request logprob noise keys (drawn at start).
    pub logprob_noise: Arc<crate::sampling::NoiseSecret>,
    pub gate: Gate,
    pub ops: Arc<Ops>,
}

/// What the admin API needs besides the request path's state.
#[derive(Debug)]
pub struct Ops {
    pub config: crate::config::Config,
    pub reload: Arc<tokio::sync::Notify>,
    pub loaded_kek: crate::keys::KekRef,
}

impl AppState {
    /// The requested model must be served and allowed by the tenant's plan; both failures look
    /// the same, so a tenant learns nothing about models it may not use.
    fn check_model(&self, tenant: &Tenant, requested: &str) -> Result<(), ApiError> {
        if requested == self.model.id && tenant.plan.allows_model(requested) {
            Ok(())
        } else {
            Err(ApiError::ModelNotFound(
                requested.chars().take(128).collect(),
            ))
        }
    }
}

/// Every public route: path, method and handler. The router is built from this list and the
/// OpenAPI test compares it with the document, so neither can gain a route the other lacks.
fn public_routes() -> Vec<(&'static str, Method, MethodRouter<AppState>)> {
    fn route<H, T>(
        path: &'static str,
        method: Method,
        handler: H,
    ) -> (&'static str, Method, MethodRouter<AppState>)
    where
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        // Only GET and POST are used, and both convert.
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        (path, method, on(filter, handler))
    }
    vec![
        route("/v1/completions", Method::POST, handlers::completions),
        route(
            "/v1/chat/completions",
            Method::POST,
            handlers::chat_completions,
        ),
        route("/v1/models", Method::GET, handlers::models),
        route("/v1/watermark/detect", Method::POST, watermark::detect),
        route("/v1/usage", Method::GET, usage::usage),
        route("/metrics", Method::GET, usage::metrics),
        route("/healthz", Method::GET, healthz),
        route("/readyz", Method::GET, readyz),
        route("/openapi.json", Method::GET, openapi::openapi_json),
    ]
}

/// The (path, method) pairs the public router serves.
pub fn served_routes() -> Vec<(&'static str, Method)> {
    public_routes()
        .into_iter()
        .map(|(path, method, _)| (path, method))
        .collect()
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (path, _, handler) in public_routes() {
        router = router.route(path, handler);
    }
    router
        .fallback(|| async { ApiError::UnknownRoute })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "`ok`", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the model is loaded and requests are served.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, description = "`ready`", body = String)))]
async fn readyz() -> &'static str {
    "ready"
}
