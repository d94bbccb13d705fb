//! Kernel correctness, SIMD/scalar equality, batch invariance, shape errors.
// Helpers outside `#[test]` fns are not covered by clippy.toml's
// allow-unwrap-in-tests; this whole file is test code.
#![allow(clippy::unwrap_used)]

use cloister::engine::qk::{
    matmul, matmul_quantized_many, matmul_with, matvec, reference_matmul_f32, ActFormat, Kernel,
    Pool, Q4_1Matrix, Q8_0Matrix, QWeight, QkError, QuantizedActs, Scratch, BLOCK_BYTES_Q4_1,
    BLOCK_BYTES_Q8_0,
};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Random Q4_1 bytes with llama-like scales: d ∈ [0.002, 0.03], m ≈ -8d.
fn q4_1_bytes(r: &mut ChaCha8Rng, rows: usize, cols: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(rows * cols / 32 * BLOCK_BYTES_Q4_1);
    for _ in 0..rows * cols / 32 {
        let d: f32 = r.gen_range(0.002..0.03);
        let m: f32 = -8.0 * d * r.gen_range(0.7..1.3);
        v.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        v.extend_from_slice(&f16::from_f32(m).to_bits().to_le_bytes());
        for _ in 0..16 {
            v.push(r.gen());
        }
    }
    v
}

/// Random Q8_0 bytes (includes -128, which GGUF data may contain).
fn q8_0_bytes(r: &mut ChaCha8Rng, rows: usize, cols: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(rows * cols / 32 * BLOCK_BYTES_Q8_0);
    for _ in 0..rows * cols / 32 {
        let d: f32 = r.gen_range(0.0005..0.01);
        v.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for _ in 0..32 {
            v.push(r.gen());
        }
    }
    v
}

/// Activations: mostly N(0,1)-ish with occasional large outliers and a few
/// all-zero blocks (the `amax == 0` path).
fn acts(r: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n)
        .map(|_| {
            let v: f32 = r.gen_range(-1.0..1.0) + r.gen_range(-1.0..1.0);
            if r.gen_ratio(1, 50) {
                v * 20.0
            } else {
                v
            }
        })
        .collect();
    if n >= 64 && r.gen_ratio(1, 2) {
        x[32..64].iter_mut().for_each(|v| *v = 0.0);
    }
    x
}

/// Error bound for one output from activation quantization: per block the
/// rounding error is ≤ amax/254 per value plus the f16 rounding of the scale
/// (≤ 2^-11 relative, doubled for slack), and for Q4_1 the f16 rounding of
/// `s`; plus 1e-5 of Σ|w·x| for f32 accumulation.
fn bound(w: QWeight<'_>, row: usize, x: &[f32]) -> f64 {
    let k = w.cols();
    let mut wr = vec![0.0f32; k];
    w.dequantize_row(row, &mut wr).unwrap();
    let bytes = &w.data()[row * w.row_bytes()..(row + 1) * w.row_bytes()];
    let mut total = 0.0f64;
    let mut abs_wx = 0.0f64;
    for ib in 0..k / 32 {
        let xb = &x[ib * 32..ib * 32 + 32];
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs())) as f64;
        let e = amax * (1.0 / 254.0 + 1.0 / 1024.0) * 1.001;
        let (m, sw) = match w {
            QWeight::Q4_1(_) => {
                let blk = &bytes[ib * 20..ib * 20 + 20];
                let m = f16::from_bits(u16::from_le_bytes([blk[2], blk[3]])).to_f32() as f64;
                let sw: f64 = wr[ib * 32..ib * 32 + 32]
                    .iter()
                    .map(|&v| (v as f64 - m).abs())
                    .sum();
                (m.abs(), sw)
            }
            QWeight::Q8_0(_) => (
                0.0,
                wr[ib * 32..ib * 32 + 32]
                    .iter()
                    .map(|&v| v.abs() as f64)
                    .sum(),
            ),
        };
        let sx: f64 = xb.iter().map(|&v| v as f64).sum::<f64>().abs();
        total += (sw + 32.0 * m) * e + m * (sx + 32.0 * e) / 1024.0;
        abs_wx += wr[ib * 32..ib * 32 + 32]
            .iter()
            .zip(xb)
            .map(|(&a, &b)| (a as f64 * b as f64).abs())
            .sum::<f64>();
    }
    total + 1e-5 * abs_wx + 1e-6
}

