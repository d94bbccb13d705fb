//! The detector: count green tokens and turn the count into an exact p-value.
//!
//! Null hypothesis: the text was written without knowledge of the key (a human, another model,
//! or this server with another key). Under it, each *distinct* PRF input `(m, c)` (window
//! min-hash, token; see [`super::prf`]) is green with probability exactly `T / 2⁶⁴` (= γ),
//! independently of the others, because HMAC outputs on distinct inputs are independent of
//! anything chosen without the key. Two things would break that independence and are removed:
//!
//! - Repeats: a repeated phrase produces the same PRF input again and the same colour, so
//!   counting it twice would double-count one coin flip (a text that repeats one green n-gram
//!   100 times would look watermarked). Each distinct `(m, c)` is scored once; this implies
//!   "each distinct n-gram once" and is slightly stricter, since two different n-grams whose
//!   minimum falls on the same token share a PRF input too.
//! - The first `h − 1` tokens: their window reaches into the prompt, which the detector does
//!   not see, so they are not scored.
//!
//! The count is then compared with `Binomial(scored, γ)` exactly ([`super::binomial`]), so
//! `P(p_value ≤ α) ≤ α` holds by construction (the discrete test is conservative), with no
//! normal approximation. The z-score is reported for people used to the paper's tables only.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::binomial::binomial_tail;
use super::prf::{null_green_probability, Prf};
use super::{WatermarkError, WatermarkKey, WatermarkParams};

/// Default decision threshold on the p-value: at most one false accusation in 100,000 texts.
pub const DEFAULT_THRESHOLD: f64 = 1e-5;

/// Result of testing one key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Distinct PRF inputs that were scored.
    pub scored: usize,
    /// How many of them are green.
    pub green: usize,
    /// `(green − γ·scored) / √(scored·γ·(1 − γ))`; `0` when nothing was scored.
    pub z: f64,
    /// Exact `P(X ≥ green)` for `X ~ Binomial(scored, γ)`; `1` when nothing was scored.
    pub p_value: f64,
}

impl Detection {
    fn from_counts(scored: usize, green: usize, gamma: f64) -> Self {
        if scored == 0 {
            return Self {
                scored,
                green,
                z: 0.0,
                p_value: 1.0,
            };
        }
        let n = scored as f64;
        let z = (green as f64 - gamma * n) / (n * gamma * (1.0 - gamma)).sqrt();
        Self {
            scored,
            green,
            z,
            p_value: binomial_tail(scored as u64, green as u64, gamma),
        }
    }

    /// `green / scored` (`0` when nothing was scored).
    pub fn green_fraction(&self) -> f64 {
        if self.scored == 0 {
            0.0
        } else {
            self.green as f64 / self.scored as f64
        }
    }

    /// `p_value ≤ threshold` (e.g. [`DEFAULT_THRESHOLD`]).
    pub fn is_watermarked(&self, threshold: f64) -> bool {
        self.p_value <= threshold
    }
}

/// Tests `tokens` (the completion's token ids, as produced by the model's tokenizer) for the
/// watermark of `key`. `params` must be those used at generation (`δ` does not matter).
///
/// Cost: about `2 · tokens.len()` HMAC-SHA256 evaluations.
pub fn detect(key: &WatermarkKey, params: &WatermarkParams, tokens: &[u32]) -> Detection {
    let prf = Prf::new(key, params);
    let h = prf.width();
    if tokens.len() < h {
        return Detection::from_counts(0, 0, null_green_probability(params));
    }
    let hashes: Vec<u64> = tokens.iter().map(|&t| prf.token_hash(t)).collect();
    // BTreeSet rather than HashSet: no per-process random state, so runs are reproducible.
    let mut seen = BTreeSet::new();
    let (mut scored, mut green) = (0usize, 0usize);
    for (end, &candidate) in tokens.iter().enumerate().skip(h - 1) {
        let m = hashes[end + 1 - h..=end]
            .iter()
            .copied()
            .min()
            .unwrap_or(u64::MAX);
        if seen.insert((m, candidate)) {
            scored += 1;
            if prf.green(m, candidate) {
                green += 1;
            }
        }
    }
    Detection::from_counts(scored, green, null_green_probability(params))
}

/// Result of testing several keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnyDetection {
    /// Id of the key with the smallest p-value (the first one on ties).
    pub key_id: String,
    /// That key's own, uncorrected result.
    pub detection: Detection,
    /// Number of keys tested (the Bonferroni factor).
    pub keys_tested: usize,
    /// Bonferroni-corrected p-value: `min(1, keys_tested · detection.p_value)`.
    pub p_value: f64,
}

impl AnyDetection {
    /// Corrected `p_value ≤ threshold`.
    pub fn is_watermarked(&self, threshold: f64) -> bool {
        self.p_value <= threshold
    }
}

