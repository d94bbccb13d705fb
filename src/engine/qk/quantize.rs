//! Activation quantization (f32 → Q8_1 / Q8_0), llama.cpp's x86 scheme.
//!
//! Per 32-value block: `amax = max|x|`, `d = amax / 127` (stored as f16),
//! `q = round_half_even(x * (127 / amax))` (0 when `amax == 0`), and for
//! Q8_1 `s = f16(d * Σq)` with the *unrounded* f32 `d`. This is what
//! llama.cpp's AVX2 `quantize_row_q8_1` / `quantize_row_q8_0` compute
//! (`_mm256_round_ps(.., _MM_ROUND_NEAREST)` rounds ties to even), which
//! is the path the reference llama.cpp build takes on these machines.
//!
//! The activations are tiny compared with the weights, so they are kept in a
//! kernel-friendly layout rather than GGUF blocks: quants row-major, scales
//! as f32 (already rounded through f16), and the Q8_1 sums transposed
//! (`[block][batch]`, batch padded to [`BATCH_TILE`]) so a batch tile's sums
//! load as one vector. Buffers are reused across calls.

use half::f16;

use super::blocks::QK;
use super::QkError;

/// Most batch rows a kernel tile processes together; the Q8_1 sum table is
/// padded to a multiple of this.
pub const BATCH_TILE: usize = 8;

/// Which activation block format to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActFormat {
    /// Q8_1 (scale + scaled sum): pairs with Q4_1 weights.
    Q8_1,
    /// Q8_0 (scale only): pairs with Q8_0 weights.
    Q8_0,
}

/// Quantized activations for a batch of `rows` vectors of `cols` values.
#[derive(Debug, Clone)]
pub struct QuantizedActs {
    format: ActFormat,
    rows: usize,
    cols: usize,
    rows_pad: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    s_t: Vec<f32>,
}

impl Default for QuantizedActs {
    fn default() -> Self {
        Self::new()
    }
}

/// Round half to even via the 1.5·2^23 trick: exact for |v| < 2^22 under
/// the default rounding mode (here |v| ≤ 127), and it vectorizes without
/// SSE4.1, unlike `f32::round_ties_even` (a libm call per element on the
/// baseline target). Larger or non-finite inputs only occur for denormal
/// block maxima and saturate in the `as i8` cast anyway.
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Quantizes one 32-value block; returns `(d rounded through f16, Σq)`.
#[inline]
fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, f32, i32) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (o, &v) in q.iter_mut().zip(x) {
        // `as` saturates and maps NaN to 0.
        let qi = round_even(v * id) as i8;
        *o = qi;
        sum += i32::from(qi);
    }
    (f16::from_f32(d).to_f32(), d, sum)
}

impl QuantizedActs {
    /// Empty buffers; [`Self::quantize`] sizes them.
    pub fn new() -> Self {
        Self {
            format: ActFormat::Q8_1,
            rows: 0,
            cols: 0,
            rows_pad: 0,
            qs: Vec::new(),
            d: Vec::new(),
            s_t: Vec::new(),
        }
    }

