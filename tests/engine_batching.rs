//! The real model through the batching engine: batch invariance across tenants, per-tenant KV
//! pools (exhaustion is a typed refusal that leaves other tenants alone), and cancellation
//! freeing blocks.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/engine_jobs.rs"]
mod engine_jobs;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloister::engine::{
    Backend, CpuBackend, EngineConfig, EngineError, EngineHandle, GenEvent, KvError, LlamaConfig,
    LlamaModel, SeqCache,
};
use cloister::metrics::Metrics;
use cloister::model::LoadedModel;
use cloister::sampling::argmax;
use common::fixture;
use engine_jobs::{collect, submit, try_submit, Job};

const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "Water boils at",
];

fn greedy_alone(model: &LlamaModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = SeqCache::default();
    let mut logits = model.forward(prompt, &mut cache).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&logits);
        out.push(t);
        logits = model.forward(&[t], &mut cache).unwrap();
    }
    out
}

/// Sequences join a running batch one per step (prefill mixed with others' decode steps) and
/// still produce exactly the tokens — and the logits, bit for bit — they produce alone.
#[test]
fn batched_forward_is_batch_invariant() {
    let loaded = fixture().open_demo_model();
    let model = &loaded.model;
    let n = 12;
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| loaded.tokenizer.encode_text(p).unwrap())
        .collect();
    let alone: Vec<Vec<u32>> = prompts.iter().map(|p| greedy_alone(model, p, n)).collect();

    let mut caches: Vec<SeqCache> = prompts.iter().map(|_| SeqCache::default()).collect();
    let mut inputs: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    for step in 0..n + prompts.len() {
        // Sequence `step` joins now with its prompt.
        if step < prompts.len() {
            inputs[step] = prompts[step].clone();
        }
        let active: Vec<usize> = (0..prompts.len())
            .filter(|&i| !inputs[i].is_empty() && got[i].len() < n)
            .collect();
        let mut items: Vec<(&[u32], &mut SeqCache)> = inputs
            .iter()
            .zip(caches.iter_mut())
            .enumerate()
            .filter(|(i, _)| active.contains(i))
            .map(|(_, (inp, c))| (inp.as_slice(), c))
            .collect();
        let logits = model.forward_batch(&mut items).unwrap();
        for (&i, l) in active.iter().zip(&logits) {
            let t = argmax(l);
            got[i].push(t);
            inputs[i] = vec![t];
        }
    }
    for (i, p) in PROMPTS.iter().enumerate() {
        assert_eq!(got[i], alone[i], "prompt {p:?} changed when batched");
    }

    // Bit-for-bit logits: one decode step alone vs. inside a batch of four.
    let mut solo = SeqCache::default();
    model.forward(&prompts[0], &mut solo).unwrap();
    let want = model.forward(&[alone[0][0]], &mut solo).unwrap();
    let mut caches: Vec<SeqCache> = prompts.iter().map(|_| SeqCache::default()).collect();
    for (p, c) in prompts.iter().zip(caches.iter_mut()) {
        model.forward(p, c).unwrap();
    }
    let toks: Vec<[u32; 1]> = alone.iter().map(|a| [a[0]]).collect();
    let mut items: Vec<(&[u32], &mut SeqCache)> = toks
        .iter()
        .zip(caches.iter_mut())
        .map(|(t, c)| (&t[..], c))
        .collect();
    items.rotate_left(2);
    let logits = model.forward_batch(&mut items).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&logits[2]), bits(&want));
}

/// Prefilling a long prompt in chunks (as the engine does) gives the logits of one-shot prefill.
#[test]
fn chunked_prefill_equals_one_shot() {
    let loaded = fixture().open_demo_model();
    let model = &loaded.model;
    let prompt = loaded
        .tokenizer
        .encode_text(&"Tell me about the sea and the ships on it. ".repeat(30))
        .unwrap();
    assert!(prompt.len() > 300);
    let mut one = SeqCache::default();
    let want = model.forward(&prompt, &mut one).unwrap();
    let mut chunked = SeqCache::default();
    let mut got = Vec::new();
    for c in prompt.chunks(256) {
        got = model.forward(c, &mut chunked).unwrap();
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want));
    assert_eq!(chunked.len(), one.len());
}

fn start(loaded: &LoadedModel, metrics: Arc<Metrics>) -> EngineHandle {
    EngineHandle::start_with(
        loaded.model.clone(),
        loaded.tokenizer.clone(),
        metrics,
        EngineConfig::new(64),
    )
    .unwrap()
}

#[test]
fn engine_outputs_do_not_depend_on_other_tenants() {
    let loaded = fixture().open_demo_model();
    let metrics = Arc::new(Metrics::new());
    let engine = start(&loaded, metrics.clone());
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| loaded.tokenizer.encode_text(p).unwrap())
        .collect();
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| collect(submit(&engine, "solo", p.clone(), 16, None)).unwrap())
        .collect();
    let jobs: Vec<Job> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| submit(&engine, &format!("tenant-{i}"), p.clone(), 16, None))
        .collect();
    let together: Vec<_> = jobs.into_iter().map(|j| collect(j).unwrap()).collect();
    assert_eq!(together, alone);
    assert_eq!(alone[0].1, 16);
}