/// Tests several keys and corrects for the multiple tests.
///
/// Why the correction: with `m` keys the chance that *some* key's p-value falls below `α` by
/// luck is up to `m·α`, so the best p-value is multiplied by `m` (Bonferroni; valid whatever the
/// dependence between keys). Pass only the key ids that can apply (the audit record names the
/// key of each response): every extra key weakens the test.
///
/// # Errors
/// [`WatermarkError::NoKeys`] when `keys` is empty.
pub fn detect_any(
    keys: &[&WatermarkKey],
    params: &WatermarkParams,
    tokens: &[u32],
) -> Result<AnyDetection, WatermarkError> {
    let mut best: Option<(&WatermarkKey, Detection)> = None;
    for &key in keys {
        let d = detect(key, params, tokens);
        if best.is_none_or(|(_, b)| d.p_value < b.p_value) {
            best = Some((key, d));
        }
    }
    let (key, detection) = best.ok_or(WatermarkError::NoKeys)?;
    Ok(AnyDetection {
        key_id: key.id().to_owned(),
        detection,
        keys_tested: keys.len(),
        p_value: (detection.p_value * keys.len() as f64).min(1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watermark::is_green;
    use crate::watermark::test_support::key;

    /// Extends `ctx` greedily with tokens that are green under `key`.
    fn green_text(key: &WatermarkKey, p: &WatermarkParams, start: &[u32], len: usize) -> Vec<u32> {
        let mut out = start.to_vec();
        let mut i = 0u32;
        while out.len() < len {
            i += 1;
            let next = (i.wrapping_mul(2_654_435_761) >> 8) % 49_152;
            if is_green(key, p, &out, next) {
                out.push(next);
            }
        }
        out
    }

    #[test]
    fn all_green_text() {
        let k = key("a", 1);
        let p = WatermarkParams::default();
        let text = green_text(&k, &p, &[1, 2, 3], 43);
        let d = detect(&k, &p, &text);
        // 40 scored positions, all green (fewer only if a PRF input repeated).
        assert!(d.scored >= 38 && d.scored <= 40, "{d:?}");
        assert_eq!(d.green, d.scored);
        let want = 0.25f64.powi(d.scored as i32);
        assert!((d.p_value - want).abs() < 1e-9 * want);
        assert!(d.is_watermarked(DEFAULT_THRESHOLD));
        assert!(d.z > 10.0);
    }

    #[test]
    fn first_h_minus_1_tokens_are_not_scored() {
        let k = key("a", 1);
        let p = WatermarkParams::default();
        assert_eq!(detect(&k, &p, &[1, 2, 3]).scored, 0);
        assert_eq!(detect(&k, &p, &[1, 2, 3]).p_value, 1.0);
        assert_eq!(detect(&k, &p, &[]).scored, 0);
        assert_eq!(detect(&k, &p, &[1, 2, 3, 4]).scored, 1);
        let p1 = WatermarkParams::new(1, 0.25, 2.0).unwrap();
        assert_eq!(detect(&k, &p1, &[1, 2, 3, 4]).scored, 4);
    }

    #[test]
    fn repeated_green_ngram_is_scored_once() {
        let k = key("a", 1);
        let p = WatermarkParams::default();
        // A token t whose n-gram (t, t, t, t) is green; repeat it 100 times.
        let t = (0u32..).find(|&t| is_green(&k, &p, &[t, t, t], t)).unwrap();
        let text = vec![t; 103];
        let d = detect(&k, &p, &text);
        assert_eq!((d.scored, d.green), (1, 1));
        assert_eq!(d.p_value, 0.25);
        assert!(!d.is_watermarked(DEFAULT_THRESHOLD));

        // A green 4-token phrase repeated 100 times: only its 4 distinct windows count.
        let phrase = green_text(&k, &p, &[11, 12, 13], 7)[3..].to_vec();
        let text: Vec<u32> = phrase.iter().copied().cycle().take(400).collect();
        let d = detect(&k, &p, &text);
        assert!(d.scored <= 4, "{d:?}");
        assert!(!d.is_watermarked(DEFAULT_THRESHOLD));
    }

    #[test]
    fn bonferroni() {
        let p = WatermarkParams::default();
        let k1 = key("k1", 1);
        let k2 = key("k2", 2);
        let k3 = key("k3", 3);
        // Mostly green for k2 (so p is small but 3p < 1), some plain tokens mixed in.
        let mut text = green_text(&k2, &p, &[5, 6, 7], 30);
        text.extend(100..110);
        let single: Vec<f64> = [&k1, &k2, &k3]
            .iter()
            .map(|k| detect(k, &p, &text).p_value)
            .collect();
        let any = detect_any(&[&k1, &k2, &k3], &p, &text).unwrap();
        let best = single.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(any.key_id, "k2");
        assert_eq!(any.keys_tested, 3);
        assert_eq!(any.detection.p_value, best);
        assert_eq!(any.p_value, (3.0 * best).min(1.0));
        assert!(any.p_value < 1.0 && any.p_value > best);

        // Capped at 1.
        let plain: Vec<u32> = (0..6).collect();
        let any = detect_any(&[&k1, &k2, &k3], &p, &plain).unwrap();
        assert!(any.p_value <= 1.0);
        assert_eq!(any.p_value, (3.0 * any.detection.p_value).min(1.0));

        assert_eq!(
            detect_any(&[], &p, &text).unwrap_err(),
            WatermarkError::NoKeys
        );
    }
}
