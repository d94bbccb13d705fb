//! Wire types of the OpenAI-compatible API (requests only; responses are built in the
//! handlers). Unknown fields are refused so a client never silently gets a parameter ignored.

use serde::Deserialize;

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

/// `logprobs` is a boolean on chat and an integer on completions.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(untagged)]
pub enum LogprobsParam {
    Flag(bool),
    Count(i64),
}

#[derive(Debug, Deserialize, Clone, Copy, Default)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by both endpoints.
#[derive(Debug, Deserialize, Default)]
pub struct CommonParams {
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens` (chat); wins when both are given.
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<i64>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// End-user id for abuse tracking; accepted, not stored.
    pub user: Option<String>,
    /// OpenAI penalties, each in -2..=2.
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    /// Chat: `true`/`false`; completions: the number of alternatives per position (0..=5 at
    /// OpenAI, here up to the plan's cap).
    pub logprobs: Option<LogprobsParam>,
    /// Chat only: alternatives per position.
    pub top_logprobs: Option<i64>,
    /// Token id (as a string key, per OpenAI) -> bias in -100..=100.
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// Everything else: refused by validation, naming the first unknown argument
    /// (`deny_unknown_fields` does not combine with `flatten`).
    #[serde(flatten)]
    pub unknown: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: OneOrMany,
    #[serde(flatten)]
    pub params: CommonParams,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessageIn>,
    #[serde(flatten)]
    pub params: CommonParams,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessageIn {
    pub role: String,
    pub content: MessageContent,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}
