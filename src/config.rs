//! Typed server configuration from a TOML file (see `configs/`).
//!
//! Unknown keys are errors (a typo must not silently fall back to a default), every problem is
//! reported at once, and secrets are only ever referenced by path — never inline. Relative paths
//! are resolved against the directory of the config file, so a config works from any working
//! directory.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::api::RequestLimits;
use crate::audit::{AuditConfig, RetentionPolicy};
use crate::limits::Plan;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid:\n  - {}", problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    tls: RawTls,
    model: RawModel,
    keys: RawKeys,
    auth: RawAuth,
    #[serde(default)]
    limits: RawLimits,
    ledger: RawLedger,
    audit: RawAudit,
    admin: Option<RawAdmin>,
    #[serde(default)]
    watermark: Option<RawWatermark>,
    #[serde(default)]
    plans: BTreeMap<String, Plan>,
    #[serde(default)]
    tenants: Vec<RawTenant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// The admin API's own listener (never the public port).
    listen: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: PathBuf,
    signing_key: PathBuf,
    public_key: PathBuf,
    log_id: String,
    key_id: String,
    #[serde(default = "default_checkpoint_every")]
    checkpoint_every: u64,
    #[serde(default = "default_fsync_every")]
    fsync_every: u64,
    #[serde(default = "default_retention_days")]
    retention_days: u32,
}

