//! Block dot products: a scalar reference and AVX2/FMA/F16C kernels.
//!
//! Both paths perform the *same* floating-point operations in the same
//! order (see the module docs of [`crate::engine::qk`]): per block the i32 products
//! are summed in eight lanes of four, each lane is converted to f32 and
//! fused-multiply-added with `d_w · d_x` into its own accumulator, and the
//! lanes are reduced in `hsum_float_8` order at the end. For Q4_1 the
//! `Σ m_w · s_x` term is a separate scalar running sum (multiply, then add).
//! Integer sums are exact, so the two paths agree bit for bit.
//!
//! The AVX2 kernels process one weight row against a tile of up to
//! [`BATCH_TILE`] activation rows, unpacking each weight block once per tile.
//! Every (row, batch) output keeps its own accumulators, so the tile shape
//! never changes an output's arithmetic (batch invariance).

use std::ops::Range;

use super::blocks::{f16_at, QWeight, BLOCK_BYTES_Q4_1, BLOCK_BYTES_Q8_0, QK};
use super::quantize::{ActFormat, QuantizedActs, BATCH_TILE};
use super::QkError;

/// Weight rows per tile: with K = 1536 a 16-row Q4_1 tile is 15 KiB, so it
/// stays in L1 while the batch tiles stream past it.
const ROW_TILE: usize = 16;
/// Weight rows per kernel call. Interleaving 2 or 4 rows (more independent
/// FMA chains for a one-column batch) was ~6% faster on cache-resident
/// matrices but 2-3x slower when the weights stream from DRAM — the decode
/// case — because the strided access defeats the hardware prefetcher. So
/// each row is walked once, sequentially.
const ROWS_PER_CALL: usize = 1;

