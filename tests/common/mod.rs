//! Shared fixtures for the integration tests: the real demo model (fetched and verified by the
//! project's own code), dev keys in a temporary state folder, the sealed model, and a real
//! server on 127.0.0.1:0 over TLS.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use cloister::auth::{DevIssuer, MintRequest, Scope, TenantId};
use cloister::config::Config;
use cloister::devstate::{self, StatePaths};
use cloister::keys::{Keyring, PublisherKey};
use cloister::model::{self, fetch};

pub const MODEL_ID: &str = "smollm2-135m-instruct";
pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "cloister-test";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub state: StatePaths,
    pub gguf: PathBuf,
    pub config_path: PathBuf,
    pub cfg: Config,
}

impl Fixture {
    pub fn keyring(&self) -> Keyring {
        Keyring::from_json(&std::fs::read_to_string(self.state.keyring()).expect("keyring"))
            .expect("keyring json")
    }

    pub fn publisher(&self) -> PublisherKey {
        let pem = std::fs::read_to_string(self.state.publisher_key()).expect("publisher");
        PublisherKey::from_pkcs8_pem(devstate::DEV_PUBLISHER_ID, &pem).expect("publisher pem")
    }

    pub fn issuer(&self) -> DevIssuer {
        let pem = std::fs::read_to_string(self.state.issuer_key()).expect("issuer");
        DevIssuer::from_pkcs8_pem(devstate::DEV_JWT_KID, &pem).expect("issuer pem")
    }

    pub fn token(&self, tenant: &str, scopes: &[Scope]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("time")
            .as_secs();
        self.issuer()
            .mint(MintRequest {
                issuer: ISSUER.into(),
                audience: AUDIENCE.into(),
                subject: "test".into(),
                tenant: TenantId::new(tenant).expect("tenant id"),
                scopes: scopes.iter().copied().collect(),
                ttl_secs: 600,
                now_unix: now,
            })
            .expect("mint")
    }
}