fn default_checkpoint_every() -> u64 {
    100
}
fn default_fsync_every() -> u64 {
    1
}
fn default_retention_days() -> u32 {
    183
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatermark {
    /// Watermark keyring file (0600; created by `cloister keys init`).
    keys: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    /// SQLite file holding the durable token-quota ledger.
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: SocketAddr,
    #[serde(default = "default_queue")]
    queue_capacity: usize,
    /// Sequences decoded together in one engine step (any tenants).
    #[serde(default = "default_max_running")]
    max_running: usize,
    /// Refuse to start when the weights cannot be `mlock`ed (recommended).
    #[serde(default = "yes")]
    require_locked_weights: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    id: String,
    sealed: PathBuf,
    /// Where the model runs: "cpu" (default) or "cuda" (needs a build with `--features cuda`).
    #[serde(default)]
    device: Option<String>,
    /// With device = "cuda": serve on the CPU when no GPU is usable, instead of refusing to start.
    #[serde(default)]
    cpu_fallback: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    /// Local keyring file; used when `pkcs11` is absent.
    keyring: PathBuf,
    trusted_publishers: Vec<RawPublisher>,
    /// KEKs inside an HSM instead of the keyring file.
    pkcs11: Option<RawPkcs11>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPkcs11 {
    module: PathBuf,
    token_label: String,
    /// File holding the user PIN (never inline).
    pin_file: PathBuf,
    #[serde(default = "default_kek_prefix")]
    key_label_prefix: String,
}

fn default_kek_prefix() -> String {
    "cloister-kek".into()
}

/// Where the KEKs live when they live in an HSM.
#[derive(Debug, Clone, PartialEq)]
pub struct Pkcs11Settings {
    pub module: PathBuf,
    pub token_label: String,
    pub pin_file: PathBuf,
    pub key_label_prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublisher {
    id: String,
    public_key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    jwks: PathBuf,
    issuer: String,
    audience: String,
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    /// Private key of the development token issuer (`cloister token mint`); never used by `serve`.
    dev_issuer_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_prompt_bytes: Option<usize>,
    max_messages: Option<usize>,
    max_tokens_cap: Option<usize>,
    chat_default_max_tokens: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: String,
    /// Name of a `[plans.NAME]` table.
    plan: String,
}

fn default_queue() -> usize {
    64
}
fn default_max_running() -> usize {
    16
}
fn default_leeway() -> u64 {
    30
}
fn yes() -> bool {
    true
}

/// A checked configuration with absolute paths.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub queue_capacity: usize,
    pub max_running: usize,
    pub require_locked_weights: bool,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub model_id: String,
    pub sealed_model: PathBuf,
    pub device: ModelDevice,
    pub keyring: PathBuf,
    pub pkcs11: Option<Pkcs11Settings>,
    pub trusted_publishers: Vec<(String, PathBuf)>,
    pub jwks: PathBuf,
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
    pub dev_issuer_key: Option<PathBuf>,
    pub limits: RequestLimits,
    pub ledger: PathBuf,
    pub audit: AuditConfig,
    /// Watermark keyring; `None` = completions are not watermarked (logged at start-up).
    pub watermark_keys: Option<PathBuf>,
    pub tenants: Vec<TenantConfig>,
    /// The file this config was read from (for reloads).
    pub source: Option<PathBuf>,
}

/// Where the model's weights live and its forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelDevice {
    /// Locked host memory, the CPU engine.
    Cpu,
    /// GPU 0: weights decrypted only in device memory, per-tenant device KV pools.
    Cuda {
        /// Serve on the CPU (with a warning) when no GPU is usable, instead of refusing to start.
        cpu_fallback: bool,
    },
}

/// A tenant and the plan it is on.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub id: String,
    pub plan_name: String,
    pub plan: Plan,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut cfg = Config::parse(&text, base).map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })?;
        cfg.source = Some(path.to_owned());
        Ok(cfg)
    }

    /// Parses and checks `text`; relative paths are resolved against `base`. File existence is
    /// not checked here (see [`Config::missing_files`]).
    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<String>> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut problems = Vec::new();
        let abs = |p: &Path| -> PathBuf { normalize(&base.join(p)) };
        if raw.server.queue_capacity == 0 || raw.server.queue_capacity > 100_000 {
            problems.push("server.queue_capacity must be between 1 and 100000".into());
        }
        if raw.server.max_running == 0 || raw.server.max_running > 1024 {
            problems.push("server.max_running must be between 1 and 1024".into());
        }
        if raw.model.id.is_empty() || raw.model.id.len() > 128 {
            problems.push("model.id must be 1 to 128 characters".into());
        }
        if raw.keys.trusted_publishers.is_empty() {
            problems.push("keys.trusted_publishers must name at least one publisher key".into());
        }
        if raw.auth.issuer.is_empty() || raw.auth.audience.is_empty() {
            problems.push("auth.issuer and auth.audience must not be empty".into());
        }
        if raw.auth.leeway_secs > 300 {
            problems.push("auth.leeway_secs must be at most 300".into());
        }
        let mut seen = HashSet::new();
        for t in &raw.tenants {
            let ok = !t.id.is_empty()
                && t.id.len() <= 64
                && t.id.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !ok {
                problems.push(format!(
                    "tenant id {:?} must be 1-64 characters of a-z, 0-9, '-' or '_'",
                    t.id
                ));
            }
            if !seen.insert(t.id.as_str()) {
                problems.push(format!("tenant {:?} is listed twice", t.id));
            }
        }
        if raw.tenants.is_empty() {
            problems.push("at least one [[tenants]] entry is required".into());
        }
        for (name, plan) in &raw.plans {
            if let Err(errors) = plan.validate() {
                for p in errors.0 {
                    problems.push(format!("plans.{name}: {p}"));
                }
            }
        }
        let mut tenants = Vec::with_capacity(raw.tenants.len());
        for t in &raw.tenants {
            match raw.plans.get(&t.plan) {
                Some(plan) => tenants.push(TenantConfig {
                    id: t.id.clone(),
                    plan_name: t.plan.clone(),
                    plan: plan.clone(),
                }),
                None => problems.push(format!(
                    "tenant {:?} names plan {:?}, which is not defined under [plans]",
                    t.id, t.plan
                )),
            }
        }
        let d = RequestLimits::default();
        let limits = RequestLimits {
            max_prompt_bytes: raw.limits.max_prompt_bytes.unwrap_or(d.max_prompt_bytes),
            max_messages: raw.limits.max_messages.unwrap_or(d.max_messages),
            max_tokens_cap: raw.limits.max_tokens_cap.unwrap_or(d.max_tokens_cap),
            chat_default_max_tokens: raw
                .limits
                .chat_default_max_tokens
                .unwrap_or(d.chat_default_max_tokens),
        };
        if limits.max_prompt_bytes == 0 || limits.max_prompt_bytes > 900 * 1024 {
            problems.push("limits.max_prompt_bytes must be between 1 and 921600".into());
        }
        if limits.max_tokens_cap == 0 || limits.chat_default_max_tokens == 0 {
            problems.push("limits.max_tokens_cap and chat_default_max_tokens must be >= 1".into());
        }
        if limits.chat_default_max_tokens > limits.max_tokens_cap {
            problems.push("limits.chat_default_max_tokens must not exceed max_tokens_cap".into());
        }
        if let Err(e) = RetentionPolicy::new(raw.audit.retention_days) {
            problems.push(format!("audit.retention_days: {e}"));
        }
        if raw.audit.checkpoint_every == 0 || raw.audit.fsync_every == 0 {
            problems.push("audit.checkpoint_every and audit.fsync_every must be >= 1".into());
        }
        for (what, id) in [
            ("audit.log_id", &raw.audit.log_id),
            ("audit.key_id", &raw.audit.key_id),
        ] {
            if let Err(e) = crate::audit::ids::check_id(id) {
                problems.push(format!("{what}: {e}"));
            }
        }
        let device = match raw.model.device.as_deref() {
            None | Some("cpu") => ModelDevice::Cpu,
            Some("cuda") if cfg!(feature = "cuda") => ModelDevice::Cuda {
                cpu_fallback: raw.model.cpu_fallback,
            },
            Some("cuda") => {
                problems.push(
                    "model.device = \"cuda\" needs a binary built with `--features cuda` \
                     (this one is CPU-only); set device = \"cpu\" or rebuild"
                        .into(),
                );
                ModelDevice::Cpu
            }
            Some(other) => {
                problems.push(format!(
                    "model.device must be \"cpu\" or \"cuda\", not {other:?}"
                ));
                ModelDevice::Cpu
            }
        };
        if raw.model.cpu_fallback && matches!(raw.model.device.as_deref(), None | Some("cpu")) {
            problems.push("model.cpu_fallback only applies with device = \"cuda\"".into());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            listen: raw.server.listen,
            admin_listen: raw.admin.as_ref().map(|a| a.listen),
            queue_capacity: raw.server.queue_capacity,
            max_running: raw.server.max_running,
            require_locked_weights: raw.server.require_locked_weights,
            tls_cert: abs(&raw.tls.cert),
            tls_key: abs(&raw.tls.key),
            model_id: raw.model.id,
            sealed_model: abs(&raw.model.sealed),
            device,
            keyring: abs(&raw.keys.keyring),
            pkcs11: raw.keys.pkcs11.as_ref().map(|p| Pkcs11Settings {
                module: abs(&p.module),
                token_label: p.token_label.clone(),
                pin_file: abs(&p.pin_file),
                key_label_prefix: p.key_label_prefix.clone(),
            }),
            trusted_publishers: raw
                .keys
                .trusted_publishers
                .iter()
                .map(|p| (p.id.clone(), abs(&p.public_key)))
                .collect(),
            jwks: abs(&raw.auth.jwks),
            issuer: raw.auth.issuer,
            audience: raw.auth.audience,
            leeway_secs: raw.auth.leeway_secs,
            dev_issuer_key: raw.auth.dev_issuer_key.as_deref().map(abs),
            limits,
            ledger: abs(&raw.ledger.path),
            audit: AuditConfig {
                path: abs(&raw.audit.path),
                signing_key: abs(&raw.audit.signing_key),
                public_key: abs(&raw.audit.public_key),
                log_id: raw.audit.log_id,
                key_id: raw.audit.key_id,
                checkpoint_every: raw.audit.checkpoint_every,
                fsync_every: raw.audit.fsync_every,
                retention_days: raw.audit.retention_days,
            },
            watermark_keys: raw.watermark.as_ref().map(|w| abs(&w.keys)),
            tenants,
            source: None,
        })
    }

    /// Files the server needs at start-up that do not exist, all at once.
    pub fn missing_files(&self) -> Vec<String> {
        let mut files: Vec<(&str, &Path)> = vec![
            ("tls.cert", &self.tls_cert),
            ("tls.key", &self.tls_key),
            ("model.sealed", &self.sealed_model),
            ("keys.keyring", &self.keyring),
            ("auth.jwks", &self.jwks),
            ("audit.signing_key", &self.audit.signing_key),
        ];
        if let Some(p) = &self.watermark_keys {
            files.push(("watermark.keys", p));
        }
        for (_, p) in &self.trusted_publishers {
            files.push(("keys.trusted_publishers", p));
        }
        files
            .into_iter()
            .filter(|(_, p)| !p.exists())
            .map(|(k, p)| format!("{k}: {} does not exist", p.display()))
            .collect()
    }
}

