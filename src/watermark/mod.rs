//! Keyed output watermark (Kirchenbauer et al. 2023, SelfHash PRF from their ICLR 2024
//! follow-up) and its detector.
//!
//! # Why
//! A provider must be able to say, with a bounded error rate, whether a text came from its
//! server. The watermark nudges sampling towards a pseudo-random "green" subset of tokens that
//! only the key holder can recompute; the detector counts green tokens and reports how unlikely
//! that count is for text written without the key.
//!
//! # How (one generation step)
//! For each of the 40 highest logits, the candidate `c` and the previous `h − 1` tokens are
//! hashed with HMAC-SHA256 under the secret key (min-hash over the window, anchored to `c`:
//! [`prf`]); green candidates get `+δ` ([`bias`]). Defaults `h = 4, γ = 0.25, δ = 2.0`.
//! Detection ([`detect`](mod@detect)) recomputes the colour of every token, scores each distinct PRF input
//! once, skips the first `h − 1` tokens and returns an exact binomial p-value ([`binomial`]).
//!
//! # What callers must know
//! - **The key is the watermark.** It is a secret of at least 128 bits ([`WatermarkKey`]);
//!   whoever holds it can detect, forge or scrub the watermark. It is never a constant, never
//!   logged (`Debug` prints only the id).
//! - **Key rotation uses key ids.** Each response's audit record holds the id of the key that
//!   was active; detection tests that key ([`detect`](fn@detect)) or a short list ([`detect_any`], which
//!   applies a Bonferroni correction — every extra key multiplies the p-value). Old keys stay
//!   available to the detector for as long as their texts must be checkable.
//! - **Detection needs token ids.** The detector works on the model's token ids; the caller
//!   tokenizes text with the same tokenizer (any re-tokenization difference costs only the
//!   affected windows). Parameters `h` and `γ` must match generation.
//! - **Greedy decoding cannot carry a soft watermark.** At temperature 0 the bias changes the
//!   output only where a green candidate is within `δ` of the argmax, which is rare, so greedy
//!   (and near-greedy) completions are essentially unwatermarked and will not be detected.
//!   Temperature `T` scales the bias to `δ/T`; low-entropy text (code, lists, quotes) carries
//!   little watermark at any temperature. Short texts cannot reach a small p-value either:
//!   at `γ = 0.25` even an all-green text needs 9 scored tokens for `p ≤ 1e−5`.
//! - **The false-positive bound is exact by construction.** Under the null hypothesis (text
//!   independent of the key) the scored colours are independent Bernoulli(γ) draws, and the
//!   p-value is the exact binomial tail, so `P(p ≤ α) ≤ α` for every `α` and every text length,
//!   whatever the text's language or repetitiveness. It says nothing about power: edited or
//!   paraphrased text may fall below the threshold (≈ 800 tokens survive strong paraphrase at
//!   `FPR = 1e−5` in the ICLR 2024 paper).
//!
//! The module is pure: no I/O, no clock, no randomness. Rate limiting and authentication of
//! the detection endpoint live in the API layer.

pub mod bias;
pub mod binomial;
pub mod detect;
mod error;
pub mod key;
pub mod keyring;
pub mod prf;

pub use bias::{apply_bias, SELFHASH_CANDIDATES};
pub use binomial::{binomial_ln_tail, binomial_tail};
pub use detect::{detect, detect_any, AnyDetection, Detection, DEFAULT_THRESHOLD};
pub use error::WatermarkError;
pub use key::{WatermarkKey, WatermarkParams, MIN_SECRET_LEN, SECRET_LEN};
pub use keyring::{KeyringError, WatermarkKeyring};
pub use prf::{is_green, null_green_probability};

#[cfg(test)]
mod test_support {
    use super::WatermarkKey;

    /// A deterministic, non-constant test key; different `fill` gives an unrelated key.
    pub(crate) fn key(id: &str, fill: u8) -> WatermarkKey {
        let secret: Vec<u8> = (0u8..32)
            .map(|i| i.wrapping_mul(37).wrapping_add(fill.wrapping_mul(101)) ^ fill)
            .collect();
        WatermarkKey::new(id, &secret).unwrap()
    }
}

#[cfg(test)]
mod tests;
