//! The watermark secret and the scheme parameters.
//!
//! Both are "parsed, not validated": a [`WatermarkKey`] or [`WatermarkParams`] that exists is
//! usable, so the bias and detection code has no error paths for bad configuration.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::WatermarkError;

/// Size of the stored secret in bytes (256 bits).
pub const SECRET_LEN: usize = 32;

/// Smallest accepted secret in bytes (128 bits).
///
/// Why: anyone who knows the key can both detect and *forge* or *scrub* the watermark, so it must
/// not be guessable. A public constant (as in TGI's watermark) turns the watermark into a
/// public signal that anyone can remove.
pub const MIN_SECRET_LEN: usize = 16;

/// Longest key id in bytes (ids go into audit records and metric labels, so they are bounded).
pub const MAX_KEY_ID_LEN: usize = 64;

/// A watermark secret with its public id.
///
/// The id is recorded with every watermarked response (audit), so detection can test only the
/// key that was active then; rotation means adding a new id, never changing the bytes of an old
/// one. The secret is wiped from memory on drop; `Debug` prints only the id.
#[derive(Clone)]
pub struct WatermarkKey {
    id: String,
    secret: Zeroizing<[u8; SECRET_LEN]>,
}

impl WatermarkKey {
    /// Builds a key from `16..=32` secret bytes.
    ///
    /// Shorter secrets are zero-padded to 32 bytes, which gives the same HMAC as the unpadded
    /// key (HMAC pads keys with zeros to the block size), so a 16-byte key keeps its 128 bits.
    ///
    /// # Errors
    /// [`WatermarkError::InvalidKeyId`], [`WatermarkError::SecretTooShort`],
    /// [`WatermarkError::SecretTooLong`], or [`WatermarkError::WeakSecret`] for an all-zero or
    /// single-repeated-byte secret (a placeholder left in a config file).
    pub fn new(id: impl Into<String>, secret: &[u8]) -> Result<Self, WatermarkError> {
        let id = id.into();
        if !valid_key_id(&id) {
            return Err(WatermarkError::InvalidKeyId);
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(WatermarkError::SecretTooShort { len: secret.len() });
        }
        if secret.len() > SECRET_LEN {
            return Err(WatermarkError::SecretTooLong { len: secret.len() });
        }
        if is_constant(secret) {
            return Err(WatermarkError::WeakSecret);
        }
        let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
        bytes[..secret.len()].copy_from_slice(secret);
        Ok(Self { id, secret: bytes })
    }

    /// The public key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret bytes, for the PRF only.
    pub(crate) fn secret(&self) -> &[u8; SECRET_LEN] {
        &self.secret
    }
}

impl std::fmt::Debug for WatermarkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatermarkKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Same rule as the main crate's key ids: `1..=64` bytes of `[A-Za-z0-9._:@+-]`.
fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@+-".contains(&b))
}

/// True when every byte equals the first one (all-zero included). Constant time in the
/// content, so the check does not leak how far a real key matches the pattern.
fn is_constant(secret: &[u8]) -> bool {
    let Some(&first) = secret.first() else {
        return true;
    };
    let mut same = subtle::Choice::from(1u8);
    for b in secret {
        same &= b.ct_eq(&first);
    }
    bool::from(same)
}

/// Default PRF window `h` (tokens hashed per decision, the candidate included).
pub const DEFAULT_CONTEXT_WIDTH: usize = 4;
/// Default green-list fraction `γ`.
pub const DEFAULT_GAMMA: f64 = 0.25;
/// Default logit bias `δ` added to green tokens.
pub const DEFAULT_DELTA: f32 = 2.0;
/// Largest accepted `h`.
pub const MAX_CONTEXT_WIDTH: usize = 8;

/// Scheme parameters `(h, γ, δ)`; defaults `(4, 0.25, 2.0)` as in the SelfHash paper.
///
/// `context_width` is the paper's `h` for SelfHash: the number of tokens in the PRF window
/// *including the candidate token*, so `h = 4` hashes the 3 previous tokens plus the candidate
/// (the reference implementation's `context_width = 4, self_salt = True`).
///
/// Detection must use the same `h` and `γ` as generation; `δ` only matters for generation.
/// Deserialization validates (a bad config fails to load).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawParams", into = "RawParams")]
pub struct WatermarkParams {
    context_width: usize,
    gamma: f64,
    delta: f32,
}

