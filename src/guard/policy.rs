//! Guard policies and the version string every decision carries.
//!
//! Policies are plain data (serde) so tenants can be configured from files; the numbers that
//! decide a verdict live here and nowhere else, which is what makes [`POLICY_VERSION`]
//! meaningful in an audit log.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::pii::PiiKind;

/// Version of the guard rules (patterns, weights, validators, defaults).
///
/// Recorded in every decision so that an audit entry can be replayed against the exact rule set
/// that produced it. Bump it whenever a pattern, weight, validator or default changes.
pub const POLICY_VERSION: &str = "guard-2026-11-1";

/// What the input guard does with a prompt that scored at or above the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    /// Let the prompt through unmarked.
    Allow,
    /// Let the prompt through, but record the decision (audit + metric).
    Flag,
    /// Refuse the request.
    Block,
}

/// What the output guard does with PII found in generated text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputAction {
    /// Do not scan at all (the guard is off for this tenant).
    Allow,
    /// Scan and report matches, but emit the text unchanged.
    Flag,
    /// Replace every match with `[REDACTED:<KIND>]`.
    Redact,
}

/// Per-tenant input guard policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputPolicy {
    /// Action when the injection score reaches [`InputPolicy::threshold`].
    pub action_on_injection: GuardAction,
    /// Score in `(0, 1]` at or above which the action applies; see [`DEFAULT_THRESHOLD`].
    pub threshold: f32,
    /// Maximum prompt length in Unicode scalar values (not bytes, not tokens).
    pub max_chars: usize,
    /// Reject C0/C1 control characters other than tab, line feed and carriage return.
    pub forbid_control_chars: bool,
}

/// Default injection threshold.
///
/// Every strong pattern (explicit override, role-tag forgery, prompt exfiltration, encoded
/// payload) weighs at least 0.6 and trips it alone; weak signals (a bare "developer mode", a
/// mention of `<|im_start|>`, "you are now", one zero-width character inside a word) weigh
/// 0.3-0.45 and only trip it together. Benign prompts that touch these topics therefore score
/// low-but-nonzero and pass.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

impl Default for InputPolicy {
    fn default() -> Self {
        Self {
            action_on_injection: GuardAction::Flag,
            threshold: DEFAULT_THRESHOLD,
            max_chars: 32_768,
            forbid_control_chars: true,
        }
    }
}

impl InputPolicy {
    /// Checks the invariants serde cannot express. Call once when loading a tenant config.
    pub fn validate(&self) -> Result<(), PolicyError> {
        // `contains` is false for NaN, which would otherwise silently disable the guard.
        if !(f32::MIN_POSITIVE..=1.0).contains(&self.threshold) {
            return Err(PolicyError::Threshold(self.threshold));
        }
        if self.max_chars == 0 {
            return Err(PolicyError::ZeroMaxChars);
        }
        Ok(())
    }
}

/// Per-tenant output guard policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputPolicy {
    /// What to do with matches.
    pub action: OutputAction,
    /// Which PII kinds to look for; an empty set scans nothing.
    pub kinds: BTreeSet<PiiKind>,
}

impl Default for OutputPolicy {
    /// Fail closed: redact every kind the scanner knows.
    fn default() -> Self {
        Self {
            action: OutputAction::Redact,
            kinds: PiiKind::ALL.into_iter().collect(),
        }
    }
}

/// A plan's guard policies (`[plans.<name>.guard.input]`, `[plans.<name>.guard.output]`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardPolicy {
    pub input: InputPolicy,
    pub output: OutputPolicy,
}

/// A policy that cannot be applied as written.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PolicyError {
    /// The threshold is NaN or outside `(0, 1]`.
    #[error("injection threshold must be in (0, 1], got {0}")]
    Threshold(f32),
    /// `max_chars` is zero, which would reject every prompt.
    #[error("max_chars must be positive")]
    ZeroMaxChars,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policies_are_valid_and_fail_closed() {
        assert_eq!(InputPolicy::default().validate(), Ok(()));
        let out = OutputPolicy::default();
        assert_eq!(out.action, OutputAction::Redact);
        assert_eq!(out.kinds.len(), PiiKind::ALL.len());
    }

    #[test]
    fn bad_thresholds_are_rejected() {
        for t in [0.0, -0.1, 1.01, f32::NAN, f32::INFINITY] {
            let p = InputPolicy {
                threshold: t,
                ..InputPolicy::default()
            };
            assert!(p.validate().is_err(), "{t}");
        }
        let p = InputPolicy {
            max_chars: 0,
            ..InputPolicy::default()
        };
        assert_eq!(p.validate(), Err(PolicyError::ZeroMaxChars));
    }
}
