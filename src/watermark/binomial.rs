//! Exact one-sided binomial tail `P(X ≥ k)`, `X ~ Binomial(n, p)`, in log space.
//!
//! Why exact instead of the z-score's normal approximation: the normal tail is far too small
//! in the region we care about (p-values of 1e-5 and below with a few hundred tokens), which
//! would overstate the evidence. Summing the binomial terms directly gives the exact false
//! positive rate, and doing it relative to the largest term in log space keeps it accurate down
//! to `ln P ≈ −10⁶` (p-values far below the smallest `f64`) for `n` in the millions.

/// `ln(n!)`: a direct sum for small `n`, else the Stirling series for `ln Γ(n + 1)`, whose
/// truncation error at `n ≥ 32` is below `1e−17`.
fn ln_factorial(n: u64) -> f64 {
    if n < 32 {
        return (2..=n).map(|i| (i as f64).ln()).sum();
    }
    let x = n as f64 + 1.0;
    let x2 = x * x;
    let series = (1.0 / 12.0 - (1.0 / 360.0 - (1.0 / 1260.0 - 1.0 / (1680.0 * x2)) / x2) / x2) / x;
    (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln() + series
}

/// `ln P(X = k)`.
fn ln_pmf(n: u64, k: u64, p: f64) -> f64 {
    let ln_choose = ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k);
    ln_choose + k as f64 * p.ln() + (n - k) as f64 * (-p).ln_1p()
}

/// `ln P(X ≥ k)` for `X ~ Binomial(n, p)`.
///
/// Returns `0` for `k = 0`, `−∞` for `k > n`, and NaN when `p` is not in `[0, 1]`.
/// Relative accuracy of `P` is about `1e−10` for `n ≤ 10⁴` (the error of `ln C(n, k)`).
pub fn binomial_ln_tail(n: u64, k: u64, p: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if k == 0 {
        return 0.0;
    }
    if k > n || p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return 0.0;
    }
    let q = 1.0 - p;
    let (nf, kf) = (n as f64, k as f64);
    if kf > (nf + 1.0) * p - 1.0 {
        // Upper tail: P(X = i + 1) / P(X = i) = (n − i)/(i + 1) · p/q falls below 1 for every
        // i ≥ k, so the terms shrink from the first one; sum them relative to it.
        let odds = p / q;
        let (mut term, mut sum) = (1.0f64, 1.0f64);
        for i in k..n {
            let ratio = (n - i) as f64 / (i + 1) as f64 * odds;
            term *= ratio;
            sum += term;
            // Ratios keep falling, so once they are < 1/2 the rest sums to less than `term`.
            if ratio < 0.5 && term < sum * 1e-17 {
                break;
            }
        }
        (ln_pmf(n, k, p) + sum.ln()).min(0.0)
    } else {
        // k is at or below the mean: P(X ≥ k) ≳ 1/2, so 1 − P(X ≤ k − 1) loses nothing.
        // Going down from j = k − 1, P(X = i − 1) / P(X = i) = i/(n − i + 1) · q/p < 1.
        let j = k - 1;
        let odds = q / p;
        let (mut term, mut sum) = (1.0f64, 1.0f64);
        for i in (1..=j).rev() {
            let ratio = i as f64 / (n - i + 1) as f64 * odds;
            term *= ratio;
            sum += term;
            if ratio < 0.5 && term < sum * 1e-17 {
                break;
            }
        }
        let lower = (ln_pmf(n, j, p) + sum.ln()).exp().min(1.0);
        (-lower).ln_1p()
    }
}