#[test]
fn exhausted_pool_refuses_only_its_tenant_and_cancel_frees_blocks() {
    let loaded = fixture().open_demo_model();
    let metrics = Arc::new(Metrics::new());
    let engine = start(&loaded, metrics.clone());
    let block = loaded.model.kv_shape().block_bytes() as u64;
    let long: Vec<u32> = loaded
        .tokenizer
        .encode_text(&"The quick brown fox jumps over the lazy dog. ".repeat(4))
        .unwrap();
    assert!(long.len() > 16);
    // One block (16 positions) cannot hold this prompt: a typed refusal, nothing charged.
    let small = submit(&engine, "small", long.clone(), 8, Some(block));
    let other = submit(&engine, "other", long.clone(), 8, Some(8 * block));
    let usage = small.usage.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(collect(small), Err(EngineError::KvPoolExhausted));
    assert_eq!(usage.prompt_tokens + usage.completion_tokens, 0);
    assert_eq!(collect(other).unwrap().1, 8);

    // A sequence that runs out of blocks mid-generation also fails with the typed error.
    let short = loaded.tokenizer.encode_text("Hello").unwrap();
    let grows = submit(&engine, "small", short.clone(), 64, Some(block));
    assert_eq!(
        collect(grows).map(|_| ()),
        Err(EngineError::KvPoolExhausted)
    );

    // Cancellation: read one piece of text, hang up, and the tenant's blocks come back.
    let mut job = submit(&engine, "cancel", short, 400, None);
    loop {
        if let Some(GenEvent::Text(_)) = job.rx.blocking_recv() {
            break;
        }
    }
    let gauge = metrics
        .kv_blocks
        .get_or_create(&Metrics::tenant("cancel"))
        .clone();
    // The gauge is updated at the end of the step that produced the text.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge.get() == 0 {
        assert!(Instant::now() < deadline, "blocks in use never reported");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(job.rx);
    let usage = job.usage.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(usage.completion_tokens < 400);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge.get() != 0 {
        assert!(Instant::now() < deadline, "blocks not freed after cancel");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The CPU backend, except that its first forward pass waits for the test's word: while it
/// waits the engine thread takes nothing from its queue, so the test knows exactly what is
/// queued.
struct HeldFirstStep {
    inner: CpuBackend,
    entered: std::sync::mpsc::Sender<()>,
    go: Option<std::sync::mpsc::Receiver<()>>,
}

impl Backend for HeldFirstStep {
    type Cache = SeqCache;
    fn config(&self) -> &LlamaConfig {
        self.inner.config()
    }
    fn new_cache(&mut self, tenant: &Arc<str>, budget: u64) -> Result<SeqCache, String> {
        self.inner.new_cache(tenant, budget)
    }
    fn reserve(&mut self, cache: &mut SeqCache, positions: usize) -> Result<(), KvError> {
        self.inner.reserve(cache, positions)
    }
    fn forward_batch(
        &mut self,
        items: &mut [(&[u32], &mut SeqCache)],
    ) -> Result<Vec<Vec<f32>>, String> {
        if let Some(go) = self.go.take() {
            self.entered.send(()).unwrap();
            go.recv().unwrap();
        }
        self.inner.forward_batch(items)
    }
    fn release(&mut self, cache: SeqCache) {
        self.inner.release(cache)
    }
    fn blocks_in_use(&self) -> Vec<(Arc<str>, usize)> {
        self.inner.blocks_in_use()
    }
}

/// The engine's queue is bounded: past `queue_capacity` waiting requests a submission is
/// refused at once with `QueueFull` (the API's 429 `server_busy`), charged nothing, and the
/// requests already queued are still served.
#[test]
fn a_full_engine_queue_refuses_at_once_and_charges_nothing() {
    let loaded = fixture().open_demo_model();
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let backend = HeldFirstStep {
        inner: CpuBackend::new(loaded.model.clone()),
        entered: entered_tx,
        go: Some(go_rx),
    };
    let engine = EngineHandle::start_backend(
        backend,
        loaded.tokenizer.clone(),
        Arc::new(Metrics::new()),
        EngineConfig::new(2),
    )
    .unwrap();
    let prompt = loaded.tokenizer.encode_text("Water boils at").unwrap();
    let running = submit(&engine, "a", prompt.clone(), 4, None);
    entered.recv_timeout(Duration::from_secs(60)).unwrap();
    // The engine is inside its first step: two requests fill the queue, the third is refused.
    let queued: Vec<Job> = ["b", "c"]
        .iter()
        .map(|t| submit(&engine, t, prompt.clone(), 4, None))
        .collect();
    let Err((err, usage)) = try_submit(&engine, "d", prompt.clone(), 4, None) else {
        panic!("a third waiting request must be refused");
    };
    assert_eq!(err, EngineError::QueueFull);
    assert_eq!(usage.prompt_tokens + usage.completion_tokens, 0);

    go.send(()).unwrap();
    let first = collect(running).unwrap();
    assert_eq!(first.1, 4);
    for job in queued {
        assert_eq!(
            collect(job).unwrap(),
            first,
            "queued requests are served alike"
        );
    }
    // With the queue drained, the engine accepts work again.
    assert_eq!(
        collect(submit(&engine, "d", prompt, 4, None)).unwrap(),
        first
    );
}
