//! Tenant plans and rate limits (DESIGN.md §5).
//!
//! Two layers decide whether a request may run, and they answer different questions:
//!
//! - [`RateLimits`] (this module) smooths *bursts*: requests per second and tokens per minute,
//!   enforced in memory with GCRA (`governor`). Losing this state on restart is harmless — at
//!   worst a tenant gets one fresh burst.
//! - The quota [`Ledger`](crate::store::Ledger) caps *volume*: tokens per UTC day and month,
//!   durably, because quota is money and must survive restarts and `kill -9`.
//!
//! Token limits reserve the worst case (prompt + `max_tokens`) at admission and refund the
//! unused part at completion, in both layers.
//!
//! Everything here is free of I/O; time comes from an injected [`governor::clock::Clock`], so
//! tests drive it with [`governor::clock::FakeRelativeClock`].

mod confidence;
mod extraction;
mod plan;
mod rate;
#[cfg(test)]
mod tests;

pub use confidence::{
    ConfidencePolicy, LogprobBudget, LOGIT_BIAS_HARD_MAX_ABS, LOGIT_BIAS_HARD_MAX_ENTRIES,
    TOP_LOGPROBS_HARD_MAX,
};
pub use extraction::{ExtractionMonitor, ExtractionPolicy, Observation, Signal, Signature};
pub use plan::{Plan, PlanErrors, PlanProblem};
pub use rate::{LimitKind, RateDenied, RateError, RateInfo, RateLimits};
