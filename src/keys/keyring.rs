//! The local keyring: one KEK id with several versions, one of them active.
//!
//! This is the development/small-deployment [`KeyProvider`]; production can use an HSM behind
//! the same trait. Modelled on Vault transit: new wraps use the active version, older versions
//! stay available for unwrapping until every sealed model has been rewrapped, then
//! [`Keyring::retire_below`] drops them (`min_version`).
//!
//! The JSON form (pure encode/decode; the caller stores it, e.g. in a 0600 file):
//! ```json
//! {"format":"cloister-keyring-v1","id":"main","active":2,"min_version":1,
//!  "keys":[{"version":1,"key":"<base64 of 32 bytes>"},{"version":2,"key":"..."}]}
//! ```
//!
//! Wrapped-DEK bytes produced by this provider: `nonce (12, random) ‖ AES-256-GCM ciphertext of
//! the DEK (32) ‖ tag (16)` = 60 bytes, with the caller's AAD.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::kek::{Dek, Kek, KekRef, KeyProvider, KEY_LEN};
use super::KeyError;

/// The `format` tag of the keyring JSON; refuses files of another kind or version.
const KEYRING_FORMAT: &str = "cloister-keyring-v1";
/// Length of the random nonce in a wrapped DEK.
const WRAP_NONCE_LEN: usize = 12;
/// Length of a wrapped DEK from this provider: nonce ‖ ciphertext ‖ tag.
pub const WRAPPED_DEK_LEN: usize = WRAP_NONCE_LEN + KEY_LEN + 16;
/// Most versions a keyring may hold; bounds parsing and makes runaway rotation visible.
const MAX_VERSIONS: usize = 1024;

/// A versioned set of KEKs sharing one id. See the module docs.
///
/// Rotation mutates a `Keyring` value; a server swaps the whole value atomically (e.g. behind an
/// `ArcSwap`) so in-flight unwraps never see a half-updated keyring.
pub struct Keyring {
    id: String,
    keys: BTreeMap<u32, Kek>,
    active: u32,
    min_version: u32,
}

impl Keyring {
    /// A new keyring `id` holding one fresh KEK, version 1, active.
    pub fn generate(id: &str, rng: &mut (impl RngCore + CryptoRng)) -> Result<Self, KeyError> {
        let kek = Kek::generate(id, 1, rng)?;
        let mut keys = BTreeMap::new();
        keys.insert(1, kek);
        Ok(Keyring {
            id: id.to_owned(),
            keys,
            active: 1,
            min_version: 1,
        })
    }

    /// Adds a fresh KEK version (highest + 1), makes it active and returns its number. Older
    /// versions stay usable for unwrapping until retired.
    pub fn rotate(&mut self, rng: &mut (impl RngCore + CryptoRng)) -> Result<u32, KeyError> {
        if self.keys.len() >= MAX_VERSIONS {
            return Err(KeyError::InvalidOperation(
                "keyring holds too many versions",
            ));
        }
        let highest = self.keys.keys().next_back().copied().unwrap_or(0);
        let version = highest
            .checked_add(1)
            .ok_or(KeyError::InvalidOperation("KEK version overflow"))?;
        let kek = Kek::generate(&self.id, version, rng)?;
        self.keys.insert(version, kek);
        self.active = version;
        Ok(version)
    }

    /// Drops (and wipes) every version below `min_version`; files wrapped under them can no
    /// longer be opened. Refuses to retire the active version.
    pub fn retire_below(&mut self, min_version: u32) -> Result<(), KeyError> {
        if min_version > self.active {
            return Err(KeyError::InvalidOperation(
                "cannot retire the active KEK version",
            ));
        }
        if min_version > self.min_version {
            self.keys.retain(|v, _| *v >= min_version);
            self.min_version = min_version;
        }
        Ok(())
    }

    /// The keyring id (the KEK id stored in sealed files).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The version new wraps use.
    pub fn active_version(&self) -> u32 {
        self.active
    }

