//! Data keys, key-encryption keys and the [`KeyProvider`] abstraction.
//!
//! Envelope encryption: every sealed file gets its own random data key ([`Dek`]); only a wrapped
//! (encrypted) copy of it is stored in the file, under a key-encryption key ([`Kek`]) held by a
//! [`KeyProvider`]. Rotating the KEK then means re-wrapping one 32-byte key per file instead of
//! re-encrypting gigabytes of weights.

use std::fmt;

use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::KeyError;

/// Length of every symmetric key here (AES-256).
pub const KEY_LEN: usize = 32;

/// A per-file data-encryption key (32 random bytes), wiped on drop.
///
/// Deliberately not `Clone`: a DEK should exist in as few places as possible.
pub struct Dek(Zeroizing<[u8; KEY_LEN]>);

impl Dek {
    /// Draws a fresh DEK from `rng`. A DEK is never reused across files.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(key.as_mut_slice());
        Dek(key)
    }

    /// Wraps existing key bytes (e.g. just unwrapped by a provider). Takes the caller's
    /// zeroizing buffer so no unzeroized copy is made.
    pub fn from_bytes(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        Dek(bytes)
    }

    /// The raw key bytes, for key derivation and wrapping only.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dek(<redacted>)")
    }
}

/// Names one version of a key-encryption key. Public information: it is stored in sealed files.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KekRef {
    /// The KEK's id (a keyring id, or an HSM key label).
    pub id: String,
    /// The KEK's version within that id (starts at 1).
    pub version: u32,
}

/// `id@version`, as logs and the CLI print a KEK.
impl fmt::Display for KekRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.version)
    }
}

/// One version of a key-encryption key held in memory (local keyring only; an HSM-backed
/// provider never materialises this type).
pub struct Kek {
    reference: KekRef,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl Kek {
    /// Draws a fresh KEK for `id`/`version` from `rng`.
    pub fn generate(
        id: &str,
        version: u32,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, KeyError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(key.as_mut_slice());
        Self::from_bytes(id, version, key)
    }

    /// Builds a KEK from existing bytes (e.g. decoded from a keyring file).
    pub fn from_bytes(
        id: &str,
        version: u32,
        key: Zeroizing<[u8; KEY_LEN]>,
    ) -> Result<Self, KeyError> {
        super::check_key_id(id)?;
        if version == 0 {
            return Err(KeyError::Malformed("KEK version 0 is not allowed"));
        }
        Ok(Kek {
            reference: KekRef {
                id: id.to_owned(),
                version,
            },
            key,
        })
    }

    /// Which KEK this is.
    pub fn reference(&self) -> &KekRef {
        &self.reference
    }

    /// The raw key bytes (wrapping/unwrapping and keyring encoding only).
    pub(crate) fn key_bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.reference.id)
            .field("version", &self.reference.version)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Something that can wrap and unwrap data keys under a key-encryption key.
///
/// The trait is shaped so the KEK never has to leave the provider: a PKCS#11 implementation
/// forwards `wrap_dek`/`unwrap_dek` to the HSM (AES-GCM with AAD). `aad` binds the wrapped key
/// to one sealed file and KEK version, so a wrapped DEK cannot be transplanted into another file.
pub trait KeyProvider: Send + Sync {
    /// The KEK version new wraps use.
    fn active(&self) -> KekRef;

    /// Wraps `dek` under the active KEK with additional authenticated data `aad`; returns which
    /// KEK was used and the opaque wrapped bytes (format chosen by the provider).
    fn wrap_dek(&self, dek: &Dek, aad: &[u8]) -> Result<(KekRef, Vec<u8>), KeyError>;

    /// Unwraps bytes produced by [`KeyProvider::wrap_dek`] with KEK `kek` and the same `aad`.
    fn unwrap_dek(&self, kek: &KekRef, wrapped: &[u8], aad: &[u8]) -> Result<Dek, KeyError>;
}
