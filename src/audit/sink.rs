//! The server's handle on its audit log: one writer behind a mutex, fed from request handlers,
//! admission and reloads. Appending is one `write` (plus the configured fsync) under the lock;
//! a failure to append is logged loudly and never takes a request down with it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{
    AuditError, AuditEvent, AuditLog, AuditSigner, FsyncPolicy, Hash, KeyId, LogId, SyncPolicy,
};

/// Audit settings from the config file.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    pub path: PathBuf,
    pub signing_key: PathBuf,
    pub public_key: PathBuf,
    pub log_id: String,
    pub key_id: String,
    pub checkpoint_every: u64,
    /// 1 = fsync every record; n > 1 = group commit every n records.
    pub fsync_every: u64,
    pub retention_days: u32,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("audit signing key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error(transparent)]
    Log(#[from] AuditError),
}

/// Reads the audit signing key named by the config.
pub fn load_signer(path: &Path, key_id: &str) -> Result<AuditSigner, SinkError> {
    let err = |reason: String| SinkError::Key {
        path: path.display().to_string(),
        reason,
    };
    let pem =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
    let id = KeyId::new(key_id).map_err(|e| err(e.to_string()))?;
    AuditSigner::from_pkcs8_pem(id, &pem).map_err(|e| err(e.to_string()))
}

pub struct AuditSink {
    log: Mutex<Option<AuditLog>>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink").finish_non_exhaustive()
    }
}

impl AuditSink {
    pub fn open(cfg: &AuditConfig) -> Result<Self, SinkError> {
        let signer = load_signer(&cfg.signing_key, &cfg.key_id)?;
        let log_id = LogId::new(cfg.log_id.clone()).map_err(|e| SinkError::Key {
            path: cfg.path.display().to_string(),
            reason: e.to_string(),
        })?;
        if let Some(dir) = cfg.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| AuditError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let fsync = if cfg.fsync_every <= 1 {
            FsyncPolicy::Always
        } else {
            FsyncPolicy::EveryN(cfg.fsync_every)
        };
        let log = AuditLog::open(
            &cfg.path,
            log_id,
            signer,
            SyncPolicy {
                checkpoint_every: cfg.checkpoint_every,
                fsync,
            },
        )?;
        Ok(AuditSink {
            log: Mutex::new(Some(log)),
        })
    }

    /// Appends `event`; failures are logged, not propagated (the request path must not fail
    /// because of the audit trail, and the error is visible to operators).
    pub fn record(&self, event: AuditEvent) {
        let mut guard = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(log) = guard.as_mut() {
            if let Err(e) = log.append(now_ms(), event) {
                tracing::error!(error = %e, "audit append failed");
            }
        }
    }

    /// Appends `event` on tokio's blocking pool when called inside a runtime, else at once.
    ///
    /// For records anyone can trigger in bulk (failed logins, limit refusals): appending
    /// fsyncs under the log's lock by default, and doing that on an async worker would let a
    /// flood of 401s or 429s stall every connection on the runtime. Records keep their hash
    /// chain either way; only their order relative to concurrent records may change.
    pub fn record_in_background(self: &std::sync::Arc<Self>, event: AuditEvent) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let sink = std::sync::Arc::clone(self);
                runtime.spawn_blocking(move || sink.record(event));
            }
            Err(_) => self.record(event),
        }
    }

    /// Writes a signed checkpoint now.
    pub fn checkpoint(&self) -> Result<(), AuditError> {
        let mut guard = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match guard.as_mut() {
            Some(log) => log.checkpoint(now_ms()),
            None => Ok(()),
        }
    }

    /// Sequence number of the next record and the current head hash.
    pub fn head(&self) -> Option<(u64, Hash)> {
        let guard = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.as_ref().map(|l| (l.next_seq(), l.head_hash()))
    }

    /// Writes a final checkpoint and closes the file.
    pub fn close(&self) {
        let mut guard = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(log) = guard.take() {
            if let Err(e) = log.close(now_ms()) {
                tracing::error!(error = %e, "closing the audit log failed");
            }
        }
    }
}
