//! A tenant's plan: the numbers that bound what one tenant may consume.
//!
//! Parsed from the operator's configuration with `deny_unknown_fields` (a misspelt limit must be
//! an error, not a silently unlimited tenant), then checked with [`Plan::validate`], which
//! reports every problem at once so the operator fixes the file in one pass.

use std::num::NonZeroU32;

use serde::Deserialize;

use super::confidence::ConfidencePolicy;
use super::extraction::ExtractionPolicy;

/// Limits for one tenant. Rates are enforced by [`RateLimits`](crate::limits::RateLimits),
/// quotas by the [`Ledger`](crate::store::Ledger), sizes at request validation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Sustained requests per second.
    pub requests_per_second: NonZeroU32,
    /// Requests that may arrive at once; defaults to `requests_per_second`.
    #[serde(default)]
    pub request_burst: Option<NonZeroU32>,
    /// Sustained tokens (prompt + completion) per minute.
    pub tokens_per_minute: NonZeroU32,
    /// Tokens that may be reserved at once; defaults to `tokens_per_minute`. Must hold the
    /// largest possible request (`max_context_tokens`), or such a request could never run.
    #[serde(default)]
    pub token_burst: Option<NonZeroU32>,
    /// Tokens per UTC calendar day; `None` = no daily quota.
    #[serde(default)]
    pub quota_tokens_per_day: Option<u64>,
    /// Tokens per UTC calendar month; `None` = no monthly quota.
    #[serde(default)]
    pub quota_tokens_per_month: Option<u64>,
    /// Largest prompt + completion, in tokens.
    pub max_context_tokens: u32,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: u32,
    /// Requests this tenant may have waiting in the admission queue.
    pub max_queued: u32,
    /// Bytes of KV cache this tenant's sequences may hold at once (the tenant's pool).
    #[serde(default)]
    pub kv_pool_bytes: Option<u64>,
    /// Model ids this tenant may use; empty means every served model.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// What the tenant may learn of the model's probabilities (logprobs, `logit_bias`).
    #[serde(default)]
    pub confidence: ConfidencePolicy,
    /// Watermark sampled completions (temperature > 0) with the server's active key.
    #[serde(default = "yes")]
    pub watermark: bool,
    /// Extraction-detection thresholds and the cool-down after an alarm.
    #[serde(default)]
    pub extraction: ExtractionPolicy,
    /// Input (prompt-injection) and output (PII) guards.
    #[serde(default)]
    pub guard: crate::guard::policy::GuardPolicy,
}

fn yes() -> bool {
    true
}

impl Plan {
    /// Whether this plan allows `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.allowed_models.is_empty() || self.allowed_models.iter().any(|m| m == model)
    }

    /// Requests that may arrive at once.
    pub fn request_burst(&self) -> NonZeroU32 {
        self.request_burst.unwrap_or(self.requests_per_second)
    }

    /// Tokens that may be reserved at once.
    pub fn token_burst(&self) -> NonZeroU32 {
        self.token_burst.unwrap_or(self.tokens_per_minute)
    }

    /// Checks the plan's internal consistency, returning every problem found.
    pub fn validate(&self) -> Result<(), PlanErrors> {
        let mut problems = Vec::new();
        if self.max_context_tokens == 0 {
            problems.push(PlanProblem::Zero("max_context_tokens"));
        }
        if self.max_tokens == 0 {
            problems.push(PlanProblem::Zero("max_tokens"));
        }
        if self.max_queued == 0 {
            problems.push(PlanProblem::Zero("max_queued"));
        }
        if self.quota_tokens_per_day == Some(0) {
            problems.push(PlanProblem::Zero("quota_tokens_per_day"));
        }
        if self.quota_tokens_per_month == Some(0) {
            problems.push(PlanProblem::Zero("quota_tokens_per_month"));
        }
        if self.max_tokens > self.max_context_tokens {
            problems.push(PlanProblem::MaxTokensAboveContext {
                max_tokens: self.max_tokens,
                max_context_tokens: self.max_context_tokens,
            });
        }
        let burst = self.token_burst().get();
        if self.max_context_tokens > burst {
            problems.push(PlanProblem::ContextAboveTokenBurst {
                max_context_tokens: self.max_context_tokens,
                token_burst: burst,
            });
        }
        if let (Some(day), Some(month)) = (self.quota_tokens_per_day, self.quota_tokens_per_month) {
            if day > month {
                problems.push(PlanProblem::DayQuotaAboveMonth { day, month });
            }
        }
        if self.kv_pool_bytes == Some(0) {
            problems.push(PlanProblem::Zero("kv_pool_bytes"));
        }
        if let Err(e) = self.guard.input.validate() {
            problems.push(PlanProblem::Guard(e.to_string()));
        }
        let extraction = self.extraction.problems();
        for (field, reason) in self.confidence.problems().into_iter().chain(extraction) {
            problems.push(PlanProblem::Confidence { field, reason });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PlanErrors(problems))
        }
    }
}

