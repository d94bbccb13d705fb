//! Hot reload of files the server reads at start-up, without a restart.
//!
//! Files are polled (size + modification time + a content hash on change) rather than watched
//! with inotify: polling also works on bind mounts, network file systems and Kubernetes secret
//! volumes (which swap a symlink), and a short interval is cheap for a handful of small files.
//! A file that fails to parse is logged and ignored: the previous version stays in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::auth::{Jwks, JwtVerifier, VerifyPolicy};

/// How often watched files are checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Reads and parses the JWKS file into a verifier.
pub fn load_verifier(path: &std::path::Path, policy: &VerifyPolicy) -> Result<JwtVerifier, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let jwks = Jwks::from_json(&bytes).map_err(|e| e.to_string())?;
    Ok(JwtVerifier::new(jwks, policy.clone()))
}

fn fingerprint(path: &std::path::Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

/// Swaps in a new verifier whenever the JWKS file changes. Runs until the runtime stops.
pub fn watch_jwks(path: PathBuf, policy: VerifyPolicy, target: Arc<ArcSwap<JwtVerifier>>) {
    tokio::spawn(async move {
        let mut seen = fingerprint(&path);
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = fingerprint(&path);
            if now.is_none() || now == seen {
                continue;
            }
            seen = now;
            match load_verifier(&path, &policy) {
                Ok(v) => {
                    let kids = v.jwks().kids().collect::<Vec<_>>().join(",");
                    target.store(Arc::new(v));
                    tracing::info!(path = %path.display(), kids = %kids, "JWKS reloaded");
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "JWKS reload refused; keeping the previous keys")
                }
            }
        }
    });
}
