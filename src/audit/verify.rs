//! Verification of an audit log from any `BufRead` (pure: no files, no clock).
//!
//! Rules, checked line by line; the first failure is returned with its 1-based line number and,
//! where known, the record's `seq`:
//! - every line ends with `\n` and is at most [`MAX_LINE_LEN`] bytes; a final line without `\n`
//!   is [`VerifyErrorKind::TruncatedLine`] (a torn write or a truncation, never silently dropped);
//! - every line is a record or a checkpoint in canonical form (re-encoding gives the same bytes);
//! - records have consecutive `seq` ([`VerifyErrorKind::BadSequence`]: deletion, reordering,
//!   insertion) and each `prev_hash` equals the previous record's hash
//!   ([`VerifyErrorKind::BrokenChain`], reported at the record whose `prev_hash` no longer matches:
//!   that record or the one before it was altered);
//! - checkpoints carry a valid signature by a trusted key, name the same log as the first one,
//!   and state exactly the current count and head ([`VerifyErrorKind::CheckpointMismatch`]).
//!
//! What a verifier cannot know alone: records after the last checkpoint are protected only by
//! the chain, so deleting them (or editing the very last one) is undetectable from the file. The
//! report says how many there are ([`VerifyReport::unsealed_tail`]) instead of pretending; the
//! writer checkpoints on every clean close, so a non-zero tail means a crash or a cut file, and
//! checkpoints published off-host bound how much could have been cut.

use std::io::BufRead;

use super::checkpoint::{AuditVerifier, SignatureError, SignedCheckpoint};
use super::ids::LogId;
use super::record::{record_hash, Hash, Record, GENESIS_HASH};

/// Longest accepted line, newline included (the largest event is about 2.5 KiB).
pub const MAX_LINE_LEN: usize = 16 * 1024;

/// Where the chain of this input begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainStart {
    /// A fresh log: first record has `seq` 0 and `prev_hash` [`GENESIS_HASH`].
    Genesis,
    /// A continuation (a rotated file): the first record must have this `seq` and `prev_hash`
    /// (the previous file's `next_seq` and `head_hash`).
    At {
        /// Expected first `seq`.
        seq: u64,
        /// Expected first `prev_hash`.
        prev_hash: Hash,
    },
    /// An export: trust the first line as the anchor. The records are then authenticated only
    /// by the checkpoints that follow them (a checkpoint's head commits to the whole chain).
    FirstLine,
}

/// What a successful verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records in the input.
    pub records: u64,
    /// Checkpoints in the input.
    pub checkpoints: u64,
    /// `seq` the next record must have.
    pub next_seq: u64,
    /// Hash of the last record (the chain start when there is none).
    pub head_hash: Hash,
    /// `count` of the last checkpoint, if any.
    pub last_checkpoint_count: Option<u64>,
    /// Records after the last checkpoint: chained but not yet signed.
    pub unsealed_tail: u64,
    /// The log id named by the checkpoints, if any.
    pub log_id: Option<LogId>,
    /// `time_unix_ms` of the last record, if any.
    pub last_record_time_unix_ms: Option<u64>,
    /// Bytes read (all complete lines).
    pub bytes: u64,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit log invalid at line {line}{}: {kind}", seq.map(|s| format!(" (seq {s})")).unwrap_or_default())]
pub struct VerifyError {
    /// 1-based line number.
    pub line: u64,
    /// Byte offset where that line starts (everything before it verified).
    pub offset: u64,
    /// The record's `seq` (or checkpoint's `count`), when the line parsed that far.
    pub seq: Option<u64>,
    /// What is wrong.
    pub kind: VerifyErrorKind,
}

