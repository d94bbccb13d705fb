//! Publisher signing keys and the set of publishers a server trusts.
//!
//! Why signatures on top of AEAD: the DEK proves a file was sealed by *someone holding the KEK*;
//! the Ed25519 signature proves it was sealed by a *publisher the operator trusts*, so a party that
//! can only wrap keys (or a compromised rewrap tool) cannot inject its own model. Keys carry an
//! operator-chosen id that the sealed header names, so several publisher keys can be trusted at
//! once and rotated independently.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey, PUBLIC_KEY_LENGTH};
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::KeyError;

/// A publisher's Ed25519 signing key with its key id. The secret half is wiped on drop
/// (`ed25519-dalek`'s `SigningKey` is `ZeroizeOnDrop`).
pub struct PublisherKey {
    id: String,
    key: SigningKey,
}

impl PublisherKey {
    /// A fresh signing key for key id `id`.
    pub fn generate(id: &str, rng: &mut (impl RngCore + CryptoRng)) -> Result<Self, KeyError> {
        super::check_key_id(id)?;
        Ok(PublisherKey {
            id: id.to_owned(),
            key: SigningKey::generate(rng),
        })
    }

    /// Decodes a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) Ed25519 key and names it `id`.
    pub fn from_pkcs8_pem(id: &str, pem: &str) -> Result<Self, KeyError> {
        super::check_key_id(id)?;
        let key = SigningKey::from_pkcs8_pem(pem)
            .map_err(|_| KeyError::Malformed("Ed25519 PKCS#8 PEM private key"))?;
        Ok(PublisherKey {
            id: id.to_owned(),
            key,
        })
    }

    /// Encodes the private key as PKCS#8 PEM (wiped on drop; store it owner-only).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| KeyError::Malformed("PKCS#8 encoding failed"))
    }

    /// The key id written into sealed headers.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public half, to hand to servers (see [`TrustedPublishers`]).
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public half as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_key_pem(&self) -> Result<String, KeyError> {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|_| KeyError::Malformed("SPKI encoding failed"))
    }

    /// Signs `message` (the container's 64-byte signing digest).
    pub(crate) fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }
}

impl fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The publisher keys a server accepts, by key id. A sealed file whose header names an id that
/// is not here, or whose signature does not verify under that id's key, is rejected.
#[derive(Clone, Debug, Default)]
pub struct TrustedPublishers {
    keys: BTreeMap<String, VerifyingKey>,
}

impl TrustedPublishers {
    /// An empty set (trusts nobody).
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `key` under `id`. Refuses a duplicate id (ambiguous configuration) and weak
    /// (small-order) keys.
    pub fn insert(&mut self, id: &str, key: VerifyingKey) -> Result<(), KeyError> {
        super::check_key_id(id)?;
        if key.is_weak() {
            return Err(KeyError::Malformed("weak Ed25519 public key"));
        }
        if self.keys.contains_key(id) {
            return Err(KeyError::Malformed("duplicate publisher key id"));
        }
        self.keys.insert(id.to_owned(), key);
        Ok(())
    }

    /// Builds the set from `(id, public key)` pairs, where each key is either an SPKI PEM
    /// (`-----BEGIN PUBLIC KEY-----`) or the standard base64 of the raw 32-byte key.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, KeyError> {
        let mut set = Self::new();
        for (id, text) in entries {
            set.insert(id, parse_public_key(text)?)?;
        }
        Ok(set)
    }

    /// The key trusted under `id`, if any.
    pub fn get(&self, id: &str) -> Option<&VerifyingKey> {
        self.keys.get(id)
    }

    /// Number of trusted keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Parses an Ed25519 public key from SPKI PEM or base64 of the raw 32 bytes.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|_| KeyError::Malformed("Ed25519 SPKI PEM public key"));
    }
    let raw = B64
        .decode(text)
        .map_err(|_| KeyError::Malformed("public key base64"))?;
    let bytes: [u8; PUBLIC_KEY_LENGTH] = raw
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Malformed("public key must be 32 bytes"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Malformed("invalid Ed25519 point"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn pem_round_trip_and_trusted_entries() {
        let key = PublisherKey::generate("pub-1", &mut StdRng::seed_from_u64(5)).unwrap();
        let pem = key.to_pkcs8_pem().unwrap();
        let back = PublisherKey::from_pkcs8_pem("pub-1", &pem).unwrap();
        assert_eq!(back.verifying_key(), key.verifying_key());
        let spki = key.public_key_pem().unwrap();
        let raw = B64.encode(key.verifying_key().as_bytes());
        let set =
            TrustedPublishers::from_entries([("a", spki.as_str()), ("b", raw.as_str())]).unwrap();
        assert_eq!(set.get("a"), Some(&key.verifying_key()));
        assert_eq!(set.get("b"), Some(&key.verifying_key()));
        assert!(set.get("c").is_none());
        assert!(
            TrustedPublishers::from_entries([("a", raw.as_str()), ("a", raw.as_str())]).is_err()
        );
        assert!(TrustedPublishers::from_entries([("a", "AAAA")]).is_err());
        assert!(PublisherKey::from_pkcs8_pem("x", "garbage").is_err());
        assert!(PublisherKey::generate("bad id", &mut StdRng::seed_from_u64(1)).is_err());
    }

    #[test]
    fn debug_output_holds_no_key_bytes() {
        let key = PublisherKey::generate("pub-1", &mut StdRng::seed_from_u64(6)).unwrap();
        let secret = key.key.to_bytes();
        let dbg = format!("{key:?}");
        assert!(dbg.contains("redacted"));
        assert!(!dbg.contains(&hex::encode(secret)));
        assert!(!dbg.contains(&B64.encode(secret)));
        assert!(!dbg.contains(&format!("{:?}", &secret[..4])));
    }
}
