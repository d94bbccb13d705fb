//! Request DTO -> `Valid*` conversion: every bound checked once, here, with an OpenAI-style
//! message naming the parameter.

use crate::api::dto::{ChatMessageIn, CommonParams, MessageContent, OneOrMany};
use crate::api::error::ApiError;
use crate::sampling::SamplingParams;
use crate::tokenizer::{ChatMessage, Role};

/// Server-wide request bounds (from config).
#[derive(Clone, Debug, PartialEq)]
pub struct RequestLimits {
    /// Largest prompt (all message contents together) in bytes.
    pub max_prompt_bytes: usize,
    pub max_messages: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_cap: usize,
    /// `max_tokens` for chat requests that give none (completions default to 16, like OpenAI).
    pub chat_default_max_tokens: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_prompt_bytes: 64 * 1024,
            max_messages: 256,
            max_tokens_cap: 2048,
            chat_default_max_tokens: 512,
        }
    }
}

const MAX_STOP_SEQUENCES: usize = 4;
const MAX_STOP_BYTES: usize = 256;
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

/// A generation request that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidGeneration {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Checks the `prompt` of a completions request.
pub fn completion_prompt(prompt: OneOrMany, limits: &RequestLimits) -> Result<String, ApiError> {
    let text = match prompt {
        OneOrMany::One(s) => s,
        OneOrMany::Many(mut v) if v.len() == 1 => v.remove(0),
        OneOrMany::Many(_) => {
            return Err(ApiError::invalid(
                "`prompt` must be a string or a list of exactly one string",
                Some("prompt"),
            ))
        }
    };
    check_text(&text, limits.max_prompt_bytes, "prompt")?;
    Ok(text)
}

/// Checks chat messages and maps roles.
pub fn chat_messages(
    messages: Vec<ChatMessageIn>,
    limits: &RequestLimits,
) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must not be empty",
            Some("messages"),
        ));
    }
    if messages.len() > limits.max_messages {
        return Err(ApiError::invalid(
            format!("at most {} messages are allowed", limits.max_messages),
            Some("messages"),
        ));
    }
    let mut total = 0usize;
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ => {
                return Err(ApiError::invalid(
                    "`role` must be one of system, developer, user, assistant",
                    Some("messages"),
                ))
            }
        };
        let content = match m.content {
            MessageContent::Text(t) => t,
            MessageContent::Parts(parts) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => s.push_str(&t),
                        _ => {
                            return Err(ApiError::invalid(
                                "only text content parts are supported",
                                Some("messages"),
                            ))
                        }
                    }
                }
                s
            }
        };
        total = total.saturating_add(content.len());
        check_text(&content, limits.max_prompt_bytes, "messages")?;
        out.push(ChatMessage { role, content });
    }
    if total > limits.max_prompt_bytes {
        return Err(ApiError::invalid(
            format!("messages exceed {} bytes in total", limits.max_prompt_bytes),
            Some("messages"),
        ));
    }
    Ok(out)
}

fn check_text(text: &str, max: usize, param: &'static str) -> Result<(), ApiError> {
    if text.len() > max {
        return Err(ApiError::InvalidRequest {
            message: format!("`{param}` is longer than {max} bytes"),
            param: Some(param),
            code: Some("string_above_max_length"),
        });
    }
    if text.contains('\0') {
        return Err(ApiError::invalid(
            format!("`{param}` contains a NUL character"),
            Some(param),
        ));
    }
    Ok(())
}

/// Which endpoint the parameters came from: they differ in the default `max_tokens`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// Checks the sampling parameters against the prompt length and the context window.
/// `fresh_seed` is used when the client gives none.
pub fn generation(
    params: CommonParams,
    prompt_ids: Vec<u32>,
    context_length: usize,
    limits: &RequestLimits,
    endpoint: Endpoint,
    fresh_seed: u64,
) -> Result<ValidGeneration, ApiError> {
    if let Some(name) = params.unknown.keys().next() {
        return Err(ApiError::InvalidRequest {
            message: format!("Unrecognized request argument supplied: {name}"),
            param: None,
            code: Some("unknown_parameter"),
        });
    }
    if let Some(n) = params.n {
        if n != 1 {
            return Err(ApiError::invalid("only `n: 1` is supported", Some("n")));
        }
    }
    for (value, name) in [
        (params.frequency_penalty, "frequency_penalty"),
        (params.presence_penalty, "presence_penalty"),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid(
                format!("`{name}` is not supported yet; omit it or send 0"),
                Some(name),
            ));
        }
    }
    let temperature = params.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "`temperature` must be between 0 and 2",
            Some("temperature"),
        ));
    }
    let top_p = params.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "`top_p` must be in (0, 1]",
            Some("top_p"),
        ));
    }
    let stop = params.stop.map(OneOrMany::into_vec).unwrap_or_default();
    if stop.len() > MAX_STOP_SEQUENCES {
        return Err(ApiError::invalid(
            format!("at most {MAX_STOP_SEQUENCES} stop sequences are allowed"),
            Some("stop"),
        ));
    }
    if stop
        .iter()
        .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(ApiError::invalid(
            format!("stop sequences must be 1 to {MAX_STOP_BYTES} bytes"),
            Some("stop"),
        ));
    }
    if prompt_ids.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some("prompt")));
    }
    if prompt_ids.len() >= context_length {
        return Err(context_exceeded(prompt_ids.len(), 1, context_length));
    }
    let room = context_length - prompt_ids.len();
    let max_tokens = match params.max_completion_tokens.or(params.max_tokens) {
        Some(m) if m < 1 => {
            return Err(ApiError::invalid(
                "`max_tokens` must be at least 1",
                Some("max_tokens"),
            ))
        }
        Some(m) => {
            let m = usize::try_from(m).unwrap_or(usize::MAX);
            if m > limits.max_tokens_cap {
                return Err(ApiError::invalid(
                    format!("`max_tokens` must be at most {}", limits.max_tokens_cap),
                    Some("max_tokens"),
                ));
            }
            if m > room {
                return Err(context_exceeded(prompt_ids.len(), m, context_length));
            }
            m
        }
        None => match endpoint {
            Endpoint::Completions => COMPLETIONS_DEFAULT_MAX_TOKENS,
            Endpoint::Chat => limits.chat_default_max_tokens,
        }
        .min(room),
    };
    let stream = params.stream.unwrap_or(false);
    if params.stream_options.is_some() && !stream {
        return Err(ApiError::invalid(
            "`stream_options` is only allowed with `stream: true`",
            Some("stream_options"),
        ));
    }
    Ok(ValidGeneration {
        prompt_ids,
        max_tokens,
        sampling: SamplingParams {
            temperature,
            top_p,
            // OpenAI seeds are signed integers; any value maps to a distinct 64-bit seed.
            seed: params.seed.map_or(fresh_seed, |s| s as u64),
        },
        stop,
        stream,
        include_usage: params.stream_options.is_some_and(|o| o.include_usage),
    })
}