/// Which implementation computes the dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable scalar reference (emulates the SIMD lane structure).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU supports (detected at runtime).
    pub fn best() -> Self {
        if Self::Avx2.is_available() {
            Self::Avx2
        } else {
            Self::Scalar
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Self::Scalar => true,
            Self::Avx2 => avx2_available(),
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_available() -> bool {
    false
}

/// llama.cpp's `hsum_float_8` reduction order.
#[inline]
fn hsum8(a: &[f32; 8]) -> f32 {
    let r = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// Scalar Q4_1 · Q8_1 dot product of one weight row with one activation row.
///
/// `s` holds the activation's per-block sums at stride `s_stride`.
pub fn dot_q4_1_q8_1_scalar(w: &[u8], yq: &[i8], yd: &[f32], s: &[f32], s_stride: usize) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (ib, blk) in w.chunks_exact(BLOCK_BYTES_Q4_1).enumerate() {
        let d0 = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        let d1 = yd[ib];
        summs += m * s[ib * s_stride];
        let dd = d0 * d1;
        let qy = &yq[ib * QK..ib * QK + QK];
        for (lane, a) in acc.iter_mut().enumerate() {
            let mut sum = 0i32;
            for j in lane * 4..lane * 4 + 4 {
                let nib = blk[4 + (j % 16)];
                let qx = if j < 16 { nib & 0x0F } else { nib >> 4 };
                sum += i32::from(qx) * i32::from(qy[j]);
            }
            *a = dd.mul_add(sum as f32, *a);
        }
    }
    hsum8(&acc) + summs
}

/// Scalar Q8_0 · Q8_0 dot product of one weight row with one activation row.
pub fn dot_q8_0_q8_0_scalar(w: &[u8], yq: &[i8], yd: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (ib, blk) in w.chunks_exact(BLOCK_BYTES_Q8_0).enumerate() {
        let dd = f16_at(blk, 0) * yd[ib];
        let qy = &yq[ib * QK..ib * QK + QK];
        for (lane, a) in acc.iter_mut().enumerate() {
            let mut sum = 0i32;
            for j in lane * 4..lane * 4 + 4 {
                sum += i32::from(blk[2 + j] as i8) * i32::from(qy[j]);
            }
            *a = dd.mul_add(sum as f32, *a);
        }
    }
    hsum8(&acc)
}

/// Computes output rows `rows` of `w · actsᵀ` into `out`, laid out
/// `[row - rows.start][batch]` (`rows.len() × acts.rows()` values).
///
/// All shapes are validated here, once per call, which is what the unsafe
/// SIMD tiles below rely on.
pub(crate) fn compute_rows(
    kernel: Kernel,
    w: QWeight<'_>,
    acts: &QuantizedActs,
    rows: Range<usize>,
    out: &mut [f32],
) -> Result<(), QkError> {
    let cols = w.cols();
    let nb = cols / QK;
    let batch = acts.rows();
    let need = match w {
        QWeight::Q4_1(_) => ActFormat::Q8_1,
        QWeight::Q8_0(_) => ActFormat::Q8_0,
    };
    if acts.format() != need {
        return Err(QkError::ActFormatMismatch {
            expected: need,
            actual: acts.format(),
        });
    }
    if acts.cols() != cols {
        return Err(QkError::InputLength {
            cols,
            expected: batch * cols,
            actual: acts.qs().len(),
        });
    }
    let expected = rows.len() * batch;
    if rows.start > rows.end || rows.end > w.rows() || out.len() != expected {
        return Err(QkError::OutputLength {
            expected,
            actual: out.len(),
        });
    }
    if !kernel.is_available() {
        return Err(QkError::KernelUnavailable(kernel));
    }
    // Internal consistency of `QuantizedActs` (upheld by `quantize`).
    let s_ok = need == ActFormat::Q8_0
        || (acts.rows_pad().is_multiple_of(BATCH_TILE)
            && acts.rows_pad() >= batch
            && acts.s_t().len() == nb * acts.rows_pad());
    if acts.qs().len() != batch * cols || acts.d().len() != batch * nb || !s_ok {
        return Err(QkError::InputLength {
            cols,
            expected: batch * cols,
            actual: acts.qs().len(),
        });
    }

    let rb = w.row_bytes();
    let data = w.data();
    let mut rt = rows.start;
    while rt < rows.end {
        let rt_end = (rt + ROW_TILE).min(rows.end);
        let mut b0 = 0;
        while b0 < batch {
            let tb = BATCH_TILE.min(batch - b0);
            let mut r = rt;
            while r < rt_end {
                let tr = ROWS_PER_CALL.min(rt_end - r);
                let wrows = &data[r * rb..(r + tr) * rb];
                let o0 = (r - rows.start) * batch + b0;
                // Rows r..r+tr, batch columns b0..b0+tb, row stride `batch`.
                let o = &mut out[o0..o0 + (tr - 1) * batch + tb];
                match (kernel, w) {
                    (Kernel::Scalar, QWeight::Q4_1(_)) => {
                        scalar_tile_q4_1(wrows, rb, acts, b0, tb, batch, o)
                    }
                    (Kernel::Scalar, QWeight::Q8_0(_)) => {
                        scalar_tile_q8_0(wrows, rb, acts, b0, tb, batch, o)
                    }
                    #[cfg(target_arch = "x86_64")]
                    (Kernel::Avx2, QWeight::Q4_1(_)) => {
                        avx2::tile_q4_1(wrows, rb, acts, b0, tb, batch, o)
                    }
                    #[cfg(target_arch = "x86_64")]
                    (Kernel::Avx2, QWeight::Q8_0(_)) => {
                        avx2::tile_q8_0(wrows, rb, acts, b0, tb, batch, o)
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    (Kernel::Avx2, _) => return Err(QkError::KernelUnavailable(kernel)),
                }
                r += tr;
            }
            b0 += tb;
        }
        rt = rt_end;
    }
    Ok(())
}

/// Scalar tile: rows `wrows.chunks(rb)`, batch columns `b0..b0 + tb`;
/// output `(i, t)` goes to `out[i * stride + t]`.
fn scalar_tile_q4_1(
    wrows: &[u8],
    rb: usize,
    acts: &QuantizedActs,
    b0: usize,
    tb: usize,
    stride: usize,
    out: &mut [f32],
) {
    let cols = acts.cols();
    let nb = cols / QK;
    for (i, wrow) in wrows.chunks_exact(rb).enumerate() {
        for t in 0..tb {
            let b = b0 + t;
            out[i * stride + t] = dot_q4_1_q8_1_scalar(
                wrow,
                &acts.qs()[b * cols..(b + 1) * cols],
                &acts.d()[b * nb..(b + 1) * nb],
                &acts.s_t()[b..],
                acts.rows_pad(),
            );
        }
    }
}

/// Scalar Q8_0 tile; layout as [`scalar_tile_q4_1`].
fn scalar_tile_q8_0(
    wrows: &[u8],
    rb: usize,
    acts: &QuantizedActs,
    b0: usize,
    tb: usize,
    stride: usize,
    out: &mut [f32],
) {
    let cols = acts.cols();
    let nb = cols / QK;
    for (i, wrow) in wrows.chunks_exact(rb).enumerate() {
        for t in 0..tb {
            let b = b0 + t;
            out[i * stride + t] = dot_q8_0_q8_0_scalar(
                wrow,
                &acts.qs()[b * cols..(b + 1) * cols],
                &acts.d()[b * nb..(b + 1) * nb],
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::blocks::{BLOCK_BYTES_Q4_1, BLOCK_BYTES_Q8_0, QK};
    use super::super::quantize::{QuantizedActs, BATCH_TILE};

    /// `hsum_float_8` exactly as llama.cpp writes it.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum_float_8(x: __m256) -> f32 {
        let mut res = _mm256_extractf128_ps::<1>(x);
        res = _mm_add_ps(res, _mm256_castps256_ps128(x));
        res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        res = _mm_add_ss(res, _mm_movehdup_ps(res));
        _mm_cvtss_f32(res)
    }

    /// Checks the tile preconditions the unsafe kernels rely on: `tr` whole
    /// rows of `rb` bytes matching the activations' width, batch columns
    /// `b0..b0+tb` inside the batch with `b0` on a tile boundary, and an
    /// output slice covering `(tr-1)·stride + tb` values.
    fn tile_ok(
        wrows: &[u8],
        rb: usize,
        block_bytes: usize,
        acts: &QuantizedActs,
        batch_cols: std::ops::Range<usize>,
        stride: usize,
        out: &[f32],
    ) -> bool {
        let (b0, tb) = (batch_cols.start, batch_cols.len());
        let nb = acts.cols() / QK;
        let tr = wrows.len().checked_div(rb).unwrap_or(0);
        rb == nb * block_bytes
            && tr >= 1
            && wrows.len() == tr * rb
            && (1..=BATCH_TILE).contains(&tb)
            && b0.is_multiple_of(BATCH_TILE)
            && b0 + tb <= acts.rows()
            && stride >= tb
            && out.len() == (tr - 1) * stride + tb
            && acts.qs().len() == acts.rows() * acts.cols()
            && acts.d().len() == acts.rows() * nb
    }

    /// Q4_1 rows × batch-column tile (see `compute_rows` for the layout).
    #[inline]
    pub(super) fn tile_q4_1(
        wrows: &[u8],
        rb: usize,
        acts: &QuantizedActs,
        b0: usize,
        tb: usize,
        stride: usize,
        out: &mut [f32],
    ) {
        let nb = acts.cols() / QK;
        let s_ok = acts.rows_pad().is_multiple_of(BATCH_TILE)
            && acts.rows_pad() >= acts.rows()
            && acts.s_t().len() == nb * acts.rows_pad();
        if !s_ok || !tile_ok(wrows, rb, BLOCK_BYTES_Q4_1, acts, b0..b0 + tb, stride, out) {
            // Unreachable through `compute_rows`; stay memory-safe anyway.
            return super::scalar_tile_q4_1(wrows, rb, acts, b0, tb, stride, out);
        }
        let tr = wrows.len() / rb;
        // SAFETY: `compute_rows` checked `Kernel::Avx2.is_available()`
        // before calling; `tile_ok`/`s_ok` above establish every bound the
        // kernel's pointer arithmetic relies on.
        unsafe {
            match (tr, tb) {
                (_, 1) => rows_each::<1>(wrows, rb, acts, b0, stride, out, q4_1::<1, 1>),
                (_, 2) => rows_each::<2>(wrows, rb, acts, b0, stride, out, q4_1::<1, 2>),
                (_, 3) => rows_each::<3>(wrows, rb, acts, b0, stride, out, q4_1::<1, 3>),
                _ => rows_each::<4>(wrows, rb, acts, b0, stride, out, q4_1::<1, 4>),
            }
        }
    }

    /// Q8_0 rows × batch-column tile.
    #[inline]
    pub(super) fn tile_q8_0(
        wrows: &[u8],
        rb: usize,
        acts: &QuantizedActs,
        b0: usize,
        tb: usize,
        stride: usize,
        out: &mut [f32],
    ) {
        if !tile_ok(wrows, rb, BLOCK_BYTES_Q8_0, acts, b0..b0 + tb, stride, out) {
            // Unreachable through `compute_rows`; stay memory-safe anyway.
            return super::scalar_tile_q8_0(wrows, rb, acts, b0, tb, stride, out);
        }
        let tr = wrows.len() / rb;
        // SAFETY: as in `tile_q4_1`.
        unsafe {
            match (tr, tb) {
                (_, 1) => rows_each::<1>(wrows, rb, acts, b0, stride, out, q8_0::<1, 1>),
                (_, 2) => rows_each::<2>(wrows, rb, acts, b0, stride, out, q8_0::<1, 2>),
                (_, 3) => rows_each::<3>(wrows, rb, acts, b0, stride, out, q8_0::<1, 3>),
                _ => rows_each::<4>(wrows, rb, acts, b0, stride, out, q8_0::<1, 4>),
            }
        }
    }

    type Kern = unsafe fn(&[u8], usize, &QuantizedActs, usize, usize, &mut [f32]);

    /// Runs a one-row kernel over each row of the tile.
    ///
    /// # Safety
    /// CPU supports AVX2/FMA/F16C; `k` must be sound for each row under the
    /// checked tile preconditions.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_each<const TB: usize>(
        wrows: &[u8],
        rb: usize,
        acts: &QuantizedActs,
        b0: usize,
        stride: usize,
        out: &mut [f32],
        k: Kern,
    ) {
        for (i, w) in wrows.chunks_exact(rb).enumerate() {
            let o = &mut out[i * stride..i * stride + TB];
            // SAFETY: forwarded from the caller; `o` has exactly TB values.
            unsafe { k(w, rb, acts, b0, stride, o) };
        }
    }

    /// Q4_1 kernel for `TR` consecutive rows × `TB` batch columns.
    ///
    /// # Safety
    /// CPU supports AVX2/FMA/F16C; `wrows` is `TR` rows of `rb =
    /// cols/32·20` bytes; `b0 % 4 == 0`, `b0 + TB <= acts.rows()`;
    /// `out.len() >= (TR-1)·stride + TB`; `acts` is consistent Q8_1 (its
    /// sum table has `rows_pad` (a multiple of 4) entries per block).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1<const TR: usize, const TB: usize>(
        wrows: &[u8],
        rb: usize,
        acts: &QuantizedActs,
        b0: usize,
        stride: usize,
        out: &mut [f32],
    ) {
        let cols = acts.cols();
        let nb = cols / QK;
        let s_stride = acts.rows_pad();
        let w = wrows.as_ptr();
        let yq = acts.qs().as_ptr();
        let yd = acts.d().as_ptr();
        let st = acts.s_t().as_ptr();
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); TB]; TR];
        let mut summs = [_mm_setzero_ps(); TR];
        for ib in 0..nb {
            // SAFETY: block `ib < nb` of row `i < TR` is bytes
            // [i·rb + 20ib, +20) of `wrows`; activation block `ib` of batch
            // rows b0..b0+TB lies in `qs`/`d`; `s_t` row `ib` has `s_stride`
            // ≥ b0 + 4 entries (rows_pad is a multiple of 4, b0 % 4 == 0),
            // so the 4-lane load is in bounds. All loads are unaligned.
            unsafe {
                let s = _mm_loadu_ps(st.add(ib * s_stride + b0));
                for i in 0..TR {
                    let bp = w.add(i * rb + ib * BLOCK_BYTES_Q4_1);
                    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(bp.cast::<i32>().read_unaligned()));
                    let d0 = _mm256_broadcastss_ps(dm);
                    let m = _mm_permute_ps::<0b0101_0101>(dm);
                    let nib = _mm_loadu_si128(bp.add(4).cast::<__m128i>());
                    let qx = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(nib), nib), low);
                    for (t, a) in acc[i].iter_mut().enumerate() {
                        let b = b0 + t;
                        let d1 = _mm256_broadcast_ss(&*yd.add(b * nb + ib));
                        let dd = _mm256_mul_ps(d0, d1);
                        let qy = _mm256_loadu_si256(yq.add(b * cols + ib * QK).cast::<__m256i>());
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), ones);
                        *a = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(p), *a);
                    }
                    summs[i] = _mm_add_ps(summs[i], _mm_mul_ps(m, s));
                }
            }
        }
        for i in 0..TR {
            let mut sm = [0.0f32; 4];
            // SAFETY: `sm` holds 4 f32; the store is unaligned.
            unsafe { _mm_storeu_ps(sm.as_mut_ptr(), summs[i]) };
            for t in 0..TB {
                out[i * stride + t] = hsum_float_8(acc[i][t]) + sm[t];
            }
        }
    }

    /// Q8_0 kernel for `TR` consecutive rows × `TB` batch columns.
    ///
    /// # Safety
    /// As [`q4_1`] with 34-byte blocks and Q8_0 activations.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0<const TR: usize, const TB: usize>(
        wrows: &[u8],
        rb: usize,
        acts: &QuantizedActs,
        b0: usize,
        stride: usize,
        out: &mut [f32],
    ) {
        let cols = acts.cols();
        let nb = cols / QK;
        let w = wrows.as_ptr();
        let yq = acts.qs().as_ptr();
        let yd = acts.d().as_ptr();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); TB]; TR];
        for ib in 0..nb {
            // SAFETY: block `ib < nb` of row `i < TR` is in `wrows`;
            // activation block `ib` of rows b0..b0+TB is in `qs`/`d`.
            unsafe {
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let bp = w.add(i * rb + ib * BLOCK_BYTES_Q8_0);
                    let dbits = i32::from(bp.cast::<u16>().read_unaligned());
                    let d0 = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(dbits)));
                    let qx = _mm256_loadu_si256(bp.add(2).cast::<__m256i>());
                    let ax = _mm256_sign_epi8(qx, qx);
                    for (t, a) in acc_i.iter_mut().enumerate() {
                        let b = b0 + t;
                        let dd = _mm256_set1_ps(d0 * *yd.add(b * nb + ib));
                        let qy = _mm256_loadu_si256(yq.add(b * cols + ib * QK).cast::<__m256i>());
                        let sy = _mm256_sign_epi8(qy, qx);
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
                        *a = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(p), *a);
                    }
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (t, a) in acc_i.iter().enumerate() {
                out[i * stride + t] = hsum_float_8(*a);
            }
        }
    }
}