/// `P(X ≥ k)` for `X ~ Binomial(n, p)`; underflows to `0` below about `1e−308` (use
/// [`binomial_ln_tail`] there).
pub fn binomial_tail(n: u64, k: u64, p: f64) -> f64 {
    binomial_ln_tail(n, k, p).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    /// Reference values: exact rational sums (Python `fractions`), printed to 16 digits.
    #[test]
    fn known_values() {
        let cases: &[(u64, u64, f64)] = &[
            (10, 8, 4.15802001953125e-4), // = 436 / 4^10
            (200, 100, 2.685080346860736e-14),
            (200, 60, 6.247223105646404e-2),
            (200, 51, 4.620941754612102e-1),
            (200, 50, 5.271236581202351e-1),
            (200, 49, 5.917224819537036e-1),
            (10_000, 2_500, 5.038387648752117e-1),
            (10_000, 2_600, 1.101648837947087e-2),
            (10_000, 3_000, 6.149550004102136e-30),
            (1_000, 600, 3.91963433284311e-121),
            (10_000, 4_000, 1.554825288496473e-237),
            (10_000, 4_170, 2.411176987993788e-291),
            (10_000, 4_200, 2.234529590493187e-301),
            (1, 1, 0.25),
        ];
        for &(n, k, want) in cases {
            let got = binomial_tail(n, k, 0.25);
            assert!(close(got, want, 1e-9), "n={n} k={k}: {got:e} vs {want:e}");
        }
        // p = 0.1, n = 50, k = 30.
        assert!(close(
            binomial_tail(50, 30, 0.1),
            6.169386905412877e-18,
            1e-9
        ));
    }

    #[test]
    fn log_space_below_f64_range() {
        // 3.868e−310 (subnormal) and 2.98e−415 (below f64): compare logs.
        let ln = binomial_ln_tail(2_000, 1_300, 0.25);
        assert!((ln - (-712.4485179112047)).abs() < 1e-8, "{ln}");
        let ln = binomial_ln_tail(1_000, 900, 0.25);
        assert!((ln - (-954.482163541236)).abs() < 1e-8, "{ln}");
        assert_eq!(binomial_tail(1_000, 900, 0.25), 0.0);
        // All heads out of 10⁴: ln(0.25) · 10⁴.
        let ln = binomial_ln_tail(10_000, 10_000, 0.25);
        assert!(close(ln, 10_000.0 * 0.25f64.ln(), 1e-12), "{ln}");
    }

    #[test]
    fn edges() {
        assert_eq!(binomial_tail(100, 0, 0.25), 1.0);
        assert_eq!(binomial_tail(0, 0, 0.25), 1.0);
        assert_eq!(binomial_tail(10, 11, 0.25), 0.0);
        assert_eq!(binomial_ln_tail(10, 11, 0.25), f64::NEG_INFINITY);
        assert_eq!(binomial_tail(10, 1, 0.0), 0.0);
        assert_eq!(binomial_tail(10, 10, 1.0), 1.0);
        assert!(binomial_tail(10, 1, 1.5).is_nan());
        assert!(binomial_tail(10, 1, f64::NAN).is_nan());
        // P(X ≥ 1) = 1 − q^n.
        assert!(close(
            binomial_tail(10, 1, 0.25),
            1.0 - 0.75f64.powi(10),
            1e-14
        ));
    }

    #[test]
    fn monotone_in_k_and_sums_to_pmf() {
        for n in [1u64, 7, 50, 200, 1_000] {
            let mut prev = 1.0;
            for k in 0..=n + 1 {
                let t = binomial_tail(n, k, 0.25);
                assert!(t <= prev, "n={n} k={k}");
                assert!((0.0..=1.0).contains(&t));
                prev = t;
            }
            // Consecutive tails differ by the pmf, in both branches of the implementation.
            for k in 0..n {
                let diff = binomial_tail(n, k, 0.25) - binomial_tail(n, k + 1, 0.25);
                let pmf = ln_pmf(n, k, 0.25).exp();
                assert!((diff - pmf).abs() < 1e-12, "n={n} k={k}");
            }
        }
    }

    #[test]
    fn ln_factorial_matches_direct_sum() {
        for n in [31u64, 32, 33, 100, 1_000] {
            let direct: f64 = (2..=n).map(|i| (i as f64).ln()).sum();
            assert!(close(ln_factorial(n), direct, 1e-13), "{n}");
        }
    }
}
