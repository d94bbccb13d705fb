//! The model runtime: one engine thread that owns the compute, fed through a bounded queue.
//!
//! The async side never runs model code: handlers submit a [`GenRequest`] with
//! [`EngineHandle::try_submit`] (a full queue is an immediate, typed refusal — never an unbounded
//! wait) and read [`GenEvent`]s from a bounded channel.
//!
//! The engine thread runs continuous batching: every step it starts at most one queued request
//! (chosen fairly across tenants by [`sched`]), then runs that prompt (in chunks of
//! `PREFILL_CHUNK` tokens) together with one decode token of every running sequence — any
//! tenants — as a single [`LlamaModel::forward_batch`], so each weight is read once per step.
//! Each sequence's KV cache is drawn from its tenant's [`TenantPool`]; a tenant whose pool is
//! exhausted gets [`EngineError::KvPoolExhausted`] and nobody else notices. Events are handed
//! over without blocking (a slow reader only pauses its own sequence), and a client that
//! disconnects is dropped at the next step, freeing its blocks.

mod backend;
mod expf;
mod kv;
pub(crate) mod layout;
mod llama;
pub mod qk;
pub mod sched;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokio::sync::mpsc;

pub use backend::{Backend, CpuBackend, KvCache};
pub use kv::{
    KvBlock, KvError, KvShape, SeqCache, TenantPool, BLOCK_POSITIONS, DEFAULT_KV_POOL_BYTES,
};
pub(crate) use llama::rope_tables;
pub use llama::{LlamaConfig, LlamaModel, ModelError, MAX_CONTEXT_LENGTH};

use crate::metrics::Metrics;
use crate::sampling::{LogitsPipeline, PipelineParams, SamplingParams, StopMatcher, TokenLogprob};
use crate::tokenizer::{ModelTokenizer, StreamDecoder};

/// Tokens a finished (or cancelled) sequence consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// How it ended; `None` when it was cancelled or failed.
    pub finish: Option<FinishReason>,
}

/// Called exactly once on the engine thread when a sequence ends for any reason (finished,
/// failed, or cancelled because the client went away), with what it consumed. Accounting hangs
/// off this, so usage is charged even when nobody is left to read the response. It must not
/// block: hand work off to the async runtime.
pub trait FinishHook: Send {
    fn finish(self: Box<Self>, usage: TokenUsage);
}

/// A validated generation job.
pub struct GenRequest {
    pub tenant: Arc<str>,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// `logit_bias`, penalties, watermark and logprobs (see [`crate::sampling::LogitsPipeline`]).
    pub pipeline: PipelineParams,
    pub stop: Vec<String>,
    /// The tenant plan's KV pool budget; `None` is the server default.
    pub kv_pool_bytes: Option<u64>,
    pub events: mpsc::Sender<GenEvent>,
    pub on_finish: Box<dyn FinishHook>,
}

impl std::fmt::Debug for GenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenRequest")
            .field("tenant", &self.tenant)
            .field("prompt_tokens", &self.prompt.len())
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

/// Why generation ended (OpenAI's `finish_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the engine reports for one request, in order: zero or more `Text` (and, when logprobs
/// were requested, one `Logprob` per generated token, sent before that token's text), then
/// `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    Text(String),
    Logprob(TokenLogprob),
    Done {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(EngineError),
}

#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum EngineError {
    #[error("the server is at capacity; retry shortly")]
    QueueFull,
    #[error("the engine has stopped")]
    Stopped,
    /// The tenant's KV cache pool (its plan's `kv_pool_bytes`) has no room for this sequence.
    #[error("your KV cache pool is exhausted; retry when your other requests finish")]
    KvPoolExhausted,
    /// The model failed on this request (details are logged, not returned).
    #[error("generation failed")]
    Failed,
}

/// Engine tuning.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// Requests waiting to start (the submit channel plus the fair queue).
    pub queue_capacity: usize,
    /// Sequences decoded together in one step.
    pub max_running: usize,
    /// KV budget for tenants whose plan has none.
    pub default_kv_pool_bytes: u64,
}

impl EngineConfig {
    pub fn new(queue_capacity: usize) -> Self {
        EngineConfig {
            queue_capacity: queue_capacity.max(1),
            max_running: 16,
            default_kv_pool_bytes: DEFAULT_KV_POOL_BYTES,
        }
    }
}

/// Cheap, cloneable handle to the engine thread.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    tx: mpsc::Sender<GenRequest>,
}