    /// The lowest version still held for unwrapping.
    pub fn min_version(&self) -> u32 {
        self.min_version
    }

    /// All versions held, ascending.
    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// Encodes the keyring as JSON (see module docs). The result holds key bytes and is wiped
    /// on drop; the caller must store it with owner-only permissions.
    pub fn to_json(&self) -> Zeroizing<String> {
        let entries: Vec<KeyEntryOut> = self
            .keys
            .iter()
            .map(|(version, kek)| {
                // Pre-sized so base64 encoding never reallocates (which would leave copies).
                let mut key = Zeroizing::new(String::with_capacity(64));
                B64.encode_string(kek.key_bytes(), &mut key);
                KeyEntryOut {
                    version: *version,
                    key,
                }
            })
            .collect();
        let doc = KeyringOut {
            format: KEYRING_FORMAT,
            id: &self.id,
            active: self.active,
            min_version: self.min_version,
            keys: &entries,
        };
        // Sized generously up front for the same reason: a growing buffer would leave freed
        // copies of the key text on the heap.
        let capacity = 256 + entries.len() * (96 + self.id.len());
        let mut out = Zeroizing::new(Vec::with_capacity(capacity));
        if serde_json::to_writer(&mut *out, &doc).is_err() {
            // Serialising plain strings and integers into a Vec cannot fail; stay total anyway.
            return Zeroizing::new(String::new());
        }
        let bytes = std::mem::take(&mut *out);
        match String::from_utf8(bytes) {
            Ok(s) => Zeroizing::new(s),
            Err(e) => {
                let mut b = e.into_bytes();
                zeroize::Zeroize::zeroize(&mut b);
                Zeroizing::new(String::new())
            }
        }
    }

    /// Decodes a keyring from JSON, refusing unknown fields, a wrong format tag, invalid ids,
    /// version 0, duplicate versions, keys that are not exactly 32 bytes of canonical base64,
    /// versions below `min_version`, and an active version that is not held.
    pub fn from_json(json: &str) -> Result<Self, KeyError> {
        let doc: KeyringIn<'_> =
            serde_json::from_str(json).map_err(|_| KeyError::Malformed("keyring JSON"))?;
        if doc.format != KEYRING_FORMAT {
            return Err(KeyError::Malformed("unknown keyring format"));
        }
        super::check_key_id(doc.id)?;
        if doc.keys.is_empty() || doc.keys.len() > MAX_VERSIONS {
            return Err(KeyError::Malformed("keyring must hold 1..=1024 keys"));
        }
        let mut keys = BTreeMap::new();
        for entry in &doc.keys {
            if entry.version < doc.min_version {
                return Err(KeyError::Malformed("key version below min_version"));
            }
            let key = decode_key(entry.key)?;
            let kek = Kek::from_bytes(doc.id, entry.version, key)?;
            if keys.insert(entry.version, kek).is_some() {
                return Err(KeyError::Malformed("duplicate key version"));
            }
        }
        if !keys.contains_key(&doc.active) || doc.min_version == 0 {
            return Err(KeyError::Malformed("active version is not in the keyring"));
        }
        Ok(Keyring {
            id: doc.id.to_owned(),
            keys,
            active: doc.active,
            min_version: doc.min_version,
        })
    }

    fn kek(&self, reference: &KekRef) -> Result<&Kek, KeyError> {
        if reference.id != self.id {
            return Err(unknown(reference));
        }
        self.keys
            .get(&reference.version)
            .ok_or_else(|| unknown(reference))
    }
}

fn unknown(reference: &KekRef) -> KeyError {
    KeyError::UnknownKek {
        id: reference.id.clone(),
        version: reference.version,
    }
}

