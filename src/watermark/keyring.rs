//! The watermark keyring: the live keys (rotation) and which one signs new completions.
//!
//! Stored as JSON in a 0600 file created by `cloister keys init` (`devstate`):
//! `{"active": "<id>", "keys": [{"id": "<id>", "secret": "<64 hex chars>"}]}`. Pure: parsing and
//! serialising only; the file is read by the server and the CLI.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::{WatermarkError, WatermarkKey, SECRET_LEN};

/// Live watermark keys; the active one watermarks new completions, all of them can detect.
#[derive(Debug, Clone)]
pub struct WatermarkKeyring {
    active: usize,
    keys: Vec<WatermarkKey>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawKeyring {
    active: String,
    keys: Vec<RawKey>,
}

#[derive(Deserialize, Serialize, Zeroize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: String,
    secret: String,
}

impl Drop for RawKey {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// Why a keyring file could not be used (never carries key bytes).
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("watermark keyring is not valid JSON of the expected shape")]
    Json,
    #[error("watermark key {0:?}: the secret must be hex")]
    Hex(String),
    #[error("watermark key {id:?}: {source}")]
    Key { id: String, source: WatermarkError },
    #[error("watermark keyring: active key {0:?} is not in the keyring")]
    NoActive(String),
    #[error("watermark keyring: key id {0:?} appears twice")]
    Duplicate(String),
}

impl WatermarkKeyring {
    /// A fresh keyring with one random 256-bit key.
    pub fn generate(id: &str, rng: &mut impl RngCore) -> Result<Self, WatermarkError> {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        rng.fill_bytes(secret.as_mut());
        Ok(WatermarkKeyring {
            active: 0,
            keys: vec![WatermarkKey::new(id, secret.as_ref())?],
        })
    }

    pub fn from_json(text: &str) -> Result<Self, KeyringError> {
        let raw: RawKeyring = serde_json::from_str(text).map_err(|_| KeyringError::Json)?;
        let mut keys: Vec<WatermarkKey> = Vec::with_capacity(raw.keys.len());
        for k in &raw.keys {
            if keys.iter().any(|x| x.id() == k.id) {
                return Err(KeyringError::Duplicate(k.id.clone()));
            }
            let secret = Zeroizing::new(
                hex::decode(k.secret.trim()).map_err(|_| KeyringError::Hex(k.id.clone()))?,
            );
            let key =
                WatermarkKey::new(k.id.clone(), &secret).map_err(|source| KeyringError::Key {
                    id: k.id.clone(),
                    source,
                })?;
            keys.push(key);
        }
        let active = keys
            .iter()
            .position(|k| k.id() == raw.active)
            .ok_or(KeyringError::NoActive(raw.active.clone()))?;
        Ok(WatermarkKeyring { active, keys })
    }

    /// The JSON form (contains the secrets: write it only to a 0600 file).
    pub fn to_json(&self) -> Zeroizing<String> {
        let raw = RawKeyring {
            active: self.active().id().to_owned(),
            keys: self
                .keys
                .iter()
                .map(|k| RawKey {
                    id: k.id().to_owned(),
                    secret: hex::encode(k.secret()),
                })
                .collect(),
        };
        Zeroizing::new(serde_json::to_string_pretty(&raw).unwrap_or_default())
    }

    /// The key that watermarks new completions.
    pub fn active(&self) -> &WatermarkKey {
        &self.keys[self.active]
    }

    /// The key with id `id`.
    pub fn get(&self, id: &str) -> Option<&WatermarkKey> {
        self.keys.iter().find(|k| k.id() == id)
    }

    /// Every live key.
    pub fn keys(&self) -> &[WatermarkKey] {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn roundtrip_and_errors() {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(1);
        let ring = WatermarkKeyring::generate("wm-1", &mut rng).unwrap();
        let json = ring.to_json();
        let back = WatermarkKeyring::from_json(&json).unwrap();
        assert_eq!(back.active().id(), "wm-1");
        assert_eq!(back.active().secret(), ring.active().secret());
        assert!(!format!("{back:?}").contains(&hex::encode(ring.active().secret())[..16]));
        let short = r#"{"active":"a","keys":[{"id":"a","secret":"0102"}]}"#;
        assert!(matches!(
            WatermarkKeyring::from_json(short),
            Err(KeyringError::Key { .. })
        ));
        let s = hex::encode([7u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        let missing = format!(r#"{{"active":"b","keys":[{{"id":"a","secret":"{s}"}}]}}"#);
        assert!(matches!(
            WatermarkKeyring::from_json(&missing),
            Err(KeyringError::NoActive(_))
        ));
    }
}
