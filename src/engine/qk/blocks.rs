//! Zero-copy views over GGUF-quantized weight bytes.
//!
//! The views borrow the one locked weight region; they only check that the
//! slice length matches the declared shape so the kernels can index blocks
//! without further checks. Layouts (little-endian, GGUF/ggml):
//!
//! * Q4_1, 20 bytes per 32 weights: f16 `d`, f16 `m`, 16 nibble bytes; weight
//!   `j < 16` is the low nibble of byte `j`, weight `j + 16` its high nibble;
//!   value `= d * q + m`.
//! * Q8_0, 34 bytes per 32 weights: f16 `d`, 32 × i8; value `= d * q`.
//!
//! A row of `cols` weights is `cols / 32` consecutive blocks; rows follow one
//! another (GGUF `ne0 == cols` is the contiguous dimension).

use half::f16;

use super::QkError;

/// Weights per quantization block.
pub const QK: usize = 32;
/// Bytes per Q4_1 block.
pub const BLOCK_BYTES_Q4_1: usize = 20;
/// Bytes per Q8_0 block.
pub const BLOCK_BYTES_Q8_0: usize = 34;

fn check_shape(
    format: &'static str,
    block_bytes: usize,
    len: usize,
    rows: usize,
    cols: usize,
) -> Result<usize, QkError> {
    if cols == 0 || !cols.is_multiple_of(QK) {
        return Err(QkError::BadCols { cols });
    }
    if rows == 0 {
        return Err(QkError::ZeroRows);
    }
    let row_bytes = (cols / QK) * block_bytes;
    let expected = row_bytes
        .checked_mul(rows)
        .ok_or(QkError::ShapeOverflow { rows, cols })?;
    if len != expected {
        return Err(QkError::DataLength {
            format,
            rows,
            cols,
            expected,
            actual: len,
        });
    }
    Ok(row_bytes)
}

/// Reads a little-endian f16 at `at` (callers index inside validated rows).
#[inline]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// A `[rows × cols]` Q4_1 matrix borrowed from GGUF tensor data.
#[derive(Debug, Clone, Copy)]
pub struct Q4_1Matrix<'a> {
    data: &'a [u8],
    rows: usize,
    cols: usize,
}

impl<'a> Q4_1Matrix<'a> {
    /// Wraps `data` (exactly `rows * cols / 32 * 20` bytes) without copying.
    pub fn new(data: &'a [u8], rows: usize, cols: usize) -> Result<Self, QkError> {
        check_shape("Q4_1", BLOCK_BYTES_Q4_1, data.len(), rows, cols)?;
        Ok(Self { data, rows, cols })
    }

    /// Output dimension.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input (contiguous) dimension.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols / QK * BLOCK_BYTES_Q4_1
    }

    /// The raw bytes of the whole matrix.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Raw bytes of row `r`, or `None` when out of range.
    pub fn row(&self, r: usize) -> Option<&'a [u8]> {
        let rb = self.row_bytes();
        self.data.get(r.checked_mul(rb)?..(r + 1).checked_mul(rb)?)
    }
}

/// A `[rows × cols]` Q8_0 matrix borrowed from GGUF tensor data.
#[derive(Debug, Clone, Copy)]
pub struct Q8_0Matrix<'a> {
    data: &'a [u8],
    rows: usize,
    cols: usize,
}

impl<'a> Q8_0Matrix<'a> {
    /// Wraps `data` (exactly `rows * cols / 32 * 34` bytes) without copying.
    pub fn new(data: &'a [u8], rows: usize, cols: usize) -> Result<Self, QkError> {
        check_shape("Q8_0", BLOCK_BYTES_Q8_0, data.len(), rows, cols)?;
        Ok(Self { data, rows, cols })
    }

    /// Output dimension.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input (contiguous) dimension.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols / QK * BLOCK_BYTES_Q8_0
    }

    /// The raw bytes of the whole matrix.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Raw bytes of row `r`, or `None` when out of range.
    pub fn row(&self, r: usize) -> Option<&'a [u8]> {
        let rb = self.row_bytes();
        self.data.get(r.checked_mul(rb)?..(r + 1).checked_mul(rb)?)
    }
}

