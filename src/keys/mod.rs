//! Key material for sealed models: data keys, key-encryption keys and publisher keys.
//!
//! Why this is a separate module from [`crate::seal`]: the container format only needs two
//! capabilities — "wrap/unwrap a data key" ([`KeyProvider`]) and "sign/verify with a publisher key"
//! ([`PublisherKey`], [`TrustedPublishers`]). Keeping them behind small types lets a production
//! deployment swap the local [`Keyring`] for an HSM/KMS provider (PKCS#11), where the KEK never
//! leaves the device, without touching the format code.
//!
//! Rules every type here follows:
//! - secret bytes live only in [`zeroize::Zeroizing`] or `ZeroizeOnDrop` types and are wiped
//!   when dropped;
//! - no `Debug` impl prints key bytes (they print `<redacted>`);
//! - everything is pure: no files, clocks or network. Randomness comes from the caller
//!   (`rng` parameters), except the local keyring's wrap nonce, which uses the OS RNG just as an
//!   HSM generates its own IV.
//!
//! Layout:
//! - [`kek`] — [`Dek`], [`Kek`], [`KekRef`], the [`KeyProvider`] trait;
//! - [`keyring`] — [`Keyring`], the local versioned KEK store and its JSON form;
//! - [`publisher`] — [`PublisherKey`] (Ed25519 signing) and [`TrustedPublishers`] (verifying).

pub mod kek;
pub mod keyring;
pub mod pkcs11;
pub mod publisher;

pub use kek::{Dek, Kek, KekRef, KeyProvider, KEY_LEN};
pub use keyring::Keyring;
pub use pkcs11::{Pkcs11Config, Pkcs11Kek};
pub use publisher::{parse_public_key, PublisherKey, TrustedPublishers};

/// Longest key id (KEK id, publisher key id) in bytes.
///
/// Bounded because ids are copied into sealed-file headers, which are attacker-controlled and
/// must have a small maximum size.
pub const MAX_KEY_ID_LEN: usize = 64;

/// Errors of the key layer.
///
/// These never contain key bytes. When a sealed file is opened, the container maps every
/// "this key does not fit" error to its single opaque rejection, so these details are only seen
/// by operators handling their own key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key id is empty, too long or uses characters outside `[A-Za-z0-9._:@+-]`.
    #[error("invalid key id (1..=64 bytes of [A-Za-z0-9._:@+-])")]
    InvalidKeyId,
    /// The requested KEK id/version is not held (unknown, or retired below `min_version`).
    #[error("unknown or retired key-encryption key {id} version {version}")]
    UnknownKek {
        /// KEK id that was asked for.
        id: String,
        /// KEK version that was asked for.
        version: u32,
    },
    /// Unwrapping the data key failed authentication (wrong KEK, wrong AAD or altered bytes).
    #[error("data key unwrap failed")]
    UnwrapFailed,
    /// Wrapping the data key failed.
    #[error("data key wrap failed")]
    WrapFailed,
    /// A keyring operation that would leave it unusable (e.g. retiring the active version).
    #[error("invalid keyring operation: {0}")]
    InvalidOperation(&'static str),
    /// A keyring or key encoding is malformed (bad JSON, duplicate/short keys, bad PEM...).
    #[error("malformed key material: {0}")]
    Malformed(&'static str),
    /// A key backend (HSM, KMS) failed for reasons unrelated to the key material.
    #[error("key backend error: {0}")]
    Backend(String),
}

/// Checks a key id: 1..=[`MAX_KEY_ID_LEN`] bytes of `[A-Za-z0-9._:@+-]`.
///
/// A small ASCII alphabet keeps ids safe to print in logs and audit records and unambiguous to
/// compare (no Unicode normalisation questions).
pub fn is_valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@+-".contains(&b))
}

/// Returns `Ok(())` for a valid key id, else [`KeyError::InvalidKeyId`].
pub(crate) fn check_key_id(id: &str) -> Result<(), KeyError> {
    if is_valid_key_id(id) {
        Ok(())
    } else {
        Err(KeyError::InvalidKeyId)
    }
}
