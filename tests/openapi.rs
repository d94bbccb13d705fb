//! The OpenAPI document: it parses as OpenAPI 3.1, lists exactly the routes the public router
//! serves, and the served `/openapi.json` is byte-for-byte what `cloister openapi` prints.

mod common;

use std::collections::BTreeSet;

use cloister::auth::Scope;
use common::{client, fixture, server, MODEL_ID};
use serde_json::{json, Value};

fn document() -> Value {
    serde_json::from_str(cloister::api::openapi::json()).expect("the document is JSON")
}

/// (path, lowercase method) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .map(move |m| (path.clone(), m.clone()))
        })
        .collect()
}

#[test]
fn document_is_openapi_31_and_lists_every_served_route() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let served: BTreeSet<(String, String)> = cloister::api::served_routes()
        .into_iter()
        .map(|(path, method)| (path.to_string(), method.as_str().to_lowercase()))
        .collect();
    assert_eq!(documented(&doc), served);
}

#[test]
fn document_states_auth_constraints_and_errors() {
    let doc = document();
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(scheme["bearerFormat"], "JWT");
    assert_eq!(doc["security"], json!([{ "bearer": [] }]));
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(doc["paths"][open]["get"]["security"], json!([{}]), "{open}");
    }
    for (path, method) in documented(&doc) {
        let op = &doc["paths"][&path][&method];
        if op.get("security").is_none() {
            for status in ["401", "403"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} lacks {status}"
                );
            }
        }
    }
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let responses = &doc["paths"][path]["post"]["responses"];
        for status in ["200", "400", "401", "403", "404", "429"] {
            assert!(responses[status].is_object(), "{path} lacks {status}");
        }
        assert!(responses["429"]["headers"]["retry-after"].is_object());
        assert_eq!(
            responses["400"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        assert!(responses["200"]["content"]["text/event-stream"].is_object());
    }
    let schemas = &doc["components"]["schemas"];
    let chat = &schemas["ChatRequest"];
    assert_eq!(chat["additionalProperties"], false);
    assert_eq!(chat["required"], json!(["model", "messages"]));
    assert_eq!(chat["properties"]["temperature"]["maximum"], 2);
    assert_eq!(
        chat["properties"]["logprobs"]["type"],
        json!(["boolean", "null"])
    );
    let completion = &schemas["CompletionRequest"];
    assert_eq!(completion["properties"]["logprobs"]["maximum"], 20);
    assert_eq!(completion["properties"]["max_tokens"]["minimum"], 1);
    assert_eq!(
        schemas["ErrorBody"]["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorObject"
    );
}

#[tokio::test]
async fn served_document_equals_the_cli_one() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloister"))
        .arg("openapi")
        .output()
        .expect("run cloister openapi");
    assert!(out.status.success());
    let cli = String::from_utf8(out.stdout).expect("utf-8");
    let resp = client()
        .get(format!("{}/openapi.json", server().url))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let served = resp.text().await.expect("body");
    // `println!` adds the newline.
    assert_eq!(cli, format!("{served}\n"));
}

/// Every documented operation is routed (no 404/405), and each secured one refuses a request
/// without a token with 401.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let doc = document();
    let c = client();
    for (path, method) in documented(&doc) {
        let url = format!("{}{path}", server().url);
        let req = match method.as_str() {
            "get" => c.get(&url),
            _ => c.post(&url).json(&json!({})),
        };
        let resp = req.send().await.expect("request");
        let secured = doc["paths"][&path][&method].get("security").is_none();
        let want = if secured { 401 } else { 200 };
        assert_eq!(resp.status(), want, "{method} {path}");
    }
}

/// Chat's `logprobs` is a boolean and completions' an integer, as documented.
#[tokio::test]
async fn logprobs_forms_are_per_endpoint() {
    let token = fixture().token("insight", &[Scope::Inference]);
    let c = client();
    let chat = c
        .post(format!("{}/v1/chat/completions", server().url))
        .bearer_auth(&token)
        .json(&json!({ "model": MODEL_ID, "max_tokens": 1, "logprobs": 2,
            "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .expect("request");
    assert_eq!(chat.status(), 400);
    let completion = c
        .post(format!("{}/v1/completions", server().url))
        .bearer_auth(&token)
        .json(&json!({ "model": MODEL_ID, "max_tokens": 1, "prompt": "hi", "logprobs": 2 }))
        .send()
        .await
        .expect("request");
    assert_eq!(completion.status(), 200);
    let body: Value = completion.json().await.expect("json");
    assert_eq!(
        body["choices"][0]["logprobs"]["top_logprobs"][0]
            .as_object()
            .map(|m| m.len() <= 2),
        Some(true)
    );
}

/// The input guard names the field the text came from (found reading the schemathesis run:
/// a completions prompt was reported as `messages`).
#[tokio::test]
async fn input_guard_errors_name_the_prompt_on_completions() {
    let token = fixture().token("demo", &[Scope::Inference]);
    let resp = client()
        .post(format!("{}/v1/completions", server().url))
        .bearer_auth(&token)
        .json(&json!({ "model": MODEL_ID, "max_tokens": 1, "prompt": "a\u{7}b" }))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_prompt");
    assert_eq!(body["error"]["param"], "prompt");
}
