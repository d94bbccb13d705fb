//! The logits pipeline, token sampling and stop-sequence handling (pure: no I/O, seeded
//! randomness).
//!
//! Sampling is deterministic for a given seed, so a client that passes `seed` gets the same
//! completion back, and greedy decoding (`temperature == 0`) is exactly `argmax`.

mod fastexp;
pub mod noise;
mod pipeline;
mod sampler;
mod stop;

pub use noise::{NoiseKey, NoiseSecret};
pub use pipeline::{
    log_softmax, log_sum_exp, LogitsPipeline, LogprobSpec, PipelineParams, Step, TokenLogprob,
    WatermarkSpec,
};
pub use sampler::{argmax, Sampler, SamplingParams};
pub use stop::StopMatcher;
