//! Red team, model stealing (Carlini et al. 2024, "Stealing part of a production language
//! model"): the hidden size of a model can be read off the singular values of a stack of its
//! logprob vectors, because every logit vector is `W·h` with `h` in a `hidden`-dimensional space
//! (and log-softmax adds one more direction, the all-ones shift): rank ≤ hidden + 1.
//!
//! - `hidden_dimension_is_576_from_real_logprob_vectors` (ignored; about a minute on 2 cores):
//!   700 queries × the log-probabilities of the same 700 token ids, taken from the real demo
//!   model in process (what a *trusted/permissive* confidence policy would hand out), stacked;
//!   a rank-revealing QR (Householder with column pivoting, in f64; its |R_kk| track the
//!   singular values) shows the cliff right after 577 = 576 + 1.
//!   Run: `cargo test --test carlini -- --ignored --nocapture`
//! - With the default policy the API refuses the raw material (logprobs are off, `logit_bias`
//!   with logprobs is trusted-only, `top_logprobs` ≤ 5 rounded to 0.1 nat): see
//!   `tests/protections.rs` (`default_policy_refuses_logprobs_naming_the_policy`,
//!   `policy_caps_top_logprobs_and_refuses_logit_bias_with_logprobs`).
//! - `rank_finder_recovers_a_planted_rank` (normal run): the same rank finder on a synthetic
//!   matrix of known rank, so the attack code is checked on every run.

#[path = "../benches/support/plaintext.rs"]
mod plaintext;

use std::sync::Arc;

use cloister::engine::{LlamaModel, SeqCache};
use cloister::model::fetch;
use cloister::sampling::log_softmax;
use cloister::securemem::LockPolicy;
use rand::{Rng, SeedableRng};

/// Householder QR with column pivoting of a row-major `rows × cols` matrix; returns |R_kk|.
fn pivoted_qr_diagonal(mut a: Vec<f64>, rows: usize, cols: usize) -> Vec<f64> {
    let at = |r: usize, c: usize| r * cols + c;
    let mut norms: Vec<f64> = (0..cols)
        .map(|c| (0..rows).map(|r| a[at(r, c)].powi(2)).sum())
        .collect();
    let mut diag = Vec::new();
    for k in 0..rows.min(cols) {
        // Pivot: the remaining column of largest norm (recomputed exactly: small matrices).
        for (c, n) in norms.iter_mut().enumerate().skip(k) {
            *n = (k..rows).map(|r| a[at(r, c)].powi(2)).sum();
        }
        let p = (k..cols)
            .max_by(|&x, &y| norms[x].total_cmp(&norms[y]))
            .unwrap_or(k);
        if p != k {
            for r in 0..rows {
                a.swap(at(r, k), at(r, p));
            }
            norms.swap(k, p);
        }
        let alpha = norms[k].sqrt();
        diag.push(alpha);
        if alpha == 0.0 {
            continue;
        }
        // v = x + sign(x0)·|x|·e0, H = I − 2vvᵀ/vᵀv applied to the trailing columns.
        let sign = if a[at(k, k)] >= 0.0 { 1.0 } else { -1.0 };
        let mut v: Vec<f64> = (k..rows).map(|r| a[at(r, k)]).collect();
        v[0] += sign * alpha;
        let vtv: f64 = v.iter().map(|x| x * x).sum();
        for c in k..cols {
            let dot: f64 = (k..rows).map(|r| v[r - k] * a[at(r, c)]).sum();
            let f = 2.0 * dot / vtv;
            for r in k..rows {
                a[at(r, c)] -= f * v[r - k];
            }
        }
    }
    diag
}

/// The numerical rank: position of the largest drop between consecutive |R_kk|.
fn cliff(diag: &[f64]) -> (usize, f64) {
    let mut best = (0, 0.0);
    for k in 0..diag.len().saturating_sub(1) {
        let ratio = diag[k] / diag[k + 1].max(f64::MIN_POSITIVE);
        if ratio > best.1 {
            best = (k + 1, ratio);
        }
    }
    best
}

#[test]
fn rank_finder_recovers_a_planted_rank() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let (n, m, rank) = (60, 50, 17);
    let u: Vec<f64> = (0..n * rank).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let w: Vec<f64> = (0..rank * m).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut a = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            // f32 rounding, like real logits.
            let x: f64 = (0..rank).map(|k| u[i * rank + k] * w[k * m + j]).sum();
            a[i * m + j] = f64::from(x as f32);
        }
    }
    let (found, ratio) = cliff(&pivoted_qr_diagonal(a, n, m));
    assert_eq!(found, rank);
    assert!(ratio > 1e3, "{ratio}");
}

fn load_plaintext_model() -> Arc<LlamaModel> {
    let path = fetch::demo_model(&fetch::default_cache_dir()).expect("demo model");
    Arc::new(plaintext::load_plaintext(&path, LockPolicy::Required, None).1)
}

#[test]
#[ignore = "about a minute: cargo test --test carlini -- --ignored --nocapture"]
fn hidden_dimension_is_576_from_real_logprob_vectors() {
    const QUERIES: usize = 700;
    const TOKENS: usize = 700;
    let model = load_plaintext_model();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2024);
    let vocab = 49_152u32;
    let ids: Vec<usize> = (0..TOKENS).map(|j| 200 + j * 67).collect();
    let mut a = Vec::with_capacity(QUERIES * TOKENS);
    for _ in 0..QUERIES {
        let prompt: Vec<u32> = (0..4).map(|_| rng.gen_range(100..vocab)).collect();
        let mut cache = SeqCache::default();
        let logits = model.forward(&prompt, &mut cache).expect("forward");
        let lp = log_softmax(&logits);
        a.extend(ids.iter().map(|&i| f64::from(lp[i])));
    }
    let diag = pivoted_qr_diagonal(a, QUERIES, TOKENS);
    let (found, ratio) = cliff(&diag);
    println!(
        "|R_kk| around the cliff: {:?}",
        &diag[570.min(diag.len())..585.min(diag.len())]
    );
    println!(
        "numerical rank {found} (drop ×{ratio:.1e}) => hidden size {}",
        found - 1
    );
    assert_eq!(found, 577, "expected hidden 576 + 1");
}
