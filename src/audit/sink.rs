//! The server's handle on its audit log: one writer behind a mutex, fed from request handlers,
//! admission and reloads. Appending is one `write` (plus the configured fsync) under the lock;
//! a failure to append is logged loudly and never takes a request down with it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// How long [`AuditSink::close`] waits for records still queued on the blocking pool.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

pub struct AuditSink {
    log: Mutex<Option<AuditLog>>,
    /// Records handed to the blocking pool and not yet appended: `close` waits for them so the
    /// stop record really is the last one and nothing queued is lost.
    queued: Mutex<usize>,
    drained: Condvar,
}

/// One queued record: counted while it exists, whether its task runs or is dropped unrun.
struct Queued(Arc<AuditSink>);

impl Queued {
    fn new(sink: &Arc<AuditSink>) -> Self {
        *sink.queued.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        Queued(Arc::clone(sink))
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        let mut queued = self.0.queued.lock().unwrap_or_else(PoisonError::into_inner);
        *queued -= 1;
        if *queued == 0 {
            self.0.drained.notify_all();
        }
    }
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
            queued: Mutex::new(0),
            drained: Condvar::new(),
        })
    }

    /// Appends `event`; failures are logged, not propagated (the request path must not fail
    /// because of the audit trail, and the error is visible to operators).
    pub fn record(&self, event: AuditEvent) {
        let mut guard = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_mut() {
            Some(log) => {
                if let Err(e) = log.append(now_ms(), event) {
                    tracing::error!(error = %e, "audit append failed");
                }
            }
            None => tracing::error!(event = event.kind(), "audit record after close: dropped"),
        }
    }

    /// Appends `event` on tokio's blocking pool when called inside a runtime, else at once.
    ///
    /// For records a client can trigger in bulk (failed logins, limit refusals, guard
    /// decisions, extraction alarms, watermark checks): appending fsyncs under the log's lock by
    /// default, and doing that on an async worker would let a flood of them stall every
    /// connection on the runtime. Records keep their hash chain either way; only their order
    /// relative to concurrent records may change. [`close`](Self::close) waits for them.
    pub fn record_in_background(self: &Arc<Self>, event: AuditEvent) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let queued = Queued::new(self);
                runtime.spawn_blocking(move || queued.0.record(event));
            }
            Err(_) => self.record(event),
        }
    }

    /// Writes a signed checkpoint now.
    pub fn checkpoint(&self) -> Result<(), AuditError> {
        let mut guard = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_mut() {
            Some(log) => log.checkpoint(now_ms()),
            None => Ok(()),
        }
    }

    /// Sequence number of the next record and the current head hash.
    pub fn head(&self) -> Option<(u64, Hash)> {
        let guard = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().map(|l| (l.next_seq(), l.head_hash()))
    }

    /// Waits (up to [`CLOSE_WAIT`]) for records queued by
    /// [`record_in_background`](Self::record_in_background), appends `last` (the stop record),
    /// writes a final checkpoint and closes the file.
    pub fn close(&self, last: AuditEvent) {
        let queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        let (queued, _) = self
            .drained
            .wait_timeout_while(queued, CLOSE_WAIT, |n| *n > 0)
            .unwrap_or_else(PoisonError::into_inner);
        if *queued > 0 {
            tracing::error!(
                queued = *queued,
                "closing the audit log with records still queued"
            );
        }
        drop(queued);
        self.record(last);
        let mut guard = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(log) = guard.take() {
            if let Err(e) = log.close(now_ms()) {
                tracing::error!(error = %e, "closing the audit log failed");
            }
        }
    }
}
