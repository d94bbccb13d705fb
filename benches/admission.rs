//! Admission overhead per request (auth + rate limits + durable quota ledger) against the cost
//! of the cheapest real completion (`max_tokens: 1`), measured in one run.
//!
//! "Limits off" is the completion alone; "limits on" adds what admission does for every
//! request: verify the JWT, check the request rate, reserve tokens, reserve quota in SQLite
//! (WAL, synchronous=FULL), and at the end refund and commit.
//!
//! Run: `cargo bench --bench admission`

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloister::auth::{DevIssuer, Jwks, JwtVerifier, MintRequest, Scope, TenantId, VerifyPolicy};
use cloister::engine::SeqCache;
use cloister::limits::{Plan, RateLimits};
use cloister::model::{self, open_sealed};
use cloister::sampling::argmax;
use cloister::securemem::LockPolicy;
use cloister::store::{Ledger, SqliteLedger};

const N: usize = 200;

fn per_call(total: Duration, n: usize) -> f64 {
    total.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs();

    // Auth.
    let issuer = DevIssuer::generate(&mut rand::rngs::OsRng, "bench").expect("issuer");
    let jwks = Jwks::from_json(issuer.jwks_json().as_bytes()).expect("jwks");
    let verifier = JwtVerifier::new(jwks, VerifyPolicy::new("iss", "aud"));
    let token = issuer
        .mint(MintRequest {
            issuer: "iss".into(),
            audience: "aud".into(),
            subject: "bench".into(),
            tenant: TenantId::new("t").expect("tenant"),
            scopes: [Scope::Inference].into_iter().collect(),
            ttl_secs: 600,
            now_unix: now,
        })
        .expect("mint");

    // Limits.
    let plan = Plan {
        requests_per_second: NonZeroU32::new(1_000_000).expect("nonzero"),
        request_burst: None,
        tokens_per_minute: NonZeroU32::new(1_000_000_000).expect("nonzero"),
        token_burst: None,
        quota_tokens_per_day: Some(u64::MAX / 4),
        quota_tokens_per_month: None,
        max_context_tokens: 8192,
        max_tokens: 2048,
        max_queued: 64,
        kv_pool_bytes: None,
        allowed_models: vec![],
        confidence: Default::default(),
        watermark: true,
        extraction: Default::default(),
        guard: Default::default(),
    };
    let rates = RateLimits::new();
    rates.set_plan("t", &plan);
    let ledger = SqliteLedger::open(
        dir.path().join("ledger.sqlite"),
        HashMap::from([("t".to_string(), (plan.quota_tokens_per_day, None))]),
    )
    .expect("ledger");

    let t = Instant::now();
    for _ in 0..N {
        std::hint::black_box(verifier.verify(&token, now).expect("verify"));
    }
    let auth_us = per_call(t.elapsed(), N);

    let t = Instant::now();
    for _ in 0..N {
        rates.check_request("t").expect("rate");
        rates.reserve_tokens("t", 100).expect("tokens");
        rates.refund_tokens("t", 90).expect("refund");
    }
    let rate_us = per_call(t.elapsed(), N);

    let t = Instant::now();
    for i in 0..N {
        let r = ledger
            .reserve("t", &format!("r{i}"), 100, now)
            .expect("reserve");
        ledger.commit(&r, 10).expect("commit");
    }
    let ledger_us = per_call(t.elapsed(), N);

    // The cheapest completion: a short prompt, one generated token.
    let gguf = support::demo_gguf();
    let support::DevKeys {
        keyring,
        publisher,
        trusted,
    } = support::dev_keys(&dir.path().join("state"));
    let sealed = dir.path().join("m.sealed");
    model::seal_gguf_file(&gguf, &sealed, "m", &keyring, &publisher, &mut |_, _| {}).expect("seal");
    let loaded = open_sealed(&sealed, &keyring, &trusted, LockPolicy::Required).expect("load");
    let prompt = loaded
        .tokenizer
        .encode_text("Hello, how are you?")
        .expect("encode");
    let model = Arc::clone(&loaded.model);
    let rounds = 20;
    let t = Instant::now();
    for _ in 0..rounds {
        let mut cache = SeqCache::default();
        let logits = model.forward(&prompt, &mut cache).expect("forward");
        std::hint::black_box(argmax(&logits));
    }
    let completion_us = per_call(t.elapsed(), rounds);

    let overhead = auth_us + rate_us + ledger_us;
    println!("per request (µs): auth {auth_us:.1}, rate limits {rate_us:.1}, quota ledger {ledger_us:.1}");
    println!("admission overhead      {overhead:10.1} µs");
    println!("max_tokens=1 completion {completion_us:10.1} µs");
    println!("requests/s limits off   {:10.1}", 1e6 / completion_us);
    println!(
        "requests/s limits on    {:10.1}",
        1e6 / (completion_us + overhead)
    );
    println!(
        "overhead                {:10.2} %  (goal <= 3 %)",
        100.0 * overhead / completion_us
    );
}
