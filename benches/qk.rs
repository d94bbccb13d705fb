//! Timing for SmolLM2-135M shapes.
//!
//! Run: `cargo bench --bench qk`. Optional arg: thread count.
//!
//! Prints ms and GFLOP/s-equivalent (2·N·K·B / t) per shape for one vector
//! and a batch of 8, the AVX2 path versus the scalar path, and times a full
//! decode step's projections (30 layers × 7 distinct matrices + the 49152×576
//! Q8_0 output) so that weight streaming from DRAM is realistic.

use std::time::Instant;

use cloister::engine::qk::{
    matmul_with, Kernel, Pool, Q4_1Matrix, Q8_0Matrix, QWeight, Scratch, BLOCK_BYTES_Q4_1,
    BLOCK_BYTES_Q8_0,
};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn fill(r: &mut ChaCha8Rng, blocks: usize, block_bytes: usize) -> Vec<u8> {
    let mut v = vec![0u8; blocks * block_bytes];
    r.fill(&mut v[..]);
    for b in v.chunks_exact_mut(block_bytes) {
        b[0..2].copy_from_slice(&f16::from_f32(0.01).to_bits().to_le_bytes());
        if block_bytes == BLOCK_BYTES_Q4_1 {
            b[2..4].copy_from_slice(&f16::from_f32(-0.08).to_bits().to_le_bytes());
        }
    }
    v
}

fn time_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Best-of-N: the build machine is shared, so the minimum is the least
    // contended (most repeatable) sample.
    best.into_iter().fold(f64::INFINITY, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = Pool::new(threads)?;
    let best = Kernel::best();
    println!("kernel {best:?}, {threads} threads");
    let mut r = ChaCha8Rng::seed_from_u64(7);
    let shapes: [(usize, usize, bool, &str); 5] = [
        (576, 576, false, "q/o  Q4_1"),
        (192, 576, false, "k/v  Q4_1"),
        (1536, 576, false, "gate/up Q4_1"),
        (576, 1536, false, "down Q4_1"),
        (49152, 576, true, "output Q8_0"),
    ];
    let mut scratch = Scratch::new();
    println!(
        "{:<14} {:>11} {:>3} | {:>9} {:>8} | {:>9} {:>8} | {:>6}",
        "shape", "N x K", "B", "ms", "GFLOP/s", "scalar ms", "GFLOP/s", "speedup"
    );
    for (n, k, q8, name) in shapes {
        let bytes = if q8 {
            fill(&mut r, n * k / 32, BLOCK_BYTES_Q8_0)
        } else {
            fill(&mut r, n * k / 32, BLOCK_BYTES_Q4_1)
        };
        let w: QWeight<'_> = if q8 {
            Q8_0Matrix::new(&bytes, n, k)?.into()
        } else {
            Q4_1Matrix::new(&bytes, n, k)?.into()
        };
        for b in [1usize, 8] {
            let xs: Vec<f32> = (0..b * k).map(|_| r.gen_range(-1.0..1.0)).collect();
            let mut out = vec![0.0f32; b * n];
            let reps = if n > 10_000 { 15 } else { 200 };
            let t = time_ms(reps, || {
                let _ = matmul_with(w, &xs, &mut out, &pool, best, &mut scratch);
            });
            let ts = time_ms(if n > 10_000 { 2 } else { 10 }, || {
                let _ = matmul_with(w, &xs, &mut out, &pool, Kernel::Scalar, &mut scratch);
            });
            let flop = 2.0 * (n * k * b) as f64;
            println!(
                "{:<14} {:>5}x{:<5} {:>3} | {:>9.4} {:>8.1} | {:>9.3} {:>8.2} | {:>6.1}x",
                name,
                n,
                k,
                b,
                t,
                flop / t / 1e6,
                ts,
                flop / ts / 1e6,
                ts / t
            );
        }
    }

    // Full decode step: distinct weights per layer, as in the real model.
    let layer_shapes = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    let mut layers: Vec<(Vec<u8>, usize, usize)> = Vec::new();
    for _ in 0..30 {
        for &(n, k) in &layer_shapes {
            layers.push((fill(&mut r, n * k / 32, BLOCK_BYTES_Q4_1), n, k));
        }
    }
    let out_bytes = fill(&mut r, 49152 * 576 / 32, BLOCK_BYTES_Q8_0);
    let out_w = Q8_0Matrix::new(&out_bytes, 49152, 576)?;
    let mut views = Vec::new();
    for (bytes, n, k) in &layers {
        views.push(Q4_1Matrix::new(bytes, *n, *k)?);
    }
    let total_bytes: usize = layers.iter().map(|l| l.0.len()).sum::<usize>() + out_bytes.len();
    // Context: how fast can one thread merely stream the same bytes?
    let stream = time_ms(5, || {
        let mut acc = 0u64;
        for bytes in layers.iter().map(|l| &l.0[..]).chain([&out_bytes[..]]) {
            for c in bytes.chunks_exact(8) {
                acc = acc.wrapping_add(u64::from_le_bytes([
                    c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
                ]));
            }
        }
        std::hint::black_box(acc);
    });
    println!(
        "plain read of all weights ({:.1} MB), 1 thread: {stream:.2} ms ({:.1} GB/s)",
        total_bytes as f64 / 1e6,
        total_bytes as f64 / stream / 1e6
    );
    // Every SIMD kernel this CPU has, in the same run: their ratio is the figure to compare.
    let simd: Vec<Kernel> = [Kernel::Avx2, Kernel::Avx512Vnni]
        .into_iter()
        .filter(|k| k.is_available())
        .collect();
    if simd.is_empty() {
        println!("decode step per SIMD kernel: none on this CPU (scalar kernel only)");
    }
    for b in [1usize, 8] {
        let x576: Vec<f32> = (0..b * 1536).map(|_| r.gen_range(-1.0..1.0)).collect();
        let mut out = vec![0.0f32; b * 49152];
        let mut first = None;
        for &kernel in &simd {
            let step = time_ms(15, || {
                // A failing kernel would time as fast as it fails: it must not pass silently.
                for w in &views {
                    let k = w.cols();
                    matmul_with(
                        *w,
                        &x576[..b * k],
                        &mut out[..b * w.rows()],
                        &pool,
                        kernel,
                        &mut scratch,
                    )
                    .expect("matmul");
                }
                matmul_with(
                    out_w,
                    &x576[..b * 576],
                    &mut out,
                    &pool,
                    kernel,
                    &mut scratch,
                )
                .expect("matmul");
            });
            let base = *first.get_or_insert(step);
            println!(
                "decode step B={b} {kernel:?}: 30x7 Q4_1 + output Q8_0 = {step:.2} ms ({:.1} ms/token, {:.1} GB/s weights, ≈{:.0} tok/s per sequence, {:.2}x the first kernel)",
                step / b as f64,
                total_bytes as f64 / step / 1e6,
                1e3 / step,
                base / step
            );
        }
    }
    Ok(())
}
