//! Generation side: add `δ` to the logits of green candidates.
//!
//! With SelfHash a token's colour depends on the token itself, so there is no single green
//! list per step: each candidate must be hashed on its own (2 HMACs). Doing that for all
//! 49,152 entries would cost ~100k HMACs (tens of milliseconds) per generated token, so, like
//! the authors' implementation (`fixed_compute` rule), only the [`SELFHASH_CANDIDATES`] highest
//! logits are tested and biased; every other logit is left untouched.
//!
//! What that costs: tokens outside the top 40 are never favoured, so the watermark is weaker
//! in steps whose probability mass is spread over more than 40 tokens. For instruction-tuned
//! models at temperature ≤ 1 the top 40 usually hold nearly all the mass. It does not affect
//! the detector's false-positive bound, which never depends on how the text was produced.
//!
//! Order in the logits pipeline (DESIGN §7): after `logit_bias` and the penalties, before
//! temperature/top-k/top-p. A temperature `T` therefore scales the effective bias to `δ/T`,
//! and greedy decoding (temperature 0) keeps the argmax unless a green candidate is within `δ`
//! of it, so greedy output carries almost no watermark (see the module docs).

use super::prf::Prf;
use super::{WatermarkError, WatermarkKey, WatermarkParams};

/// How many of the highest logits are tested and biased per step.
pub const SELFHASH_CANDIDATES: usize = 40;

/// Adds `δ` to the logits of the green tokens among the [`SELFHASH_CANDIDATES`] highest ones.
///
/// `logits` is indexed by token id; `context` holds the tokens before the one being sampled,
/// oldest first (prompt and completion so far; only the last `h − 1` are used). Non-finite
/// logits (masked tokens, NaN) are never candidates. Ties are broken by the lower token id, so
/// the result is a pure function of the inputs. Returns how many logits were raised.
///
/// # Errors
/// [`WatermarkError::VocabTooLarge`] when `logits` has more entries than `u32` ids can name.
pub fn apply_bias(
    logits: &mut [f32],
    key: &WatermarkKey,
    params: &WatermarkParams,
    context: &[u32],
) -> Result<usize, WatermarkError> {
    if u32::try_from(logits.len().saturating_sub(1)).is_err() {
        return Err(WatermarkError::VocabTooLarge(logits.len()));
    }
    let candidates = top_candidates(logits, SELFHASH_CANDIDATES);
    let prf = Prf::new(key, params);
    let ctx_min = prf.context_min(context);
    let mut raised = 0;
    for candidate in candidates {
        let m = prf.window_min(ctx_min, candidate);
        if prf.green(m, candidate) {
            if let Some(logit) = logits.get_mut(candidate as usize) {
                *logit += params.delta();
                raised += 1;
            }
        }
    }
    Ok(raised)
}

/// Ids of the `k` largest finite logits, largest first, lower id first on ties.
///
/// A bounded sorted buffer instead of sorting 49,152 entries: one pass, no allocation beyond
/// `k` entries, and almost every logit is rejected by one comparison with the current k-th.
/// The caller has checked that every index fits in `u32`.
pub(crate) fn top_candidates(logits: &[f32], k: usize) -> Vec<u32> {
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return Vec::new();
    }
    // Runs of 8 are first tested as a whole against the current k-th ("is any larger?"): an
    // OR of 8 independent compares vectorizes, and once the buffer is full almost every run
    // fails it, so the per-entry work below is rare.
    for (run, xs) in (0u32..).step_by(8).zip(logits.chunks(8)) {
        if best.len() == k {
            let worst = best.last().map_or(f32::NEG_INFINITY, |b| b.0);
            if !xs.iter().fold(false, |any, &x| any | (x > worst)) {
                continue;
            }
        }
        for (id, &x) in (run..).zip(xs) {
            if !x.is_finite() {
                continue;
            }
            if best.len() == k && best.last().is_some_and(|&(worst, _)| x <= worst) {
                continue;
            }
            // After every entry >= x: equal logits keep ascending id order.
            let at = best.partition_point(|&(v, _)| v >= x);
            best.insert(at, (x, id));
            best.truncate(k);
        }
    }
    best.into_iter().map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watermark::is_green;
    use crate::watermark::test_support::key;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn top_candidates_order_ties_and_non_finite() {
        let logits = [
            1.0,
            f32::NAN,
            3.0,
            3.0,
            f32::NEG_INFINITY,
            2.0,
            f32::INFINITY,
            0.5,
        ];
        assert_eq!(top_candidates(&logits, 3), vec![2, 3, 5]);
        assert_eq!(top_candidates(&logits, 10), vec![2, 3, 5, 0, 7]);
        assert!(top_candidates(&logits, 0).is_empty());
        assert!(top_candidates(&[], 5).is_empty());
    }

    #[test]
    fn top_candidates_matches_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20 {
            let logits: Vec<f32> = (0..5000).map(|_| rng.gen_range(-5.0..5.0)).collect();
            let mut ids: Vec<u32> = (0..5000).collect();
            ids.sort_by(|&a, &b| {
                logits[b as usize]
                    .total_cmp(&logits[a as usize])
                    .then(a.cmp(&b))
            });
            assert_eq!(top_candidates(&logits, 40), ids[..40].to_vec());
        }
    }

    #[test]
    fn biases_exactly_the_green_top_candidates() {
        let k = key("a", 1);
        let p = WatermarkParams::default();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let context = [17u32, 4_000, 123, 9_999];
        let orig: Vec<f32> = (0..49_152).map(|_| rng.gen_range(-10.0..10.0)).collect();
        let mut logits = orig.clone();
        let raised = apply_bias(&mut logits, &k, &p, &context).unwrap();
        let top = top_candidates(&orig, SELFHASH_CANDIDATES);
        let mut changed = 0;
        for (id, (&a, &b)) in orig.iter().zip(&logits).enumerate() {
            if a != b {
                changed += 1;
                assert!(top.contains(&(id as u32)));
                assert!(is_green(&k, &p, &context, id as u32));
                assert_eq!(b, a + 2.0);
            }
        }
        for &id in &top {
            assert_eq!(
                logits[id as usize] != orig[id as usize],
                is_green(&k, &p, &context, id)
            );
        }
        assert_eq!(changed, raised);
        assert!(raised > 0 && raised < SELFHASH_CANDIDATES);

        // Deterministic.
        let mut again = orig.clone();
        apply_bias(&mut again, &k, &p, &context).unwrap();
        assert_eq!(again, logits);
    }

    #[test]
    fn masked_tokens_stay_masked() {
        let k = key("a", 1);
        let p = WatermarkParams::default();
        let mut logits = vec![f32::NEG_INFINITY; 100];
        apply_bias(&mut logits, &k, &p, &[1, 2, 3]).unwrap();
        assert!(logits.iter().all(|&x| x == f32::NEG_INFINITY));
    }
}
