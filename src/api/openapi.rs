//! The OpenAPI 3.1 description of the public API, derived from the request DTOs
//! (`dto.rs`), the `#[utoipa::path]` attributes on the handlers and the response shapes below.
//!
//! Served unauthenticated at `GET /openapi.json` (it holds no secrets: routes and shapes only,
//! no configuration) and printed by `cloister openapi`, so both come from this one function.
//! The admin API (its own listener) is left out: it is an operator interface, not part of the
//! OpenAI-compatible surface.
//!
//! The response types here are descriptions only: the handlers build their bodies with
//! `json!`. `tests/openapi.rs` and the schemathesis run (`tests/schemathesis/`) check the live
//! responses against them, so they cannot drift silently.

#![allow(dead_code)] // the response types are only read by the derive

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use crate::api::dto::{
    ChatMessageIn, ChatRequest, CommonParams, CompletionRequest, ContentPart, MessageContent,
    StreamOptions,
};
use crate::api::watermark::DetectRequest;

/// OpenAI's error body: every non-2xx JSON answer of this server has this shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// The error answers both generation endpoints document (`responses(..., GenerationErrors)`).
/// Documentation only: the handlers answer through `ApiError`, which this mirrors.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum GenerationErrors {
    #[response(
        status = 400,
        description = "Invalid request: a parameter out of range or refused by the plan, the \
            context window exceeded, an unknown parameter, or an unparsable body."
    )]
    BadRequest(ErrorBody),
    #[response(
        status = 404,
        description = "The model does not exist or the tenant may not use it."
    )]
    NotFound(ErrorBody),
    #[response(
        status = 429,
        description = "Over a rate limit (`retry-after`), the token quota, the tenant's queue or \
            the server's queue.",
        headers(
            ("retry-after" = u64, description = "Seconds to wait (rate limits, full queues)."),
            ("retry-after-ms" = u64, description = "Milliseconds to wait (rate limits).")
        )
    )]
    TooManyRequests(ErrorBody),
    #[response(status = 500, description = "Internal error.")]
    Internal(ErrorBody),
    #[response(status = 503, description = "The engine has stopped.")]
    Unavailable(ErrorBody),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// For people: never contains tokens, keys or prompts.
    pub message: String,
    /// Stable error type (`invalid_request_error`, `authentication_error`, ...).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request parameter at fault, if one is.
    pub param: Option<&'static str>,
    /// Stable machine-readable code (`model_not_found`, `rate_limit_exceeded`, ...).
    pub code: Option<&'static str>,
}

/// Token counts of one request.
#[derive(ToSchema)]
pub(crate) struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum FinishReason {
    Stop,
    Length,
}

/// Completions' logprobs: per generated token, its text, log probability, alternatives and
/// byte offset in the completion.
#[derive(ToSchema)]
pub(crate) struct CompletionLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f64>,
    top_logprobs: Vec<std::collections::BTreeMap<String, f64>>,
    text_offset: Vec<u64>,
}

#[derive(ToSchema)]
pub(crate) struct CompletionChoice {
    index: u32,
    text: String,
    logprobs: Option<CompletionLogprobs>,
    finish_reason: FinishReason,
}

/// `POST /v1/completions` (non-streaming).
#[derive(ToSchema)]
pub(crate) struct Completion {
    /// `cmpl-...`
    id: String,
    #[schema(pattern = "^text_completion$")]
    object: String,
    /// Unix seconds.
    created: u64,
    model: String,
    system_fingerprint: Option<String>,
    #[schema(min_items = 1, max_items = 1)]
    choices: Vec<CompletionChoice>,
    usage: Usage,
}

#[derive(ToSchema)]
pub(crate) struct TopLogprob {
    token: String,
    logprob: f64,
    /// The token's UTF-8 bytes (a token may be part of a character).
    bytes: Vec<u8>,
}

#[derive(ToSchema)]
pub(crate) struct ChatTokenLogprob {
    token: String,
    logprob: f64,
    bytes: Vec<u8>,
    top_logprobs: Vec<TopLogprob>,
}

#[derive(ToSchema)]
pub(crate) struct ChatLogprobs {
    content: Vec<ChatTokenLogprob>,
    refusal: Option<String>,
}

#[derive(ToSchema)]
pub(crate) struct AssistantMessage {
    #[schema(pattern = "^assistant$")]
    role: String,
    content: String,
    refusal: Option<String>,
}

#[derive(ToSchema)]
pub(crate) struct ChatChoice {
    index: u32,
    message: AssistantMessage,
    logprobs: Option<ChatLogprobs>,
    finish_reason: FinishReason,
}

/// `POST /v1/chat/completions` (non-streaming).
#[derive(ToSchema)]
pub(crate) struct ChatCompletion {
    /// `chatcmpl-...`
    id: String,
    #[schema(pattern = "^chat\\.completion$")]
    object: String,
    created: u64,
    model: String,
    system_fingerprint: Option<String>,
    #[schema(min_items = 1, max_items = 1)]
    choices: Vec<ChatChoice>,
    usage: Usage,
}

