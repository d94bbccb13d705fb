//! In-process engine speed on the demo model (no HTTP): single-stream decode tokens/s, aggregate
//! decode tokens/s with 8 sequences batched, prefill tokens/s, and the ms of one decode step.
//!
//! Run: `cargo bench --bench decode` (optional env `THREADS`). Numbers are the best of a few
//! rounds: the build machines are shared.

#[path = "support/mod.rs"]
mod support;

use std::time::Instant;

use cloister::engine::{LlamaModel, SeqCache};
use cloister::sampling::argmax;
use cloister::securemem::LockPolicy;

fn load(threads: usize) -> LlamaModel {
    support::plaintext::load_plaintext(&support::demo_gguf(), LockPolicy::BestEffort, Some(threads))
        .1
}

/// Decodes `steps` tokens for `batch` sequences (prompt `prompt_len` each); returns
/// (prefill seconds for one prompt, decode seconds for all steps).
fn run(model: &LlamaModel, batch: usize, prompt_len: usize, steps: usize) -> (f64, f64) {
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| 100 + i * 7).collect();
    let mut caches: Vec<SeqCache> = (0..batch).map(|_| SeqCache::default()).collect();
    let mut next = Vec::with_capacity(batch);
    let mut prefill = f64::INFINITY;
    for c in caches.iter_mut() {
        let t = Instant::now();
        let l = model.forward(&prompt, c).expect("prefill");
        prefill = prefill.min(t.elapsed().as_secs_f64());
        next.push([argmax(&l)]);
    }
    let t = Instant::now();
    for _ in 0..steps {
        let mut items: Vec<(&[u32], &mut SeqCache)> = next
            .iter()
            .zip(caches.iter_mut())
            .map(|(n, c)| (&n[..], c))
            .collect();
        let logits = model.forward_batch(&mut items).expect("decode");
        for (n, l) in next.iter_mut().zip(&logits) {
            *n = [argmax(l)];
        }
    }
    (prefill, t.elapsed().as_secs_f64())
}

fn main() {
    let threads = std::env::var("THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let model = load(threads);
    println!("decode bench: SmolLM2-135M Q4_1, {threads} threads, {model:?}");
    let rounds = 3;
    let steps = 64;
    let mut single = f64::INFINITY;
    let mut batched = f64::INFINITY;
    let mut prefill = f64::INFINITY;
    for _ in 0..rounds {
        let (p, d) = run(&model, 1, 128, steps);
        prefill = prefill.min(p);
        single = single.min(d);
        let (_, d8) = run(&model, 8, 32, steps);
        batched = batched.min(d8);
    }
    println!(
        "single stream : {:7.1} tokens/s  ({:.2} ms/step, 64 steps after a 128-token prompt)",
        steps as f64 / single,
        single * 1e3 / steps as f64
    );
    println!(
        "8 sequences   : {:7.1} tokens/s aggregate  ({:.2} ms/step)",
        (8 * steps) as f64 / batched,
        batched * 1e3 / steps as f64
    );
    println!(
        "prefill       : {:7.1} tokens/s  (128-token prompt in {:.1} ms)",
        128.0 / prefill,
        prefill * 1e3
    );
}
