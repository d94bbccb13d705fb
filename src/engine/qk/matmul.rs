//! Threaded matrix × vector / matrix × matrix over quantized weights.
//!
//! `out[b][n] = Σ_k W[n][k] · xs[b][k]` for a weight matrix `W` (`N × K`,
//! quantized, borrowed in place) and `B` activation rows `xs` (`B × K`,
//! f32). The activations are quantized once per call (Q8_1 for Q4_1
//! weights, Q8_0 for Q8_0 weights), then the output rows are split into
//! chunks that the [`Pool`] works through; inside a chunk each weight-row tile
//! is read once for the whole batch.
//!
//! Determinism: an output element's arithmetic depends only on its weight row
//! and its activation row — not on `B`, its batch position, the chunking or
//! the thread count — so batched results equal single-vector results bit for
//! bit, which keeps continuous batching from changing a sequence's tokens.

use std::ops::Range;

use rayon::prelude::*;

use super::blocks::QWeight;
use super::dot::{compute_rows, Kernel};
use super::quantize::{ActFormat, QuantizedActs};
use super::QkError;

/// Target number of row chunks per thread (load balance when another
/// process steals a core part-way through a call).
const CHUNKS_PER_THREAD: usize = 4;
/// Smallest row chunk worth a task.
const MIN_CHUNK_ROWS: usize = 16;
/// Below this many multiply-adds a call runs on the current thread. The
/// model's forward pass runs inside the pool, so a split is a fork to workers
/// that are usually still in rayon's short search rounds after the previous
/// kernel, not yet parked (a few µs), not a wake-up from outside (~10-15 µs);
/// measured with the decode bench, 128 Ki beat 512 Ki (single stream 98 vs 94
/// tokens/s: the 576×576 projections now split). Results are identical either way (the split never changes an
/// output's arithmetic).
const PARALLEL_MIN_MACS: usize = 128 * 1024;

/// A fixed-size worker pool for the kernels.
///
/// A dedicated rayon pool (not the global one, so other rayon users in the
/// process don't interfere). Idle rayon workers `sched_yield` for a few
/// rounds and then park on a condition variable — they never busy-spin, so a
/// competing process on the same cores degrades throughput gracefully
/// instead of collapsing it. With one thread no pool is built and work runs
/// on the caller's thread.
#[derive(Debug)]
pub struct Pool {
    pool: Option<rayon::ThreadPool>,
    threads: usize,
}

impl Pool {
    /// A pool of `threads` workers (`0` is treated as `1`).
    pub fn new(threads: usize) -> Result<Self, QkError> {
        let threads = threads.max(1);
        let pool = if threads == 1 {
            None
        } else {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("qk-worker-{i}"))
                    .build()
                    .map_err(|e| QkError::Pool(e.to_string()))?,
            )
        };
        Ok(Self { pool, threads })
    }

    /// A pool with one worker per available hardware thread.
    pub fn for_machine() -> Result<Self, QkError> {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Number of workers.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

/// Reusable buffers for [`matmul_with`]: quantized activations and the
/// `[row][batch]` staging area. Keep one per inference thread to avoid
/// per-call allocation.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    acts: QuantizedActs,
    tmp: Vec<f32>,
}

impl Scratch {
    /// Empty scratch; buffers grow on first use.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Activation format the weight type needs.
fn act_format(w: &QWeight<'_>) -> ActFormat {
    match w {
        QWeight::Q4_1(_) => ActFormat::Q8_1,
        QWeight::Q8_0(_) => ActFormat::Q8_0,
    }
}

/// `out = W · x` for one vector (`x.len() == K`, `out.len() == N`), using the
/// fastest kernel available. Allocates small activation buffers; use
/// [`matmul_with`] with a [`Scratch`] on hot paths.
pub fn matvec<'a>(
    w: impl Into<QWeight<'a>>,
    x: &[f32],
    out: &mut [f32],
    pool: &Pool,
) -> Result<(), QkError> {
    let w = w.into();
    if x.len() != w.cols() {
        return Err(QkError::InputLength {
            cols: w.cols(),
            expected: w.cols(),
            actual: x.len(),
        });
    }
    matmul_with(w, x, out, pool, Kernel::best(), &mut Scratch::new())
}

/// `out[b] = W · xs[b]` for `B = xs.len() / K` rows (`out` is `B × N`),
/// using the fastest kernel available.
pub fn matmul<'a>(
    w: impl Into<QWeight<'a>>,
    xs: &[f32],
    out: &mut [f32],
    pool: &Pool,
) -> Result<(), QkError> {
    matmul_with(w, xs, out, pool, Kernel::best(), &mut Scratch::new())
}

/// [`matmul`] with an explicit kernel and reusable buffers.
pub fn matmul_with<'a>(
    w: impl Into<QWeight<'a>>,
    xs: &[f32],
    out: &mut [f32],
    pool: &Pool,
    kernel: Kernel,
    scratch: &mut Scratch,
) -> Result<(), QkError> {
    let w = w.into();
    scratch.acts.quantize(act_format(&w), xs, w.cols())?;
    matmul_quantized(w, &scratch.acts, out, pool, kernel, &mut scratch.tmp)
}