fn context_exceeded(prompt: usize, completion: usize, ctx: usize) -> ApiError {
    ApiError::InvalidRequest {
        message: format!(
            "This model's maximum context length is {ctx} tokens. However, you requested {} \
             tokens ({prompt} in the prompt, {completion} for the completion).",
            prompt + completion
        ),
        param: Some("messages"),
        code: Some("context_length_exceeded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(params: CommonParams, prompt_len: usize) -> Result<ValidGeneration, ApiError> {
        generation(
            params,
            vec![5; prompt_len],
            100,
            &RequestLimits::default(),
            Endpoint::Completions,
            9,
        )
    }

    fn code_of(e: ApiError) -> (Option<&'static str>, Option<&'static str>) {
        match e {
            ApiError::InvalidRequest { param, code, .. } => (param, code),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let v = gen(CommonParams::default(), 10).expect("valid");
        assert_eq!(v.max_tokens, 16);
        assert_eq!(v.sampling.temperature, 1.0);
        assert_eq!(v.sampling.seed, 9);
        assert!(!v.stream);
    }

    #[test]
    fn bad_ranges_name_their_parameter() {
        let cases: Vec<(CommonParams, &str)> = vec![
            (
                CommonParams {
                    temperature: Some(2.5),
                    ..Default::default()
                },
                "temperature",
            ),
            (
                CommonParams {
                    top_p: Some(0.0),
                    ..Default::default()
                },
                "top_p",
            ),
            (
                CommonParams {
                    max_tokens: Some(0),
                    ..Default::default()
                },
                "max_tokens",
            ),
            (
                CommonParams {
                    n: Some(2),
                    ..Default::default()
                },
                "n",
            ),
            (
                CommonParams {
                    stop: Some(OneOrMany::Many(vec!["a".into(); 5])),
                    ..Default::default()
                },
                "stop",
            ),
            (
                CommonParams {
                    frequency_penalty: Some(0.5),
                    ..Default::default()
                },
                "frequency_penalty",
            ),
        ];
        let mut unknown = CommonParams::default();
        unknown
            .unknown
            .insert("logit_bais".into(), serde_json::json!({}));
        assert_eq!(
            code_of(gen(unknown, 10).expect_err("unknown")).1,
            Some("unknown_parameter")
        );
        for (p, param) in cases {
            let (got, _) = code_of(gen(p, 10).expect_err(param));
            assert_eq!(got, Some(param));
        }
    }

    #[test]
    fn context_overflow_is_context_length_exceeded() {
        let (_, code) = code_of(gen(CommonParams::default(), 100).expect_err("too long"));
        assert_eq!(code, Some("context_length_exceeded"));
        let p = CommonParams {
            max_tokens: Some(50),
            ..Default::default()
        };
        let (_, code) = code_of(gen(p, 60).expect_err("too long"));
        assert_eq!(code, Some("context_length_exceeded"));
        // Without max_tokens the default shrinks to the room left.
        assert_eq!(
            gen(CommonParams::default(), 95).expect("fits").max_tokens,
            5
        );
    }

    #[test]
    fn roles_are_mapped_and_unknown_roles_refused() {
        let lim = RequestLimits::default();
        let msg = |role: &str| ChatMessageIn {
            role: role.into(),
            content: MessageContent::Text("hi".into()),
            name: None,
        };
        let ok = chat_messages(vec![msg("developer"), msg("user")], &lim).expect("valid");
        assert_eq!(ok[0].role, Role::System);
        assert!(chat_messages(vec![msg("tool")], &lim).is_err());
        assert!(chat_messages(vec![], &lim).is_err());
    }

    #[test]
    fn oversized_prompt_refused() {
        let lim = RequestLimits {
            max_prompt_bytes: 4,
            ..Default::default()
        };
        assert!(completion_prompt(OneOrMany::One("hello".into()), &lim).is_err());
        assert!(completion_prompt(OneOrMany::One("hell".into()), &lim).is_ok());
        assert!(completion_prompt(OneOrMany::Many(vec!["a".into(), "b".into()]), &lim).is_err());
    }
}
