//! Keyed Laplace noise on returned logprobs (the confidence policy's `noise`).
//!
//! Why keyed and deterministic: fresh random noise can be averaged away by asking the same
//! question `N` times (its error shrinks as `1/√N`). Here the noise on a value is a PRF of a
//! server-side key, the position and the token id, and the key is derived from a per-process
//! secret, the tenant and the prompt. Repeating an identical request therefore returns
//! identical values, and repetition gains an attacker nothing; a different prompt draws
//! independent noise. (A restart draws a new process secret: at most one extra sample per
//! restart.)
//!
//! The noise goes on before rounding, so the returned values stay on the policy's grid.

use hmac::Mac;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zeroize::Zeroizing;

use crate::watermark::prf::hmac_sha256;

const DOMAIN: &[u8] = b"cloister/logprob-noise/v1\0";

/// The per-process secret the per-request noise keys are derived from.
pub struct NoiseSecret(Zeroizing<[u8; 32]>);

impl NoiseSecret {
    /// A fresh secret from `rng` (the server passes `OsRng` at start).
    pub fn generate(rng: &mut impl RngCore) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut bytes[..]);
        NoiseSecret(bytes)
    }

    /// Wraps 32 secret bytes (tests and benches; the server uses [`Self::generate`]).
    pub fn new(bytes: [u8; 32]) -> Self {
        NoiseSecret(Zeroizing::new(bytes))
    }

    /// The noise key for one request: `HMAC-SHA256(secret, domain ‖ tenant ‖ 0 ‖ LE32(ids))`.
    pub fn key_for(&self, tenant: &str, prompt: &[u32]) -> NoiseKey {
        let mut mac = hmac_sha256(&self.0);
        mac.update(DOMAIN);
        mac.update(tenant.as_bytes());
        mac.update(&[0]);
        for id in prompt {
            mac.update(&id.to_le_bytes());
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&mac.finalize().into_bytes());
        NoiseKey(key)
    }
}

impl std::fmt::Debug for NoiseSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoiseSecret(..)")
    }
}

/// The key of one request's noise.
#[derive(Clone)]
pub struct NoiseKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for NoiseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoiseKey(..)")
    }
}

impl NoiseKey {
    /// Laplace(0, `scale`) noise for `token` at generated position `position`: ChaCha8 keyed
    /// with the request key, one stream per position, one 64-bit word pair per token id.
    pub fn laplace(&self, scale: f32, position: u64, token: u32) -> f32 {
        let mut rng = ChaCha8Rng::from_seed(*self.0);
        rng.set_stream(position);
        rng.set_word_pos(u128::from(token) * 2);
        // A uniform in the open interval (-0.5, 0.5): 53 random bits, centred on the cell.
        let u = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64 - 0.5;
        // Inverse CDF of the Laplace distribution.
        (-f64::from(scale) * u.signum() * (1.0 - 2.0 * u.abs()).ln()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> NoiseSecret {
        NoiseSecret::new([7; 32])
    }

    #[test]
    fn same_request_same_noise_other_prompt_or_tenant_differs() {
        let a = secret().key_for("acme", &[1, 2, 3]);
        let again = secret().key_for("acme", &[1, 2, 3]);
        let other_prompt = secret().key_for("acme", &[1, 2, 4]);
        let other_tenant = secret().key_for("demo", &[1, 2, 3]);
        let n = |k: &NoiseKey| k.laplace(0.5, 3, 42);
        assert_eq!(n(&a), n(&again));
        assert_ne!(n(&a), n(&other_prompt));
        assert_ne!(n(&a), n(&other_tenant));
        assert_ne!(a.laplace(0.5, 3, 42), a.laplace(0.5, 4, 42));
        assert_ne!(a.laplace(0.5, 3, 42), a.laplace(0.5, 3, 43));
    }

    #[test]
    fn noise_is_laplace_with_the_given_scale() {
        // Laplace(0, b): mean 0, E|X| = b, P(|X| > b) = e⁻¹.
        let key = secret().key_for("t", &[9]);
        let b = 0.3f32;
        let xs: Vec<f64> = (0..20_000u32)
            .map(|i| f64::from(key.laplace(b, u64::from(i / 100), i)))
            .collect();
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let mad = xs.iter().map(|x| x.abs()).sum::<f64>() / n;
        let tail = xs.iter().filter(|x| x.abs() > f64::from(b)).count() as f64 / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((mad - 0.3).abs() < 0.01, "E|X| {mad}");
        assert!((tail - (-1f64).exp()).abs() < 0.015, "tail {tail}");
    }

    #[test]
    fn debug_shows_no_key_bytes() {
        let k = secret().key_for("t", &[1]);
        assert_eq!(
            format!("{k:?} {:?}", secret()),
            "NoiseKey(..) NoiseSecret(..)"
        );
    }
}
