//! Crash safety of the quota ledger: SIGKILL the server while requests are streaming, restart
//! it, and check that no committed usage was lost and dangling reservations were reconciled.

mod common;

use std::time::{Duration, Instant};

use cloister::auth::Scope;
use common::{fixture, ServeProcess, MODEL_ID};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    common::https_client(&[&common::dev_ca()])
}

async fn usage(url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: Value = client()
            .get(format!("{url}/v1/usage"))
            .bearer_auth(fixture().token("demo", &[Scope::UsageRead]))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        if v["day"]["reserved_tokens"] == 0 || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_no_committed_usage() {
    let token = fixture().token("demo", &[Scope::Inference]);
    let server = ServeProcess::start();
    let url = server.url();
    let mut committed = 0u64;
    for _ in 0..3 {
        let v: Value = client()
            .post(format!("{url}/v1/completions"))
            .bearer_auth(&token)
            .json(
                &json!({"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 6}),
            )
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        committed += v["usage"]["total_tokens"].as_u64().expect("usage");
    }
    let settled = usage(&url).await;
    assert_eq!(settled["day"]["used_tokens"].as_u64(), Some(committed));

    // Streams in flight when the process is killed.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let (url, token) = (url.clone(), token.clone());
        streams.push(tokio::spawn(async move {
            let r = client()
                .post(format!("{url}/v1/completions"))
                .bearer_auth(&token)
                .json(
                    &json!({"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 200,
                              "stream": true}),
                )
                .send()
                .await;
            if let Ok(mut r) = r {
                while let Ok(Some(_)) = r.chunk().await {}
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal("KILL");
    drop(server);
    for s in streams {
        let _ = s.await;
    }

    let restarted = ServeProcess::start();
    assert!(
        restarted
            .log
            .iter()
            .any(|l| l.contains("charged reservations left open")),
        "dangling reservations must be reconciled at start-up: {:?}",
        restarted.log
    );
    let after = usage(&restarted.url()).await;
    let used = after["day"]["used_tokens"].as_u64().expect("used");
    assert!(
        used >= committed,
        "committed usage lost: {used} < {committed}"
    );
    // Dangling reservations are charged at most at their reserved worst case (prompt + 200).
    assert!(used <= committed + 3 * (4 + 200), "over-charged: {used}");
    assert_eq!(
        after["day"]["reserved_tokens"], 0,
        "no reservation left open after restart"
    );
}
