//! The `cloister` binary itself: key set-up, sealing and verifying the real model, minting a
//! token, serving, and a clean exit on SIGTERM.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{fixture, MODEL_ID};

fn cloister() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cloister"));
    c.env("CLOISTER_LOG", "info");
    c
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().expect("run cloister");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{c:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn help_teaches_every_subcommand() {
    let help = run_ok(cloister().arg("--help"));
    for sub in [
        "quickstart",
        "serve",
        "seal",
        "verify",
        "token",
        "keys",
        "watermark",
    ] {
        assert!(help.contains(sub), "--help lacks {sub}:\n{help}");
    }
    let seal_help = run_ok(cloister().args(["seal", "--help"]));
    assert!(
        seal_help.contains("--model-id") && seal_help.contains("--keyring"),
        "{seal_help}"
    );
}

#[test]
fn seal_verify_and_refuse_overwrite_through_the_cli() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("cli.sealed");
    run_ok(
        cloister()
            .args(["seal", "--model-id", MODEL_ID])
            .arg("--input")
            .arg(&f.gguf)
            .arg("--output")
            .arg(&out)
            .arg("--keyring")
            .arg(f.state.keyring())
            .arg("--publisher-key")
            .arg(f.state.publisher_key()),
    );
    // The sealed file never contains the plaintext: a 4 KiB window of tensor data is absent.
    let plain = std::fs::read(&f.gguf).expect("gguf");
    let sealed = std::fs::read(&out).expect("sealed");
    let window = &plain[plain.len() / 2..plain.len() / 2 + 4096];
    assert!(
        !sealed.windows(window.len()).any(|w| w == window),
        "plaintext leaked into sealed file"
    );

    let report = run_ok(
        cloister()
            .arg("verify")
            .arg(&out)
            .arg("--config")
            .arg(&f.config_path),
    );
    assert!(report.contains("OK"), "{report}");
    // A flipped bit makes `verify` fail with the opaque message.
    let mut bad = sealed.clone();
    let n = bad.len();
    bad[n / 3] ^= 4;
    let bad_path = dir.path().join("bad.sealed");
    std::fs::write(&bad_path, bad).expect("write");
    let o = cloister()
        .arg("verify")
        .arg(&bad_path)
        .arg("--config")
        .arg(&f.config_path)
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("integrity, signature or key check failed"));
    // Sealing onto an existing file is refused.
    let o = cloister()
        .args(["seal", "--model-id", MODEL_ID])
        .arg("--input")
        .arg(&f.gguf)
        .arg("--output")
        .arg(&out)
        .arg("--keyring")
        .arg(f.state.keyring())
        .arg("--publisher-key")
        .arg(f.state.publisher_key())
        .output()
        .expect("run");
    assert!(!o.status.success());
}

#[test]
fn token_mint_prints_a_verifiable_jwt() {
    let f = fixture();
    let token = run_ok(
        cloister()
            .args([
                "token",
                "mint",
                "--tenant",
                "acme",
                "--scope",
                "inference",
                "--ttl",
                "60",
            ])
            .arg("--config")
            .arg(&f.config_path),
    );
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let jwks = cloister::auth::Jwks::from_json(&std::fs::read(f.state.jwks()).expect("jwks"))
        .expect("jwks");
    let verifier = cloister::auth::JwtVerifier::new(
        jwks,
        cloister::auth::VerifyPolicy::new(common::ISSUER, common::AUDIENCE),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let p = verifier.verify(token, now).expect("minted token verifies");
    assert_eq!(p.tenant.as_str(), "acme");
    assert!(p.require(cloister::auth::Scope::Inference).is_ok());
    assert!(p.require(cloister::auth::Scope::UsageRead).is_err());
}

#[test]
fn serve_starts_answers_and_exits_cleanly_on_sigterm() {
    let f = fixture();
    let mut server = common::ServeProcess::start();
    assert!(
        server.log.iter().any(|l| l.contains("sealed model loaded")),
        "{:?}",
        server.log
    );
    assert!(
        server
            .log
            .iter()
            .all(|l| !l.contains("BEGIN") && !l.contains("eyJ")),
        "secrets in logs: {:?}",
        server.log
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(f.state.tls_cert()).expect("ca"))
        .expect("pem");
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let status = rt.block_on(async {
        client
            .get(format!("{}/healthz", server.url()))
            .send()
            .await
            .expect("get")
            .status()
    });
    assert_eq!(status, 200);
    server.signal("TERM");
    let code = server.wait(Duration::from_secs(20));
    assert!(code.success(), "exit status {code}");
}

#[test]
fn watermark_detect_cli_does_not_flag_human_text() {
    let f = fixture();
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/human_corpus.txt");
    let out = run_ok(
        cloister()
            .args(["watermark", "detect", "--config"])
            .arg(&f.config_path)
            .args(["--file", corpus]),
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["detected"], false, "{v}");
    assert_eq!(v["key_id"], cloister::devstate::DEV_WATERMARK_ID);
    assert!(v["scored"].as_u64().expect("scored") > 200, "{v}");
    assert!(v["p_value"].as_f64().expect("p") > 1e-5, "{v}");
}

/// `device = "cuda"` where no GPU can serve: a CPU-only binary refuses the config, a CUDA build on
/// a machine without a driver refuses to start with the reason and the way out; neither crashes.
/// (On a GPU machine the CUDA build serves from the GPU: `tests/gpu_model.rs`.)
#[test]
fn serve_on_cuda_without_a_gpu_is_a_clear_refusal() {
    let f = fixture();
    let path = f.config_with_model_lines("cuda.toml", "device = \"cuda\"");
    let gpu_present = cfg!(feature = "cuda") && std::path::Path::new("/dev/nvidiactl").exists();
    if gpu_present {
        eprintln!("a GPU is present: the refusal is not exercised here");
        return;
    }
    let out = cloister()
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let reason = if cfg!(feature = "cuda") {
        "the GPU is not usable"
    } else {
        "--features cuda"
    };
    assert!(stderr.contains(reason), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A CUDA build allowed to fall back serves on the CPU and says so.
    if cfg!(feature = "cuda") {
        let fallback = f.config_with_model_lines(
            "cuda-fallback.toml",
            "device = \"cuda\"\ncpu_fallback = true",
        );
        let mut server = common::ServeProcess::start_with(&fallback, "info");
        let log = server.drain_log().join("\n");
        assert!(log.contains("serving on the CPU"), "{log}");
        assert!(log.contains("locked host memory"), "{log}");
        server.signal("TERM");
        server.wait(Duration::from_secs(20));
    }
}
