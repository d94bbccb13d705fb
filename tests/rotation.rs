//! Zero-downtime rotation of every key under load: while clients stream completions
//! continuously, rotate the KEK and rewrap the model, rotate the JWKS (add a key, move clients
//! to it, remove the old one) and replace the TLS certificate. No request that was valid at the
//! time may fail, and new handshakes must see the new certificate.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloister::auth::{DevIssuer, MintRequest, Scope, TenantId};
use common::{fixture, server, AUDIENCE, ISSUER, MODEL_ID};
use serde_json::{json, Value};

fn write_atomically(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("rotating");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn mint(issuer: &DevIssuer) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    issuer
        .mint(MintRequest {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            subject: "load".into(),
            tenant: TenantId::new("demo").expect("tenant"),
            scopes: [Scope::Inference].into_iter().collect(),
            ttl_secs: 600,
            now_unix: now,
        })
        .expect("mint")
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_rotates_under_load_without_a_failed_request() {
    let f = fixture();
    let s = server();
    let old_ca = s.ca_pem.clone();
    let (new_cert, new_key) = cloister::tls::self_signed_dev_cert().expect("cert");
    // Load clients trust both certificates, so a handshake on either succeeds.
    let load_client = common::https_client(&[&old_ca, new_cert.as_bytes()]);
    let token = Arc::new(Mutex::new(f.token("demo", &[Scope::Inference])));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for i in 0..3 {
        let (client, token, stop) = (load_client.clone(), token.clone(), stop.clone());
        let (ok, failed, failures) = (ok.clone(), failed.clone(), failures.clone());
        let url = s.url.clone();
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = token.lock().expect("lock").clone();
                let r = client
                    .post(format!("{url}/v1/completions"))
                    .bearer_auth(&t)
                    .json(
                        &json!({"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 8,
                                  "stream": i % 2 == 0}),
                    )
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let body = r.text().await.unwrap_or_default();
                        if i % 2 == 0 && !body.contains("[DONE]") {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures
                                .lock()
                                .expect("lock")
                                .push("stream cut".to_string());
                        } else {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures
                            .lock()
                            .expect("lock")
                            .push(format!("status {}", r.status()));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.lock().expect("lock").push(format!("error {e}"));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. KEK rotation and rewrap of the live model's file.
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloister"))
            .args(args)
            .arg("--config")
            .arg(&f.config_path)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["keys", "rotate"]);
    run(&["model", "rewrap"]);

    // 2. JWKS rotation: add a key, move clients to it, then remove the old one.
    let jwks_path = f.state.jwks();
    let original: Value =
        serde_json::from_str(&std::fs::read_to_string(&jwks_path).expect("jwks")).expect("json");
    let new_issuer = DevIssuer::generate(&mut rand::rngs::OsRng, "rotated-load").expect("issuer");
    let mut both = original.clone();
    both["keys"]
        .as_array_mut()
        .expect("keys")
        .push(new_issuer.public_jwk());
    write_atomically(&jwks_path, both.to_string().as_bytes());
    let new_token = mint(&new_issuer);
    let probe = load_client.clone();
    let url = s.url.clone();
    wait_until("the new JWT key is accepted", || {
        let (probe, url, t) = (probe.clone(), url.clone(), new_token.clone());
        async move {
            probe
                .get(format!("{url}/v1/models"))
                .bearer_auth(t)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    *token.lock().expect("lock") = new_token.clone();
    // Give in-flight requests that still carry the old token time to finish first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let only_new = json!({ "keys": [new_issuer.public_jwk()] });
    write_atomically(&jwks_path, only_new.to_string().as_bytes());
    let old_token = f.token("demo", &[Scope::Inference]);
    wait_until("the removed key is refused", || {
        let (probe, url, t) = (probe.clone(), url.clone(), old_token.clone());
        async move {
            probe
                .get(format!("{url}/v1/models"))
                .bearer_auth(t)
                .send()
                .await
                .is_ok_and(|r| r.status() == 401)
        }
    })
    .await;

    // 3. TLS certificate replacement: key first, then the certificate.
    write_atomically(&f.state.tls_key(), new_key.as_bytes());
    write_atomically(&f.state.tls_cert(), new_cert.as_bytes());
    let new_only = common::https_client(&[new_cert.as_bytes()]);
    wait_until("new handshakes present the new certificate", || {
        let (c, url) = (new_only.clone(), url.clone());
        async move {
            c.get(format!("{url}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    let old_only = common::https_client(&[&old_ca]);
    assert!(
        old_only.get(format!("{url}/healthz")).send().await.is_err(),
        "a client trusting only the old certificate must now fail the handshake"
    );

    // The offline rotation and rewrap were noticed and audited by the running server.
    let audit_path = f.cfg.audit.path.clone();
    wait_until("the rotation and the rewrap are in the audit log", || {
        let text = std::fs::read_to_string(&audit_path).unwrap_or_default();
        async move { text.contains("KeyRotated") && text.contains("ModelRewrapped") }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("rotation under load: {ok} requests succeeded, {failed} failed");
    // Every client finished at least one request that overlapped the rotations.
    assert!(ok >= 3, "too little load to mean anything: {ok}");
    assert_eq!(
        failed,
        0,
        "failures during rotation: {:?}",
        failures.lock().expect("lock")
    );
}