/// Decodes exactly 32 key bytes from canonical padded base64 into a zeroizing buffer.
fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    const MALFORMED: KeyError = KeyError::Malformed("key must be 32 bytes of base64");
    if text.len() != 44 {
        return Err(MALFORMED);
    }
    let mut buf = Zeroizing::new([0u8; 48]);
    let n = B64
        .decode_slice(text, buf.as_mut_slice())
        .map_err(|_| MALFORMED)?;
    if n != KEY_LEN {
        return Err(MALFORMED);
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&buf[..KEY_LEN]);
    Ok(key)
}

impl KeyProvider for Keyring {
    fn active(&self) -> KekRef {
        KekRef {
            id: self.id.clone(),
            version: self.active,
        }
    }

    fn wrap_dek(&self, dek: &Dek, aad: &[u8]) -> Result<(KekRef, Vec<u8>), KeyError> {
        let reference = self.active();
        let kek = self.kek(&reference)?;
        let cipher = Aes256Gcm::new(kek.key_bytes().into());
        let mut out = vec![0u8; WRAPPED_DEK_LEN];
        // A random nonce per wrap: one KEK wraps far fewer than 2^32 DEKs.
        OsRng.fill_bytes(&mut out[..WRAP_NONCE_LEN]);
        let (nonce, rest) = out.split_at_mut(WRAP_NONCE_LEN);
        let (body, tag_out) = rest.split_at_mut(KEY_LEN);
        body.copy_from_slice(dek.as_bytes());
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, body)
            .map_err(|_| KeyError::WrapFailed)?;
        tag_out.copy_from_slice(&tag);
        Ok((reference, out))
    }

    fn unwrap_dek(&self, kek: &KekRef, wrapped: &[u8], aad: &[u8]) -> Result<Dek, KeyError> {
        let key = self.kek(kek)?;
        if wrapped.len() != WRAPPED_DEK_LEN {
            return Err(KeyError::UnwrapFailed);
        }
        let (nonce, rest) = wrapped.split_at(WRAP_NONCE_LEN);
        let (body, tag) = rest.split_at(KEY_LEN);
        let mut dek = Zeroizing::new([0u8; KEY_LEN]);
        dek.copy_from_slice(body);
        Aes256Gcm::new(key.key_bytes().into())
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                aad,
                dek.as_mut_slice(),
                Tag::from_slice(tag),
            )
            .map_err(|_| KeyError::UnwrapFailed)?;
        Ok(Dek::from_bytes(dek))
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("id", &self.id)
            .field("active", &self.active)
            .field("min_version", &self.min_version)
            .field("versions", &self.versions())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct KeyringOut<'a> {
    format: &'static str,
    id: &'a str,
    active: u32,
    min_version: u32,
    keys: &'a [KeyEntryOut],
}

#[derive(Serialize)]
struct KeyEntryOut {
    version: u32,
    #[serde(serialize_with = "ser_secret")]
    key: Zeroizing<String>,
}