/// `out = W · actsᵀ` for already-quantized activations.
///
/// Lets the caller quantize a hidden state once and reuse it for several
/// projections (Q/K/V, gate/up). `tmp` is a staging buffer that is reused
/// across calls (only touched when the batch has more than one row).
pub fn matmul_quantized<'a>(
    w: impl Into<QWeight<'a>>,
    acts: &QuantizedActs,
    out: &mut [f32],
    pool: &Pool,
    kernel: Kernel,
    tmp: &mut Vec<f32>,
) -> Result<(), QkError> {
    matmul_quantized_many(&[w.into()], acts, &mut [out], pool, kernel, tmp)
}

/// `outs[i] = ws[i] · actsᵀ` for several weight matrices of the same width
/// over the same activations (Q/K/V, gate/up), in **one** parallel region:
/// the pool is woken once instead of once per matrix (each wake-up costs
/// ~10-15 µs, a sizeable share of a small model's decode step). Every output
/// equals what [`matmul_quantized`] gives for that matrix alone, bit for bit.
pub fn matmul_quantized_many(
    ws: &[QWeight<'_>],
    acts: &QuantizedActs,
    outs: &mut [&mut [f32]],
    pool: &Pool,
    kernel: Kernel,
    tmp: &mut Vec<f32>,
) -> Result<(), QkError> {
    let batch = acts.rows();
    if ws.len() != outs.len() {
        return Err(QkError::OutputCount {
            matrices: ws.len(),
            outputs: outs.len(),
        });
    }
    for (w, out) in ws.iter().zip(outs.iter()) {
        if out.len() != batch * w.rows() {
            return Err(QkError::OutputLength {
                expected: batch * w.rows(),
                actual: out.len(),
            });
        }
    }
    if batch == 0 || ws.is_empty() {
        return Ok(());
    }
    if let ([out], 1) = (&mut *outs, batch) {
        // One vector, one matrix: `[row][batch]` is the output layout already.
        return run_rows(ws, acts, out, pool, kernel);
    }
    let total: usize = ws.iter().map(|w| w.rows()).sum();
    tmp.clear();
    tmp.resize(total * batch, 0.0);
    run_rows(ws, acts, tmp, pool, kernel)?;
    // [row][batch] → each matrix's [batch][row].
    let mut vals = tmp.chunks_exact(batch);
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        let n = w.rows();
        for (r, row) in vals.by_ref().take(n).enumerate() {
            for (b, &v) in row.iter().enumerate() {
                out[b * n + r] = v;
            }
        }
    }
    Ok(())
}

/// Splits the concatenated output rows of `ws` across the pool; `dst` is
/// `[row][batch]`.
fn run_rows(
    ws: &[QWeight<'_>],
    acts: &QuantizedActs,
    dst: &mut [f32],
    pool: &Pool,
    kernel: Kernel,
) -> Result<(), QkError> {
    let batch = acts.rows();
    let n: usize = ws.iter().map(|w| w.rows()).sum();
    // Output rows `rows` of the concatenation, into `o` (`[row][batch]`).
    let segment = |rows: Range<usize>, o: &mut [f32]| -> Result<(), QkError> {
        let mut base = 0;
        for w in ws {
            let (lo, hi) = (rows.start.max(base), rows.end.min(base + w.rows()));
            if lo < hi {
                let at = (lo - rows.start) * batch;
                let part = &mut o[at..at + (hi - lo) * batch];
                compute_rows(kernel, *w, acts, lo - base..hi - base, part)?;
            }
            base += w.rows();
        }
        Ok(())
    };
    let macs = ws
        .iter()
        .map(|w| w.rows().saturating_mul(w.cols()))
        .fold(0usize, usize::saturating_add)
        .saturating_mul(batch);
    match &pool.pool {
        Some(p) if macs >= PARALLEL_MIN_MACS => {
            let chunk = n
                .div_ceil(pool.threads * CHUNKS_PER_THREAD)
                .max(MIN_CHUNK_ROWS);
            p.install(|| {
                dst.par_chunks_mut(chunk * batch)
                    .enumerate()
                    .try_for_each(|(i, o)| {
                        let start = i * chunk;
                        segment(start..start + o.len() / batch, o)
                    })
            })
        }
        _ => segment(0..n, dst),
    }
}

/// Reference `out[b] = W · xs[b]` in f64 over dequantized weights and the
/// unquantized activations — the "true" answer the kernels approximate.
pub fn reference_matmul_f32<'a>(
    w: impl Into<QWeight<'a>>,
    xs: &[f32],
    out: &mut [f32],
) -> Result<(), QkError> {
    let w = w.into();
    let (n, k) = (w.rows(), w.cols());
    if !xs.len().is_multiple_of(k) {
        return Err(QkError::InputLength {
            cols: k,
            expected: xs.len().div_ceil(k) * k,
            actual: xs.len(),
        });
    }
    let batch = xs.len() / k;
    if out.len() != batch * n {
        return Err(QkError::OutputLength {
            expected: batch * n,
            actual: out.len(),
        });
    }
    let mut row = vec![0.0f32; k];
    for r in 0..n {
        w.dequantize_row(r, &mut row)?;
        for (b, x) in xs.chunks_exact(k).enumerate() {
            let s: f64 = row
                .iter()
                .zip(x)
                .map(|(&a, &c)| f64::from(a) * f64::from(c))
                .sum();
            out[b * n + r] = s as f32;
        }
    }
    Ok(())
}

impl Pool {
    /// Runs `f` inside the pool (so rayon parallel iterators in it use these workers), or on the
    /// caller's thread when the pool has one worker.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }
}
