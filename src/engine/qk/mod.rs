//! CPU kernels for GGUF-quantized matrix × vector / matrix × matrix products.
//!
//! # Why this module exists
//!
//! The weights of a model live in **one** locked byte region (the GGUF
//! tensor data). Cloister must not keep a second plaintext copy of them, so
//! every kernel here reads the quantized blocks *in place* from `&[u8]`
//! views ([`Q4_1Matrix`], [`Q8_0Matrix`]); nothing is repacked or copied.
//!
//! # Numerics (why they look like llama.cpp's)
//!
//! Greedy output must stay token-for-token identical to llama.cpp, so the
//! kernels reproduce llama.cpp's x86 (AVX2) arithmetic, not just its maths:
//!
//! * The activation is quantized per 32-block ([`quantize`]): `amax = max|x|`,
//!   `d = amax / 127`, `q = round_half_even(x * (127 / amax))`; `d` is
//!   stored as f16. For Q8_1 (used against Q4_1 weights) the block also
//!   carries `s = f16(d * Σq)`.
//! * Per block the integer dot product is formed in i32 in eight lanes of
//!   four products each (exactly what `maddubs`+`madd` produce, or one
//!   AVX-512 VNNI `dpbusd`: the sums are exact, so both give the same i32), each lane is
//!   converted to f32 and fused-multiply-added with `d_w * d_x` into an
//!   8-lane f32 accumulator; Q4_1 also accumulates `Σ m_w * s_x` in a scalar
//!   (multiply, then add — no fusion). At the end the 8 lanes are reduced in
//!   llama.cpp's `hsum_float_8` order.
//! * The scalar reference in [`dot`] emulates that lane structure, so the
//!   AVX2, AVX-512 VNNI and scalar paths agree **bit for bit** (tested).
//!
//! # Batching and determinism
//!
//! [`matmul()`] reads each weight row once per batch (loop order: weight-row
//! tile → batch tile → row) — that is what makes continuous batching pay.
//! Work is split across threads by *output rows*, and every output element
//! is produced by the same sequence of floating-point operations regardless
//! of batch size, batch position, tile shape or thread count. Row `i` of a
//! batched [`matmul()`] therefore equals [`matvec()`] of row `i` bit for bit.
//!
//! # Threads
//!
//! [`Pool`] wraps a dedicated rayon pool sized by
//! `std::thread::available_parallelism`. Idle rayon workers yield briefly and
//! then park on a condition variable: they never busy-spin, so a competing
//! process on the same cores does not collapse throughput. Several matrices
//! that read the same input (Q/K/V, gate/up) share one parallel region
//! ([`matmul_quantized_many`]).

pub mod blocks;
pub mod dot;
pub mod matmul;
pub mod quantize;

pub use blocks::{
    dequantize_row_q4_1, dequantize_row_q8_0, Q4_1Matrix, Q8_0Matrix, QWeight, BLOCK_BYTES_Q4_1,
    BLOCK_BYTES_Q8_0, QK,
};
pub use dot::Kernel;
pub use matmul::{
    matmul, matmul_quantized, matmul_quantized_many, matmul_with, matvec, reference_matmul_f32,
    Pool, Scratch,
};
pub use quantize::{ActFormat, QuantizedActs};

/// Errors from constructing matrix views or calling the kernels.
///
/// Every shape problem is reported, never panicked on: the caller builds
/// views over a byte region parsed from an untrusted-format file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QkError {
    /// The contiguous dimension must be a whole number of 32-wide blocks.
    #[error("column count {cols} is not a positive multiple of 32")]
    BadCols {
        /// Offending column count.
        cols: usize,
    },
    /// A matrix needs at least one row.
    #[error("matrix has zero rows")]
    ZeroRows,
    /// `rows × cols` does not fit in memory arithmetic.
    #[error("matrix shape {rows}x{cols} overflows usize")]
    ShapeOverflow {
        /// Rows requested.
        rows: usize,
        /// Columns requested.
        cols: usize,
    },
    /// The byte slice is not exactly the size of the declared matrix.
    #[error("{format} matrix {rows}x{cols} needs {expected} bytes, got {actual}")]
    DataLength {
        /// "Q4_1" or "Q8_0".
        format: &'static str,
        /// Rows declared.
        rows: usize,
        /// Columns declared.
        cols: usize,
        /// Bytes required.
        expected: usize,
        /// Bytes supplied.
        actual: usize,
    },
    /// The activation buffer is not a whole number of rows of `cols`.
    #[error("input has {actual} values, expected a multiple of {cols} (and {expected} here)")]
    InputLength {
        /// Row width expected.
        cols: usize,
        /// Values expected (when known, else the next multiple).
        expected: usize,
        /// Values supplied.
        actual: usize,
    },
    /// The output buffer does not hold exactly `batch × rows` values.
    #[error("output has {actual} values, expected {expected}")]
    OutputLength {
        /// Values expected.
        expected: usize,
        /// Values supplied.
        actual: usize,
    },
    /// A multi-matrix call got a different number of output buffers than matrices.
    #[error("{matrices} matrices but {outputs} output buffers")]
    OutputCount {
        /// Matrices supplied.
        matrices: usize,
        /// Output buffers supplied.
        outputs: usize,
    },
    /// Activations were quantized in the wrong format for this weight type.
    #[error("activations are {actual:?}, the weights need {expected:?}")]
    ActFormatMismatch {
        /// Format the weight type needs.
        expected: ActFormat,
        /// Format supplied.
        actual: ActFormat,
    },
    /// The requested kernel is not supported by this CPU.
    #[error("kernel {0:?} is not available on this CPU")]
    KernelUnavailable(Kernel),
    /// Building the thread pool failed.
    #[error("thread pool: {0}")]
    Pool(String),
}
