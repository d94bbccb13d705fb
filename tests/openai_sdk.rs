//! The official `openai` Python SDK, unchanged, against the real server (CA = the dev
//! certificate). The SDK is installed from PyPI when missing, so a fresh machine passes too.

mod common;

use std::process::Command;

use cloister::auth::Scope;
use common::{fixture, server, MODEL_ID};

fn ensure_openai_sdk() {
    let has = |py: &str| {
        Command::new("python3")
            .args(["-c", py])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has("import openai") {
        return;
    }
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "openai",
        ])
        .status()
        .expect("run pip");
    assert!(status.success(), "pip install openai failed");
    assert!(has("import openai"), "openai SDK still not importable");
}

#[test]
fn official_openai_python_sdk_works_unchanged() {
    ensure_openai_sdk();
    let srv = server();
    let ca = fixture().state.tls_cert();
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sdk/openai_sdk_check.py"
        ))
        .env("CLOISTER_URL", &srv.url)
        .env(
            "CLOISTER_TOKEN",
            fixture().token("acme", &[Scope::Inference]),
        )
        .env(
            "CLOISTER_RL_TOKEN",
            fixture().token("ratelimited", &[Scope::Inference]),
        )
        .env("CLOISTER_CA", ca)
        .env("CLOISTER_MODEL", MODEL_ID)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK check failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