fn kernels() -> Vec<Kernel> {
    [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512Vnni]
        .into_iter()
        .filter(|k| k.is_available())
        .collect()
}

fn check_against_reference(w: QWeight<'_>, xs: &[f32], pool: &Pool) -> f64 {
    let (n, k) = (w.rows(), w.cols());
    let b = xs.len() / k;
    let mut want = vec![0.0f32; b * n];
    reference_matmul_f32(w, xs, &mut want).unwrap();
    let mut worst = 0.0f64;
    for kernel in kernels() {
        let mut got = vec![0.0f32; b * n];
        matmul_with(w, xs, &mut got, pool, kernel, &mut Scratch::new()).unwrap();
        for bi in 0..b {
            for r in 0..n {
                let g = got[bi * n + r] as f64;
                let t = want[bi * n + r] as f64;
                let lim = bound(w, r, &xs[bi * k..(bi + 1) * k]);
                assert!(
                    (g - t).abs() <= lim,
                    "{kernel:?} {n}x{k} b={bi} r={r}: got {g} want {t} (bound {lim})"
                );
                worst = worst.max((g - t).abs() / lim);
            }
        }
    }
    worst
}

#[test]
fn q4_1_matches_reference() {
    let pool = Pool::new(2).unwrap();
    let mut r = rng(1);
    let mut worst = 0.0f64;
    for &k in &[32usize, 576, 1536] {
        for &n in &[1usize, 7, 192, 576] {
            for &b in &[1usize, 3, 16] {
                let bytes = q4_1_bytes(&mut r, n, k);
                let w = Q4_1Matrix::new(&bytes, n, k).unwrap();
                let xs = acts(&mut r, b * k);
                worst = worst.max(check_against_reference(w.into(), &xs, &pool));
            }
        }
    }
    println!("q4_1: worst |err|/bound = {worst:.3}");
}

#[test]
fn q8_0_matches_reference() {
    let pool = Pool::new(2).unwrap();
    let mut r = rng(2);
    let mut worst = 0.0f64;
    for &k in &[32usize, 576, 1536] {
        for &n in &[1usize, 7, 192, 576] {
            for &b in &[1usize, 3, 16] {
                let bytes = q8_0_bytes(&mut r, n, k);
                let w = Q8_0Matrix::new(&bytes, n, k).unwrap();
                let xs = acts(&mut r, b * k);
                worst = worst.max(check_against_reference(w.into(), &xs, &pool));
            }
        }
    }
    println!("q8_0: worst |err|/bound = {worst:.3}");
}

