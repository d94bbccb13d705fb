//! The audit log file adapter: the only part of the module that does I/O.
//!
//! * **Append-only.** The file is opened with `O_APPEND` and created with mode `0600`; an
//!   existing file readable or writable by group/others is refused. An exclusive advisory lock
//!   (`flock`) keeps a second writer from forking the chain.
//! * **Reopen continues the chain.** [`AuditLog::open`] verifies the whole existing file
//!   ([`super::verify`](mod@super::verify)) and continues from its head. If anything fails to verify, including a
//!   torn last line, it refuses to append and returns [`AuditError::Tampered`] with the first bad
//!   line: appending after damage would make the damage look like history. Repair (after
//!   investigation) is a deliberate manual act: keep the damaged file as evidence and start a
//!   new file continuing from the last good head ([`ChainStart::At`]).
//! * **Durability (fsync policy).** Every line is handed to the kernel with one `write` before
//!   `append` returns, so a process crash (`kill -9`) loses nothing already appended.
//!   [`FsyncPolicy::Always`] then `fdatasync`s every line; [`FsyncPolicy::EveryN`] group-commits:
//!   one `fdatasync` per `n` lines, so a power loss may lose up to `n - 1` acknowledged records.
//!   Checkpoints are always synced, records first and then the checkpoint line, so a durable
//!   checkpoint never covers records that are not; whatever a power loss drops lies in the
//!   unsealed tail and is reported as such by `verify`.
//! * **Checkpoints** are written every `checkpoint_every` records (0: only on demand), on
//!   [`AuditLog::checkpoint`], [`AuditLog::close`], and best-effort on drop, so a cleanly closed
//!   log has no unsealed tail.
//! * **Threads.** `AuditLog` is `Send` but not shared: wrap it in a `Mutex` or own it from a
//!   dedicated thread fed by a channel.
//! * After a failed write the file may end in a partial line, so the log refuses further use
//!   ([`AuditError::Broken`]); reopening reports the damage.

use std::fs::{File, OpenOptions as FsOpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use super::checkpoint::{AuditSigner, AuditVerifier, Checkpoint};
use super::event::AuditEvent;
use super::ids::LogId;
use super::record::{record_hash, Hash, Record};
use super::verify::{verify_from, ChainStart, VerifyError, VerifyReport};

/// When to `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every record and checkpoint.
    Always,
    /// Group commit: after every `n` lines (`0` is treated as `1`), and always at checkpoints.
    EveryN(u64),
}

/// Write policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPolicy {
    /// Write a signed checkpoint after this many records (0: never automatically).
    pub checkpoint_every: u64,
    /// fsync policy.
    pub fsync: FsyncPolicy,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            fsync: FsyncPolicy::EveryN(64),
        }
    }
}

/// Full open options; [`AuditLog::open`] covers the common case.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The log's id, written into checkpoints; an existing file must name the same.
    pub log_id: LogId,
    /// Write policy.
    pub policy: SyncPolicy,
    /// Where the chain begins: [`ChainStart::Genesis`] or, for a rotated file, the previous
    /// file's `next_seq`/`head_hash` via [`ChainStart::At`].
    pub start: ChainStart,
    /// Extra trusted keys for verifying existing checkpoints (after an audit key rotation);
    /// the signer's own key is always trusted.
    pub trusted: Option<AuditVerifier>,
}

/// Errors of the file adapter.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// File I/O failed.
    #[error("audit log I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process holds the log.
    #[error("audit log {0} is locked by another writer")]
    Locked(PathBuf),
    /// The existing file is accessible to group or others.
    #[error("audit log {path} has mode {mode:o}; refusing (expected 0600)")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The existing file does not verify; nothing was appended.
    #[error("refusing to append to {path}: {error}")]
    Tampered {
        /// The file.
        path: PathBuf,
        /// The first problem.
        error: VerifyError,
    },
    /// The existing file's checkpoints name another log.
    #[error("audit log {path} belongs to log {found}, not {expected}")]
    WrongLog {
        /// The file.
        path: PathBuf,
        /// Log id found.
        found: LogId,
        /// Log id expected.
        expected: LogId,
    },
    /// `ChainStart::FirstLine` makes no sense for a writer.
    #[error("a writer needs a definite chain start")]
    BadStart,
    /// A record could not be encoded.
    #[error("audit record encoding failed: {0}")]
    Encode(#[from] serde_json::Error),
    /// An earlier write failed; the file may end in a partial line. Reopen to inspect.
    #[error("audit log is unusable after an earlier write failure")]
    Broken,
}

/// An open, append-only audit log.
#[derive(Debug)]
pub struct AuditLog {
    file: File,
    path: PathBuf,
    log_id: LogId,
    signer: AuditSigner,
    policy: SyncPolicy,
    next_seq: u64,
    head: Hash,
    since_checkpoint: u64,
    unsynced: u64,
    last_time_unix_ms: u64,
    broken: bool,
    opened: VerifyReport,
}

impl AuditLog {
    /// Opens (or creates) the log at `path` from genesis. See [`AuditLog::open_with`].
    pub fn open(
        path: impl AsRef<Path>,
        log_id: LogId,
        signer: AuditSigner,
        policy: SyncPolicy,
    ) -> Result<Self, AuditError> {
        let opts = OpenOptions {
            log_id,
            policy,
            start: ChainStart::Genesis,
            trusted: None,
        };
        Self::open_with(path, signer, opts)
    }

