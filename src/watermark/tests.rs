//! End-to-end simulation: a toy "model" with random logits, sampled at temperature 1.
//!
//! The toy model draws, at every step, i.i.d. logits `σ·N(0, 1)` over an 8,192-token
//! vocabulary (token ids spread over the real 49,152-id range) with `σ` drawn uniformly from
//! `[SIGMA_LO, SIGMA_HI]`, so the step entropy varies like a real model's (from
//! near-deterministic to spread out). The vocabulary is smaller than the real one only to keep
//! the debug-build suite fast; the printed entropy and top-40 mass say what was tested. Logits do not depend on the
//! context, which is the worst case for nothing and the best case for nothing: it only matters
//! that the sampler is honest softmax sampling with the bias applied before it.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::test_support::key;
use super::*;

const VOCAB: usize = 8_192;
/// Token id of toy vocabulary entry `i` (spread over the real id range).
const ID_STRIDE: u32 = 6;
const SIGMA_LO: f64 = 2.0;
const SIGMA_HI: f64 = 6.0;
const SAMPLES: u64 = 50;
const LEN: usize = 200;

/// Step statistics of the toy model, to report what kind of distribution was tested.
#[derive(Default)]
struct Stats {
    steps: usize,
    entropy: f64,
    top40_mass: f64,
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller; `1 − u` keeps the logarithm finite.
    let u: f64 = rng.gen();
    let v: f64 = rng.gen();
    (-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// One completion of `LEN` tokens after a random 4-token prompt. The RNG stream is the same with
/// and without a key (logits and the sampling uniform are drawn in the same order), so the
/// watermarked and plain runs see identical model distributions.
fn generate(seed: u64, wm: Option<&WatermarkKey>, stats: &mut Stats) -> Vec<u32> {
    let params = WatermarkParams::default();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut context: Vec<u32> = (0..4)
        .map(|_| rng.gen_range(0..VOCAB as u32) * ID_STRIDE)
        .collect();
    let mut logits = vec![0f32; VOCAB];
    let mut weights = vec![0f64; VOCAB];
    let mut full = vec![f32::NEG_INFINITY; VOCAB * ID_STRIDE as usize];
    for _ in 0..LEN {
        let sigma = rng.gen_range(SIGMA_LO..SIGMA_HI);
        for l in logits.iter_mut() {
            *l = (sigma * normal(&mut rng)) as f32;
        }
        if let Some(k) = wm {
            // Scatter into the real id space so the PRF sees realistic token ids.
            full.fill(f32::NEG_INFINITY);
            for (i, &l) in logits.iter().enumerate() {
                full[i * ID_STRIDE as usize] = l;
            }
            apply_bias(&mut full, k, &params, &context).unwrap();
            for (i, l) in logits.iter_mut().enumerate() {
                *l = full[i * ID_STRIDE as usize];
            }
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        for (w, &l) in weights.iter_mut().zip(&logits) {
            *w = f64::from(l - max).exp();
            total += *w;
        }
        if wm.is_none() {
            stats.steps += 1;
            let top = super::bias::top_candidates(&logits, SELFHASH_CANDIDATES);
            stats.top40_mass += top.iter().map(|&i| weights[i as usize]).sum::<f64>() / total;
            stats.entropy -= weights
                .iter()
                .filter(|&&w| w > 0.0)
                .map(|&w| (w / total) * (w / total).ln())
                .sum::<f64>();
        }
        let mut u = rng.gen::<f64>() * total;
        let mut token = VOCAB - 1;
        for (i, &w) in weights.iter().enumerate() {
            if u < w {
                token = i;
                break;
            }
            u -= w;
        }
        context.push(token as u32 * ID_STRIDE);
    }
    context.split_off(4)
}

#[test]
fn simulation_watermarked_detected_only_with_its_key() {
    let params = WatermarkParams::default();
    let k = key("wm-1", 1);
    let other = key("wm-2", 2);
    let mut stats = Stats::default();
    let (mut hits, mut other_hits, mut frac) = (0, 0, 0.0);
    let mut worst_p: f64 = 0.0;
    for s in 0..SAMPLES {
        let text = generate(1_000 + s, Some(&k), &mut stats);
        let d = detect(&k, &params, &text);
        frac += d.green_fraction();
        worst_p = worst_p.max(d.p_value);
        hits += usize::from(d.is_watermarked(DEFAULT_THRESHOLD));
        other_hits += usize::from(detect(&other, &params, &text).is_watermarked(DEFAULT_THRESHOLD));
    }
    println!(
        "watermarked: {hits}/{SAMPLES} detected at p<=1e-5, mean green fraction {:.3}, \
         worst p {worst_p:.2e}; other key: {other_hits}/{SAMPLES}",
        frac / SAMPLES as f64
    );
    assert!(hits * 100 >= 95 * SAMPLES as usize, "{hits}/{SAMPLES}");
    assert_eq!(other_hits, 0);
}

#[test]
fn simulation_plain_text_not_detected() {
    let params = WatermarkParams::default();
    let k = key("wm-1", 1);
    let mut stats = Stats::default();
    let (mut hits, mut p_sum, mut scored, mut green) = (0, 0.0, 0, 0);
    for s in 0..SAMPLES {
        let text = generate(1_000 + s, None, &mut stats);
        let d = detect(&k, &params, &text);
        hits += usize::from(d.is_watermarked(DEFAULT_THRESHOLD));
        p_sum += d.p_value;
        scored += d.scored;
        green += d.green;
    }
    let mean_p = p_sum / SAMPLES as f64;
    let frac = green as f64 / scored as f64;
    println!(
        "plain: {hits}/{SAMPLES} detected, mean p {mean_p:.3}, pooled green fraction {frac:.4}; \
         toy model: mean entropy {:.2} nats, mean top-40 mass {:.3}",
        stats.entropy / stats.steps as f64,
        stats.top40_mass / stats.steps as f64
    );
    assert_eq!(hits, 0);
    // Uniform p-values have mean 1/2 with standard error 0.041 over 50 samples; the discrete
    // test's p-values are slightly conservative (mean a little above 1/2).
    assert!((0.35..0.68).contains(&mean_p), "{mean_p}");
    // ~9,850 scored tokens: standard error of the fraction 0.0044.
    assert!((frac - 0.25).abs() < 0.02, "{frac}");
}

#[test]
fn false_positive_rate_is_bounded_under_the_null() {
    // Many short key-independent texts: the rate of p ≤ α must not exceed α (plus noise).
    let params = WatermarkParams::default();
    let k = key("wm-1", 1);
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let n = 4_000;
    let (mut below_5, mut below_1) = (0, 0);
    for _ in 0..n {
        let text: Vec<u32> = (0..30).map(|_| rng.gen_range(0..VOCAB as u32)).collect();
        let d = detect(&k, &params, &text);
        below_5 += usize::from(d.p_value <= 0.05);
        below_1 += usize::from(d.p_value <= 0.01);
    }
    let (r5, r1) = (below_5 as f64 / n as f64, below_1 as f64 / n as f64);
    println!("null FPR: {r5:.4} at α=0.05, {r1:.4} at α=0.01");
    // α + 3 standard errors.
    assert!(
        r5 <= 0.05 + 3.0 * (0.05f64 * 0.95 / n as f64).sqrt(),
        "{r5}"
    );
    assert!(
        r1 <= 0.01 + 3.0 * (0.01f64 * 0.99 / n as f64).sqrt(),
        "{r1}"
    );
}