/// Kinds of verification failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyErrorKind {
    /// Reading failed.
    #[error("read error: {0:?}")]
    Io(std::io::ErrorKind),
    /// The last line has no terminating newline.
    #[error("truncated line (no newline)")]
    TruncatedLine,
    /// A line exceeds [`MAX_LINE_LEN`].
    #[error("line longer than {MAX_LINE_LEN} bytes")]
    LineTooLong,
    /// Not a record or checkpoint (bad JSON, unknown field, invalid id, ...).
    #[error("not a valid record or checkpoint")]
    BadJson,
    /// Parsed, but not in canonical form.
    #[error("not in canonical form")]
    NonCanonical,
    /// `seq` is not the next one.
    #[error("expected seq {expected}, found {found}")]
    BadSequence {
        /// Expected.
        expected: u64,
        /// Found.
        found: u64,
    },
    /// `prev_hash` does not match the previous record's hash.
    #[error("hash chain broken (this record or the one before it was altered)")]
    BrokenChain,
    /// Signature missing, malformed, invalid or by an untrusted key.
    #[error("bad checkpoint signature: {0}")]
    BadCheckpointSignature(SignatureError),
    /// A validly signed checkpoint that does not match the records before it.
    #[error("checkpoint does not match the log (count {count}, expected {expected})")]
    CheckpointMismatch {
        /// The checkpoint's count.
        count: u64,
        /// Records actually before it.
        expected: u64,
    },
    /// A checkpoint names another log.
    #[error("checkpoint names another log")]
    LogIdMismatch,
}

/// Verifies a whole log from genesis.
pub fn verify<R: BufRead>(
    reader: R,
    verifier: &AuditVerifier,
) -> Result<VerifyReport, VerifyError> {
    verify_from(reader, verifier, ChainStart::Genesis)
}

/// Verifies a log whose chain begins at `start`.
pub fn verify_from<R: BufRead>(
    reader: R,
    verifier: &AuditVerifier,
    start: ChainStart,
) -> Result<VerifyReport, VerifyError> {
    let mut lines = LineReader::new(reader);
    let mut chain = Chain::new(Some(verifier), start);
    while let Some(line) = lines.next_line()? {
        chain
            .step(line)
            .map_err(|(seq, kind)| lines.error(seq, kind))?;
    }
    Ok(chain.report(lines.offset))
}

/// What one verified line was (for the exporter).
pub(crate) enum Step {
    Record { seq: u64, time_unix_ms: u64 },
    Checkpoint,
}

/// Splits input into bounded, newline-terminated lines and tracks position for errors.
pub(crate) struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Number of the line last returned (1-based).
    pub line: u64,
    /// Offset just past the last returned line.
    pub offset: u64,
    line_start: u64,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(1024),
            line: 0,
            offset: 0,
            line_start: 0,
        }
    }

    /// The next line without its newline, `None` at a clean end of input.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, VerifyError> {
        self.buf.clear();
        self.line_start = self.offset;
        let limit = MAX_LINE_LEN as u64;
        let n = std::io::Read::take(&mut self.inner, limit)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| self.error_next(VerifyErrorKind::Io(e.kind())))?;
        if n == 0 {
            return Ok(None);
        }
        if self.buf.last() != Some(&b'\n') {
            let kind = if n as u64 >= limit {
                VerifyErrorKind::LineTooLong
            } else {
                VerifyErrorKind::TruncatedLine
            };
            return Err(self.error_next(kind));
        }
        self.line += 1;
        self.offset += n as u64;
        Ok(Some(&self.buf[..n - 1]))
    }

    /// The whole last line, newline included (for copying).
    pub fn raw_line(&self) -> &[u8] {
        &self.buf
    }

    fn error_next(&self, kind: VerifyErrorKind) -> VerifyError {
        VerifyError {
            line: self.line + 1,
            offset: self.offset,
            seq: None,
            kind,
        }
    }

    /// An error about the line last returned.
    pub fn error(&self, seq: Option<u64>, kind: VerifyErrorKind) -> VerifyError {
        VerifyError {
            line: self.line,
            offset: self.line_start,
            seq,
            kind,
        }
    }
}

type StepError = (Option<u64>, VerifyErrorKind);

/// The chain state machine shared by `verify`, the writer's reopen and `export`.
pub(crate) struct Chain<'a> {
    /// `None`: check structure and chain but not signatures (exporter; the importer verifies).
    verifier: Option<&'a AuditVerifier>,
    pending_first_line: bool,
    next_seq: u64,
    head: Hash,
    records: u64,
    checkpoints: u64,
    last_checkpoint_count: Option<u64>,
    unsealed_tail: u64,
    log_id: Option<LogId>,
    last_time: Option<u64>,
}

