//! Token sampling and stop-sequence handling (pure: no I/O, seeded randomness).
//!
//! Sampling is deterministic for a given seed, so a client that passes `seed` gets the same
//! completion back, and greedy decoding (`temperature == 0`) is exactly `argmax`.

mod sampler;
mod stop;

pub use sampler::{argmax, Sampler, SamplingParams};
pub use stop::StopMatcher;
