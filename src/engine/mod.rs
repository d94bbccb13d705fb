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

use crate::sampling::{Sampler, SamplingParams, StopMatcher};
use crate::tokenizer::ModelTokenizer;

/// A validated generation job.
#[derive(Debug)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub events: mpsc::Sender<GenEvent>,
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

/// What the engine reports for one request, in order: zero or more `Text`, then `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    Text(String),
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
        queue_capacity: usize,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        thread::Builder::new()
            .name("cloister-engine".into())
            .spawn(move || run(model, tokenizer, rx))?;
        Ok(EngineHandle { tx })
    }

    pub fn try_submit(&self, req: GenRequest) -> Result<(), EngineError> {
        self.tx.try_send(req).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EngineError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => EngineError::Stopped,
        })
    }
}

fn run(model: Arc<LlamaModel>, tokenizer: Arc<ModelTokenizer>, mut rx: mpsc::Receiver<GenRequest>) {
    while let Some(req) = rx.blocking_recv() {
        let events = req.events.clone();
        if let Err(e) = generate(&model, &tokenizer, req) {
            tracing::warn!(error = %e, "generation failed");
            let _ = events.blocking_send(GenEvent::Failed("generation failed".into()));
        }
    }
}

/// Runs one sequence to completion, streaming text out.
fn generate(model: &LlamaModel, tok: &ModelTokenizer, req: GenRequest) -> Result<(), ModelError> {
    let mut cache = SeqCache::default();
    let mut sampler = Sampler::new(req.sampling);
    let mut stop = StopMatcher::new(req.stop);
    let mut decoder = tok.stream_decoder();
    let ctx = model.config().context_length;
    let eos = tok.eos_id();
    let prompt_tokens = req.prompt.len();
    let mut logits = model.forward(&req.prompt, &mut cache)?;
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
        let next = sampler.sample(&logits);
        if Some(next) == eos {
            break FinishReason::Stop;
        }
        completion_tokens += 1;
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
            logits = model.forward(&[next], &mut cache)?;
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
