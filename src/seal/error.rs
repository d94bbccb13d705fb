//! The one error type of the sealed-model container.

use std::io;

use crate::keys::KeyError;

/// Errors of [`crate::seal`].
///
/// The central design choice is [`SealError::Rejected`]: every integrity failure of a sealed
/// file — altered byte anywhere, truncation, trailing data, reordered chunks, wrong or unknown
/// KEK, untrusted or wrong signer, bad magic or version — is this one variant with one fixed
/// message. Distinguishing them would hand an attacker an oracle ("the signature was fine but the
/// key was not") and gains an operator nothing: the remedy is always "get a good file".
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The sealed file failed an integrity, signature or key check (deliberately unspecific).
    #[error("sealed model rejected: integrity, signature or key check failed")]
    Rejected,
    /// An I/O error other than an unexpected end of file (which is [`SealError::Rejected`]).
    #[error("I/O error on sealed model: {0}")]
    Io(#[source] io::Error),
    /// Sealing parameters out of range (model id, chunk size, lengths, key ids).
    #[error("invalid seal parameters: {0}")]
    InvalidParams(&'static str),
    /// While sealing, the plaintext was shorter or longer than the declared `total_len`.
    #[error("plaintext length does not match the declared length")]
    PlaintextLength,
    /// The caller's output buffer does not have the segment's exact plaintext length.
    #[error("output buffer is {got} bytes, segment plaintext is {expected} bytes")]
    BufferSize {
        /// The segment's plaintext length from the header.
        expected: u64,
        /// The buffer length the caller passed.
        got: usize,
    },
    /// The key provider failed for a reason unrelated to the file (HSM unreachable, wrap
    /// failure while sealing). Key *mismatches* on open are [`SealError::Rejected`].
    #[error("key provider error: {0}")]
    Key(#[source] KeyError),
}

impl SealError {
    /// Maps an I/O error met while *reading a sealed file*: running out of bytes means the file
    /// is truncated, which is an integrity failure like any other.
    pub(crate) fn from_read(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            SealError::Rejected
        } else {
            SealError::Io(e)
        }
    }

    /// Maps a key-provider error met while *opening or rewrapping* a sealed file: only
    /// backend failures stay visible; every key mismatch is a rejection.
    pub(crate) fn from_unwrap(e: KeyError) -> Self {
        match e {
            KeyError::Backend(_) => SealError::Key(e),
            _ => SealError::Rejected,
        }
    }
}
