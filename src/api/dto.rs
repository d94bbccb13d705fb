//! Wire types of the OpenAI-compatible API (requests only; responses are built in the
//! handlers and described in `openapi.rs`). Unknown fields are refused so a client never
//! silently gets a parameter ignored.
//!
//! The `#[schema(..)]` attributes are the OpenAPI description of these types: they state the
//! bounds `validate.rs` enforces that do not depend on the configuration or the tenant's plan
//! (those are named in the descriptions and answered with a 400 naming the parameter).

use serde::Deserialize;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

use crate::limits::TOP_LOGPROBS_HARD_MAX;

/// A string or a list of strings (OpenAI's `prompt` and `stop`).
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `logprobs` is a boolean on chat and an integer on completions; the endpoint structs parse
/// their own form and hand it to validation as this.
#[derive(Debug, Clone, Copy)]
pub enum LogprobsParam {
    Flag(bool),
    Count(i64),
}

#[derive(Debug, Deserialize, Clone, Copy, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with the token usage (and no choices) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by both endpoints.
#[derive(Debug, Deserialize, Default, ToSchema)]
pub struct CommonParams {
    /// Most tokens to generate. At most the server's `limits.max_tokens_cap` and the plan's
    /// `max_tokens`, and prompt + `max_tokens` must fit the context window (400 otherwise).
    /// Default: 16 (completions) or the server's `chat_default_max_tokens` (chat).
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens` (chat); wins when both are given.
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<i64>,
    /// 0 is greedy (and carries no watermark). Default 1.
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass. Default 1.
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    /// Up to 4 stop sequences of 1 to 256 bytes (UTF-8) each.
    #[schema(schema_with = stop_schema)]
    pub stop: Option<OneOrMany>,
    /// Same seed and parameters, same output.
    pub seed: Option<i64>,
    /// Only one choice per request is supported.
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<i64>,
    /// Answer as server-sent events ending in `data: [DONE]`.
    pub stream: Option<bool>,
    /// Only allowed with `stream: true`.
    pub stream_options: Option<StreamOptions>,
    /// End-user id for abuse tracking; accepted, not stored.
    pub user: Option<String>,
    /// OpenAI penalties, each in -2..=2.
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f32>,
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f32>,
    /// Set by the endpoint from its own `logprobs` field (a boolean on chat, an integer on
    /// completions), never read from the flattened body.
    #[serde(skip)]
    #[schema(ignore)]
    pub logprobs: Option<LogprobsParam>,
    /// Chat only (set by the chat endpoint): alternatives per position.
    #[serde(skip)]
    #[schema(ignore)]
    pub top_logprobs: Option<i64>,
    /// Token id (as a string key, per OpenAI) -> bias in -100..=100. The plan's confidence
    /// policy bounds the number of entries and the magnitude, and keys must be token ids of
    /// the served model.
    #[schema(schema_with = logit_bias_schema)]
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// Everything else: refused by validation, naming the first unknown argument
    /// (`deny_unknown_fields` does not combine with `flatten`).
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// The served model's id (`GET /v1/models`).
    pub model: String,
    /// The prompt: a non-empty string, or a list of exactly one. At most the server's
    /// `limits.max_prompt_bytes` bytes; no NUL or other control characters but tab, CR, LF.
    #[schema(schema_with = prompt_schema)]
    pub prompt: OneOrMany,
    /// Alternatives to return per position (the plan's confidence policy must allow logprobs
    /// and may allow fewer).
    #[schema(minimum = 0, maximum = 20)]
    pub logprobs: Option<i64>,
    #[serde(flatten)]
    #[schema(inline)]
    pub params: CommonParams,
}

impl CompletionRequest {
    /// The shared parameters with this endpoint's `logprobs` form.
    pub fn into_parts(self) -> (String, OneOrMany, CommonParams) {
        let mut params = self.params;
        params.logprobs = self.logprobs.map(LogprobsParam::Count);
        (self.model, self.prompt, params)
    }
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// The served model's id (`GET /v1/models`).
    pub model: String,
    /// The conversation: 1 to the server's `limits.max_messages` messages, at most
    /// `limits.max_prompt_bytes` bytes of content together.
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessageIn>,
    /// Return the sampled tokens' log probabilities (if the plan's confidence policy allows).
    pub logprobs: Option<bool>,
    /// Alternatives per position; requires `logprobs: true`.
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    #[schema(inline)]
    pub params: CommonParams,
}

impl ChatRequest {
    /// The shared parameters with this endpoint's `logprobs` form.
    pub fn into_parts(self) -> (String, Vec<ChatMessageIn>, CommonParams) {
        let mut params = self.params;
        params.logprobs = self.logprobs.map(LogprobsParam::Flag);
        params.top_logprobs = self.top_logprobs;
        (self.model, self.messages, params)
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessageIn {
    #[schema(schema_with = role_schema)]
    pub role: String,
    /// Text, or a list of text parts (concatenated). No NUL or other control characters but
    /// tab, CR, LF.
    pub content: MessageContent,
    /// Accepted, not used.
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    /// Only `text` parts are supported.
    #[serde(rename = "type")]
    #[schema(schema_with = text_part_type_schema)]
    pub kind: String,
    /// Required for `text` parts.
    pub text: Option<String>,
}

// Every schema below is built with the `Option` the field has: `null` is accepted (serde reads
// it as absent), so the schema says so.

/// `stop`: a stop sequence, a list of up to 4, or null.
fn stop_schema() -> impl Into<RefOr<Schema>> {
    // 256 bytes is at least 64 characters; the byte bound itself is checked by validation.
    let one = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(256))
    };
    OneOfBuilder::new()
        .item(one())
        .item(
            ArrayBuilder::new()
                .items(one())
                .max_items(Some(super::validate::MAX_STOP_SEQUENCES)),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
}

/// `prompt`: a non-empty string or a list of exactly one.
fn prompt_schema() -> impl Into<RefOr<Schema>> {
    let one = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
    };
    OneOfBuilder::new().item(one()).item(
        ArrayBuilder::new()
            .items(one())
            .min_items(Some(1))
            .max_items(Some(1)),
    )
}

/// `logit_bias`: token-id keys, values in -100..=100.
fn logit_bias_schema() -> impl Into<RefOr<Schema>> {
    let bias = ObjectBuilder::new()
        .schema_type(Type::Number)
        .minimum(Some(-100))
        .maximum(Some(100));
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]{1,9}$")),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::Object(
            bias.build(),
        )))))
        .max_properties(Some(crate::limits::LOGIT_BIAS_HARD_MAX_ENTRIES as usize))
}

fn role_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["system", "developer", "user", "assistant"]))
}

fn text_part_type_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["text"]))
}

// `TOP_LOGPROBS_HARD_MAX` is the bound the attributes above spell as 20.
const _: () = assert!(TOP_LOGPROBS_HARD_MAX == 20);
