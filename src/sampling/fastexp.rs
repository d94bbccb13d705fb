//! `exp` over a whole vocabulary of logits, fast enough to sit on every generated token.
//!
//! Why not `f32::exp`: it calls libm's scalar `expf`, which the compiler cannot vectorize;
//! over 49,152 logits per token that alone was ~1 % of a decode step, twice over (sampler and
//! logprob snapshot). This is the classic range-reduced polynomial (as in Cephes and in
//! llama.cpp's `ggml_v_expf`), written so LLVM vectorizes it for the baseline target:
//! `e^x = 2^n · e^r` with `n = round(x / ln 2)`, `|r| ≤ ln 2 / 2`, and a degree-6 Taylor
//! polynomial for `e^r` (truncation error `r⁷/7! < 1.3e-7` relative). Only the softmax of
//! shifted logits (`x ≤ 0`) needs it; inputs below −87 return ≈ 0 (below `f32`'s normal range
//! anyway).

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in two so `n · ln 2` is exact in the high part (Cody–Waite reduction).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding then subtracting `1.5 · 2²³` rounds an `f32` of magnitude < 2²² to the nearest
/// integer without a rounding instruction the baseline target lacks.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `e^x` for `x ≤ 0` (larger `x` works up to 88 but is never needed here).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // max/min rather than clamp: a NaN input becomes −87 (≈ 0 weight) instead of poisoning sums.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    // t = 1.5·2²³ + n: its low mantissa bits hold n itself (an exact integer there).
    let t = x * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n through the exponent bits, with n read from t's bits by integer arithmetic: a
    // float-to-int `as` cast saturates and checks NaN, which keeps the loop from vectorizing.
    // n ∈ [-126, 127] after the clamp.
    let n_bits = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

/// `Σ exp((x − shift) · scale)` over `xs`, with `f32` partial sums over short runs (so the
/// loop vectorizes) gathered in `f64` (so 49,152 terms lose no precision that matters).
pub fn sum_exp(xs: &[f32], shift: f32, scale: f32) -> f64 {
    xs.chunks(CHUNK)
        .map(|c| f64::from(lane_sum(c, |x| exp((x - shift) * scale))))
        .sum()
}

/// Terms summed in `f32` before they are gathered: small enough that `f32` rounding stays
/// near one ulp of the chunk sum, large enough that the gathering is cheap.
pub const CHUNK: usize = 64;

/// `Σ f(x)` over `xs` in 8 interleaved `f32` accumulators. A single running sum is a chain of
/// dependent adds the compiler may not reorder (it would change the rounding); 8 independent
/// lanes vectorize.
#[inline(always)]
pub fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut lanes = xs.chunks_exact(8);
    for c in &mut lanes {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    let tail: f32 = lanes.remainder().iter().map(|&x| f(x)).sum();
    acc.iter().sum::<f32>() + tail
}

/// The largest finite value of `xs` (−∞ when there is none), in 8 independent lanes: a single
/// running maximum is a serial chain the compiler keeps scalar.
pub fn finite_max(xs: &[f32]) -> f32 {
    // NaN and ±∞ never win (the comparison with `MAX` filters +∞, `>` filters NaN).
    let pick = |m: f32, x: f32| if x > m && x <= f32::MAX { x } else { m };
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut runs = xs.chunks_exact(8);
    for c in &mut runs {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = pick(*a, x);
        }
    }
    let tail = runs
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| pick(m, x));
    acc.iter().fold(tail, |m, &a| pick(m, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libm_to_a_few_ulps_over_the_softmax_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(f32::NAN) < 1e-37);
    }

    #[test]
    fn finite_max_skips_nan_and_infinities() {
        let mut xs: Vec<f32> = (0..1003).map(|i| (i % 97) as f32 - 50.0).collect();
        xs[5] = f32::NAN;
        xs[600] = f32::INFINITY;
        xs[601] = f32::NEG_INFINITY;
        xs[1001] = 47.5;
        assert_eq!(finite_max(&xs), 47.5);
        assert_eq!(finite_max(&[f32::NAN, f32::INFINITY]), f32::NEG_INFINITY);
        assert_eq!(finite_max(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn sum_exp_equals_the_f64_sum() {
        let xs: Vec<f32> = (0..49_152)
            .map(|i| ((i * 7919) % 1000) as f32 / -50.0)
            .collect();
        let want: f64 = xs.iter().map(|&x| (f64::from(x) - 0.5).exp()).sum();
        let got = sum_exp(&xs, 0.5, 1.0);
        assert!(((got - want) / want).abs() < 1e-6, "{got} vs {want}");
    }
}