/// Removes `.` and `name/..` pairs without touching the file system (the files may not exist
/// yet), so paths in messages read the way an operator would write them.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:8443"
        [tls]
        cert = "tls/cert.pem"
        key = "/abs/key.pem"
        [model]
        id = "m"
        sealed = "m.sealed"
        [keys]
        keyring = "kek.json"
        trusted_publishers = [{ id = "dev", public_key = "pub.pem" }]
        [auth]
        jwks = "jwks.json"
        issuer = "iss"
        audience = "aud"
        [ledger]
        path = "ledger.sqlite"
        [audit]
        path = "audit.log"
        signing_key = "audit.pem"
        public_key = "audit.pub.pem"
        log_id = "test"
        key_id = "audit-1"
        [plans.basic]
        requests_per_second = 2
        tokens_per_minute = 10000
        max_context_tokens = 8192
        max_tokens = 1024
        max_queued = 4
        [[tenants]]
        id = "demo"
        plan = "basic"
    "#;

    #[test]
    fn parses_and_resolves_relative_paths() {
        let c = Config::parse(GOOD, Path::new("/etc/cloister")).expect("valid");
        assert_eq!(c.tls_cert, Path::new("/etc/cloister/tls/cert.pem"));
        assert_eq!(c.tls_key, Path::new("/abs/key.pem"));
        let c = Config::parse(
            &GOOD.replace("m.sealed", "../state/./m.sealed"),
            Path::new("configs"),
        )
        .expect("valid");
        assert_eq!(c.sealed_model, Path::new("state/m.sealed"));
        assert_eq!(c.queue_capacity, 64);
        assert_eq!(c.max_running, 16);
        assert!(c.require_locked_weights);
        assert_eq!(c.tenants[0].id, "demo");
        assert_eq!(c.tenants[0].plan.max_tokens, 1024);
        assert_eq!(c.ledger, Path::new("configs/ledger.sqlite"));
    }

    #[test]
    fn shipped_configs_are_valid() {
        for name in ["dev.toml", "production.example.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("configs")
                .join(name);
            let text = std::fs::read_to_string(&path).expect("config");
            let c = Config::parse(&text, Path::new("configs"))
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert!(!c.tenants.is_empty(), "{name}");
            assert!(
                c.admin_listen.is_some(),
                "{name}: admin API on its own listener"
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let bad = GOOD.replace("[model]", "[model]\nsealed_typo = 1");
        let err = Config::parse(&bad, Path::new("/")).expect_err("unknown key");
        assert!(err[0].contains("sealed_typo"), "{err:?}");
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let bad = GOOD
            .replace("id = \"demo\"", "id = \"Demo!\"")
            .replace("issuer = \"iss\"", "issuer = \"\"")
            .replace(
                "listen = \"127.0.0.1:8443\"",
                "listen = \"127.0.0.1:8443\"\nqueue_capacity = 0\nmax_running = 0",
            );
        let bad = bad
            .replace("plan = \"basic\"", "plan = \"gold\"")
            .replace("max_queued = 4", "max_queued = 0");
        let err = Config::parse(&bad, Path::new("/")).expect_err("invalid");
        assert_eq!(err.len(), 6, "{err:?}");
        assert!(
            err.iter().any(|e| e.contains("server.max_running")),
            "{err:?}"
        );
        assert!(
            err.iter().any(|e| e.contains("plans.basic: max_queued")),
            "{err:?}"
        );
        assert!(err.iter().any(|e| e.contains("\"gold\"")), "{err:?}");
    }

    #[test]
    fn model_device_defaults_to_cpu_and_cuda_needs_the_feature() {
        let c = Config::parse(GOOD, Path::new("/")).expect("valid");
        assert_eq!(c.device, ModelDevice::Cpu);
        let cuda = GOOD.replace("[model]", "[model]\ndevice = \"cuda\"\ncpu_fallback = true");
        let parsed = Config::parse(&cuda, Path::new("/"));
        if cfg!(feature = "cuda") {
            let c = parsed.expect("cuda build takes device = cuda");
            assert_eq!(c.device, ModelDevice::Cuda { cpu_fallback: true });
        } else {
            let e = parsed.expect_err("CPU-only build refuses device = cuda");
            assert!(e.iter().any(|p| p.contains("--features cuda")), "{e:?}");
            assert_eq!(e.len(), 1, "{e:?}");
        }
        let bad = GOOD.replace("[model]", "[model]\ndevice = \"tpu\"");
        let e = Config::parse(&bad, Path::new("/")).expect_err("tpu");
        assert!(e.iter().any(|p| p.contains("not \"tpu\"")), "{e:?}");
        let stray = GOOD.replace("[model]", "[model]\ncpu_fallback = true");
        let e = Config::parse(&stray, Path::new("/")).expect_err("fallback without cuda");
        assert!(e.iter().any(|p| p.contains("cpu_fallback")), "{e:?}");
    }
}