#[derive(ToSchema)]
pub(crate) struct Model {
    id: String,
    #[schema(pattern = "^model$")]
    object: String,
    created: u64,
    owned_by: String,
}

/// The models this tenant may use.
#[derive(ToSchema)]
pub(crate) struct ModelList {
    #[schema(pattern = "^list$")]
    object: String,
    data: Vec<Model>,
}

/// One quota period of the caller's tenant.
#[derive(ToSchema)]
pub(crate) struct PeriodUsage {
    used_tokens: u64,
    reserved_tokens: u64,
    /// `null`: no quota for this period.
    limit_tokens: Option<u64>,
    /// `null`: no quota for this period.
    remaining_tokens: Option<u64>,
    period_start: u64,
    resets_at: u64,
}

/// The caller's own tenant's usage (there is no parameter to ask for another's).
#[derive(ToSchema)]
pub(crate) struct TenantUsage {
    #[schema(pattern = "^usage$")]
    object: String,
    tenant: String,
    plan: String,
    day: PeriodUsage,
    month: PeriodUsage,
    in_flight_requests: u64,
}

/// The detector's statistics (never key material).
#[derive(ToSchema)]
pub(crate) struct Detection {
    #[schema(pattern = "^watermark\\.detection$")]
    object: String,
    /// Corrected `p_value <= threshold`.
    detected: bool,
    threshold: f64,
    /// The key with the smallest p-value.
    key_id: String,
    keys_tested: u64,
    /// Bonferroni-corrected over `keys_tested`.
    #[schema(minimum = 0, maximum = 1)]
    p_value: f64,
    #[schema(minimum = 0, maximum = 1)]
    p_value_uncorrected: f64,
    z: f64,
    green: u64,
    scored: u64,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cloister",
        description = "Confidential LLM inference: an OpenAI-compatible API for JWT-authenticated \
                       tenants. Errors use OpenAI's `{\"error\": {...}}` body.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        crate::api::handlers::chat_completions,
        crate::api::handlers::completions,
        crate::api::handlers::models,
        crate::api::usage::usage,
        crate::api::usage::metrics,
        crate::api::watermark::detect,
        crate::api::healthz,
        crate::api::readyz,
        openapi_json,
    ),
    components(schemas(
        ErrorBody, ChatRequest, CompletionRequest, CommonParams, ChatMessageIn, MessageContent,
        ContentPart, StreamOptions, Completion, ChatCompletion, ModelList, TenantUsage,
        DetectRequest, Detection,
    )),
    modifiers(&Auth, &Closed),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// Bearer JWTs (EdDSA, checked against the configured JWKS), and the answers every
/// authenticated operation can give before its handler runs.
struct Auth;

impl Modify for Auth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT from the configured issuer with a `tenant` claim of a configured \
                         tenant and the operation's scope (`inference`, `usage:read`, \
                         `watermark:detect` or `admin`).",
                    ))
                    .build(),
            ),
        );
        let error = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build()
        };
        let unauthorized = ResponseBuilder::new()
            .description("Missing, malformed, expired or otherwise invalid token.")
            .content("application/json", error())
            .header(
                "www-authenticate",
                HeaderBuilder::new()
                    .schema(Some(String::schema()))
                    .description(Some("`Bearer realm=\"cloister\"`"))
                    .build(),
            )
            .build();
        let forbidden = ResponseBuilder::new()
            .description("The token lacks the operation's scope, or its tenant is not served.")
            .content("application/json", error())
            .build();
        for item in openapi.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                // `security: [{}]` marks the open operations.
                let open = op
                    .security
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
                if !open {
                    let r = &mut op.responses.responses;
                    r.insert("401".into(), unauthorized.clone().into());
                    r.insert("403".into(), forbidden.clone().into());
                }
            }
        }
    }
}

use utoipa::PartialSchema as _;

/// The generation requests flatten the shared parameters, which utoipa renders as `allOf` of
/// open objects; but unknown fields are refused (400 `unknown_parameter`). Merge the parts into
/// one object with `additionalProperties: false` so the document says what the server does.
struct Closed;

impl Modify for Closed {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{AdditionalProperties, Object, Schema};
        use utoipa::openapi::RefOr;
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for name in ["ChatRequest", "CompletionRequest"] {
            let Some(RefOr::T(Schema::AllOf(all))) = components.schemas.get(name) else {
                continue;
            };
            let mut merged = Object::with_type(utoipa::openapi::Type::Object);
            merged.description = all.description.clone();
            for part in &all.items {
                if let RefOr::T(Schema::Object(o)) = part {
                    merged.properties.extend(o.properties.clone());
                    merged.required.extend(o.required.iter().cloned());
                }
            }
            merged.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
            components
                .schemas
                .insert(name.into(), RefOr::T(Schema::Object(merged)));
        }
    }
}

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").into();
        doc
    })
}

/// The document as pretty JSON, exactly what `GET /openapi.json` and `cloister openapi` give.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        // Serializing plain maps and strings cannot fail; an empty body would fail the tests.
        document().to_pretty_json().unwrap_or_default()
    })
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "This document.", content_type = "application/json",
        body = Object)),
)]
pub async fn openapi_json() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], json())
}
