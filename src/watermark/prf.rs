//! The keyed SelfHash PRF and the green-list membership test.
//!
//! # What is implemented
//!
//! SelfHash ("Algorithm 3", Kirchenbauer et al., ICLR 2024; `anchored_minhash_prf` with
//! `context_width = 4, self_salt = True` in the authors' code) with the public hash and the
//! public salt replaced by HMAC-SHA256 under the secret key `K`. For a candidate token `c`
//! that would follow the previous tokens `…, t₋₃, t₋₂, t₋₁`, with window width `h`:
//!
//! 1. Window `W = (t₋₍ₕ₋₁₎, …, t₋₁, c)`: the `h − 1` previous tokens plus the candidate itself
//!    (fewer previous tokens when fewer exist; detection never scores such positions).
//! 2. Keyed token hash `τ(t) = BE64(HMAC-SHA256(K, "cloister/watermark/v1/selfhash/token\0" ‖
//!    LE32(t))[0..8])`.
//! 3. Min-hash over the window: `m = min_{t ∈ W} τ(t)` — the candidate's own hash competes.
//! 4. Anchored seed: `seed = BE64(HMAC-SHA256(K, "cloister/watermark/v1/selfhash/seed\0" ‖
//!    BE64(m) ‖ LE32(c))[0..8])` (the paper anchors the min to the candidate by multiplying
//!    with `H(c)`; here `c` is a second HMAC input).
//! 5. `c` is green iff `seed < T` with `T = ⌊γ · 2⁶⁴⌋`.
//!
//! Step 5 is where this differs in *mechanics* from the reference code, which seeds a PRNG with
//! the seed, draws a full permutation of the vocabulary and tests whether `c` falls in its first
//! `⌊γ·|V|⌋` entries. Because the seed already depends on `c`, only `c`'s own membership is ever
//! used, and that is a Bernoulli(γ) event in both versions; comparing the seed with a threshold
//! gives the same distribution without materialising a permutation (2 HMACs per candidate plus
//! `h − 1` per step, instead of shuffling 49,152 ids), and it makes the null probability exactly
//! `T / 2⁶⁴` (= γ for γ = 0.25), independent of the vocabulary size. That is why the membership
//! test takes no vocabulary argument.
//!
//! Why min-hash: an edit to a previous token changes the decision only if that token held the
//! minimum (or its replacement takes it), so most single-token edits leave a scored token's
//! colour intact, while `h = 4` keeps the green lists varied enough that they are hard to learn
//! from outputs. Why keyed: with the paper's public hash, anyone can compute green lists and
//! scrub or forge the watermark; with HMAC only key holders can.
//!
//! The green decision is a function of `(m, c)` only; the detector therefore deduplicates on
//! that pair (see [`super::detect`](mod@super::detect)).
//!
//! HMAC midstates derived from the key are held in `Prf` for the length of one call; `hmac`
//! 0.12 cannot wipe them on drop (only the key bytes in [`WatermarkKey`] are zeroized).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroize;

use super::{WatermarkKey, WatermarkParams};

type HmacSha256 = Hmac<Sha256>;

const DOMAIN_TOKEN: &[u8] = b"cloister/watermark/v1/selfhash/token\0";
const DOMAIN_SEED: &[u8] = b"cloister/watermark/v1/selfhash/seed\0";

/// `2⁶⁴` as `f64` (exact).
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

/// Keyed PRF state for one call (bias step or detection run).
pub(crate) struct Prf {
    mac: HmacSha256,
    threshold: u64,
    width: usize,
}

impl Prf {
    pub(crate) fn new(key: &WatermarkKey, params: &WatermarkParams) -> Self {
        Self {
            mac: keyed_mac(key),
            threshold: green_threshold(params),
            width: params.context_width(),
        }
    }

    /// `h`, the window width including the candidate.
    pub(crate) fn width(&self) -> usize {
        self.width
    }

    fn mac64(&self, domain: &[u8], a: &[u8], b: &[u8]) -> u64 {
        let mut mac = self.mac.clone();
        mac.update(domain);
        mac.update(a);
        mac.update(b);
        let out = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        u64::from_be_bytes(first)
    }

    /// `τ(t)`: keyed hash of one token id.
    pub(crate) fn token_hash(&self, token: u32) -> u64 {
        self.mac64(DOMAIN_TOKEN, &token.to_le_bytes(), &[])
    }

    /// `m = min(ctx_min, τ(c))`, where `ctx_min` is the minimum `τ` over the previous tokens of
    /// the window (`u64::MAX` when there are none).
    pub(crate) fn window_min(&self, ctx_min: u64, candidate: u32) -> u64 {
        ctx_min.min(self.token_hash(candidate))
    }

    /// The green decision for a window minimum `m` and candidate `c`.
    pub(crate) fn green(&self, m: u64, candidate: u32) -> bool {
        self.mac64(DOMAIN_SEED, &m.to_be_bytes(), &candidate.to_le_bytes()) < self.threshold
    }

