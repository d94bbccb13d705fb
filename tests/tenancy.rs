//! Tenancy over HTTPS with the real model: plans, rate limits, quotas, per-tenant queues,
//! usage accounting, metrics access, and JWKS rotation without a restart.

mod common;

use std::time::{Duration, Instant};

use cloister::auth::{DevIssuer, MintRequest, Scope, TenantId};
use common::{client, fixture, server, AUDIENCE, ISSUER, MODEL_ID};
use serde_json::{json, Value};

async fn post(token: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/completions", server().url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("send")
}

fn completion(max_tokens: u32) -> Value {
    json!({"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": max_tokens,
           "temperature": 0})
}

async fn usage(tenant: &str) -> Value {
    let r = client()
        .get(format!("{}/v1/usage", server().url))
        .bearer_auth(fixture().token(tenant, &[Scope::UsageRead]))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

/// Usage once every reservation of the tenant has been settled (settlement is asynchronous).
async fn settled_usage(tenant: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let u = usage(tenant).await;
        if u["day"]["reserved_tokens"] == 0 || Instant::now() > deadline {
            return u;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn request_rate_limit_gives_429_with_retry_after_and_headers() {
    let t = fixture().token("ratelimited", &[Scope::Inference]);
    // Two requests at the same moment: the burst of 1 admits exactly one of them.
    let (a, b) = tokio::join!(post(&t, completion(1)), post(&t, completion(1)));
    let (first, second) = if a.status() == 200 { (a, b) } else { (b, a) };
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "1");
    assert!(first.headers().contains_key("x-ratelimit-remaining-tokens"));
    assert_eq!(second.status(), 429);
    let h = second.headers().clone();
    let retry: u64 = h["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("integer");
    assert!((1..=1).contains(&retry), "retry-after {retry}");
    assert_eq!(h["x-ratelimit-limit-requests"], "1");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    let body: Value = second.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "requests");
    // After the advertised wait the tenant is admitted again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(post(&t, completion(1)).await.status(), 200);
}

#[tokio::test]
async fn quota_exhaustion_is_insufficient_quota_and_never_overshot() {
    let t = fixture().token("quota", &[Scope::Inference]);
    let mut served = 0u64;
    let mut refused = None;
    for _ in 0..10 {
        let r = post(&t, completion(16)).await;
        match r.status().as_u16() {
            200 => {
                let v: Value = r.json().await.expect("json");
                served += v["usage"]["total_tokens"].as_u64().expect("total");
            }
            429 => {
                refused = Some(r.json::<Value>().await.expect("json"));
                break;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let refused = refused.expect("the daily quota of 60 tokens must run out");
    assert_eq!(refused["error"]["code"], "insufficient_quota");
    assert_eq!(refused["error"]["type"], "insufficient_quota");
    let u = settled_usage("quota").await;
    assert_eq!(u["day"]["used_tokens"].as_u64(), Some(served), "{u}");
    assert!(served <= 60, "quota overshot: {served}");
    assert_eq!(u["day"]["limit_tokens"], 60);
}

#[tokio::test]
async fn plan_caps_context_and_max_tokens() {
    let t = fixture().token("small", &[Scope::Inference]);
    let long = "word ".repeat(100);
    let r = post(
        &t,
        json!({"model": MODEL_ID, "prompt": long, "max_tokens": 4}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let r = post(&t, completion(33)).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["param"], "max_tokens");
    assert_eq!(post(&t, completion(32)).await.status(), 200);
}

#[tokio::test]
async fn a_model_outside_the_plan_looks_like_no_model_at_all() {
    let t = fixture().token("elsewhere", &[Scope::Inference]);
    let r = post(&t, completion(1)).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "model_not_found");
    let models: Value = client()
        .get(format!("{}/v1/models", server().url))
        .bearer_auth(&t)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(models["data"], json!([]));
}

#[tokio::test]
async fn tenant_queue_is_bounded_without_affecting_others() {
    let t = fixture().token("queued", &[Scope::Inference]);
    // A long stream takes the tenant's only slot. Its first event proves it was admitted and is
    // generating; with 2000 tokens to go it is still running when the next request arrives,
    // however fast the machine decodes (sleeping and hoping the timing fits did not: on a busy
    // CI runner the engine queue could refuse the long request, and nothing was ever held).
    let mut long_body = completion(2000);
    long_body["stream"] = json!(true);
    let mut long = post(&t, long_body).await;
    assert_eq!(long.status(), 200);
    let first = long.chunk().await.expect("read").expect("first event");
    assert!(first.starts_with(b"data: "), "an SSE event comes first");

    let r = post(&t, completion(1)).await;
    assert_eq!(r.status(), 429, "a second request while the slot is taken");
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "tenant_queue_full");

    // ...while another tenant is served normally.
    let other = post(&fixture().token("acme", &[Scope::Inference]), completion(1)).await;
    assert_eq!(other.status(), 200);

    // The client leaves: its sequence is dropped and the slot comes back.
    drop(long);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = post(&t, completion(1)).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(Instant::now() < deadline, "the slot was never returned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ledger_equals_tokens_served_under_concurrency() {
    // Tenants no other test uses, so the deltas are exactly ours.
    let before_a: u64 = settled_usage("ledger-a").await["day"]["used_tokens"]
        .as_u64()
        .expect("used");
    let before_b: u64 = settled_usage("ledger-b").await["day"]["used_tokens"]
        .as_u64()
        .expect("used");
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let tenant = if i % 2 == 0 { "ledger-a" } else { "ledger-b" };
        let t = fixture().token(tenant, &[Scope::Inference]);
        tasks.push(tokio::spawn(async move {
            let stream = i % 4 == 1;
            let mut body = completion(4 + i);
            if stream {
                body["stream"] = json!(true);
                body["stream_options"] = json!({"include_usage": true});
            }
            let r = post(&t, body).await;
            assert_eq!(r.status(), 200);
            let text = r.text().await.expect("body");
            let usage = if stream {
                text.lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                    .find(|v| !v["usage"].is_null())
                    .expect("usage chunk")["usage"]
                    .clone()
            } else {
                serde_json::from_str::<Value>(&text).expect("json")["usage"].clone()
            };
            (tenant, usage["total_tokens"].as_u64().expect("total"))
        }));
    }
    let (mut a, mut b) = (0, 0);
    for t in tasks {
        match t.await.expect("join") {
            ("ledger-a", n) => a += n,
            (_, n) => b += n,
        }
    }
    let after_a = settled_usage("ledger-a").await;
    let after_b = settled_usage("ledger-b").await;
    assert_eq!(
        after_a["day"]["used_tokens"].as_u64(),
        Some(before_a + a),
        "{after_a}"
    );
    assert_eq!(after_b["day"]["used_tokens"].as_u64(), Some(before_b + b));
    assert_eq!(
        after_a["tenant"], "ledger-a",
        "usage is the caller's own tenant"
    );
}

#[tokio::test]
async fn usage_needs_its_scope_and_metrics_need_admin() {
    let no_scope = fixture().token("demo", &[Scope::Inference]);
    let r = client()
        .get(format!("{}/v1/usage", server().url))
        .bearer_auth(&no_scope)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    let r = client()
        .get(format!("{}/metrics", server().url))
        .bearer_auth(fixture().token("demo", &[Scope::Inference, Scope::UsageRead]))
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.status(),
        403,
        "a tenant must not see other tenants' metrics"
    );
    // An operator token sees per-tenant series.
    assert_eq!(post(&no_scope, completion(1)).await.status(), 200);
    let r = client()
        .get(format!("{}/metrics", server().url))
        .bearer_auth(fixture().token("demo", &[Scope::Admin]))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("text");
    assert!(
        text.contains(
            r#"cloister_requests_total{tenant="demo",endpoint="completions",status="200"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains("cloister_time_to_first_token_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains(r#"cloister_tokens_total{tenant="demo",kind="completion"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn jwks_rotation_takes_effect_without_restart() {
    let f = fixture();
    let jwks_path = f.state.jwks();
    let original = std::fs::read_to_string(&jwks_path).expect("jwks");
    let new_issuer = DevIssuer::generate(&mut rand::rngs::OsRng, "rotated-2").expect("issuer");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let token = new_issuer
        .mint(MintRequest {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            subject: "rotation".into(),
            tenant: TenantId::new("acme").expect("tenant"),
            scopes: [Scope::Inference].into_iter().collect(),
            ttl_secs: 300,
            now_unix: now,
        })
        .expect("mint");
    let models = |t: String| async move {
        client()
            .get(format!("{}/v1/models", server().url))
            .bearer_auth(t)
            .send()
            .await
            .expect("send")
            .status()
            .as_u16()
    };
    assert_eq!(
        models(token.clone()).await,
        401,
        "unknown kid before rotation"
    );

    // Add the new key next to the old one.
    let mut set: Value = serde_json::from_str(&original).expect("json");
    set["keys"]
        .as_array_mut()
        .expect("keys")
        .push(new_issuer.public_jwk());
    write_atomically(&jwks_path, &set.to_string());
    let wait_for = |want: u16| {
        let token = token.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if models(token.clone()).await == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };
    assert!(
        wait_for(200).await,
        "a token of the newly added key must work after the JWKS change"
    );
    // Old tokens keep working while both keys are listed.
    assert_eq!(models(f.token("acme", &[Scope::Inference])).await, 200);

    // Remove the new key again: its tokens stop working.
    write_atomically(&jwks_path, &original);
    assert!(
        wait_for(401).await,
        "a token of a removed key must stop working"
    );
    assert_eq!(models(f.token("acme", &[Scope::Inference])).await, 200);
}

/// What an operator's deployment tool does: write beside, then rename over.
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}
