//! End to end over HTTPS with the real sealed demo model.

mod common;

use cloister::auth::Scope;
use common::{client, fixture, reference, server, MODEL_ID};
use serde_json::{json, Value};

fn token() -> String {
    fixture().token("demo", &[Scope::Inference])
}

async fn post(path: &str, bearer: Option<&str>, body: Value) -> (u16, String) {
    let mut req = client().post(format!("{}{path}", server().url)).json(&body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

fn assert_openai_error(body: &str, kind: &str) -> Value {
    let v: Value = serde_json::from_str(body).expect("error body is JSON");
    assert_eq!(v["error"]["type"], kind, "{body}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        v["error"].get("param").is_some() && v["error"].get("code").is_some(),
        "{body}"
    );
    v
}

#[tokio::test]
async fn greedy_completion_matches_the_llama_cpp_reference() {
    let refs = reference("greedy.json");
    for case in refs["greedy"].as_array().expect("cases") {
        let prompt = case["prompt"].as_str().expect("prompt");
        let (status, body) = post(
            "/v1/completions",
            Some(&token()),
            json!({"model": MODEL_ID, "prompt": prompt, "max_tokens": 32, "temperature": 0}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        let text = v["choices"][0]["text"].as_str().expect("text");
        assert_eq!(
            text,
            case["output_text"].as_str().expect("ref"),
            "prompt {prompt:?}"
        );
        assert_eq!(v["usage"]["completion_tokens"], 32);
        assert_eq!(
            v["usage"]["prompt_tokens"],
            case["prompt_ids"].as_array().expect("ids").len()
        );
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }
}

#[tokio::test]
async fn chat_completion_non_stream() {
    let (status, body) = post(
        "/v1/chat/completions",
        Some(&token()),
        json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "What is 2+2?"}],
               "max_tokens": 12, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(!content.is_empty());
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap_or(0)
                + usage["completion_tokens"].as_u64().unwrap_or(0)
        )
    );
}

/// Parses an SSE body into its `data:` payloads.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|s| s.trim().to_string())
        .collect()
}

#[tokio::test]
async fn streamed_completion_equals_non_streamed_and_ends_with_done() {
    let body = json!({"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 12,
                      "temperature": 0});
    let (_, plain) = post("/v1/completions", Some(&token()), body.clone()).await;
    let plain: Value = serde_json::from_str(&plain).expect("json");
    let mut streamed = body;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, sse) = post("/v1/completions", Some(&token()), streamed).await;
    assert_eq!(status, 200, "{sse}");
    let events = sse_data(&sse);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{sse}");
    let mut text = String::new();
    let mut usage = None;
    let mut finish = None;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).expect("chunk json");
        if let Some(c) = v["choices"].get(0) {
            text.push_str(c["text"].as_str().unwrap_or(""));
            if !c["finish_reason"].is_null() {
                finish = Some(c["finish_reason"].clone());
            }
        }
        if !v["usage"].is_null() {
            usage = Some(v["usage"].clone());
        }
    }
    assert_eq!(text, plain["choices"][0]["text"].as_str().expect("text"));
    assert_eq!(finish, Some(json!("length")));
    assert_eq!(usage.expect("usage chunk")["completion_tokens"], 12);
}

#[tokio::test]
async fn streamed_chat_sends_role_then_content_deltas() {
    let (status, sse) = post(
        "/v1/chat/completions",
        Some(&token()),
        json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Say hi"}],
               "max_tokens": 8, "stream": true, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{sse}");
    let events = sse_data(&sse);
    let first: Value = serde_json::from_str(&events[0]).expect("json");
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(events.len() >= 3);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn stop_sequence_ends_generation_before_it() {
    let (status, body) = post(
        "/v1/completions",
        Some(&token()),
        json!({"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 16,
               "temperature": 0, "stop": ["\n"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    // The reference continues " Paris.\n\n...": generation stops at the newline.
    assert_eq!(v["choices"][0]["text"], " Paris.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401() {
    let body = json!({"model": MODEL_ID, "prompt": "hi", "max_tokens": 1});
    let (status, text) = post("/v1/completions", None, body.clone()).await;
    assert_eq!(status, 401);
    assert_openai_error(&text, "authentication_error");
    let (status, text) = post("/v1/completions", Some("not.a.jwt"), body.clone()).await;
    assert_eq!(status, 401);
    assert_openai_error(&text, "authentication_error");
    // A token whose signature was altered (a character in the middle of the signature part).
    let good = token();
    let sig_start = good.rfind('.').expect("three parts") + 1;
    let at = sig_start + 10;
    let replacement = if &good[at..=at] == "x" { "y" } else { "x" };
    let tampered = format!("{}{replacement}{}", &good[..at], &good[at + 1..]);
    let (status, _) = post("/v1/completions", Some(&tampered), body.clone()).await;
    assert_eq!(status, 401);
    // A valid token of a tenant the server does not serve.
    let stranger = fixture().token("stranger", &[Scope::Inference]);
    let (status, text) = post("/v1/completions", Some(&stranger), body.clone()).await;
    assert_eq!(status, 403);
    assert_openai_error(&text, "permission_error");
    // A valid token without the inference scope.
    let reader = fixture().token("demo", &[Scope::UsageRead]);
    let (status, _) = post("/v1/completions", Some(&reader), body).await;
    assert_eq!(status, 403);
    // Models listing needs a token too; health does not.
    let r = client()
        .get(format!("{}/v1/models", server().url))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 401);
    let r = client()
        .get(format!("{}/healthz", server().url))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn bad_input_gets_openai_shaped_400s() {
    let t = token();
    let cases = vec![
        (json!({"model": MODEL_ID}), "missing prompt"),
        (
            json!({"model": MODEL_ID, "prompt": "hi", "max_tokens": 0}),
            "max_tokens 0",
        ),
        (
            json!({"model": MODEL_ID, "prompt": "hi", "temperature": 9}),
            "temperature",
        ),
        (json!({"model": MODEL_ID, "prompt": "hi", "n": 3}), "n"),
        (
            json!({"model": MODEL_ID, "prompt": "hi", "bogus_field": 1}),
            "unknown field",
        ),
        (
            json!({"model": MODEL_ID, "prompt": "hi", "max_tokens": 100000}),
            "max_tokens cap",
        ),
    ];
    for (body, what) in cases {
        let (status, text) = post("/v1/completions", Some(&t), body).await;
        assert_eq!(status, 400, "{what}: {text}");
        assert_openai_error(&text, "invalid_request_error");
    }
    // Invalid JSON.
    let r = client()
        .post(format!("{}/v1/completions", server().url))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    assert_openai_error(&r.text().await.expect("body"), "invalid_request_error");
    // Unknown model: 404 naming the parameter.
    let (status, text) = post(
        "/v1/completions",
        Some(&t),
        json!({"model": "gpt-9", "prompt": "hi"}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        assert_openai_error(&text, "invalid_request_error")["error"]["param"],
        "model"
    );
    // Too long for the context window.
    let long = "word ".repeat(9000);
    let (status, text) = post(
        "/v1/completions",
        Some(&t),
        json!({"model": MODEL_ID, "prompt": long}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(
        assert_openai_error(&text, "invalid_request_error")["error"]["code"],
        "context_length_exceeded"
    );
}

#[tokio::test]
async fn models_lists_the_served_model() {
    let r = client()
        .get(format!("{}/v1/models", server().url))
        .bearer_auth(token())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["data"][0]["id"], MODEL_ID);
}

#[tokio::test]
async fn http2_is_negotiated() {
    let r = client()
        .get(format!("{}/healthz", server().url))
        .send()
        .await
        .expect("send");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}