    /// Minimum `τ` over the last `h − 1` tokens of `context`.
    pub(crate) fn context_min(&self, context: &[u32]) -> u64 {
        let prev = self.width - 1;
        let start = context.len().saturating_sub(prev);
        context[start..]
            .iter()
            .map(|&t| self.token_hash(t))
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// HMAC-SHA256 keyed with the watermark key's 32-byte secret.
fn keyed_mac(key: &WatermarkKey) -> HmacSha256 {
    hmac_sha256(key.secret())
}

/// HMAC-SHA256 keyed with a 32-byte secret, built through the infallible block-sized-key
/// constructor: HMAC zero-pads short keys to the block size, so this is the same MAC as
/// `new_from_slice(secret)` without an error path to handle.
pub(crate) fn hmac_sha256(secret: &[u8; 32]) -> HmacSha256 {
    let mut block = hmac::digest::Key::<HmacSha256>::default();
    block[..secret.len()].copy_from_slice(secret);
    let mac = <HmacSha256 as hmac::digest::KeyInit>::new(&block);
    block.as_mut_slice().zeroize();
    mac
}

/// `T = ⌊γ · 2⁶⁴⌋`: a seed below `T` is green.
fn green_threshold(params: &WatermarkParams) -> u64 {
    // γ ∈ (0, 1), so the product is in (0, 2⁶⁴) and the cast neither saturates nor wraps.
    (params.gamma() * TWO_POW_64) as u64
}

/// The exact probability that a token is green when the text does not depend on the key:
/// `T / 2⁶⁴`, equal to `γ` for γ = 0.25 and at most `γ` otherwise.
pub fn null_green_probability(params: &WatermarkParams) -> f64 {
    green_threshold(params) as f64 / TWO_POW_64
}

/// Is `candidate` green after `context` (the tokens before it, oldest first)?
///
/// Uses the last `h − 1` tokens of `context` (all of them when there are fewer) plus the
/// candidate. Cost: `h + 1` HMAC-SHA256 evaluations; no permutation is built.
pub fn is_green(
    key: &WatermarkKey,
    params: &WatermarkParams,
    context: &[u32],
    candidate: u32,
) -> bool {
    let prf = Prf::new(key, params);
    let m = prf.window_min(prf.context_min(context), candidate);
    prf.green(m, candidate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watermark::test_support::key;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn padded_key_equals_plain_hmac() {
        let k = key("a", 1);
        let mut plain = HmacSha256::new_from_slice(k.secret()).unwrap();
        plain.update(b"x");
        let mut padded = keyed_mac(&k);
        padded.update(b"x");
        assert_eq!(
            plain.finalize().into_bytes(),
            padded.finalize().into_bytes()
        );
    }

    #[test]
    fn deterministic() {
        let k = key("a", 1);
        let p = WatermarkParams::default();
        for c in 0..200 {
            let ctx = [c * 7, c + 1, 42, 9];
            assert_eq!(is_green(&k, &p, &ctx, c), is_green(&k, &p, &ctx, c));
            // An equal key built separately gives the same answer.
            assert_eq!(
                is_green(&k, &p, &ctx, c),
                is_green(&key("a", 1), &p, &ctx, c)
            );
        }
    }

    #[test]
    fn only_last_h_minus_1_tokens_matter() {
        let k = key("a", 1);
        let p = WatermarkParams::default();
        for c in 0..100 {
            let short = [5, 6, 7];
            let long = [99, 98, 97, 5, 6, 7];
            assert_eq!(is_green(&k, &p, &short, c), is_green(&k, &p, &long, c));
        }
    }

    #[test]
    fn min_hash_is_order_invariant() {
        // SelfHash takes a min over the window, so the order of the previous tokens is irrelevant.
        let k = key("a", 1);
        let p = WatermarkParams::default();
        for c in 0..100 {
            assert_eq!(
                is_green(&k, &p, &[1, 2, 3], c),
                is_green(&k, &p, &[3, 1, 2], c)
            );
        }
    }

    #[test]
    fn green_fraction_is_gamma_and_keys_are_independent() {
        let k1 = key("a", 1);
        let k2 = key("b", 2);
        let p = WatermarkParams::default();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 200_000;
        let (mut g1, mut g2, mut both) = (0u32, 0u32, 0u32);
        for _ in 0..n {
            let ctx: [u32; 3] = [
                rng.gen_range(0..49_152),
                rng.gen_range(0..49_152),
                rng.gen_range(0..49_152),
            ];
            let c = rng.gen_range(0..49_152);
            let a = is_green(&k1, &p, &ctx, c);
            let b = is_green(&k2, &p, &ctx, c);
            g1 += u32::from(a);
            g2 += u32::from(b);
            both += u32::from(a && b);
        }
        let f1 = f64::from(g1) / f64::from(n);
        let f2 = f64::from(g2) / f64::from(n);
        // Overlap of two independent keys: P(green under k2 | green under k1) ≈ γ.
        let overlap = f64::from(both) / f64::from(g1);
        assert!((f1 - 0.25).abs() < 0.01, "{f1}");
        assert!((f2 - 0.25).abs() < 0.01, "{f2}");
        assert!((overlap - 0.25).abs() < 0.02, "{overlap}");
    }

    #[test]
    fn other_gammas() {
        let k = key("a", 3);
        for gamma in [0.1, 0.5] {
            let p = WatermarkParams::new(4, gamma, 2.0).unwrap();
            let n = 20_000u32;
            let g = (0..n)
                .filter(|&i| is_green(&k, &p, &[i, i / 3, i / 7], i % 5000))
                .count();
            let f = g as f64 / f64::from(n);
            assert!((f - gamma).abs() < 0.015, "{gamma}: {f}");
        }
        let p = WatermarkParams::new(4, 0.1, 2.0).unwrap();
        assert!(null_green_probability(&p) <= 0.1);
        assert!((null_green_probability(&p) - 0.1).abs() < 1e-15);
        assert_eq!(null_green_probability(&WatermarkParams::default()), 0.25);
    }
}
