//! Submitting greedy jobs to an [`EngineHandle`] and collecting what they produce (shared by the
//! engine tests on the CPU and on the GPU forward pass).
#![allow(dead_code)]

use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

use cloister::engine::{
    Backend, EngineConfig, EngineError, EngineHandle, FinishHook, GenEvent, GenRequest, TokenUsage,
};
use cloister::metrics::Metrics;
use cloister::sampling::SamplingParams;
use cloister::tokenizer::ModelTokenizer;
use tokio::sync::mpsc;

struct Usage(std_mpsc::Sender<TokenUsage>);

impl FinishHook for Usage {
    fn finish(self: Box<Self>, usage: TokenUsage) {
        let _ = self.0.send(usage);
    }
}

/// Starts an engine thread on `backend` with fresh metrics. Tests that compare the CPU and GPU
/// engines start both here, so only the backend differs between them.
pub fn start_engine<B: Backend>(backend: B, tokenizer: &Arc<ModelTokenizer>) -> EngineHandle {
    EngineHandle::start_backend(
        backend,
        tokenizer.clone(),
        Arc::new(Metrics::new()),
        EngineConfig::new(8),
    )
    .expect("start the engine thread")
}

pub struct Job {
    pub rx: mpsc::Receiver<GenEvent>,
    pub usage: std_mpsc::Receiver<TokenUsage>,
}

pub fn submit(
    engine: &EngineHandle,
    tenant: &str,
    prompt: Vec<u32>,
    max_tokens: usize,
    kv_pool_bytes: Option<u64>,
) -> Job {
    try_submit(engine, tenant, prompt, max_tokens, kv_pool_bytes).expect("engine accepts the job")
}

/// Submits a greedy job, or returns the engine's refusal with the usage it reported for it.
pub fn try_submit(
    engine: &EngineHandle,
    tenant: &str,
    prompt: Vec<u32>,
    max_tokens: usize,
    kv_pool_bytes: Option<u64>,
) -> Result<Job, (EngineError, TokenUsage)> {
    let (tx, rx) = mpsc::channel(64);
    let (utx, urx) = std_mpsc::channel();
    engine
        .try_submit(GenRequest {
            tenant: Arc::from(tenant),
            prompt,
            max_tokens,
            sampling: SamplingParams {
                temperature: 0.0,
                top_p: 1.0,
                seed: 0,
            },
            stop: Vec::new(),
            pipeline: Default::default(),
            kv_pool_bytes,
            events: tx,
            on_finish: Box::new(Usage(utx)),
        })
        .map_err(|e| {
            let usage = urx
                .try_recv()
                .expect("a refused job's usage is reported at once");
            (e, usage)
        })?;
    Ok(Job { rx, usage: urx })
}

/// Collects a job's text, or the error it failed with.
pub fn collect(mut job: Job) -> Result<(String, usize), EngineError> {
    let mut text = String::new();
    while let Some(ev) = job.rx.blocking_recv() {
        match ev {
            GenEvent::Text(t) => text.push_str(&t),
            GenEvent::Logprob(_) => {}
            GenEvent::Done {
                completion_tokens, ..
            } => {
                job.usage
                    .recv_timeout(Duration::from_secs(30))
                    .expect("usage reported");
                return Ok((text, completion_tokens));
            }
            GenEvent::Failed(e) => return Err(e),
        }
    }
    panic!("events ended without Done");
}

/// Submits every prompt at once (prompt `i` as tenant `tenant-{i % tenants}`), greedy, up to
/// `max_tokens` each, and returns each one's text and completion tokens in order.
pub fn run_concurrently(
    engine: &EngineHandle,
    tokenizer: &cloister::tokenizer::ModelTokenizer,
    prompts: &[&str],
    tenants: usize,
    max_tokens: usize,
) -> Vec<(String, usize)> {
    let jobs: Vec<Job> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ids = tokenizer.encode_text(p).expect("encode");
            submit(
                engine,
                &format!("tenant-{}", i % tenants),
                ids,
                max_tokens,
                None,
            )
        })
        .collect();
    jobs.into_iter()
        .map(|j| collect(j).expect("completion"))
        .collect()
}