impl EngineHandle {
    /// Starts the engine thread with a queue of `queue_capacity` waiting requests.
    pub fn start(
        model: Arc<LlamaModel>,
        tokenizer: Arc<ModelTokenizer>,
        metrics: Arc<Metrics>,
        queue_capacity: usize,
    ) -> std::io::Result<Self> {
        Self::start_with(model, tokenizer, metrics, EngineConfig::new(queue_capacity))
    }

    /// Starts the engine thread with explicit tuning.
    pub fn start_with(
        model: Arc<LlamaModel>,
        tokenizer: Arc<ModelTokenizer>,
        metrics: Arc<Metrics>,
        cfg: EngineConfig,
    ) -> std::io::Result<Self> {
        Self::start_backend(CpuBackend::new(model), tokenizer, metrics, cfg)
    }

    /// Starts the engine thread on `backend` (the CPU engine, or the GPU forward pass).
    pub fn start_backend<B: Backend>(
        backend: B,
        tokenizer: Arc<ModelTokenizer>,
        metrics: Arc<Metrics>,
        cfg: EngineConfig,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        thread::Builder::new()
            .name("cloister-engine".into())
            .spawn(move || Engine::new(backend, tokenizer, metrics, cfg).run(rx))?;
        Ok(EngineHandle { tx })
    }

    /// Queues `req`, or refuses at once. A refused request consumed nothing: its finish hook
    /// is called with zero usage before this returns.
    pub fn try_submit(&self, req: GenRequest) -> Result<(), EngineError> {
        let (err, req) = match self.tx.try_send(req) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(r)) => (EngineError::QueueFull, r),
            Err(mpsc::error::TrySendError::Closed(r)) => (EngineError::Stopped, r),
        };
        req.on_finish.finish(TokenUsage {
            prompt_tokens: 0,
            completion_tokens: 0,
            finish: None,
        });
        Err(err)
    }
}

/// Events a sequence may hold back while its client is slow; beyond this it stops decoding
/// until the client catches up (only that sequence waits).
const MAX_PENDING_EVENTS: usize = 8;

/// Prompt tokens one sequence feeds per step: a long prompt is prefilled in chunks so it never
/// stalls the other sequences' decoding for more than one chunk's time.
const PREFILL_CHUNK: usize = 256;

/// How long the engine naps when every running sequence is waiting on its client.
const IDLE_NAP: Duration = Duration::from_millis(1);

struct NoHook;

impl FinishHook for NoHook {
    fn finish(self: Box<Self>, _usage: TokenUsage) {}
}

/// A running sequence and its generation state.
struct Seq<C: KvCache> {
    tenant: Arc<str>,
    events: mpsc::Sender<GenEvent>,
    on_finish: Option<Box<dyn FinishHook>>,
    /// `None` once handed back to the backend.
    cache: Option<C>,
    pipeline: LogitsPipeline,
    stop: StopMatcher,
    decoder: StreamDecoder,
    /// Tokens to run at the next step: the prompt, then the last sampled token.
    input: Vec<u32>,
    max_tokens: usize,
    prompt_tokens: usize,
    completion_tokens: usize,
    pending: VecDeque<GenEvent>,
    /// `Done` or `Failed` is queued; nothing more to compute.
    done: bool,
    /// The client went away.
    gone: bool,
    /// The prompt has run.
    prefilled: bool,
    kv_gauge: prometheus_client::metrics::gauge::Gauge,
    kv_counted: usize,
    /// How it ended, once it has.
    finished: Option<FinishReason>,
}

impl<C: KvCache> Seq<C> {
    fn cache_len(&self) -> usize {
        self.cache.as_ref().map_or(0, KvCache::positions)
    }

    fn usage(&self) -> TokenUsage {
        TokenUsage {
            // A prompt that never ran consumed nothing.
            prompt_tokens: if self.prefilled {
                self.prompt_tokens
            } else {
                0
            },
            completion_tokens: self.completion_tokens,
            finish: self.finished,
        }
    }

    fn settle(&mut self) {
        if let Some(hook) = self.on_finish.take() {
            let usage = self.usage();
            hook.finish(usage);
        }
    }

    fn fail(&mut self, err: EngineError) {
        self.pending.push_back(GenEvent::Failed(err));
        self.done = true;
        self.input.clear();
        self.settle();
    }