/// The demo model sealed with fresh dev keys, once per test binary.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let gguf = fetch::demo_model(&fetch::default_cache_dir()).expect("fetch demo model");
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StatePaths::new(dir.path().join("state"));
        devstate::init(&state).expect("init dev state");
        let sealed = state.sealed_model(MODEL_ID);
        let keyring =
            Keyring::from_json(&std::fs::read_to_string(state.keyring()).expect("kr")).expect("kr");
        let pem = std::fs::read_to_string(state.publisher_key()).expect("pub");
        let publisher =
            PublisherKey::from_pkcs8_pem(devstate::DEV_PUBLISHER_ID, &pem).expect("pub");
        model::seal_gguf_file(
            &gguf,
            &sealed,
            MODEL_ID,
            &keyring,
            &publisher,
            &mut |_, _| {},
        )
        .expect("seal demo model");
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"
# All tests of a binary share this server at once; the full engine queue is tested on its own.
queue_capacity = 64
[tls]
cert = "{cert}"
key = "{key}"
[model]
id = "{MODEL_ID}"
sealed = "{sealed}"
[keys]
keyring = "{keyring}"
trusted_publishers = [{{ id = "{pid}", public_key = "{pubkey}" }}]
[auth]
jwks = "{jwks}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
dev_issuer_key = "{issuer_key}"
[admin]
listen = "127.0.0.1:0"
[ledger]
path = "{ledger}"
[audit]
path = "{audit}"
signing_key = "{audit_key}"
public_key = "{audit_pub}"
log_id = "cloister-test"
key_id = "{audit_kid}"
[watermark]
keys = "{wm_keys}"
[plans.roomy]
requests_per_second = 1000
tokens_per_minute = 10000000
quota_tokens_per_day = 100000000
max_context_tokens = 8192
max_tokens = 2048
max_queued = 64
[plans.ratelimited]
requests_per_second = 1
request_burst = 1
tokens_per_minute = 100000
quota_tokens_per_day = 100000
max_context_tokens = 8192
max_tokens = 2048
max_queued = 8
[plans.queued]
requests_per_second = 1000
tokens_per_minute = 10000000
max_context_tokens = 8192
max_tokens = 2048
max_queued = 1
[plans.small]
requests_per_second = 1000
tokens_per_minute = 10000000
max_context_tokens = 64
max_tokens = 32
max_queued = 8
[plans.quota]
requests_per_second = 1000
tokens_per_minute = 10000000
quota_tokens_per_day = 60
max_context_tokens = 60
max_tokens = 16
max_queued = 4
[plans.other-model]
requests_per_second = 1000
tokens_per_minute = 10000000
max_context_tokens = 8192
max_tokens = 2048
max_queued = 4
allowed_models = ["some-other-model"]
[plans.trusted]
requests_per_second = 1000
tokens_per_minute = 10000000
max_context_tokens = 8192
max_tokens = 2048
max_queued = 64
[plans.trusted.confidence]
logprobs = true
trusted = true
max_top_logprobs = 20
rounding = 0.0
[plans.trusted-unmarked]
requests_per_second = 1000
tokens_per_minute = 10000000
max_context_tokens = 8192
max_tokens = 2048
max_queued = 64
watermark = false
[plans.trusted-unmarked.confidence]
logprobs = true
trusted = true
max_top_logprobs = 20
rounding = 0.0
[plans.extract]
requests_per_second = 1000
tokens_per_minute = 10000000
max_context_tokens = 8192
max_tokens = 2048
max_queued = 64
[plans.extract.confidence]
logprobs = true
[plans.extract.extraction]
max_logprob_requests = 2
cooldown_secs = 600
[plans.guarded]
requests_per_second = 1000
tokens_per_minute = 10000000
max_context_tokens = 8192
max_tokens = 2048
max_queued = 64
[plans.guarded.guard.input]
action_on_injection = "block"
[plans.guarded.guard.output]
action = "redact"
[plans.peek]
requests_per_second = 1000
tokens_per_minute = 10000000
max_context_tokens = 8192
max_tokens = 2048
max_queued = 64
[plans.peek.confidence]
logprobs = true
[plans.budget]
requests_per_second = 1000
tokens_per_minute = 10000000
max_context_tokens = 8192
max_tokens = 2048
max_queued = 64
[plans.budget.confidence]
logprobs = true
logprob_requests_per_day = 2
[plans.noisy]
requests_per_second = 1000
tokens_per_minute = 10000000
max_context_tokens = 8192
max_tokens = 2048
max_queued = 64
[plans.noisy.confidence]
logprobs = true
noise = 0.5
[[tenants]]
id = "noisy"
plan = "noisy"
[[tenants]]
id = "noisy-too"
plan = "noisy"
[[tenants]]
id = "demo"
plan = "roomy"
[[tenants]]
id = "insight"
plan = "trusted"
[[tenants]]
id = "insight-unmarked"
plan = "trusted-unmarked"
[[tenants]]
id = "extract"
plan = "extract"
[[tenants]]
id = "guarded"
plan = "guarded"
[[tenants]]
id = "peek"
plan = "peek"
[[tenants]]
id = "budget"
plan = "budget"
[[tenants]]
id = "acme"
plan = "roomy"
[[tenants]]
id = "ratelimited"
plan = "ratelimited"
[[tenants]]
id = "queued"
plan = "queued"
[[tenants]]
id = "small"
plan = "small"
[[tenants]]
id = "quota"
plan = "quota"
[[tenants]]
id = "elsewhere"
plan = "other-model"
# Used only by tenancy.rs's ledger test, which compares their usage before and after.
[[tenants]]
id = "ledger-a"
plan = "roomy"
[[tenants]]
id = "ledger-b"
plan = "roomy"
# Cross-tenant tests (tests/isolation.rs): ids that occur nowhere else, so any appearance in
# another tenant's response is a leak.
[[tenants]]
id = "alpha-7f3e"
plan = "roomy"
[[tenants]]
id = "bravo-91c2"
plan = "roomy"
"#,
            ledger = dir.path().join("ledger.sqlite").display(),
            audit = dir.path().join("audit.log").display(),
            audit_key = state.audit_key().display(),
            audit_pub = state.audit_public().display(),
            audit_kid = devstate::DEV_AUDIT_KEY_ID,
            wm_keys = state.watermark_keys().display(),
            cert = state.tls_cert().display(),
            key = state.tls_key().display(),
            sealed = sealed.display(),
            keyring = state.keyring().display(),
            pid = devstate::DEV_PUBLISHER_ID,
            pubkey = state.publisher_public().display(),
            jwks = state.jwks().display(),
            issuer_key = state.issuer_key().display(),
        );
        let config_path = dir.path().join("test.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let cfg = Config::load(&config_path).expect("config");
        Fixture {
            dir,
            state,
            gguf,
            config_path,
            cfg,
        }
    })
}

