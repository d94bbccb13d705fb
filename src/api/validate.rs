//! Request DTO -> `Valid*` conversion: every bound checked once, here, with an OpenAI-style
//! message naming the parameter.

use crate::api::dto::{ChatMessageIn, CommonParams, LogprobsParam, MessageContent, OneOrMany};
use crate::api::error::ApiError;
use crate::limits::{ConfidencePolicy, TOP_LOGPROBS_HARD_MAX};
use crate::sampling::{LogprobSpec, PipelineParams, SamplingParams};
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

pub(crate) const MAX_STOP_SEQUENCES: usize = 4;
const MAX_STOP_BYTES: usize = 256;
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

/// A generation request that passed every check.
#[derive(Debug, Clone)]
pub struct ValidGeneration {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// `logit_bias`, penalties and logprobs; the watermark is added by the handler.
    pub pipeline: PipelineParams,
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

/// What the served model bounds: the context window (already narrowed by the plan) and the
/// vocabulary (`logit_bias` keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelBounds {
    pub context_length: usize,
    pub vocab_size: usize,
}

/// Checks the sampling parameters against the prompt length and the context window.
/// `fresh_seed` is used when the client gives none.
pub fn generation(
    params: CommonParams,
    prompt_ids: Vec<u32>,
    model: ModelBounds,
    limits: &RequestLimits,
    endpoint: Endpoint,
    policy: &ConfidencePolicy,
    fresh_seed: u64,
) -> Result<ValidGeneration, ApiError> {
    let ModelBounds {
        context_length,
        vocab_size,
    } = model;
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
        if value.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
            return Err(ApiError::invalid(
                format!("`{name}` must be between -2 and 2"),
                Some(name),
            ));
        }
    }
    let logprobs = logprob_spec(&params, endpoint, policy)?;
    let logit_bias = logit_bias(params.logit_bias.as_ref(), vocab_size, policy)?;
    if logprobs.is_some() && !logit_bias.is_empty() && !policy.trusted {
        return Err(policy_refusal(
            "`logit_bias` cannot be combined with `logprobs` under this plan's confidence \
             policy",
            "logit_bias",
            "logit_bias_with_logprobs_not_allowed",
        ));
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
        // A default never exceeds the cap a client could ask for (a plan may cap below 16).
        None => match endpoint {
            Endpoint::Completions => COMPLETIONS_DEFAULT_MAX_TOKENS,
            Endpoint::Chat => limits.chat_default_max_tokens,
        }
        .min(limits.max_tokens_cap)
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
        pipeline: PipelineParams {
            logit_bias,
            frequency_penalty: params.frequency_penalty.unwrap_or(0.0),
            presence_penalty: params.presence_penalty.unwrap_or(0.0),
            watermark: None,
            logprobs,
            noise_key: None,
        },
        stop,
        stream,
        include_usage: params.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// A 400 that names the confidence policy (never the model's internals).
fn policy_refusal(message: &str, param: &'static str, code: &'static str) -> ApiError {
    ApiError::InvalidRequest {
        message: message.to_owned(),
        param: Some(param),
        code: Some(code),
    }
}

/// `logprobs` / `top_logprobs` (chat) or `logprobs: N` (completions), checked against policy.
fn logprob_spec(
    params: &CommonParams,
    endpoint: Endpoint,
    policy: &ConfidencePolicy,
) -> Result<Option<LogprobSpec>, ApiError> {
    let top = match (endpoint, params.logprobs) {
        (Endpoint::Chat, None | Some(LogprobsParam::Flag(false))) => {
            if params.top_logprobs.is_some() {
                return Err(ApiError::invalid(
                    "`top_logprobs` requires `logprobs: true`",
                    Some("top_logprobs"),
                ));
            }
            return Ok(None);
        }
        (Endpoint::Chat, Some(LogprobsParam::Flag(true))) => params.top_logprobs.unwrap_or(0),
        (Endpoint::Completions, None) => return Ok(None),
        (Endpoint::Completions, Some(LogprobsParam::Count(n))) if params.top_logprobs.is_none() => {
            n
        }
        (Endpoint::Chat, Some(LogprobsParam::Count(_))) => {
            return Err(ApiError::invalid(
                "`logprobs` must be a boolean",
                Some("logprobs"),
            ))
        }
        (Endpoint::Completions, _) => {
            return Err(ApiError::invalid(
                "`logprobs` must be an integer (and `top_logprobs` is chat-only)",
                Some("logprobs"),
            ))
        }
    };
    let param = match endpoint {
        Endpoint::Chat => "top_logprobs",
        Endpoint::Completions => "logprobs",
    };
    if !(0..=i64::from(TOP_LOGPROBS_HARD_MAX)).contains(&top) {
        return Err(ApiError::invalid(
            format!("`{param}` must be between 0 and {TOP_LOGPROBS_HARD_MAX}"),
            Some(param),
        ));
    }
    if !policy.logprobs {
        return Err(policy_refusal(
            "logprobs are not available under this plan's confidence policy",
            "logprobs",
            "logprobs_not_allowed",
        ));
    }
    if top > i64::from(policy.max_top_logprobs) {
        return Err(policy_refusal(
            &format!(
                "this plan's confidence policy allows at most {} alternatives per token",
                policy.max_top_logprobs
            ),
            param,
            "top_logprobs_above_policy",
        ));
    }
    Ok(Some(LogprobSpec {
        top: usize::try_from(top).unwrap_or(0),
        rounding: policy.rounding_step(),
        noise: policy.noise_scale(),
    }))
}

/// `logit_bias`: keys are token ids, values in -100..=100, bounded by policy.
fn logit_bias(
    bias: Option<&std::collections::BTreeMap<String, f32>>,
    vocab_size: usize,
    policy: &ConfidencePolicy,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(bias) = bias else {
        return Ok(Vec::new());
    };
    if bias.len() > policy.max_logit_bias_entries as usize {
        return Err(policy_refusal(
            &format!(
                "this plan's confidence policy allows at most {} `logit_bias` entries",
                policy.max_logit_bias_entries
            ),
            "logit_bias",
            "logit_bias_too_large",
        ));
    }
    let mut out = Vec::with_capacity(bias.len());
    for (k, &v) in bias {
        let id = k
            .parse::<u32>()
            .ok()
            .filter(|&id| (id as usize) < vocab_size)
            .ok_or_else(|| {
                ApiError::invalid(
                    "`logit_bias` keys must be token ids of this model",
                    Some("logit_bias"),
                )
            })?;
        if !(-100.0..=100.0).contains(&v) {
            return Err(ApiError::invalid(
                "`logit_bias` values must be between -100 and 100",
                Some("logit_bias"),
            ));
        }
        if v.abs() > policy.max_logit_bias {
            return Err(policy_refusal(
                &format!(
                    "this plan's confidence policy allows `logit_bias` values up to ±{}",
                    policy.max_logit_bias
                ),
                "logit_bias",
                "logit_bias_too_large",
            ));
        }
        out.push((id, v));
    }
    Ok(out)
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

    const BOUNDS: ModelBounds = ModelBounds {
        context_length: 100,
        vocab_size: 1000,
    };

    fn gen(params: CommonParams, prompt_len: usize) -> Result<ValidGeneration, ApiError> {
        generation(
            params,
            vec![5; prompt_len],
            BOUNDS,
            &RequestLimits::default(),
            Endpoint::Completions,
            &ConfidencePolicy::default(),
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
    fn completions_default_stays_under_the_cap() {
        let small = RequestLimits {
            max_tokens_cap: 8,
            chat_default_max_tokens: 8,
            ..RequestLimits::default()
        };
        let v = generation(
            CommonParams::default(),
            vec![5; 10],
            BOUNDS,
            &small,
            Endpoint::Completions,
            &ConfidencePolicy::default(),
            9,
        )
        .expect("valid");
        assert_eq!(v.max_tokens, 8);
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
                    frequency_penalty: Some(2.5),
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

    fn policy_gen(
        params: CommonParams,
        endpoint: Endpoint,
        policy: &ConfidencePolicy,
    ) -> Result<ValidGeneration, ApiError> {
        generation(
            params,
            vec![5; 4],
            BOUNDS,
            &RequestLimits::default(),
            endpoint,
            policy,
            9,
        )
    }

    #[test]
    fn logprobs_follow_the_confidence_policy() {
        let chat = |top: Option<i64>| CommonParams {
            logprobs: Some(LogprobsParam::Flag(true)),
            top_logprobs: top,
            ..Default::default()
        };
        let deny = ConfidencePolicy::default();
        let allow = ConfidencePolicy {
            logprobs: true,
            ..Default::default()
        };
        let code = |r: Result<ValidGeneration, ApiError>| code_of(r.expect_err("refused")).1;
        assert_eq!(
            code(policy_gen(chat(Some(2)), Endpoint::Chat, &deny)),
            Some("logprobs_not_allowed")
        );
        let ok = policy_gen(chat(Some(5)), Endpoint::Chat, &allow).expect("allowed");
        assert_eq!(
            ok.pipeline.logprobs,
            Some(LogprobSpec {
                top: 5,
                rounding: Some(0.1),
                noise: None,
            })
        );
        assert_eq!(
            code(policy_gen(chat(Some(6)), Endpoint::Chat, &allow)),
            Some("top_logprobs_above_policy")
        );
        assert!(policy_gen(chat(Some(21)), Endpoint::Chat, &allow).is_err());
        let cmpl = CommonParams {
            logprobs: Some(LogprobsParam::Count(3)),
            ..Default::default()
        };
        let ok = policy_gen(cmpl, Endpoint::Completions, &allow).expect("allowed");
        assert_eq!(ok.pipeline.logprobs.map(|s| s.top), Some(3));
        let mut with_bias = chat(Some(1));
        with_bias.logit_bias = Some([("7".to_string(), 5.0)].into_iter().collect());
        assert_eq!(
            code(policy_gen(with_bias, Endpoint::Chat, &allow)),
            Some("logit_bias_with_logprobs_not_allowed")
        );
        let mut with_bias = chat(Some(1));
        with_bias.logit_bias = Some([("7".to_string(), 5.0)].into_iter().collect());
        let trusted = ConfidencePolicy {
            trusted: true,
            ..allow.clone()
        };
        let ok = policy_gen(with_bias, Endpoint::Chat, &trusted).expect("trusted");
        assert_eq!(ok.pipeline.logit_bias, vec![(7, 5.0)]);
    }

    #[test]
    fn logit_bias_is_bounded() {
        let bias = |pairs: &[(&str, f32)]| CommonParams {
            logit_bias: Some(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
            ..Default::default()
        };
        let p = ConfidencePolicy {
            max_logit_bias_entries: 2,
            max_logit_bias: 10.0,
            ..Default::default()
        };
        let ok = policy_gen(bias(&[("1", -10.0), ("2", 3.0)]), Endpoint::Chat, &p);
        assert_eq!(
            ok.expect("ok").pipeline.logit_bias,
            vec![(1, -10.0), (2, 3.0)]
        );
        for bad in [
            bias(&[("1", 1.0), ("2", 1.0), ("3", 1.0)]),
            bias(&[("1", 11.0)]),
            bias(&[("1000", 1.0)]),
            bias(&[("x", 1.0)]),
            bias(&[("1", 101.0)]),
        ] {
            let e = policy_gen(bad, Endpoint::Chat, &p).expect_err("refused");
            assert_eq!(code_of(e).0, Some("logit_bias"));
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