    /// Hands queued events to the client without blocking.
    fn flush(&mut self) {
        while !self.pending.is_empty() {
            match self.events.try_reserve() {
                Ok(permit) => {
                    if let Some(ev) = self.pending.pop_front() {
                        permit.send(ev);
                    }
                }
                Err(mpsc::error::TrySendError::Full(())) => return,
                Err(mpsc::error::TrySendError::Closed(())) => {
                    self.gone = true;
                    return;
                }
            }
        }
        if self.events.is_closed() {
            self.gone = true;
        }
    }

    /// Whether this sequence is finished with (or abandoned) and can be dropped.
    fn retired(&self) -> bool {
        self.gone || (self.done && self.pending.is_empty())
    }

    /// Whether this sequence takes part in the next step. One without a cache (its tenant got
    /// no pool) never does, so every sequence in a batch has one.
    fn ready(&self) -> bool {
        self.cache.is_some()
            && !self.done
            && !self.gone
            && !self.input.is_empty()
            && self.pending.len() < MAX_PENDING_EVENTS
    }

    /// Consumes the logits of the last step: samples, streams text, decides whether to go on.
    fn on_logits(&mut self, logits: &mut [f32], ctx: usize, eos: Option<u32>) {
        if self.completion_tokens >= self.max_tokens || self.cache_len() >= ctx {
            return self.finish(FinishReason::Length, false);
        }
        let sampled = self.pipeline.step(logits);
        let next = sampled.token;
        if Some(next) == eos {
            return self.finish(FinishReason::Stop, false);
        }
        if let Some(lp) = sampled.logprob {
            // Sent before the token's text, as the API layer expects.
            self.pending.push_back(GenEvent::Logprob(lp));
        }
        self.completion_tokens += 1;
        if let Some(text) = self.decoder.push(next) {
            let step = self.stop.push(&text);
            if !step.emit.is_empty() {
                self.pending.push_back(GenEvent::Text(step.emit));
            }
            if step.stopped {
                return self.finish(FinishReason::Stop, true);
            }
        }
        if self.completion_tokens < self.max_tokens && self.cache_len() < ctx {
            self.input.push(next);
        } else {
            self.finish(FinishReason::Length, false);
        }
    }

    fn finish(&mut self, reason: FinishReason, stop_string_hit: bool) {
        if !stop_string_hit {
            // Release what the detokenizer and the stop matcher held back.
            let tail = self.decoder.finish();
            let step = self.stop.push(&tail);
            let mut rest = step.emit;
            if !step.stopped {
                rest.push_str(&self.stop.finish());
            }
            if !rest.is_empty() {
                self.pending.push_back(GenEvent::Text(rest));
            }
        }
        self.pending.push_back(GenEvent::Done {
            reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        });
        self.finished = Some(reason);
        self.done = true;
        self.settle();
    }
}

impl<C: KvCache> Drop for Seq<C> {
    fn drop(&mut self) {
        // Cancelled (client gone) or stopped engine: charge what was used. A cache still held
        // here drops right after this; its blocks go back to the tenant's pool and are cleared
        // before anyone draws them again.
        self.settle();
        self.kv_gauge.dec_by(self.kv_counted as i64);
    }
}

/// The engine thread's state.
struct Engine<B: Backend> {
    backend: B,
    tok: Arc<ModelTokenizer>,
    metrics: Arc<Metrics>,
    cfg: EngineConfig,
    queue: sched::FairQueue<GenRequest>,
    running: Vec<Seq<B::Cache>>,
}