/// Typical relative error ‖y − y_ref‖ / ‖y_ref‖ for outlier-free
/// activations stays under 1% (random weights make outputs cancel heavily,
/// so this is pessimistic compared with a real model).
#[test]
fn typical_relative_error_is_small() {
    let pool = Pool::new(2).unwrap();
    let mut r = rng(3);
    let (n, k, b) = (576, 576, 4);
    for q8 in [false, true] {
        let bytes = if q8 {
            q8_0_bytes(&mut r, n, k)
        } else {
            q4_1_bytes(&mut r, n, k)
        };
        let w: QWeight<'_> = if q8 {
            Q8_0Matrix::new(&bytes, n, k).unwrap().into()
        } else {
            Q4_1Matrix::new(&bytes, n, k).unwrap().into()
        };
        let xs: Vec<f32> = (0..b * k)
            .map(|_| r.gen_range(-1.0f32..1.0) + r.gen_range(-1.0f32..1.0))
            .collect();
        let mut want = vec![0.0f32; b * n];
        let mut got = vec![0.0f32; b * n];
        reference_matmul_f32(w, &xs, &mut want).unwrap();
        matmul(w, &xs, &mut got, &pool).unwrap();
        let num: f64 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = want.iter().map(|a| (*a as f64).powi(2)).sum();
        let rel = (num / den).sqrt();
        println!("q8_0={q8}: relative L2 error {rel:.2e}");
        assert!(rel < 1e-2, "relative error {rel}");
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Every SIMD kernel (AVX2, AVX-512 VNNI) gives exactly the scalar reference's bits, for batch
/// sizes that exercise full and partial tiles of 4 and 8 columns.
#[test]
fn simd_kernels_equal_scalar_bit_for_bit() {
    let simd: Vec<Kernel> = kernels()
        .into_iter()
        .filter(|&k| k != Kernel::Scalar)
        .collect();
    if simd.is_empty() {
        eprintln!("no SIMD kernel available on this CPU: skipping");
        return;
    }
    let pool = Pool::new(2).unwrap();
    let mut r = rng(4);
    for &(n, k) in &[(7usize, 32usize), (192, 576), (576, 1536), (33, 576)] {
        for b in [1usize, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17] {
            let b4 = q4_1_bytes(&mut r, n, k);
            let b8 = q8_0_bytes(&mut r, n, k);
            let ws: [QWeight<'_>; 2] = [
                Q4_1Matrix::new(&b4, n, k).unwrap().into(),
                Q8_0Matrix::new(&b8, n, k).unwrap().into(),
            ];
            let xs = acts(&mut r, b * k);
            for w in ws {
                let mut s = vec![0.0f32; b * n];
                matmul_with(w, &xs, &mut s, &pool, Kernel::Scalar, &mut Scratch::new()).unwrap();
                for &kernel in &simd {
                    let mut v = vec![0.0f32; b * n];
                    matmul_with(w, &xs, &mut v, &pool, kernel, &mut Scratch::new()).unwrap();
                    assert_eq!(bits(&s), bits(&v), "{kernel:?} {n}x{k} b={b} {w:?}");
                }
            }
        }
    }
}

#[test]
fn batch_invariance_bit_for_bit() {
    let mut r = rng(5);
    let (n, k) = (192, 576);
    let b4 = q4_1_bytes(&mut r, n, k);
    let b8 = q8_0_bytes(&mut r, n, k);
    let ws: [QWeight<'_>; 2] = [
        Q4_1Matrix::new(&b4, n, k).unwrap().into(),
        Q8_0Matrix::new(&b8, n, k).unwrap().into(),
    ];
    let xs = acts(&mut r, 16 * k);
    let single = Pool::new(1).unwrap();
    for w in ws {
        for kernel in kernels() {
            // Per-row matvec on one thread is the ground truth.
            let mut rows = vec![0.0f32; 16 * n];
            for i in 0..16 {
                let mut scratch = Scratch::new();
                matmul_with(
                    w,
                    &xs[i * k..(i + 1) * k],
                    &mut rows[i * n..(i + 1) * n],
                    &single,
                    kernel,
                    &mut scratch,
                )
                .unwrap();
            }
            for threads in [1usize, 2, 3, 5] {
                let pool = Pool::new(threads).unwrap();
                let mut scratch = Scratch::new();
                for b in 1..=16 {
                    let mut out = vec![0.0f32; b * n];
                    matmul_with(w, &xs[..b * k], &mut out, &pool, kernel, &mut scratch).unwrap();
                    assert_eq!(
                        bits(&out),
                        bits(&rows[..b * n]),
                        "{kernel:?} threads={threads} b={b}"
                    );
                }
            }
        }
    }
    // The public convenience entry points agree too.
    let pool = Pool::new(2).unwrap();
    let mut one = vec![0.0f32; n];
    let mut all = vec![0.0f32; 3 * n];
    matmul(ws[0], &xs[..3 * k], &mut all, &pool).unwrap();
    matvec(ws[0], &xs[2 * k..3 * k], &mut one, &pool).unwrap();
    assert_eq!(bits(&one), bits(&all[2 * n..]));
}

#[test]
fn prefill_sized_batch_is_invariant() {
    let mut r = rng(6);
    let (n, k, b) = (64, 1536, 70);
    let bytes = q4_1_bytes(&mut r, n, k);
    let w = Q4_1Matrix::new(&bytes, n, k).unwrap();
    let xs = acts(&mut r, b * k);
    let pool = Pool::new(2).unwrap();
    let mut out = vec![0.0f32; b * n];
    matmul(w, &xs, &mut out, &pool).unwrap();
    for i in [0usize, 1, 37, 69] {
        let mut one = vec![0.0f32; n];
        matvec(w, &xs[i * k..(i + 1) * k], &mut one, &pool).unwrap();
        assert_eq!(bits(&one), bits(&out[i * n..(i + 1) * n]), "row {i}");
    }
}

/// A hand-checkable case: one Q4_1 block against one activation block.
#[test]
fn single_block_exact_value() {
    // d = 1, m = -8, q_j = j % 16 → w_j = j%16 - 8; x_j = 127 at j = 0 and
    // 1 at j = 17, else 0 → x quantizes exactly (d_x = 1).
    let mut blk = vec![];
    blk.extend_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
    blk.extend_from_slice(&f16::from_f32(-8.0).to_bits().to_le_bytes());
    for j in 0..16u8 {
        blk.push(j | (j << 4));
    }
    let w = Q4_1Matrix::new(&blk, 1, 32).unwrap();
    let mut x = [0.0f32; 32];
    x[0] = 127.0;
    x[17] = 1.0;
    let pool = Pool::new(1).unwrap();
    for kernel in kernels() {
        let mut out = [0.0f32; 1];
        matmul_with(w, &x, &mut out, &pool, kernel, &mut Scratch::new()).unwrap();
        // w_0 = -8, w_17 = 1 - 8 = -7 → -8·127 − 7 = −1023.
        assert_eq!(out[0], -1023.0, "{kernel:?}");
    }
}

#[test]
fn invalid_shapes_are_errors() {
    let b4 = vec![0u8; 2 * 2 * BLOCK_BYTES_Q4_1];
    assert!(Q4_1Matrix::new(&b4, 2, 64).is_ok());
    assert!(matches!(
        Q4_1Matrix::new(&b4, 2, 48),
        Err(QkError::BadCols { cols: 48 })
    ));
    assert!(matches!(
        Q4_1Matrix::new(&b4, 2, 0),
        Err(QkError::BadCols { cols: 0 })
    ));
    assert!(matches!(
        Q4_1Matrix::new(&b4, 0, 64),
        Err(QkError::ZeroRows)
    ));
    assert!(matches!(
        Q4_1Matrix::new(&b4, 3, 64),
        Err(QkError::DataLength { .. })
    ));
    assert!(matches!(
        Q4_1Matrix::new(&b4[1..], 2, 64),
        Err(QkError::DataLength { .. })
    ));
    assert!(matches!(
        Q4_1Matrix::new(&b4, usize::MAX / 2, 64),
        Err(QkError::ShapeOverflow { .. })
    ));
    let b8 = vec![0u8; 2 * BLOCK_BYTES_Q8_0];
    assert!(Q8_0Matrix::new(&b8, 2, 32).is_ok());
    assert!(matches!(
        Q8_0Matrix::new(&b8, 1, 32),
        Err(QkError::DataLength { .. })
    ));
    assert!(Q8_0Matrix::new(&b8, 1, 64).is_ok());
    assert!(matches!(
        Q8_0Matrix::new(&b8, 2, 16),
        Err(QkError::BadCols { .. })
    ));

    let w = Q4_1Matrix::new(&b4, 2, 64).unwrap();
    let pool = Pool::new(2).unwrap();
    let mut out = vec![0.0f32; 2];
    assert!(matches!(
        matvec(w, &[0.0; 63], &mut out, &pool),
        Err(QkError::InputLength { .. })
    ));
    assert!(matches!(
        matvec(w, &[0.0; 128], &mut out, &pool),
        Err(QkError::InputLength { .. })
    ));
    assert!(matches!(
        matmul(w, &[0.0; 100], &mut out, &pool),
        Err(QkError::InputLength { .. })
    ));
    assert!(matches!(
        matvec(w, &[0.0; 64], &mut [0.0; 3], &pool),
        Err(QkError::OutputLength {
            expected: 2,
            actual: 3
        })
    ));
    assert!(matches!(
        matmul(w, &[0.0; 128], &mut out, &pool),
        Err(QkError::OutputLength {
            expected: 4,
            actual: 2
        })
    ));
    // Empty batch is fine.
    matmul(w, &[], &mut [], &pool).unwrap();
    // Wrong activation format for the weight type.
    let mut a = QuantizedActs::new();
    a.quantize(ActFormat::Q8_0, &[0.0; 64], 64).unwrap();
    assert!(matches!(
        cloister::engine::qk::matmul_quantized(w, &a, &mut out, &pool, Kernel::Scalar, &mut vec![]),
        Err(QkError::ActFormatMismatch { .. })
    ));
    // Reference helpers validate too.
    assert!(cloister::engine::qk::dequantize_row_q4_1(&b4[..20], &mut [0.0; 31]).is_err());
    assert!(cloister::engine::qk::dequantize_row_q8_0(&b8[..33], &mut [0.0; 32]).is_err());
    assert!(reference_matmul_f32(w, &[0.0; 64], &mut [0.0; 1]).is_err());
}

#[test]
fn pool_for_machine_builds() {
    let p = Pool::for_machine().unwrap();
    assert!(p.threads() >= 1);
    assert_eq!(Pool::new(0).unwrap().threads(), 1);
}

/// Several matrices in one parallel region (Q/K/V, gate/up) give each matrix exactly what it gets
/// alone, for row counts that make work chunks straddle matrix boundaries, and the call refuses
/// mismatched outputs.
#[test]
fn many_matrices_in_one_call_equal_separate_calls() {
    let mut r = rng(9);
    let k = 576;
    let shapes = [576usize, 192, 37, 1536];
    let bytes: Vec<Vec<u8>> = shapes.iter().map(|&n| q4_1_bytes(&mut r, n, k)).collect();
    let ws: Vec<QWeight<'_>> = bytes
        .iter()
        .zip(shapes)
        .map(|(b, n)| Q4_1Matrix::new(b, n, k).unwrap().into())
        .collect();
    for threads in [1, 2, 3] {
        let pool = Pool::new(threads).unwrap();
        for batch in [1usize, 3, 8, 11] {
            let xs = acts(&mut r, batch * k);
            let mut a = QuantizedActs::new();
            a.quantize(ActFormat::Q8_1, &xs, k).unwrap();
            let alone: Vec<Vec<f32>> = ws
                .iter()
                .map(|&w| {
                    let mut o = vec![0.0f32; batch * w.rows()];
                    cloister::engine::qk::matmul_quantized(
                        w,
                        &a,
                        &mut o,
                        &pool,
                        Kernel::best(),
                        &mut vec![],
                    )
                    .unwrap();
                    o
                })
                .collect();
            let mut together: Vec<Vec<f32>> = ws
                .iter()
                .map(|w| vec![f32::NAN; batch * w.rows()])
                .collect();
            let mut outs: Vec<&mut [f32]> = together.iter_mut().map(|o| &mut o[..]).collect();
            matmul_quantized_many(&ws, &a, &mut outs, &pool, Kernel::best(), &mut vec![]).unwrap();
            for (i, (t, s)) in together.iter().zip(&alone).enumerate() {
                assert_eq!(
                    bits(t),
                    bits(s),
                    "matrix {i}, batch {batch}, {threads} threads"
                );
            }
        }
    }
    let pool = Pool::new(2).unwrap();
    let mut a = QuantizedActs::new();
    a.quantize(ActFormat::Q8_1, &acts(&mut r, k), k).unwrap();
    let (mut o0, mut o1) = (vec![0.0f32; 576], vec![0.0f32; 191]);
    assert!(matches!(
        matmul_quantized_many(
            &ws[..2],
            &a,
            &mut [&mut o0, &mut o1],
            &pool,
            Kernel::Scalar,
            &mut vec![]
        ),
        Err(QkError::OutputLength {
            expected: 192,
            actual: 191
        })
    ));
    assert!(matches!(
        matmul_quantized_many(
            &ws[..2],
            &a,
            &mut [&mut o0],
            &pool,
            Kernel::Scalar,
            &mut vec![]
        ),
        Err(QkError::OutputCount {
            matrices: 2,
            outputs: 1
        })
    ));
}