impl WatermarkParams {
    /// Checked constructor.
    ///
    /// # Errors
    /// [`WatermarkError::InvalidContextWidth`] unless `1 <= context_width <= 8`,
    /// [`WatermarkError::InvalidGamma`] unless `0 < gamma < 1`,
    /// [`WatermarkError::InvalidDelta`] unless `delta` is finite and `> 0`.
    pub fn new(context_width: usize, gamma: f64, delta: f32) -> Result<Self, WatermarkError> {
        if !(1..=MAX_CONTEXT_WIDTH).contains(&context_width) {
            return Err(WatermarkError::InvalidContextWidth(context_width));
        }
        // Written so that NaN fails too.
        if !(gamma > 0.0 && gamma < 1.0) {
            return Err(WatermarkError::InvalidGamma(gamma));
        }
        if !(delta.is_finite() && delta > 0.0) {
            return Err(WatermarkError::InvalidDelta(delta));
        }
        Ok(Self {
            context_width,
            gamma,
            delta,
        })
    }

    /// `h`: tokens in the PRF window, the candidate included.
    pub fn context_width(&self) -> usize {
        self.context_width
    }

    /// `γ`: probability that a token is green under the null hypothesis.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    /// `δ`: logit bias added to green candidates.
    pub fn delta(&self) -> f32 {
        self.delta
    }
}

impl Default for WatermarkParams {
    fn default() -> Self {
        Self {
            context_width: DEFAULT_CONTEXT_WIDTH,
            gamma: DEFAULT_GAMMA,
            delta: DEFAULT_DELTA,
        }
    }
}

/// Unvalidated wire form of [`WatermarkParams`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParams {
    context_width: usize,
    gamma: f64,
    delta: f32,
}

impl TryFrom<RawParams> for WatermarkParams {
    type Error = WatermarkError;
    fn try_from(raw: RawParams) -> Result<Self, Self::Error> {
        Self::new(raw.context_width, raw.gamma, raw.delta)
    }
}

impl From<WatermarkParams> for RawParams {
    fn from(p: WatermarkParams) -> Self {
        Self {
            context_width: p.context_width,
            gamma: p.gamma,
            delta: p.delta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [
        0x8f, 0x12, 0xa4, 0x55, 0x09, 0xee, 0x31, 0x7c, 0x42, 0xb0, 0x1d, 0x9a, 0x63, 0xf7, 0x28,
        0xc5, 0x5e, 0x81, 0x0b, 0xd4, 0x76, 0x3f, 0xa9, 0x14, 0xe2, 0x6d, 0x90, 0x37, 0xcb, 0x58,
        0x01, 0xfa,
    ];

    #[test]
    fn debug_has_no_secret_bytes() {
        let key = WatermarkKey::new("wm-2025-01", &SECRET).unwrap();
        let dbg = format!("{key:?}");
        assert!(dbg.contains("wm-2025-01"));
        assert!(dbg.contains("<redacted>"));
        let hex: String = SECRET.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!dbg.to_ascii_lowercase().contains(&hex[..8]));
        // Neither as decimal bytes (the derived Debug of an array).
        assert!(!dbg.contains("143, 18"));
        let alt = format!("{key:#?}");
        assert!(!alt.contains("143"));
    }

    #[test]
    fn rejects_short_long_and_constant_secrets() {
        assert_eq!(
            WatermarkKey::new("k", &SECRET[..15]).unwrap_err(),
            WatermarkError::SecretTooShort { len: 15 }
        );
        assert!(WatermarkKey::new("k", &SECRET[..16]).is_ok());
        assert_eq!(
            WatermarkKey::new("k", &[7u8; 33]).unwrap_err(),
            WatermarkError::SecretTooLong { len: 33 }
        );
        assert_eq!(
            WatermarkKey::new("k", &[0u8; 32]).unwrap_err(),
            WatermarkError::WeakSecret
        );
        assert_eq!(
            WatermarkKey::new("k", &[0xffu8; 16]).unwrap_err(),
            WatermarkError::WeakSecret
        );
    }

    #[test]
    fn rejects_bad_ids() {
        for id in ["", "has space", "ünï", &"x".repeat(65)] {
            assert_eq!(
                WatermarkKey::new(id, &SECRET).unwrap_err(),
                WatermarkError::InvalidKeyId,
                "{id}"
            );
        }
        assert!(WatermarkKey::new("tenant:a@v2+b.c_d-e", &SECRET).is_ok());
    }

    #[test]
    fn params_validate() {
        let d = WatermarkParams::default();
        assert_eq!((d.context_width(), d.gamma(), d.delta()), (4, 0.25, 2.0));
        assert!(WatermarkParams::new(0, 0.25, 2.0).is_err());
        assert!(WatermarkParams::new(9, 0.25, 2.0).is_err());
        assert!(WatermarkParams::new(1, 0.25, 2.0).is_ok());
        assert!(WatermarkParams::new(8, 0.25, 2.0).is_ok());
        for g in [0.0, 1.0, -0.1, f64::NAN] {
            assert!(WatermarkParams::new(4, g, 2.0).is_err(), "{g}");
        }
        for d in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(WatermarkParams::new(4, 0.25, d).is_err(), "{d}");
        }
    }
}