    /// Quantizes `xs` (`rows × cols`, row-major) in `format`, reusing buffers.
    ///
    /// `cols` must be a positive multiple of 32 and `xs.len()` a multiple of
    /// `cols` (zero rows is allowed and yields an empty batch).
    pub fn quantize(&mut self, format: ActFormat, xs: &[f32], cols: usize) -> Result<(), QkError> {
        if cols == 0 || !cols.is_multiple_of(QK) {
            return Err(QkError::BadCols { cols });
        }
        if !xs.len().is_multiple_of(cols) {
            return Err(QkError::InputLength {
                cols,
                expected: xs.len().div_ceil(cols) * cols,
                actual: xs.len(),
            });
        }
        let rows = xs.len() / cols;
        let nb = cols / QK;
        let rows_pad = rows.div_ceil(BATCH_TILE) * BATCH_TILE;
        self.format = format;
        self.rows = rows;
        self.cols = cols;
        self.rows_pad = rows_pad;
        self.qs.clear();
        self.qs.resize(rows * cols, 0);
        self.d.clear();
        self.d.resize(rows * nb, 0.0);
        self.s_t.clear();
        if format == ActFormat::Q8_1 {
            self.s_t.resize(nb * rows_pad, 0.0);
        }
        for (b, (x_row, q_row)) in xs
            .chunks_exact(cols)
            .zip(self.qs.chunks_exact_mut(cols))
            .enumerate()
        {
            for (ib, (x, q)) in x_row
                .chunks_exact(QK)
                .zip(q_row.chunks_exact_mut(QK))
                .enumerate()
            {
                let (d16, d, sum) = quantize_block(x, q);
                self.d[b * nb + ib] = d16;
                if format == ActFormat::Q8_1 {
                    // llama.cpp: y.s = FP32_TO_FP16(d * (float)Σq), f32 `d`.
                    self.s_t[ib * rows_pad + b] = f16::from_f32(d * sum as f32).to_f32();
                }
            }
        }
        Ok(())
    }

    /// Block format of the quantized values.
    pub fn format(&self) -> ActFormat {
        self.format
    }

    /// Batch size (number of vectors).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per vector.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Batch rows rounded up to [`BATCH_TILE`] (stride of the sum table).
    pub fn rows_pad(&self) -> usize {
        self.rows_pad
    }

    /// Quants, `rows × cols` row-major.
    pub fn qs(&self) -> &[i8] {
        &self.qs
    }

    /// Per-block scales (f16-rounded), `rows × cols/32` row-major.
    pub fn d(&self) -> &[f32] {
        &self.d
    }

    /// Q8_1 per-block `s` (f16-rounded), `[block][rows_pad]`; empty for Q8_0.
    pub fn s_t(&self) -> &[f32] {
        &self.s_t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_even() {
        assert_eq!(round_even(0.5), 0.0);
        assert_eq!(round_even(1.5), 2.0);
        assert_eq!(round_even(2.5), 2.0);
        assert_eq!(round_even(-2.5), -2.0);
        assert_eq!(round_even(-0.49), 0.0);
        assert_eq!(round_even(126.6), 127.0);
        for i in -1270..=1270 {
            let v = i as f32 * 0.1;
            assert_eq!(round_even(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn block_quantization_matches_scheme() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.37).collect();
        let mut a = QuantizedActs::new();
        a.quantize(ActFormat::Q8_1, &x, 64).unwrap();
        assert_eq!(a.rows(), 1);
        for ib in 0..2 {
            let blk = &x[ib * 32..ib * 32 + 32];
            let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let q = &a.qs()[ib * 32..ib * 32 + 32];
            assert_eq!(q.iter().map(|v| v.unsigned_abs()).max(), Some(127));
            let d = amax / 127.0;
            assert_eq!(a.d()[ib], f16::from_f32(d).to_f32());
            let sum: i32 = q.iter().map(|&v| i32::from(v)).sum();
            assert_eq!(
                a.s_t()[ib * a.rows_pad()],
                f16::from_f32(d * sum as f32).to_f32()
            );
            for (qi, xi) in q.iter().zip(blk) {
                assert!((f32::from(*qi) * d - xi).abs() <= d * 0.5001);
            }
        }
    }

    #[test]
    fn zero_block_and_bad_shapes() {
        let mut a = QuantizedActs::new();
        a.quantize(ActFormat::Q8_0, &[0.0; 32], 32).unwrap();
        assert!(a.qs().iter().all(|&q| q == 0));
        assert_eq!(a.d()[0], 0.0);
        assert!(a.s_t().is_empty());
        assert!(matches!(
            a.quantize(ActFormat::Q8_0, &[0.0; 33], 32),
            Err(QkError::InputLength { .. })
        ));
        assert!(matches!(
            a.quantize(ActFormat::Q8_1, &[0.0; 48], 48),
            Err(QkError::BadCols { cols: 48 })
        ));
        a.quantize(ActFormat::Q8_1, &[], 32).unwrap();
        assert_eq!(a.rows(), 0);
    }
}
