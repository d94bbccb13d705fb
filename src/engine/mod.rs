//! The model runtime: one engine thread that owns the compute, fed through a bounded queue.
//!
//! The async side never runs model code: handlers submit a [`GenRequest`] with
//! [`EngineHandle::try_submit`] (a full queue is an immediate, typed refusal — never an unbounded
//! wait) and read [`GenEvent`]s from a bounded channel. A client that disconnects drops its
//! receiver; the engine sees the closed channel at the next token and frees the sequence at once.

mod llama;

use std::sync::Arc;
use std::thread;

use tokio::sync::mpsc;

pub use llama::{LlamaConfig, LlamaModel, ModelError, SeqCache};

use crate::metrics::Metrics;
use crate::sampling::{LogitsPipeline, PipelineParams, SamplingParams, StopMatcher, TokenLogprob};
use crate::tokenizer::ModelTokenizer;

/// Tokens a finished (or cancelled) sequence consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
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
    Failed(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("the server is at capacity; retry shortly")]
    QueueFull,
    #[error("the engine has stopped")]
    Stopped,
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
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        thread::Builder::new()
            .name("cloister-engine".into())
            .spawn(move || run(model, tokenizer, metrics, rx))?;
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
        });
        Err(err)
    }
}

fn run(
    model: Arc<LlamaModel>,
    tokenizer: Arc<ModelTokenizer>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<GenRequest>,
) {
    while let Some(mut req) = rx.blocking_recv() {
        let events = req.events.clone();
        let on_finish = std::mem::replace(&mut req.on_finish, Box::new(NoHook));
        let kv = metrics
            .kv_tokens
            .get_or_create(&Metrics::tenant(&req.tenant))
            .clone();
        let mut cache = SeqCache::default();
        let mut usage = TokenUsage {
            prompt_tokens: req.prompt.len(),
            completion_tokens: 0,
        };
        if let Err(e) = generate(&model, &tokenizer, req, &mut cache, &mut usage, &kv) {
            tracing::warn!(error = %e, "generation failed");
            let _ = events.blocking_send(GenEvent::Failed("generation failed".into()));
        }
        kv.dec_by(cache.len() as i64);
        drop(cache);
        on_finish.finish(usage);
    }
}

struct NoHook;

impl FinishHook for NoHook {
    fn finish(self: Box<Self>, _usage: TokenUsage) {}
}

/// Runs one sequence to completion, streaming text out. `usage` is kept current so the caller
/// can charge a sequence that fails or is cancelled half-way.
fn generate(
    model: &LlamaModel,
    tok: &ModelTokenizer,
    req: GenRequest,
    cache: &mut SeqCache,
    usage: &mut TokenUsage,
    kv: &prometheus_client::metrics::gauge::Gauge,
) -> Result<(), ModelError> {
    let mut pipeline = LogitsPipeline::new(req.sampling, req.pipeline.clone(), &req.prompt);
    let mut stop = StopMatcher::new(req.stop);
    let mut decoder = tok.stream_decoder();
    let ctx = model.config().context_length;
    let eos = tok.eos_id();
    let prompt_tokens = req.prompt.len();
    let mut logits = model.forward(&req.prompt, cache)?;
    kv.inc_by(prompt_tokens as i64);
    let mut completion_tokens = 0usize;
    let send = |ev: GenEvent| req.events.blocking_send(ev).is_ok();
    let mut stop_string_hit = false;
    let reason = loop {
        if req.events.is_closed() {
            // Client went away: drop the sequence (and its cache) now.
            return Ok(());
        }
        if completion_tokens >= req.max_tokens || cache.len() >= ctx {
            break FinishReason::Length;
        }
        let sampled = pipeline.step(&mut logits);
        let next = sampled.token;
        if Some(next) == eos {
            break FinishReason::Stop;
        }
        if let Some(lp) = sampled.logprob {
            if !send(GenEvent::Logprob(lp)) {
                return Ok(());
            }
        }
        completion_tokens += 1;
        usage.completion_tokens = completion_tokens;
        if let Some(text) = decoder.push(next) {
            let step = stop.push(&text);
            if !step.emit.is_empty() && !send(GenEvent::Text(step.emit)) {
                return Ok(());
            }
            if step.stopped {
                stop_string_hit = true;
                break FinishReason::Stop;
            }
        }
        if completion_tokens < req.max_tokens && cache.len() < ctx {
            logits = model.forward(&[next], cache)?;
            kv.inc();
        }
    };
    if !stop_string_hit {
        // Release what the detokenizer and the stop matcher held back.
        let tail = decoder.finish();
        let step = stop.push(&tail);
        let mut rest = step.emit;
        if !step.stopped {
            rest.push_str(&stop.finish());
        }
        if !rest.is_empty() && !send(GenEvent::Text(rest)) {
            return Ok(());
        }
    }
    send(GenEvent::Done {
        reason,
        prompt_tokens,
        completion_tokens,
    });
    Ok(())
}
