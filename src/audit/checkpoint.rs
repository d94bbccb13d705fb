//! Signed checkpoints (RFC 6962 / tlog-checkpoint style) and the audit signing key.
//!
//! Why: the hash chain alone proves order and integrity *relative to the head*, but whoever can
//! rewrite the file can rewrite the whole chain. A checkpoint is a statement by the audit key:
//! "log `log_id` had `count` records with head `head_hash` at `time_unix_ms`". An attacker
//! without the key can then no longer rewrite, drop or reorder anything before it. Copies of
//! checkpoints shipped off-host (e.g. via `GET /admin/audit/checkpoints`) also detect truncation.
//!
//! On disk a checkpoint is a line in the same file as the records:
//! `{"checkpoint":{"log_id":..,"count":..,"head_hash":"<hex>","time_unix_ms":..,"key_id":..},"sig":"<base64>"}`
//! in canonical (declaration-order, compact) JSON. The signature is Ed25519 over the text note
//! returned by [`Checkpoint::signed_message`] (one field per line, like a tlog checkpoint body),
//! not over JSON, so it stays unambiguous and easy to re-verify with other tools.

use std::fmt;

use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::CryptoRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::ids::{KeyId, LogId};
use super::record::{hex32, Hash};

/// First line of every signed checkpoint message.
pub const CHECKPOINT_DOMAIN: &str = "cloister-audit/checkpoint/v1";

/// The signed statement about a log prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Which log.
    pub log_id: LogId,
    /// Number of records covered (= the `seq` the next record will have).
    pub count: u64,
    /// Hash of the record with `seq == count - 1` (or the chain start when `count` is at it).
    #[serde(with = "hex32")]
    pub head_hash: Hash,
    /// When the checkpoint was made (caller's clock).
    pub time_unix_ms: u64,
    /// Which audit key signed it.
    pub key_id: KeyId,
}

impl Checkpoint {
    /// The exact bytes that are signed: domain, then each field on its own line.
    pub fn signed_message(&self) -> String {
        format!(
            "{CHECKPOINT_DOMAIN}\n{}\n{}\n{}\n{}\n{}\n",
            self.log_id,
            self.count,
            hex::encode(self.head_hash),
            self.time_unix_ms,
            self.key_id
        )
    }
}

/// A checkpoint line: the checkpoint and its Ed25519 signature (standard base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCheckpoint {
    /// The statement.
    pub checkpoint: Checkpoint,
    /// Base64 of the 64-byte signature.
    pub sig: String,
}

impl SignedCheckpoint {
    /// The canonical line (compact JSON plus `\n`).
    pub fn to_line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut v = serde_json::to_vec(self)?;
        v.push(b'\n');
        Ok(v)
    }
}

/// Key handling errors. Deliberately without detail from the PKCS#8 parser, which could echo
/// key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The PEM was not an Ed25519 PKCS#8 private key.
    #[error("not an Ed25519 PKCS#8 private key PEM")]
    BadPrivateKey,
    /// The PEM was not an Ed25519 SubjectPublicKeyInfo.
    #[error("not an Ed25519 public key PEM")]
    BadPublicKey,
    /// Encoding failed.
    #[error("key encoding failed")]
    Encode,
}

/// Why a checkpoint signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// `key_id` is not trusted by this verifier.
    #[error("checkpoint signed by untrusted key id {0}")]
    UnknownKey(KeyId),
    /// Not valid base64 of 64 bytes.
    #[error("checkpoint signature is malformed")]
    Malformed,
    /// The signature does not verify.
    #[error("checkpoint signature does not verify")]
    Invalid,
}

/// The Ed25519 audit signing key. The secret scalar is zeroized on drop (ed25519-dalek `zeroize`
/// feature) and never printed: `Debug` shows only the id and the public key.
pub struct AuditSigner {
    id: KeyId,
    key: SigningKey,
}

impl fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditSigner")
            .field("id", &self.id)
            .field("public", &hex::encode(self.key.verifying_key().as_bytes()))
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl AuditSigner {
    /// A fresh key from `rng` (pass `rand::rngs::OsRng` in production).
    pub fn generate<R: RngCore + CryptoRng>(id: KeyId, rng: &mut R) -> Self {
        Self {
            id,
            key: SigningKey::generate(rng),
        }
    }

    /// Imports a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(id: KeyId, pem: &str) -> Result<Self, KeyError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|_| KeyError::BadPrivateKey)?;
        Ok(Self { id, key })
    }

    /// Exports the key as PKCS#8 PEM, in a buffer that is zeroized on drop.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| KeyError::Encode)
    }

    /// The key id written into checkpoints.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// A verifier trusting exactly this key.
    pub fn verifier(&self) -> AuditVerifier {
        AuditVerifier::new(self.id.clone(), self.key.verifying_key())
    }

    /// Signs a checkpoint; `cp.key_id` is set to this key's id.
    pub fn sign(&self, mut cp: Checkpoint) -> SignedCheckpoint {
        cp.key_id = self.id.clone();
        let sig = self.key.sign(cp.signed_message().as_bytes());
        SignedCheckpoint {
            checkpoint: cp,
            sig: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        }
    }
}

