//! The KEK inside an HSM: seal the demo model with a KEK held in a SoftHSM2 token, serve it over
//! HTTPS, then rotate inside the token and rewrap. SoftHSM2 is installed by
//! `scripts/setup-softhsm.sh` (run by `.ci/run`); without it this test fails, it never skips.

mod common;

use std::path::PathBuf;
use std::process::Command;

use cloister::auth::Scope;
use cloister::config::Config;
use common::{fixture, MODEL_ID};
use serde_json::{json, Value};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "cloister-test";
const PIN: &str = "246810";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_serve_and_rotate_with_the_kek_in_softhsm2() {
    let module =
        std::env::var_os("SOFTHSM2_MODULE").map_or_else(|| PathBuf::from(MODULE), PathBuf::from);
    assert!(
        module.is_file(),
        "SoftHSM2 missing ({}): run scripts/setup-softhsm.sh",
        module.display()
    );
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).expect("mkdir");
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\n",
            tokens.display()
        ),
    )
    .expect("conf");
    // SoftHSM reads its configuration only from this variable. Test-only, set once before the
    // module is loaded in this process (this binary has a single test).
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let init = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--so-pin",
            "13579",
            "--pin",
            PIN,
        ])
        .output()
        .expect("softhsm2-util");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, PIN).expect("pin");

    // The fixture's config, with its own model file, ledger and audit log, and the HSM.
    let sealed = dir.path().join("hsm.sealed");
    let mut text = std::fs::read_to_string(&f.config_path).expect("config");
    text = text
        .replace(
            &f.cfg.sealed_model.display().to_string(),
            &sealed.display().to_string(),
        )
        .replace(
            &f.cfg.ledger.display().to_string(),
            &dir.path().join("l.sqlite").display().to_string(),
        )
        .replace(
            &f.cfg.audit.path.display().to_string(),
            &dir.path().join("a.log").display().to_string(),
        );
    text.push_str(&format!(
        "\n[keys.pkcs11]\nmodule = \"{}\"\ntoken_label = \"{TOKEN}\"\npin_file = \"{}\"\n",
        module.display(),
        pin_file.display()
    ));
    let config_path = dir.path().join("hsm.toml");
    std::fs::write(&config_path, text).expect("write config");
    let cfg = Config::load(&config_path).expect("config");

    // First KEK version, generated inside the token (non-extractable).
    let settings = cfg.pkcs11.clone().expect("pkcs11 settings");
    let hsm = cloister::model::open_pkcs11(&settings).expect("open token");
    assert_eq!(hsm.rotate().expect("v1"), 1);
    let publisher = f.publisher();
    cloister::model::seal_gguf_file(&f.gguf, &sealed, MODEL_ID, &hsm, &publisher, &mut |_, _| {})
        .expect("seal with the HSM KEK");

    // Serve it: the DEK is unwrapped inside the token.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = cloister::server::start(cfg.clone(), listener)
        .await
        .expect("start");
    let client = common::https_client(&[&common::dev_ca()]);
    let v: Value = client
        .post(format!("https://127.0.0.1:{}/v1/completions", server.addr.port()))
        .bearer_auth(f.token("demo", &[Scope::Inference]))
        .json(&json!({"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 2, "temperature": 0}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(v["choices"][0]["text"], " Paris.", "{v}");

    // Rotate inside the token and rewrap through the CLI, while the server keeps running.
    for args in [["keys", "rotate"], ["model", "rewrap"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_cloister"))
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let keys = cloister::model::key_provider(&cfg).expect("provider");
    let trusted = cloister::model::load_trusted(&cfg).expect("trusted");
    let kek = cloister::model::sealed_kek(&sealed, keys.as_ref(), &trusted).expect("sealed kek");
    assert_eq!((kek.id.as_str(), kek.version), ("cloister-kek", 2));
    cloister::model::verify_sealed_file(&sealed, keys.as_ref(), &trusted)
        .expect("verifies under v2");
    server.shutdown().await.expect("shutdown");
}
