//! Operations: the audit log (content and tamper evidence through the CLI), the admin API on
//! its own listener, and KEK rotation with header-only rewrap.

mod common;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use cloister::auth::Scope;
use cloister::keys::Keyring;
use cloister::seal::SealedFile;
use common::{client, fixture, server, MODEL_ID};
use serde_json::{json, Value};

fn cloister() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cloister"))
}

/// `cloister audit verify` on `log` with the fixture's config.
fn audit_verify(log: &std::path::Path) -> std::process::Output {
    cloister()
        .args(["audit", "verify", "--config"])
        .arg(&fixture().config_path)
        .arg("--log")
        .arg(log)
        .output()
        .expect("run")
}

fn audit_text() -> String {
    fs::read_to_string(&fixture().cfg.audit.path).expect("audit log")
}

#[tokio::test]
async fn audit_log_records_security_events_but_no_secrets_and_detects_tampering() {
    let f = fixture();
    let token = f.token("demo", &[Scope::Inference]);
    let secret_prompt = "The launch code for project bluebird is 7731";
    let r = client()
        .post(format!("{}/v1/completions", server().url))
        .bearer_auth(&token)
        .json(&json!({"model": MODEL_ID, "prompt": secret_prompt, "max_tokens": 3}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let completion: Value = r.json().await.expect("json");
    let completion_text = completion["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    let r = client()
        .get(format!("{}/v1/models", server().url))
        .bearer_auth("garbage.token.here")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    // Settlement and the failed-login record are appended off the request path.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(audit_text().contains("RequestCompleted") && audit_text().contains("AuthFailed"))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = audit_text();
    for event in [
        "ServerStart",
        "ModelUnsealed",
        "RequestCompleted",
        "AuthFailed",
    ] {
        assert!(log.contains(event), "{event} missing from the audit log");
    }
    assert!(
        !log.contains(secret_prompt),
        "prompt text leaked into the audit log"
    );
    assert!(
        !log.contains("bluebird"),
        "prompt words leaked into the audit log"
    );
    if completion_text.trim().len() > 3 {
        assert!(
            !log.contains(completion_text.trim()),
            "completion leaked into the audit log"
        );
    }
    assert!(
        !log.contains(&token) && !log.contains("eyJ"),
        "token leaked into the audit log"
    );
    assert!(
        !log.contains("PRIVATE KEY"),
        "key material in the audit log"
    );

    // The CLI verifies a copy of the live log, and names the first bad line of a tampered one.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("audit.log");
    // Only whole lines: the server may be appending right now.
    let whole: String = log
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .collect();
    fs::write(&copy, &whole).expect("copy");
    let out = audit_verify(&copy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    let lines: Vec<&str> = whole.lines().collect();
    assert!(lines.len() >= 3);
    let tampered = whole.replacen("\"prompt_tokens\":", "\"prompt_tokens\":1", 1);
    assert_ne!(tampered, whole);
    fs::write(&copy, tampered).expect("write");
    let out = audit_verify(&copy);
    assert!(
        !out.status.success(),
        "a tampered log must fail verification"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FAILED at line"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Deleting a record breaks the chain as well.
    let mut deleted = lines.clone();
    deleted.remove(1);
    fs::write(&copy, deleted.join("\n") + "\n").expect("write");
    let out = audit_verify(&copy);
    assert!(
        !out.status.success(),
        "a log with a deleted record must fail verification"
    );
}

async fn admin_get(base: &str, path: &str, scopes: &[Scope]) -> (u16, Value) {
    let r = client()
        .get(format!("{base}{path}"))
        .bearer_auth(fixture().token("acme", scopes))
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn admin_api_is_on_its_own_listener_and_needs_admin_scope() {
    let s = server();
    let (status, body) = admin_get(&s.admin_url, "/admin/status", &[Scope::Admin]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], MODEL_ID);
    assert_eq!(body["loaded_kek"]["id"], cloister::devstate::DEV_KEYRING_ID);
    let (status, _) = admin_get(&s.admin_url, "/admin/status", &[Scope::Inference]).await;
    assert_eq!(status, 403);
    let (status, _) = admin_get(&s.url, "/admin/status", &[Scope::Admin]).await;
    assert_eq!(status, 404, "the admin API must not be on the public port");
    let (status, body) = admin_get(&s.admin_url, "/admin/tenants", &[Scope::Admin]).await;
    assert_eq!(status, 200);
    assert!(
        body["tenants"].as_array().is_some_and(|t| t.len() >= 2),
        "{body}"
    );
    let (status, head) = admin_get(&s.admin_url, "/admin/audit/head", &[Scope::Admin]).await;
    assert_eq!(status, 200);
    assert!(head["next_seq"].as_u64().is_some_and(|n| n > 0), "{head}");
    let r = client()
        .post(format!("{}/admin/audit/checkpoint", s.admin_url))
        .bearer_auth(fixture().token("acme", &[Scope::Admin]))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert!(
        audit_text().contains("\"checkpoint\""),
        "a signed checkpoint line is written"
    );
    assert!(audit_text().contains("AdminAction"));
}

#[test]
fn kek_rotation_rewraps_only_the_header_and_retire_waits_for_rewrap() {
    let f = fixture();
    let _ = server(); // the live server keeps serving from memory throughout
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("copy.sealed");
    fs::copy(&f.cfg.sealed_model, &copy).expect("copy");
    let before = fs::read(&copy).expect("read");

    let out = cloister()
        .args(["keys", "rotate", "--config"])
        .arg(&f.config_path)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keyring =
        Keyring::from_json(&fs::read_to_string(f.state.keyring()).expect("kr")).expect("kr");
    assert_eq!(keyring.active_version(), 2);
    let trusted = cloister::model::load_trusted(&f.cfg).expect("trusted");

    // Rewrap the copy in-process to time it (the demo model is 98 MB; only the header changes).
    let started = Instant::now();
    let report = cloister::model::rewrap_sealed_file(&copy, &keyring, &trusted).expect("rewrap");
    let elapsed = started.elapsed();
    assert!(
        report.in_place,
        "same-length envelope is rewritten in place"
    );
    assert_eq!((report.from.version, report.to.version), (1, 2));
    // Time is a benchmark figure (`cargo bench --bench sealed_load`), not a test assertion;
    // what makes it O(header) is checked structurally: in place, chunks untouched.
    println!("rewrap of the demo model took {elapsed:?}");
    let after = fs::read(&copy).expect("read");
    let chunks_at = SealedFile::open(std::io::Cursor::new(&after), &trusted, &keyring)
        .expect("opens under v2")
        .layout()
        .chunks_offset as usize;
    assert_eq!(before.len(), after.len());
    assert!(
        before[chunks_at..] == after[chunks_at..],
        "chunk bytes must be untouched"
    );
    assert_ne!(
        before[..chunks_at],
        after[..chunks_at],
        "the envelope changed"
    );

    // Retiring v1 is refused while the configured model still needs it...
    let retire = || {
        cloister()
            .args(["keys", "retire", "--below", "2", "--config"])
            .arg(&f.config_path)
            .output()
            .expect("run")
    };
    let out = retire();
    assert!(!out.status.success(), "retire must wait for the rewrap");
    assert!(String::from_utf8_lossy(&out.stderr).contains("model rewrap"));
    // ...and allowed once it is rewrapped (through the CLI this time).
    let out = cloister()
        .args(["model", "rewrap", "--config"])
        .arg(&f.config_path)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("-> dev-kek@2"));
    let out = retire();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The original file, still under v1, can no longer be opened.
    let old = dir.path().join("old.sealed");
    fs::write(&old, &before).expect("write");
    let keyring =
        Keyring::from_json(&fs::read_to_string(f.state.keyring()).expect("kr")).expect("kr");
    assert!(cloister::model::verify_sealed_file(&old, &keyring, &trusted).is_err());
    assert!(cloister::model::verify_sealed_file(&f.cfg.sealed_model, &keyring, &trusted).is_ok());
}