/// The set of trusted audit public keys, by key id. More than one key lets a log span an audit
/// key rotation.
#[derive(Debug, Clone)]
pub struct AuditVerifier {
    keys: Vec<(KeyId, VerifyingKey)>,
}

impl AuditVerifier {
    /// Trusts one key.
    pub fn new(id: KeyId, key: VerifyingKey) -> Self {
        Self {
            keys: vec![(id, key)],
        }
    }

    /// Trusts one key given as SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_public_key_pem(id: KeyId, pem: &str) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_public_key_pem(pem).map_err(|_| KeyError::BadPublicKey)?;
        Ok(Self::new(id, key))
    }

    /// Also trusts `key` under `id` (replacing an earlier key with the same id).
    pub fn with_key(mut self, id: KeyId, key: VerifyingKey) -> Self {
        self.keys.retain(|(k, _)| k != &id);
        self.keys.push((id, key));
        self
    }

    /// Adds all keys of `other`.
    pub fn merged(mut self, other: &AuditVerifier) -> Self {
        for (id, key) in &other.keys {
            self = self.with_key(id.clone(), *key);
        }
        self
    }

    /// The PEM of the public key with this id, if trusted (to publish it).
    pub fn public_key_pem(&self, id: &KeyId) -> Option<String> {
        let (_, key) = self.keys.iter().find(|(k, _)| k == id)?;
        key.to_public_key_pem(LineEnding::LF).ok()
    }

    /// Checks the signature of a checkpoint line (strict Ed25519: no malleable signatures).
    pub fn verify(&self, sc: &SignedCheckpoint) -> Result<(), SignatureError> {
        let id = &sc.checkpoint.key_id;
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| SignatureError::UnknownKey(id.clone()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&sc.sig)
            .map_err(|_| SignatureError::Malformed)?;
        let sig = Signature::from_slice(&bytes).map_err(|_| SignatureError::Malformed)?;
        key.verify_strict(sc.checkpoint.signed_message().as_bytes(), &sig)
            .map_err(|_| SignatureError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> Checkpoint {
        Checkpoint {
            log_id: LogId::new("cloister:test").unwrap(),
            count: 100,
            head_hash: [7; 32],
            time_unix_ms: 5,
            key_id: KeyId::new("placeholder").unwrap(),
        }
    }

    #[test]
    fn sign_verify_and_tamper() {
        let s = AuditSigner::generate(KeyId::new("audit-1").unwrap(), &mut rand::rngs::OsRng);
        let v = s.verifier();
        let sc = s.sign(cp());
        assert_eq!(sc.checkpoint.key_id.as_str(), "audit-1");
        v.verify(&sc).unwrap();
        let mut bad = sc.clone();
        bad.checkpoint.count = 101;
        assert_eq!(v.verify(&bad), Err(SignatureError::Invalid));
        let other = AuditSigner::generate(KeyId::new("audit-1").unwrap(), &mut rand::rngs::OsRng);
        assert_eq!(v.verify(&other.sign(cp())), Err(SignatureError::Invalid));
        let stranger =
            AuditSigner::generate(KeyId::new("audit-2").unwrap(), &mut rand::rngs::OsRng);
        assert!(matches!(
            v.verify(&stranger.sign(cp())),
            Err(SignatureError::UnknownKey(_))
        ));
        assert!(v
            .clone()
            .merged(&stranger.verifier())
            .verify(&stranger.sign(cp()))
            .is_ok());
    }

    #[test]
    fn pem_round_trip_and_debug_hides_secret() {
        let s = AuditSigner::generate(KeyId::new("audit-1").unwrap(), &mut rand::rngs::OsRng);
        let pem = s.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let s2 = AuditSigner::from_pkcs8_pem(s.id().clone(), &pem).unwrap();
        s2.verifier().verify(&s.sign(cp())).unwrap();
        let pub_pem = s.verifier().public_key_pem(s.id()).unwrap();
        let v = AuditVerifier::from_public_key_pem(s.id().clone(), &pub_pem).unwrap();
        v.verify(&s2.sign(cp())).unwrap();

        let dbg = format!("{s:?}");
        assert!(dbg.contains("<redacted>"));
        let secret_hex = hex::encode(s.key.to_bytes());
        assert!(!dbg.contains(&secret_hex));
        let secret_b64 = base64::engine::general_purpose::STANDARD.encode(s.key.to_bytes());
        assert!(!dbg.contains(&secret_b64));
        assert!(!dbg.contains(&format!("{:?}", s.key.to_bytes())));
        assert_eq!(
            AuditSigner::from_pkcs8_pem(s.id().clone(), "junk").unwrap_err(),
            KeyError::BadPrivateKey
        );
    }
}
