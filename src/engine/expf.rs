//! `exp` for f32 that a GPU kernel reproduces bit for bit.
//!
//! Why not `f32::exp`: libm's `expf` and CUDA's `expf` differ in the last ulp for some inputs,
//! and on the demo model that was enough to flip a near-tie in greedy decoding on the GPU (13 of
//! 32 reference tokens, H200). This one uses only f64 `+ − ×`, round-to-integer and an exact
//! power-of-two scale, so `cl_exp` in `kernels/llama.cu` (compiled with `--fmad=false`: no
//! contraction) performs the same IEEE operations and returns the same bits. It is also accurate:
//! the f64 result is within ~1e-13 relative of e^x before the final rounding to f32.

/// 1 / ln 2.
const LOG2E: f64 = f64::from_bits(0x3ff7_1547_652b_82fe);
/// ln 2 split so that `k * LN2_HI` is exact for |k| < 2^21.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
/// 1/n! for n = 2..=10 (Taylor series of e^r, |r| ≤ ln2/2: truncation error < 3e-13).
const INV_FACT: [f64; 9] = [
    f64::from_bits(0x3fe0_0000_0000_0000),
    f64::from_bits(0x3fc5_5555_5555_5555),
    f64::from_bits(0x3fa5_5555_5555_5555),
    f64::from_bits(0x3f81_1111_1111_1111),
    f64::from_bits(0x3f56_c16c_16c1_6c17),
    f64::from_bits(0x3f2a_01a0_1a01_a01a),
    f64::from_bits(0x3efa_01a0_1a01_a01a),
    f64::from_bits(0x3ec7_1de3_a556_c734),
    f64::from_bits(0x3e92_7e4f_b778_9f5c),
];

/// e^x, rounded to f32 (NaN stays NaN; above 89 is +∞, below −104 is 0).
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > 89.0 {
        return f32::INFINITY;
    }
    if x < -104.0 {
        return 0.0;
    }
    let xd = f64::from(x);
    let k = (xd * LOG2E).round_ties_even();
    let r = (xd - k * LN2_HI) - k * LN2_LO;
    // Horner from 1/10! down to 1/2!, then the two unit terms: the order `cl_exp` uses.
    let mut p = INV_FACT[8];
    for c in INV_FACT[..8].iter().rev() {
        p = p * r + c;
    }
    p = p * r + 1.0;
    p = p * r + 1.0;
    // k ∈ [−150, 129]: 2^k is a normal f64, so the scale is exact.
    let scale = f64::from_bits(((k as i64 + 1023) as u64) << 52);
    (p * scale) as f32
}

#[cfg(test)]
mod tests {
    use super::exp_f32;

    #[test]
    fn within_one_ulp_of_libm_and_exact_at_the_edges() {
        let mut worst = 0u32;
        let mut x = -104.0f32;
        while x < 89.0 {
            let (a, b) = (exp_f32(x), x.exp());
            if b.is_finite() && b > f32::MIN_POSITIVE {
                worst = worst.max(a.to_bits().abs_diff(b.to_bits()));
            }
            x += 0.000_97;
        }
        assert!(worst <= 1, "{worst} ulp from libm");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(1.0), std::f32::consts::E);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(88.8), f32::INFINITY);
        assert_eq!(exp_f32(-200.0), 0.0);
    }
}