    /// Opens (or creates) the log, verifies what is there and continues its chain.
    pub fn open_with(
        path: impl AsRef<Path>,
        signer: AuditSigner,
        opts: OpenOptions,
    ) -> Result<Self, AuditError> {
        if opts.start == ChainStart::FirstLine {
            return Err(AuditError::BadStart);
        }
        let path = path.as_ref().to_path_buf();
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let file = open_file(&path).map_err(io)?;
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => AuditError::Locked(path.clone()),
            std::fs::TryLockError::Error(source) => io(source),
        })?;
        check_mode(&file, &path)?;

        let trusted = match &opts.trusted {
            Some(t) => t.clone().merged(&signer.verifier()),
            None => signer.verifier(),
        };
        let report = verify_from(BufReader::new(&file), &trusted, opts.start).map_err(|error| {
            AuditError::Tampered {
                path: path.clone(),
                error,
            }
        })?;
        if let Some(found) = &report.log_id {
            if found != &opts.log_id {
                return Err(AuditError::WrongLog {
                    path,
                    found: found.clone(),
                    expected: opts.log_id,
                });
            }
        }
        Ok(Self {
            file,
            path,
            log_id: opts.log_id,
            signer,
            policy: opts.policy,
            next_seq: report.next_seq,
            head: report.head_hash,
            since_checkpoint: report.unsealed_tail,
            unsynced: 0,
            last_time_unix_ms: report.last_record_time_unix_ms.unwrap_or(0),
            broken: false,
            opened: report,
        })
    }

    /// What verification of the existing file found at open (e.g. an unsealed tail after a
    /// crash; callers should log it).
    pub fn opened_report(&self) -> &VerifyReport {
        &self.opened
    }

    /// The `seq` the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Hash of the last record.
    pub fn head_hash(&self) -> Hash {
        self.head
    }

    /// Appends one event; returns its `seq`. May also write a checkpoint (per policy).
    pub fn append(&mut self, time_unix_ms: u64, event: AuditEvent) -> Result<u64, AuditError> {
        self.usable()?;
        let seq = self.next_seq;
        let record = Record {
            seq,
            time_unix_ms,
            prev_hash: self.head,
            event,
        };
        let canonical = record.canonical_bytes()?;
        let mut line = canonical.clone();
        line.push(b'\n');
        self.write_line(&line)?;
        self.head = record_hash(&canonical);
        self.next_seq = seq.saturating_add(1);
        self.since_checkpoint += 1;
        self.last_time_unix_ms = time_unix_ms;
        let every = self.policy.checkpoint_every;
        if every > 0 && self.since_checkpoint >= every {
            self.checkpoint(time_unix_ms)?;
        } else {
            self.maybe_sync()?;
        }
        Ok(seq)
    }

    /// Writes a signed checkpoint of the current head now and syncs it (records first).
    pub fn checkpoint(&mut self, now_unix_ms: u64) -> Result<(), AuditError> {
        self.usable()?;
        self.sync()?;
        let cp = Checkpoint {
            log_id: self.log_id.clone(),
            count: self.next_seq,
            head_hash: self.head,
            time_unix_ms: now_unix_ms,
            key_id: self.signer.id().clone(),
        };
        let line = self.signer.sign(cp).to_line()?;
        self.write_line(&line)?;
        self.since_checkpoint = 0;
        self.sync()
    }

    /// `fdatasync`s everything written so far. (There is no user-space buffer to flush: each
    /// line reaches the kernel in `append`.)
    pub fn sync(&mut self) -> Result<(), AuditError> {
        self.usable()?;
        if self.unsynced > 0 {
            if let Err(source) = self.file.sync_data() {
                self.broken = true;
                return Err(AuditError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
            self.unsynced = 0;
        }
        Ok(())
    }

    /// Seals the tail with a checkpoint (if any record is unsealed), syncs and closes.
    pub fn close(mut self, now_unix_ms: u64) -> Result<(), AuditError> {
        if self.since_checkpoint > 0 {
            self.checkpoint(now_unix_ms)?;
        }
        self.sync()
    }

    fn usable(&self) -> Result<(), AuditError> {
        if self.broken {
            Err(AuditError::Broken)
        } else {
            Ok(())
        }
    }

    fn write_line(&mut self, line: &[u8]) -> Result<(), AuditError> {
        if let Err(source) = self.file.write_all(line) {
            self.broken = true;
            return Err(AuditError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.unsynced += 1;
        Ok(())
    }

    fn maybe_sync(&mut self) -> Result<(), AuditError> {
        let n = match self.policy.fsync {
            FsyncPolicy::Always => 1,
            FsyncPolicy::EveryN(n) => n.max(1),
        };
        if self.unsynced >= n {
            self.sync()?;
        }
        Ok(())
    }
}

impl Drop for AuditLog {
    /// Best effort: seal the tail and sync. Errors cannot be reported here; call
    /// [`AuditLog::close`] to see them.
    fn drop(&mut self) {
        if !self.broken && self.since_checkpoint > 0 {
            let _ = self.checkpoint(self.last_time_unix_ms);
        }
        let _ = self.sync();
    }
}

#[cfg(unix)]
fn open_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    FsOpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_file(path: &Path) -> std::io::Result<File> {
    FsOpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
}

#[cfg(unix)]
fn check_mode(file: &File, path: &Path) -> Result<(), AuditError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = file.metadata().map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuditError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_file: &File, _path: &Path) -> Result<(), AuditError> {
    Ok(())
}