impl<B: Backend> Engine<B> {
    fn new(backend: B, tok: Arc<ModelTokenizer>, metrics: Arc<Metrics>, cfg: EngineConfig) -> Self {
        Engine {
            backend,
            tok,
            metrics,
            cfg,
            queue: sched::FairQueue::default(),
            running: Vec::new(),
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<GenRequest>) {
        let mut open = true;
        loop {
            if self.running.is_empty() && self.queue.is_empty() {
                if !open {
                    return;
                }
                match rx.blocking_recv() {
                    Some(r) => self.queue.push(r.tenant.clone(), r),
                    None => return,
                }
            }
            while open && self.queue.len() < self.cfg.queue_capacity {
                match rx.try_recv() {
                    Ok(r) => self.queue.push(r.tenant.clone(), r),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            if !self.step() {
                thread::sleep(IDLE_NAP);
            }
        }
    }

    /// One scheduling step; returns whether any model work was done.
    fn step(&mut self) -> bool {
        // Requests whose client left before they started consumed nothing.
        for req in self.queue.remove_where(|r| r.events.is_closed()) {
            req.on_finish.finish(TokenUsage {
                prompt_tokens: 0,
                completion_tokens: 0,
                finish: None,
            });
        }
        for s in &mut self.running {
            s.flush();
        }
        // Finished or abandoned sequences free their blocks here, at once.
        let (retired, running) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|s| s.retired());
        self.running = running;
        for mut s in retired {
            if let Some(cache) = s.cache.take() {
                self.backend.release(cache);
            }
        }
        self.admit();

        for s in self.running.iter_mut().filter(|s| s.ready()) {
            let need = s.cache_len() + s.input.len().min(PREFILL_CHUNK);
            let Some(cache) = s.cache.as_mut() else {
                continue;
            };
            match self.backend.reserve(cache, need) {
                Ok(()) => {}
                Err(e @ KvError::Exhausted { .. }) => {
                    tracing::info!(tenant = %s.tenant, error = %e, "KV pool exhausted");
                    s.fail(EngineError::KvPoolExhausted);
                }
                Err(e) => {
                    tracing::warn!(tenant = %s.tenant, error = %e, "KV reservation failed");
                    s.fail(EngineError::Failed);
                }
            }
        }
        let mut batch: Vec<&mut Seq<B::Cache>> =
            self.running.iter_mut().filter(|s| s.ready()).collect();
        if batch.is_empty() {
            self.update_block_gauges();
            return false;
        }
        let result = {
            let mut items: Vec<(&[u32], &mut B::Cache)> = batch
                .iter_mut()
                .filter_map(|s| {
                    let Seq { input, cache, .. } = &mut **s;
                    let n = input.len().min(PREFILL_CHUNK);
                    Some((&input[..n], cache.as_mut()?))
                })
                .collect();
            self.backend.forward_batch(&mut items)
        };
        let ctx = self.backend.config().context_length;
        let eos = self.tok.eos_id();
        match result {
            Ok(mut logits) => {
                for (s, l) in batch.iter_mut().zip(logits.iter_mut()) {
                    let n = s.input.len().min(PREFILL_CHUNK);
                    s.kv_gauge.inc_by(n as i64);
                    s.kv_counted += n;
                    s.prefilled = true;
                    s.input.drain(..n);
                    if s.input.is_empty() {
                        s.on_logits(l, ctx, eos);
                        s.flush();
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "generation failed");
                for s in batch {
                    s.fail(EngineError::Failed);
                    s.flush();
                }
            }
        }
        self.update_block_gauges();
        true
    }

    /// Starts at most one queued request, chosen fairly.
    fn admit(&mut self) {
        let mut counts: HashMap<Arc<str>, usize> = HashMap::new();
        for s in &self.running {
            *counts.entry(s.tenant.clone()).or_default() += 1;
        }
        let Some((tenant, mut req)) =
            sched::next_admission(&mut self.queue, &counts, self.cfg.max_running)
        else {
            return;
        };
        let budget = req.kv_pool_bytes.unwrap_or(self.cfg.default_kv_pool_bytes);
        let cache = match self.backend.new_cache(&tenant, budget) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "no KV pool for the tenant");
                None
            }
        };
        let on_finish = std::mem::replace(&mut req.on_finish, Box::new(NoHook));
        let mut seq = Seq {
            kv_gauge: self
                .metrics
                .kv_tokens
                .get_or_create(&Metrics::tenant(&tenant))
                .clone(),
            tenant,
            events: req.events,
            on_finish: Some(on_finish),
            cache,
            pipeline: LogitsPipeline::new(req.sampling, req.pipeline.clone(), &req.prompt),
            stop: StopMatcher::new(req.stop),
            decoder: self.tok.stream_decoder(),
            prompt_tokens: req.prompt.len(),
            input: req.prompt,
            max_tokens: req.max_tokens,
            completion_tokens: 0,
            pending: VecDeque::new(),
            done: false,
            gone: false,
            prefilled: false,
            kv_counted: 0,
            finished: None,
        };
        let ctx = self.backend.config().context_length;
        if seq.cache.is_none() || seq.input.is_empty() || seq.input.len() > ctx {
            seq.fail(EngineError::Failed);
        }
        seq.flush();
        self.running.push(seq);
    }

    fn update_block_gauges(&self) {
        for (tenant, blocks) in self.backend.blocks_in_use() {
            self.metrics
                .kv_blocks
                .get_or_create(&Metrics::tenant(&tenant))
                .set(blocks as i64);
        }
    }
}