fn ser_secret<S: serde::Serializer>(v: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

/// Borrowed view of the JSON: base64 has no escapes, so key text is never copied out of the
/// caller's (zeroizing) input buffer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringIn<'a> {
    #[serde(borrow)]
    format: &'a str,
    #[serde(borrow)]
    id: &'a str,
    active: u32,
    min_version: u32,
    #[serde(borrow)]
    keys: Vec<KeyEntryIn<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntryIn<'a> {
    version: u32,
    #[serde(borrow)]
    key: &'a str,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ring() -> Keyring {
        let mut rng = StdRng::seed_from_u64(7);
        let mut ring = Keyring::generate("main", &mut rng).unwrap();
        ring.rotate(&mut rng).unwrap();
        ring
    }

    #[test]
    fn json_round_trip_keeps_every_version_and_unwraps() {
        let ring = ring();
        let dek = Dek::generate(&mut StdRng::seed_from_u64(1));
        let (kref, wrapped) = ring.wrap_dek(&dek, b"aad").unwrap();
        assert_eq!(kref.version, 2);
        let back = Keyring::from_json(&ring.to_json()).unwrap();
        assert_eq!(back.id(), "main");
        assert_eq!(back.versions(), vec![1, 2]);
        assert_eq!(back.active_version(), 2);
        assert_eq!(back.min_version(), 1);
        let got = back.unwrap_dek(&kref, &wrapped, b"aad").unwrap();
        assert_eq!(got.as_bytes(), dek.as_bytes());
        assert!(matches!(
            back.unwrap_dek(&kref, &wrapped, b"other"),
            Err(KeyError::UnwrapFailed)
        ));
    }

    #[test]
    fn from_json_refuses_malformed_keyrings() {
        let good = ring().to_json();
        let v: serde_json::Value = serde_json::from_str(&good).unwrap();
        let key1 = v["keys"][0]["key"].as_str().unwrap().to_owned();
        let short = B64.encode([1u8; 31]);
        let cases = [
            "not json".to_owned(),
            good.replace("cloister-keyring-v1", "cloister-keyring-v9"),
            good.replace("\"min_version\":1", "\"min_version\":1,\"extra\":1"),
            good.replace(&key1, &short),
            good.replace(&key1, &format!("{key1}AAAA")),
            good.replace("\"version\":2", "\"version\":1"),
            good.replace("\"active\":2", "\"active\":3"),
            good.replace("\"min_version\":1", "\"min_version\":2"),
            good.replace("\"version\":1", "\"version\":0")
                .replace("\"min_version\":1", "\"min_version\":0"),
            good.replace("\"id\":\"main\"", "\"id\":\"\""),
        ];
        for (i, case) in cases.iter().enumerate() {
            assert!(
                Keyring::from_json(case).is_err(),
                "case {i} accepted: {case}"
            );
        }
    }

    #[test]
    fn retire_below_drops_old_versions_but_not_the_active_one() {
        let mut ring = ring();
        let dek = Dek::generate(&mut StdRng::seed_from_u64(2));
        let v1 = KekRef {
            id: "main".into(),
            version: 1,
        };
        let wrapped = {
            let cipher = Aes256Gcm::new(ring.kek(&v1).unwrap().key_bytes().into());
            let mut body = *dek.as_bytes();
            let nonce = [9u8; 12];
            let tag = cipher
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"a", &mut body)
                .unwrap();
            [&nonce[..], &body[..], &tag[..]].concat()
        };
        assert!(ring.unwrap_dek(&v1, &wrapped, b"a").is_ok());
        assert!(ring.retire_below(3).is_err());
        ring.retire_below(2).unwrap();
        assert_eq!(ring.versions(), vec![2]);
        assert!(matches!(
            ring.unwrap_dek(&v1, &wrapped, b"a"),
            Err(KeyError::UnknownKek { .. })
        ));
        let back = Keyring::from_json(&ring.to_json()).unwrap();
        assert_eq!(back.min_version(), 2);
    }

    #[test]
    fn debug_output_holds_no_key_bytes() {
        let ring = ring();
        let json = ring.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let dbg = format!("{ring:?}");
        for entry in v["keys"].as_array().unwrap() {
            let b64 = entry["key"].as_str().unwrap();
            let raw = B64.decode(b64).unwrap();
            assert!(!dbg.contains(b64));
            assert!(!dbg.contains(&hex::encode(&raw)));
            let kek = ring
                .kek(&KekRef {
                    id: "main".into(),
                    version: entry["version"].as_u64().unwrap() as u32,
                })
                .unwrap();
            let kdbg = format!("{kek:?}");
            assert!(kdbg.contains("redacted") && !kdbg.contains(b64));
            assert!(
                !kdbg.contains(&hex::encode(&raw)) && !kdbg.contains(&format!("{:?}", &raw[..4]))
            );
        }
        let dek = Dek::generate(&mut StdRng::seed_from_u64(3));
        let ddbg = format!("{dek:?}");
        assert_eq!(ddbg, "Dek(<redacted>)");
        assert!(!ddbg.contains(&hex::encode(dek.as_bytes())));
    }
}
