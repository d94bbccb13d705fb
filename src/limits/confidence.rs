//! The confidence policy: what a tenant may learn about the model's probabilities.
//!
//! Why: logprobs are the raw material of model inversion and extraction. Carlini et al. (2024)
//! read a production model's hidden size from ~`hidden` full logprob vectors, obtained cheaply by
//! combining `top_logprobs` with `logit_bias`; Morris et al. (2023) rebuild prompts from
//! next-token probabilities. So logprobs are off unless the plan allows them, `top_logprobs` is
//! capped, returned values are rounded, `logit_bias` + logprobs is for trusted tenants only,
//! and logprob-bearing requests have a daily budget.
//!
//! Pure: the budget counter takes the day number from its caller. It lives in memory, so a
//! restart resets it (at worst one extra day's budget); the durable ledger is for token quota.

use std::collections::HashMap;

use serde::Deserialize;

/// Hard maximum of `top_logprobs` (the OpenAI API's own limit).
pub const TOP_LOGPROBS_HARD_MAX: u8 = 20;
/// Hard maximum of `logit_bias` entries.
pub const LOGIT_BIAS_HARD_MAX_ENTRIES: u32 = 300;
/// Hard maximum of `|bias|` (OpenAI: -100..=100).
pub const LOGIT_BIAS_HARD_MAX_ABS: f32 = 100.0;

/// Per-plan confidence policy (`[plans.<name>.confidence]`); every field has a safe default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfidencePolicy {
    /// Whether `logprobs` may be requested at all.
    pub logprobs: bool,
    /// Largest `top_logprobs` (chat) / `logprobs: N` (completions); at most 20.
    pub max_top_logprobs: u8,
    /// Returned logprobs are rounded to a multiple of this many nats; 0 = exact.
    pub rounding: f32,
    /// Scale (nats) of keyed Laplace noise added to returned logprobs before rounding; 0 = none.
    /// The noise is a function of the prompt, so repeating a request cannot average it away.
    pub noise: f32,
    /// Trusted tenants may combine `logit_bias` with logprobs (the Carlini et al. route).
    pub trusted: bool,
    /// Most `logit_bias` entries per request (≤ 300).
    pub max_logit_bias_entries: u32,
    /// Largest `|bias|` (≤ 100).
    pub max_logit_bias: f32,
    /// Logprob-bearing requests per UTC day; `None` = unlimited.
    pub logprob_requests_per_day: Option<u64>,
}

impl Default for ConfidencePolicy {
    fn default() -> Self {
        ConfidencePolicy {
            logprobs: false,
            max_top_logprobs: 5,
            rounding: 0.1,
            noise: 0.0,
            trusted: false,
            max_logit_bias_entries: LOGIT_BIAS_HARD_MAX_ENTRIES,
            max_logit_bias: LOGIT_BIAS_HARD_MAX_ABS,
            logprob_requests_per_day: Some(1000),
        }
    }
}

impl ConfidencePolicy {
    /// Problems with this policy, as `(field, reason)` pairs.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if self.max_top_logprobs > TOP_LOGPROBS_HARD_MAX {
            out.push(("confidence.max_top_logprobs", "must be at most 20"));
        }
        if !(self.rounding >= 0.0 && self.rounding <= 10.0) {
            out.push(("confidence.rounding", "must be between 0 and 10 nats"));
        }
        if !(self.noise >= 0.0 && self.noise <= 10.0) {
            out.push(("confidence.noise", "must be between 0 and 10 nats"));
        }
        if self.max_logit_bias_entries > LOGIT_BIAS_HARD_MAX_ENTRIES {
            out.push(("confidence.max_logit_bias_entries", "must be at most 300"));
        }
        if !(self.max_logit_bias >= 0.0 && self.max_logit_bias <= LOGIT_BIAS_HARD_MAX_ABS) {
            out.push(("confidence.max_logit_bias", "must be between 0 and 100"));
        }
        if self.logprob_requests_per_day == Some(0) {
            out.push((
                "confidence.logprob_requests_per_day",
                "must be greater than zero (set logprobs = false instead)",
            ));
        }
        out
    }

    /// The rounding step for the pipeline (`None` = exact).
    pub fn rounding_step(&self) -> Option<f32> {
        (self.rounding > 0.0).then_some(self.rounding)
    }

    /// The noise scale for the pipeline (`None` = no noise).
    pub fn noise_scale(&self) -> Option<f32> {
        (self.noise > 0.0).then_some(self.noise)
    }
}

/// Per-tenant daily counter of logprob-bearing requests (in memory).
#[derive(Debug, Default)]
pub struct LogprobBudget {
    used: HashMap<String, (u64, u64)>,
}

impl LogprobBudget {
    /// Counts one request of `tenant` on UTC day `day` if `limit` allows it; `false` = refused
    /// (and not counted).
    pub fn try_take(&mut self, tenant: &str, day: u64, limit: Option<u64>) -> bool {
        let Some(limit) = limit else { return true };
        let entry = self.used.entry(tenant.to_owned()).or_insert((day, 0));
        if entry.0 != day {
            *entry = (day, 0);
        }
        if entry.1 >= limit {
            return false;
        }
        entry.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_restrictive_and_valid() {
        let p = ConfidencePolicy::default();
        assert!(!p.logprobs && !p.trusted);
        assert_eq!(p.max_top_logprobs, 5);
        assert!(p.problems().is_empty());
        assert_eq!(p.rounding_step(), Some(0.1));
    }

    #[test]
    fn out_of_range_fields_are_all_reported() {
        let p = ConfidencePolicy {
            max_top_logprobs: 21,
            rounding: f32::NAN,
            max_logit_bias_entries: 301,
            max_logit_bias: 101.0,
            logprob_requests_per_day: Some(0),
            ..Default::default()
        };
        assert_eq!(p.problems().len(), 5);
    }

    #[test]
    fn budget_counts_per_tenant_and_resets_daily() {
        let mut b = LogprobBudget::default();
        assert!(b.try_take("a", 1, Some(2)));
        assert!(b.try_take("a", 1, Some(2)));
        assert!(!b.try_take("a", 1, Some(2)));
        assert!(b.try_take("b", 1, Some(2)));
        assert!(b.try_take("a", 2, Some(2)));
        assert!(b.try_take("a", 2, None));
    }
}