/// A running server on its own runtime (lives as long as the test binary).
pub struct TestServer {
    pub url: String,
    pub admin_url: String,
    pub ca_pem: Vec<u8>,
}

pub fn server() -> &'static TestServer {
    static S: OnceLock<TestServer> = OnceLock::new();
    S.get_or_init(|| {
        let f = fixture();
        let cfg = f.cfg.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                let server = cloister::server::start(cfg, listener)
                    .await
                    .expect("server start");
                tx.send((server.addr, server.admin_addr.expect("admin listener")))
                    .expect("send addr");
                let _ = server.wait().await;
            });
        });
        let (addr, admin) = rx.recv().expect("server address");
        TestServer {
            url: format!("https://127.0.0.1:{}", addr.port()),
            admin_url: format!("https://127.0.0.1:{}", admin.port()),
            ca_pem: std::fs::read(f.state.tls_cert()).expect("ca"),
        }
    })
}

/// An HTTPS client that trusts only the test server's dev certificate.
pub fn client() -> reqwest::Client {
    https_client(&[&server().ca_pem])
}

/// An HTTPS client that trusts exactly the given PEM certificates.
pub fn https_client(cas: &[&[u8]]) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder();
    for pem in cas {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem).expect("ca pem"));
    }
    b.build().expect("client")
}

/// The fixture's dev CA certificate.
pub fn dev_ca() -> Vec<u8> {
    std::fs::read(fixture().state.tls_cert()).expect("ca")
}

/// Reference data from tests/data/reference (a copy of the ground truth, kept in the repository
/// so a fresh clone needs nothing beside it).
pub fn reference(name: &str) -> serde_json::Value {
    let dir = std::env::var_os("CLOISTER_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/reference"));
    let text = std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("reference {name} in {}: {e}", dir.display()));
    serde_json::from_str(&text).expect("reference json")
}

impl Fixture {
    /// The sealed demo model opened on the CPU with the fixture's keys; its weights are locked
    /// where the memlock limit allows (tests that require locking open it themselves).
    pub fn open_demo_model(&self) -> model::LoadedModel {
        let (_, trusted) = model::load_key_material(&self.cfg).expect("key material");
        model::open_sealed(
            &self.cfg.sealed_model,
            &self.keyring(),
            &trusted,
            cloister::securemem::LockPolicy::BestEffort,
        )
        .expect("open the sealed demo model")
    }

    /// Writes the fixture config with `lines` added under `[model]` as `name`; returns its path.
    pub fn config_with_model_lines(&self, name: &str, lines: &str) -> PathBuf {
        let text = std::fs::read_to_string(&self.config_path).expect("config");
        assert!(
            text.contains("[model]"),
            "fixture config has a [model] table"
        );
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            text.replacen("[model]", &format!("[model]\n{lines}"), 1),
        )
        .expect("write config");
        path
    }

    /// Writes a copy of the fixture's config that serves `sealed` instead of the demo model
    /// (same keys, tenants, ledger and audit log) and returns its path.
    pub fn config_serving(&self, sealed: &std::path::Path, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(&self.config_path).expect("config");
        let old = format!("sealed = \"{}\"", self.cfg.sealed_model.display());
        assert!(text.contains(&old), "fixture config names its sealed model");
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            text.replace(&old, &format!("sealed = \"{}\"", sealed.display())),
        )
        .expect("write config");
        path
    }
}

mod figures;
pub mod memscan;
mod serve;
#[allow(unused_imports)] // Not every test binary records figures.
pub use figures::{figure, skipped};
pub use serve::ServeProcess;

impl ServeProcess {
    /// Starts `cloister serve --config <fixture config>` and waits until it listens.
    pub fn start() -> ServeProcess {
        Self::start_with(&fixture().config_path, "info")
    }
}