const CHECKPOINT_PREFIX: &[u8] = b"{\"checkpoint\":";

impl<'a> Chain<'a> {
    pub fn new(verifier: Option<&'a AuditVerifier>, start: ChainStart) -> Self {
        let (pending, next_seq, head) = match start {
            ChainStart::Genesis => (false, 0, GENESIS_HASH),
            ChainStart::At { seq, prev_hash } => (false, seq, prev_hash),
            ChainStart::FirstLine => (true, 0, GENESIS_HASH),
        };
        Self {
            verifier,
            pending_first_line: pending,
            next_seq,
            head,
            records: 0,
            checkpoints: 0,
            last_checkpoint_count: None,
            unsealed_tail: 0,
            log_id: None,
            last_time: None,
        }
    }

    pub fn step(&mut self, line: &[u8]) -> Result<Step, StepError> {
        if line.starts_with(CHECKPOINT_PREFIX) {
            self.checkpoint(line)
        } else {
            self.record(line)
        }
    }

    fn record(&mut self, line: &[u8]) -> Result<Step, StepError> {
        let rec: Record =
            serde_json::from_slice(line).map_err(|_| (None, VerifyErrorKind::BadJson))?;
        let seq = Some(rec.seq);
        let canonical = rec
            .canonical_bytes()
            .map_err(|_| (seq, VerifyErrorKind::BadJson))?;
        if canonical != line {
            return Err((seq, VerifyErrorKind::NonCanonical));
        }
        if self.pending_first_line {
            self.pending_first_line = false;
            self.next_seq = rec.seq;
            self.head = rec.prev_hash;
        }
        if rec.seq != self.next_seq {
            return Err((
                seq,
                VerifyErrorKind::BadSequence {
                    expected: self.next_seq,
                    found: rec.seq,
                },
            ));
        }
        if rec.prev_hash != self.head {
            return Err((seq, VerifyErrorKind::BrokenChain));
        }
        self.head = record_hash(&canonical);
        self.next_seq = self.next_seq.saturating_add(1);
        self.records += 1;
        self.unsealed_tail += 1;
        self.last_time = Some(rec.time_unix_ms);
        Ok(Step::Record {
            seq: rec.seq,
            time_unix_ms: rec.time_unix_ms,
        })
    }

    fn checkpoint(&mut self, line: &[u8]) -> Result<Step, StepError> {
        let sc: SignedCheckpoint =
            serde_json::from_slice(line).map_err(|_| (None, VerifyErrorKind::BadJson))?;
        let cp = &sc.checkpoint;
        let seq = Some(cp.count);
        let canonical = serde_json::to_vec(&sc).map_err(|_| (seq, VerifyErrorKind::BadJson))?;
        if canonical != line {
            return Err((seq, VerifyErrorKind::NonCanonical));
        }
        if let Some(v) = self.verifier {
            v.verify(&sc)
                .map_err(|e| (seq, VerifyErrorKind::BadCheckpointSignature(e)))?;
        }
        match &self.log_id {
            Some(id) if id != &cp.log_id => return Err((seq, VerifyErrorKind::LogIdMismatch)),
            Some(_) => {}
            None => self.log_id = Some(cp.log_id.clone()),
        }
        if self.pending_first_line {
            self.pending_first_line = false;
            self.next_seq = cp.count;
            self.head = cp.head_hash;
        }
        if cp.count != self.next_seq || cp.head_hash != self.head {
            return Err((
                seq,
                VerifyErrorKind::CheckpointMismatch {
                    count: cp.count,
                    expected: self.next_seq,
                },
            ));
        }
        self.checkpoints += 1;
        self.last_checkpoint_count = Some(cp.count);
        self.unsealed_tail = 0;
        Ok(Step::Checkpoint)
    }

    pub fn report(&self, bytes: u64) -> VerifyReport {
        VerifyReport {
            records: self.records,
            checkpoints: self.checkpoints,
            next_seq: self.next_seq,
            head_hash: self.head,
            last_checkpoint_count: self.last_checkpoint_count,
            unsealed_tail: self.unsealed_tail,
            log_id: self.log_id.clone(),
            last_record_time_unix_ms: self.last_time,
            bytes,
        }
    }
}
