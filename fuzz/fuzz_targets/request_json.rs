//! Request bodies as the handlers see them: JSON → `ChatRequest` / `CompletionRequest` (serde, as
//! `ApiJson` does) → `validate::chat_messages` / `completion_prompt` → the prompt's tokens (chat
//! template or `encode_text`, as the handlers do) → `validate::generation` → either a
//! `ValidGeneration` or an `ApiError` rendered as the HTTP response.
//!
//! Input: one byte of setup (endpoint, plan policy, context window) ‖ the JSON body.
//! Properties: no panic; every accepted request satisfies the bounds the engine relies on.

#![no_main]

use axum::response::IntoResponse;
use cloister::api::dto::{ChatRequest, CompletionRequest};
use cloister::api::validate::{self, Endpoint, ModelBounds, RequestLimits};
use cloister::api::ApiError;
use cloister::limits::ConfidencePolicy;
use cloister_fuzz::tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cloister_fuzz::write_seeds_if_asked();
    let Some((&setup, body)) = data.split_first() else {
        return;
    };
    let endpoint = if setup & 1 == 0 {
        Endpoint::Chat
    } else {
        Endpoint::Completions
    };
    let policy = match (setup >> 1) % 3 {
        0 => ConfidencePolicy::default(),
        1 => ConfidencePolicy {
            logprobs: true,
            max_logit_bias_entries: 3,
            max_logit_bias: 5.0,
            ..ConfidencePolicy::default()
        },
        _ => ConfidencePolicy {
            logprobs: true,
            trusted: true,
            max_top_logprobs: 20,
            rounding: 0.0,
            ..ConfidencePolicy::default()
        },
    };
    let limits = RequestLimits {
        max_prompt_bytes: 4096,
        max_messages: 16,
        max_tokens_cap: 512,
        chat_default_max_tokens: 128,
    };
    let context_length = [8usize, 64, 2048][usize::from(setup >> 3) % 3];
    if let Err(e) = run(body, endpoint, &policy, &limits, context_length) {
        // The one error-to-HTTP mapping must hold for every error a body can cause.
        let _ = e.body();
        let response = e.into_response();
        assert!(response.status().is_client_error() || response.status().is_server_error());
    }
});

fn run(
    body: &[u8],
    endpoint: Endpoint,
    policy: &ConfidencePolicy,
    limits: &RequestLimits,
    context_length: usize,
) -> Result<(), ApiError> {
    let (tok, chat) = tokenizer();
    let bad_json = |e: serde_json::Error| ApiError::invalid(e.to_string(), None);
    let (params, ids) = match endpoint {
        Endpoint::Chat => {
            let req: ChatRequest = serde_json::from_slice(body).map_err(bad_json)?;
            let messages = validate::chat_messages(req.messages, limits)?;
            assert!(!messages.is_empty() && messages.len() <= limits.max_messages);
            let total: usize = messages.iter().map(|m| m.content.len()).sum();
            assert!(total <= limits.max_prompt_bytes);
            assert!(messages.iter().all(|m| !m.content.contains('\0')));
            let ids = chat
                .render_ids(tok, &messages, true)
                .map_err(|_| ApiError::invalid("render", Some("messages")))?;
            (req.params, ids)
        }
        Endpoint::Completions => {
            let req: CompletionRequest = serde_json::from_slice(body).map_err(bad_json)?;
            let prompt = validate::completion_prompt(req.prompt, limits)?;
            assert!(prompt.len() <= limits.max_prompt_bytes && !prompt.contains('\0'));
            let ids = tok
                .encode_text(&prompt)
                .map_err(|_| ApiError::invalid("tokenize", Some("prompt")))?;
            (req.params, ids)
        }
    };
    let bounds = ModelBounds {
        context_length,
        vocab_size: tok.vocab_size(),
    };
    let prompt_len = ids.len();
    let v = validate::generation(params, ids, bounds, limits, endpoint, policy, 7)?;
    // What the engine and sampler rely on for every accepted request:
    assert!(prompt_len >= 1 && v.max_tokens >= 1);
    assert!(prompt_len + v.max_tokens <= context_length);
    assert!(v.max_tokens <= limits.max_tokens_cap);
    assert!((0.0..=2.0).contains(&v.sampling.temperature));
    assert!(v.sampling.top_p > 0.0 && v.sampling.top_p <= 1.0);
    assert!(v.stop.len() <= 4 && v.stop.iter().all(|s| !s.is_empty() && s.len() <= 256));
    let p = &v.pipeline;
    assert!((-2.0..=2.0).contains(&p.frequency_penalty));
    assert!((-2.0..=2.0).contains(&p.presence_penalty));
    assert!(p.logit_bias.len() <= policy.max_logit_bias_entries as usize);
    for &(id, bias) in &p.logit_bias {
        assert!((id as usize) < tok.vocab_size());
        assert!(bias.abs() <= policy.max_logit_bias.min(100.0));
    }
    if let Some(spec) = &p.logprobs {
        assert!(policy.logprobs && spec.top <= usize::from(policy.max_top_logprobs));
        assert!(policy.trusted || p.logit_bias.is_empty());
    }
    if v.include_usage {
        assert!(v.stream);
    }
    Ok(())
}