/// One inconsistency in a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanProblem {
    /// A limit that must be positive is zero (to suspend a tenant, remove it instead).
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// `max_tokens` cannot fit in the context window.
    #[error("max_tokens ({max_tokens}) exceeds max_context_tokens ({max_context_tokens})")]
    MaxTokensAboveContext {
        /// Configured `max_tokens`.
        max_tokens: u32,
        /// Configured `max_context_tokens`.
        max_context_tokens: u32,
    },
    /// The largest request would reserve more tokens than the bucket holds, so it could never
    /// be admitted.
    #[error(
        "max_context_tokens ({max_context_tokens}) exceeds the token burst ({token_burst}); \
         such requests could never be admitted"
    )]
    ContextAboveTokenBurst {
        /// Configured `max_context_tokens`.
        max_context_tokens: u32,
        /// Effective token burst.
        token_burst: u32,
    },
    /// A daily quota above the monthly one can never be reached.
    #[error("quota_tokens_per_day ({day}) exceeds quota_tokens_per_month ({month})")]
    DayQuotaAboveMonth {
        /// Daily quota.
        day: u64,
        /// Monthly quota.
        month: u64,
    },
    /// The input guard policy is invalid.
    #[error("guard.input: {0}")]
    Guard(String),
    /// A confidence-policy field is out of range.
    #[error("{field} {reason}")]
    Confidence {
        /// The field, e.g. `confidence.max_top_logprobs`.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Every problem found in a plan (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid plan: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct PlanErrors(pub Vec<PlanProblem>);

#[cfg(test)]
mod tests {
    use super::*;

    /// Deserializes a plan from `key=number` pairs through serde's own value deserializers
    /// (the real config format is TOML in the main crate; the serde attributes are what matter).
    fn plan(src: &str) -> Result<Plan, String> {
        use serde::de::value::{Error, MapDeserializer};
        let pairs: Vec<(String, u64)> = src
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().parse().unwrap()))
            .collect();
        let de: MapDeserializer<'_, _, Error> = MapDeserializer::new(pairs.into_iter());
        Plan::deserialize(de).map_err(|e| e.to_string())
    }

    fn good() -> Plan {
        Plan {
            requests_per_second: NonZeroU32::new(5).unwrap(),
            request_burst: None,
            tokens_per_minute: NonZeroU32::new(10_000).unwrap(),
            token_burst: None,
            quota_tokens_per_day: Some(100_000),
            quota_tokens_per_month: Some(1_000_000),
            max_context_tokens: 4096,
            max_tokens: 1024,
            max_queued: 8,
            kv_pool_bytes: None,
            allowed_models: Vec::new(),
            confidence: ConfidencePolicy::default(),
            watermark: true,
            extraction: ExtractionPolicy::default(),
            guard: Default::default(),
        }
    }

    #[test]
    fn good_plan_validates_and_bursts_default_to_rates() {
        let p = good();
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(p.request_burst().get(), 5);
        assert_eq!(p.token_burst().get(), 10_000);
    }

    #[test]
    fn validate_reports_every_problem_at_once() {
        let p = Plan {
            tokens_per_minute: NonZeroU32::new(100).unwrap(),
            quota_tokens_per_day: Some(2_000),
            quota_tokens_per_month: Some(1_000),
            max_context_tokens: 200,
            max_tokens: 300,
            max_queued: 0,
            ..good()
        };
        let Err(PlanErrors(problems)) = p.validate() else {
            panic!("plan should be invalid")
        };
        assert_eq!(
            problems,
            vec![
                PlanProblem::Zero("max_queued"),
                PlanProblem::MaxTokensAboveContext {
                    max_tokens: 300,
                    max_context_tokens: 200
                },
                PlanProblem::ContextAboveTokenBurst {
                    max_context_tokens: 200,
                    token_burst: 100
                },
                PlanProblem::DayQuotaAboveMonth {
                    day: 2_000,
                    month: 1_000
                },
            ]
        );
    }

    #[test]
    fn deserialize_rejects_unknown_fields_and_zero_rates() {
        let base = "requests_per_second=5,tokens_per_minute=1000,max_context_tokens=100,\
                    max_tokens=10,max_queued=1";
        let p = plan(base).unwrap();
        assert_eq!(p.quota_tokens_per_day, None);
        assert_eq!(p.validate(), Ok(()));
        let err = plan(&format!("{base},request_per_second=5")).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        let err = plan(&base.replace("requests_per_second=5", "requests_per_second=0"));
        assert!(err.is_err());
    }
}
