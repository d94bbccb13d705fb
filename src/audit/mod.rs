//! The tamper-evident audit log (design §8, promise P8).
//!
//! Why: operators, tenants and regulators need to know *what security-relevant things happened*
//! (models unsealed, keys rotated, requests refused, guards fired) and to be sure nobody edited
//! that record afterwards, while the log itself must never become a second copy of prompts,
//! completions, tokens or secrets.
//!
//! How:
//! - [`event`]: a closed enum of events whose strings are validated ids ([`ids`]) — free text
//!   cannot be represented.
//! - [`record`]: each record is canonical JSON on one line and carries the SHA-256 of the
//!   previous record (a hash chain: any edit, deletion or reordering breaks it).
//! - [`checkpoint`]: every N records an Ed25519-signed checkpoint (log id, count, head hash,
//!   time) in tlog-checkpoint style, in the same file; the chain up to it can then no longer be
//!   rewritten without the audit key.
//! - [`verify`](mod@verify): pure verification over any `BufRead`, naming the first bad line; honest about
//!   the unsigned tail after the last checkpoint.
//! - [`writer`]: the only I/O — an `O_APPEND`, `0600`, locked file that refuses to continue a log
//!   that does not verify. Its docs state the fsync policy.
//! - [`export`]: the `--since` export; [`retention`]: the retention policy (≥ 183 days).
//!
//! On-disk format (JSON Lines, `\n`-terminated, canonical; two line kinds):
//! ```text
//! {"seq":0,"time_unix_ms":1700000000000,"prev_hash":"00…00","event":{"type":"ServerStart","version":"0.1.0"}}
//! {"checkpoint":{"log_id":"cloister:prod","count":1,"head_hash":"<hex>","time_unix_ms":1700000000001,"key_id":"audit-1"},"sig":"<base64>"}
//! ```

pub mod checkpoint;
pub mod event;
pub mod export;
pub mod ids;
pub mod record;
pub mod retention;
pub mod sink;
pub mod verify;
pub mod writer;

#[cfg(test)]
mod tests;

pub use checkpoint::{
    AuditSigner, AuditVerifier, Checkpoint, KeyError, SignatureError, SignedCheckpoint,
};
pub use event::{
    AuditEvent, AuthFailReason, ConfigPart, FinishReason, GuardAction, KeyIds, LimitKind,
};
pub use export::{export_since, ExportError, ExportReport};
pub use ids::{IdError, KeyId, Label, LogId, ModelId, RequestId, TenantId};
pub use record::{record_hash, Hash, Record, GENESIS_HASH};
pub use retention::{RetentionError, RetentionPolicy};
pub use sink::{load_signer, AuditConfig, AuditSink, SinkError};
pub use verify::{verify, verify_from, ChainStart, VerifyError, VerifyErrorKind, VerifyReport};
pub use writer::{AuditError, AuditLog, FsyncPolicy, OpenOptions, SyncPolicy};
