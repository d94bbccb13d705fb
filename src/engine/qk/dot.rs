//! Block dot products: a scalar reference and SIMD kernels (AVX2/FMA/F16C,
//! and the same with AVX-512 VNNI integer sums).
//!
//! All three paths perform the *same* floating-point operations in the same
//! order (see the module docs of [`crate::engine::qk`]): per block the i32 products
//! are summed in eight lanes of four, each lane is converted to f32 and
//! fused-multiply-added with `d_w · d_x` into its own accumulator, and the
//! lanes are reduced in `hsum_float_8` order at the end. For Q4_1 the
//! `Σ m_w · s_x` term is a separate scalar running sum (multiply, then add).
//! Integer sums are exact, so all paths agree bit for bit.
//!
//! The SIMD kernels process one weight row against a tile of up to
//! [`BATCH_TILE`] activation rows, unpacking each weight block once per tile.
//! Every (row, batch) output keeps its own accumulators, so the tile shape
//! never changes an output's arithmetic (batch invariance).

use std::ops::Range;

use super::blocks::{f16_at, QWeight, BLOCK_BYTES_Q4_1, BLOCK_BYTES_Q8_0, QK};
use super::quantize::{ActFormat, QuantizedActs, BATCH_TILE};
use super::QkError;

/// Weight rows per tile: with K = 1536 a 16-row Q4_1 tile is 15 KiB, so it
/// stays in L1 while the batch tiles stream past it. Each row is walked once,
/// sequentially: interleaving 2 or 4 rows in one kernel (more independent FMA
/// chains for a one-column batch) was ~6% faster on cache-resident matrices
/// but 2-3x slower when the weights stream from DRAM — the decode case —
/// because the strided access defeats the hardware prefetcher.
const ROW_TILE: usize = 16;
/// Which implementation computes the dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable scalar reference (emulates the SIMD lane structure).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// [`Kernel::Avx2`] with AVX-512 VNNI (`vpdpbusd` on 256-bit vectors,
    /// AVX512VL) for the integer sums, and tiles of 8 batch columns (VL's 32
    /// vector registers hold 8 accumulators without spilling).
    Avx512Vnni,
}