/// Either supported weight format; what [`crate::engine::qk::matmul()`] accepts.
#[derive(Debug, Clone, Copy)]
pub enum QWeight<'a> {
    /// Q4_1 weights (multiplied against Q8_1 activations).
    Q4_1(Q4_1Matrix<'a>),
    /// Q8_0 weights (multiplied against Q8_0 activations).
    Q8_0(Q8_0Matrix<'a>),
}

impl<'a> QWeight<'a> {
    /// Output dimension.
    pub fn rows(&self) -> usize {
        match self {
            Self::Q4_1(m) => m.rows(),
            Self::Q8_0(m) => m.rows(),
        }
    }

    /// Input dimension.
    pub fn cols(&self) -> usize {
        match self {
            Self::Q4_1(m) => m.cols(),
            Self::Q8_0(m) => m.cols(),
        }
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        match self {
            Self::Q4_1(m) => m.row_bytes(),
            Self::Q8_0(m) => m.row_bytes(),
        }
    }

    /// Raw bytes of the whole matrix.
    pub fn data(&self) -> &'a [u8] {
        match self {
            Self::Q4_1(m) => m.data(),
            Self::Q8_0(m) => m.data(),
        }
    }

    /// Dequantizes row `r` into `out` (`cols` values); reference/test helper.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), QkError> {
        let expected = self.cols();
        if out.len() != expected {
            return Err(QkError::OutputLength {
                expected,
                actual: out.len(),
            });
        }
        let rb = self.row_bytes();
        let bytes = r
            .checked_mul(rb)
            .and_then(|start| self.data().get(start..start + rb))
            .ok_or(QkError::OutputLength {
                expected: self.rows(),
                actual: r,
            })?;
        match self {
            Self::Q4_1(_) => dequantize_row_q4_1(bytes, out),
            Self::Q8_0(_) => dequantize_row_q8_0(bytes, out),
        }
    }
}

impl<'a> From<Q4_1Matrix<'a>> for QWeight<'a> {
    fn from(m: Q4_1Matrix<'a>) -> Self {
        Self::Q4_1(m)
    }
}

impl<'a> From<Q8_0Matrix<'a>> for QWeight<'a> {
    fn from(m: Q8_0Matrix<'a>) -> Self {
        Self::Q8_0(m)
    }
}

/// Dequantizes Q4_1 blocks `bytes` into `out` (`bytes.len() / 20 * 32` values).
///
/// Reference only (tests, debugging): the kernels never dequantize.
pub fn dequantize_row_q4_1(bytes: &[u8], out: &mut [f32]) -> Result<(), QkError> {
    if !bytes.len().is_multiple_of(BLOCK_BYTES_Q4_1)
        || out.len() != bytes.len() / BLOCK_BYTES_Q4_1 * QK
    {
        return Err(QkError::OutputLength {
            expected: bytes.len() / BLOCK_BYTES_Q4_1 * QK,
            actual: out.len(),
        });
    }
    for (blk, o) in bytes
        .chunks_exact(BLOCK_BYTES_Q4_1)
        .zip(out.chunks_exact_mut(QK))
    {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        for (j, &b) in blk[4..].iter().enumerate() {
            o[j] = d * f32::from(b & 0x0F) + m;
            o[j + 16] = d * f32::from(b >> 4) + m;
        }
    }
    Ok(())
}

/// Dequantizes Q8_0 blocks `bytes` into `out` (`bytes.len() / 34 * 32` values).
///
/// Reference only (tests, debugging) — also usable for the tied embedding
/// lookup of a single token row.
pub fn dequantize_row_q8_0(bytes: &[u8], out: &mut [f32]) -> Result<(), QkError> {
    if !bytes.len().is_multiple_of(BLOCK_BYTES_Q8_0)
        || out.len() != bytes.len() / BLOCK_BYTES_Q8_0 * QK
    {
        return Err(QkError::OutputLength {
            expected: bytes.len() / BLOCK_BYTES_Q8_0 * QK,
            actual: out.len(),
        });
    }
    for (blk, o) in bytes
        .chunks_exact(BLOCK_BYTES_Q8_0)
        .zip(out.chunks_exact_mut(QK))
    {
        let d = f16_at(blk, 0);
        for (j, &b) in blk[2..].iter().enumerate() {
            o[j] = d * f32::from(b as i8);
        }
    }
    Ok(())
}
