//! Hot reload of files the server reads at start-up, without a restart: the JWKS, the TLS
//! certificate and key, and the tenant plans in the config file.
//!
//! Files are polled (a content hash every second) rather than watched with inotify: polling also
//! works on bind mounts, network file systems and Kubernetes secret volumes (which swap a
//! symlink), and is cheap for a handful of small files. `SIGHUP` and the admin API trigger an
//! immediate check through a shared [`Notify`]. A file that fails to parse is logged and
//! ignored: the previous version stays in force. Every applied reload is audited.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::audit::{AuditEvent, AuditSink, ConfigPart};
use crate::auth::{Jwks, JwtVerifier, VerifyPolicy};

/// How often watched files are checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Reads and parses the JWKS file into a verifier.
pub fn load_verifier(path: &std::path::Path, policy: &VerifyPolicy) -> Result<JwtVerifier, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let jwks = Jwks::from_json(&bytes).map_err(|e| e.to_string())?;
    Ok(JwtVerifier::new(jwks, policy.clone()))
}

fn fingerprint(paths: &[PathBuf]) -> Option<[u8; 32]> {
    let mut h = Sha256::new();
    for p in paths {
        h.update(std::fs::read(p).ok()?);
        h.update([0u8]);
    }
    Some(h.finalize().into())
}

/// Calls `apply` whenever the content of `paths` changes, or when `trigger` fires (SIGHUP,
/// admin API). Runs until the runtime stops.
pub fn watch<F>(
    what: ConfigPart,
    paths: Vec<PathBuf>,
    trigger: Arc<Notify>,
    audit: Arc<AuditSink>,
    mut apply: F,
) where
    F: FnMut() -> Result<String, String> + Send + 'static,
{
    tokio::spawn(async move {
        let mut seen = fingerprint(&paths);
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                () = trigger.notified() => true,
            };
            let now = fingerprint(&paths);
            if now.is_none() || (now == seen && !forced) {
                continue;
            }
            seen = now;
            match apply() {
                Ok(detail) => {
                    audit.record(AuditEvent::ConfigReloaded { what });
                    tracing::info!(what = ?what, detail = %detail, "reloaded");
                }
                Err(e) => {
                    tracing::error!(what = ?what, error = %e, "reload refused; keeping the previous version")
                }
            }
        }
    });
}

/// Swaps in a new verifier whenever the JWKS file changes.
pub fn watch_jwks(
    path: PathBuf,
    policy: VerifyPolicy,
    target: Arc<ArcSwap<JwtVerifier>>,
    trigger: Arc<Notify>,
    audit: Arc<AuditSink>,
) {
    let p = path.clone();
    watch(ConfigPart::Jwks, vec![path], trigger, audit, move || {
        let v = load_verifier(&p, &policy)?;
        let kids = v.jwks().kids().collect::<Vec<_>>().join(",");
        target.store(Arc::new(v));
        Ok(format!("kids {kids}"))
    });
}

/// Installs a new certificate for new handshakes whenever the certificate or key changes;
/// open connections finish on the old one.
pub fn watch_tls(
    cert: PathBuf,
    key: PathBuf,
    target: axum_server::tls_rustls::RustlsConfig,
    trigger: Arc<Notify>,
    audit: Arc<AuditSink>,
) {
    let (c, k) = (cert.clone(), key.clone());
    watch(
        ConfigPart::Tls,
        vec![cert, key],
        trigger,
        audit,
        move || {
            let cfg = crate::tls::server_config(&c, &k).map_err(|e| e.to_string())?;
            target.reload_from_config(cfg);
            Ok(c.display().to_string())
        },
    );
}