impl Kernel {
    /// The fastest kernel this CPU supports (detected at runtime).
    pub fn best() -> Self {
        [Self::Avx512Vnni, Self::Avx2]
            .into_iter()
            .find(|k| k.is_available())
            .unwrap_or(Self::Scalar)
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Self::Scalar => true,
            Self::Avx2 => avx2_available(),
            Self::Avx512Vnni => avx2_available() && vnni_available(),
        }
    }

    /// Batch columns one kernel call handles against each weight block (the
    /// block is unpacked once per call). Never changes results.
    pub fn batch_tile(self) -> usize {
        match self {
            Self::Scalar | Self::Avx2 => 4,
            Self::Avx512Vnni => BATCH_TILE,
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

#[cfg(target_arch = "x86_64")]
fn vnni_available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
fn vnni_available() -> bool {
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
    let tile = kernel.batch_tile();
    let mut rt = rows.start;
    while rt < rows.end {
        let rt_end = (rt + ROW_TILE).min(rows.end);
        let mut b0 = 0;
        while b0 < batch {
            let tb = tile.min(batch - b0);
            for r in rt..rt_end {
                let wrow = &data[r * rb..(r + 1) * rb];
                let o0 = (r - rows.start) * batch + b0;
                // Row r, batch columns b0..b0+tb.
                let o = &mut out[o0..o0 + tb];
                match (kernel, w) {
                    (Kernel::Scalar, QWeight::Q4_1(_)) => scalar_tile_q4_1(wrow, acts, b0, o),
                    (Kernel::Scalar, QWeight::Q8_0(_)) => scalar_tile_q8_0(wrow, acts, b0, o),
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `kernel.is_available()` was checked above.
                    (Kernel::Avx2 | Kernel::Avx512Vnni, QWeight::Q4_1(_)) => unsafe {
                        simd::tile_q4_1(kernel == Kernel::Avx512Vnni, wrow, acts, b0, o)
                    },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `kernel.is_available()` was checked above.
                    (Kernel::Avx2 | Kernel::Avx512Vnni, QWeight::Q8_0(_)) => unsafe {
                        simd::tile_q8_0(kernel == Kernel::Avx512Vnni, wrow, acts, b0, o)
                    },
                    #[cfg(not(target_arch = "x86_64"))]
                    (Kernel::Avx2 | Kernel::Avx512Vnni, _) => {
                        return Err(QkError::KernelUnavailable(kernel))
                    }
                }
            }
            b0 += tb;
        }
        rt = rt_end;
    }
    Ok(())
}

/// Scalar tile: one weight row against batch columns `b0..b0 + out.len()`.
fn scalar_tile_q4_1(wrow: &[u8], acts: &QuantizedActs, b0: usize, out: &mut [f32]) {
    let cols = acts.cols();
    let nb = cols / QK;
    for (t, o) in out.iter_mut().enumerate() {
        let b = b0 + t;
        *o = dot_q4_1_q8_1_scalar(
            wrow,
            &acts.qs()[b * cols..(b + 1) * cols],
            &acts.d()[b * nb..(b + 1) * nb],
            &acts.s_t()[b..],
            acts.rows_pad(),
        );
    }
}

/// Scalar Q8_0 tile; layout as [`scalar_tile_q4_1`].
fn scalar_tile_q8_0(wrow: &[u8], acts: &QuantizedActs, b0: usize, out: &mut [f32]) {
    let cols = acts.cols();
    let nb = cols / QK;
    for (t, o) in out.iter_mut().enumerate() {
        let b = b0 + t;
        *o = dot_q8_0_q8_0_scalar(
            wrow,
            &acts.qs()[b * cols..(b + 1) * cols],
            &acts.d()[b * nb..(b + 1) * nb],
        );
    }
}

/// The SIMD kernels: one weight row against a tile of up to [`BATCH_TILE`]
/// batch columns, unpacking each weight block once per tile.
///
/// Two instruction sets share one body (the `row_kernels!` macro): AVX2 forms
/// each lane's four-product integer sum with `maddubs` + `madd`, AVX-512 VNNI
/// with one `dpbusd`. The sums are exact either way (no i16 saturation: Q4_1
/// is 0..15 × ±127, and Q8_0's sign trick gives products ≤ 128 × 127 and
/// pairs ≤ 2 × 128 × 127), so both kernels produce the same bits as the scalar
/// reference.
#[cfg(target_arch = "x86_64")]
mod simd {
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

    /// Checks the preconditions the unsafe kernels rely on: one whole row of
    /// blocks matching the activations' width, batch columns
    /// `b0..b0 + out.len()` inside the batch with `b0` a multiple of 4, and
    /// consistent activation buffers.
    fn tile_ok(
        wrow: &[u8],
        block_bytes: usize,
        acts: &QuantizedActs,
        b0: usize,
        tb: usize,
    ) -> bool {
        let nb = acts.cols() / QK;
        wrow.len() == nb * block_bytes
            && (1..=BATCH_TILE).contains(&tb)
            && b0.is_multiple_of(4)
            && b0 + tb <= acts.rows()
            && acts.qs().len() == acts.rows() * acts.cols()
            && acts.d().len() == acts.rows() * nb
    }

    /// Calls `$f::<TB>` for the tile width `$tb` (1..=8).
    macro_rules! by_width {
        ($f:ident, $tb:expr, $($arg:expr),*) => {
            match $tb {
                1 => $f::<1>($($arg),*),
                2 => $f::<2>($($arg),*),
                3 => $f::<3>($($arg),*),
                4 => $f::<4>($($arg),*),
                5 => $f::<5>($($arg),*),
                6 => $f::<6>($($arg),*),
                7 => $f::<7>($($arg),*),
                _ => $f::<8>($($arg),*),
            }
        };
    }

    /// Q4_1 row × batch-column tile; `vnni` picks the AVX-512 VNNI variant.
    ///
    /// # Safety
    /// The CPU must support the chosen variant ([`super::Kernel::is_available`]).
    #[inline]
    pub(super) unsafe fn tile_q4_1(
        vnni: bool,
        wrow: &[u8],
        acts: &QuantizedActs,
        b0: usize,
        out: &mut [f32],
    ) {
        let nb = acts.cols() / QK;
        let s_ok = acts.rows_pad().is_multiple_of(4)
            && acts.rows_pad() >= acts.rows()
            && acts.s_t().len() == nb * acts.rows_pad();
        if !s_ok || !tile_ok(wrow, BLOCK_BYTES_Q4_1, acts, b0, out.len()) {
            // Unreachable through `compute_rows`; stay memory-safe anyway.
            return super::scalar_tile_q4_1(wrow, acts, b0, out);
        }
        // SAFETY: the caller guarantees the CPU supports the variant; the
        // checks above establish every bound the kernels' pointer arithmetic
        // relies on.
        unsafe {
            if vnni {
                by_width!(q4_1_vnni, out.len(), wrow, acts, b0, out)
            } else {
                by_width!(q4_1_avx2, out.len(), wrow, acts, b0, out)
            }
        }
    }

    /// Q8_0 row × batch-column tile; `vnni` picks the AVX-512 VNNI variant.
    ///
    /// # Safety
    /// As [`tile_q4_1`].
    #[inline]
    pub(super) unsafe fn tile_q8_0(
        vnni: bool,
        wrow: &[u8],
        acts: &QuantizedActs,
        b0: usize,
        out: &mut [f32],
    ) {
        if !tile_ok(wrow, BLOCK_BYTES_Q8_0, acts, b0, out.len()) {
            // Unreachable through `compute_rows`; stay memory-safe anyway.
            return super::scalar_tile_q8_0(wrow, acts, b0, out);
        }
        // SAFETY: as in `tile_q4_1`.
        unsafe {
            if vnni {
                by_width!(q8_0_vnni, out.len(), wrow, acts, b0, out)
            } else {
                by_width!(q8_0_avx2, out.len(), wrow, acts, b0, out)
            }
        }
    }

    /// Defines a Q4_1 and a Q8_0 kernel for one instruction set. `$dot` turns
    /// 32 unsigned bytes `$x` and 32 signed bytes `$y` into eight i32 lanes,
    /// lane `l` = Σ_{j<4} x[4l+j]·y[4l+j].
    macro_rules! row_kernels {
        ($q4:ident, $q8:ident, $features:literal, |$x:ident, $y:ident| $dot:expr) => {
            /// Q4_1 kernel: one weight row × `TB` batch columns.
            ///
            /// # Safety
            /// The CPU supports the enabled features; `wrow` is one row of
            /// `cols/32` 20-byte blocks; `b0 % 4 == 0`, `b0 + TB <=
            /// acts.rows()`, `TB <= 8`; `out.len() == TB`; `acts` is
            /// consistent Q8_1 whose sum table has `rows_pad` (a multiple of
            /// 4, ≥ rows) entries per block.
            #[target_feature(enable = $features)]
            unsafe fn $q4<const TB: usize>(
                wrow: &[u8],
                acts: &QuantizedActs,
                b0: usize,
                out: &mut [f32],
            ) {
                let cols = acts.cols();
                let nb = cols / QK;
                let s_stride = acts.rows_pad();
                let w = wrow.as_ptr();
                let yq = acts.qs().as_ptr();
                let yd = acts.d().as_ptr();
                let st = acts.s_t().as_ptr();
                let low = _mm256_set1_epi8(0x0F);
                let mut acc = [_mm256_setzero_ps(); TB];
                let mut summs = [_mm_setzero_ps(); 2];
                for ib in 0..nb {
                    // SAFETY: block `ib < nb` is bytes [20ib, +20) of `wrow`;
                    // activation block `ib` of batch rows b0..b0+TB lies in
                    // `qs`/`d`; sum-table row `ib` has `s_stride` entries and
                    // b0 + 4 (b0 + 8 when TB > 4) ≤ s_stride, because b0 is a
                    // multiple of 4, b0 + TB ≤ rows ≤ s_stride and s_stride is
                    // a multiple of 4. All loads are unaligned.
                    unsafe {
                        let bp = w.add(ib * BLOCK_BYTES_Q4_1);
                        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(bp.cast::<i32>().read_unaligned()));
                        let d0 = _mm256_broadcastss_ps(dm);
                        let m = _mm_permute_ps::<0b0101_0101>(dm);
                        let nib = _mm_loadu_si128(bp.add(4).cast::<__m128i>());
                        let qx =
                            _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(nib), nib), low);
                        for (t, a) in acc.iter_mut().enumerate() {
                            let b = b0 + t;
                            let d1 = _mm256_broadcast_ss(&*yd.add(b * nb + ib));
                            let dd = _mm256_mul_ps(d0, d1);
                            let qy =
                                _mm256_loadu_si256(yq.add(b * cols + ib * QK).cast::<__m256i>());
                            let p = {
                                let ($x, $y) = (qx, qy);
                                $dot
                            };
                            *a = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(p), *a);
                        }
                        let s = _mm_loadu_ps(st.add(ib * s_stride + b0));
                        summs[0] = _mm_add_ps(summs[0], _mm_mul_ps(m, s));
                        if TB > 4 {
                            let s = _mm_loadu_ps(st.add(ib * s_stride + b0 + 4));
                            summs[1] = _mm_add_ps(summs[1], _mm_mul_ps(m, s));
                        }
                    }
                }
                let mut sm = [0.0f32; 8];
                // SAFETY: `sm` holds 8 f32; the stores are unaligned.
                unsafe {
                    _mm_storeu_ps(sm.as_mut_ptr(), summs[0]);
                    _mm_storeu_ps(sm.as_mut_ptr().add(4), summs[1]);
                }
                for (t, o) in out.iter_mut().enumerate().take(TB) {
                    *o = hsum_float_8(acc[t]) + sm[t];
                }
            }

            /// Q8_0 kernel: one weight row × `TB` batch columns.
            ///
            /// # Safety
            /// As the Q4_1 kernel, with 34-byte blocks and Q8_0 activations.
            #[target_feature(enable = $features)]
            unsafe fn $q8<const TB: usize>(
                wrow: &[u8],
                acts: &QuantizedActs,
                b0: usize,
                out: &mut [f32],
            ) {
                let cols = acts.cols();
                let nb = cols / QK;
                let w = wrow.as_ptr();
                let yq = acts.qs().as_ptr();
                let yd = acts.d().as_ptr();
                let mut acc = [_mm256_setzero_ps(); TB];
                for ib in 0..nb {
                    // SAFETY: block `ib < nb` is in `wrow`; activation block
                    // `ib` of rows b0..b0+TB is in `qs`/`d`.
                    unsafe {
                        let bp = w.add(ib * BLOCK_BYTES_Q8_0);
                        let dbits = i32::from(bp.cast::<u16>().read_unaligned());
                        let d0 = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(dbits)));
                        let qx = _mm256_loadu_si256(bp.add(2).cast::<__m256i>());
                        let ax = _mm256_sign_epi8(qx, qx);
                        for (t, a) in acc.iter_mut().enumerate() {
                            let b = b0 + t;
                            let dd = _mm256_set1_ps(d0 * *yd.add(b * nb + ib));
                            let qy =
                                _mm256_loadu_si256(yq.add(b * cols + ib * QK).cast::<__m256i>());
                            let sy = _mm256_sign_epi8(qy, qx);
                            let p = {
                                let ($x, $y) = (ax, sy);
                                $dot
                            };
                            *a = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(p), *a);
                        }
                    }
                }
                for (o, a) in out.iter_mut().zip(acc) {
                    *o = hsum_float_8(a);
                }
            }
        };
    }

    row_kernels!(q4_1_avx2, q8_0_avx2, "avx2,fma,f16c", |x, y| {
        _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
    });
    row_kernels!(
        q4_1_vnni,
        q8_0_vnni,
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
        |x, y| _mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y)
    );
}
