//! Model-extraction detection per tenant (DESIGN.md §7).
//!
//! Extraction attacks look unlike normal traffic in two cheap-to-measure ways: many
//! logprob-bearing requests (Carlini et al. 2024 need ~`hidden` full logprob vectors), and
//! streams of near-identical prompts that differ in one place (probing one position with many
//! `logit_bias` settings, or sweeping a template). So, per tenant, in a sliding window:
//!
//! - count logprob-bearing requests;
//! - count prompts that are near-duplicates of an earlier prompt in the window, by MinHash
//!   (character 5-gram shingles, [`MINHASH_LEN`] hash functions) with estimated Jaccard ≥ the
//!   policy's similarity.
//!
//! Crossing a threshold raises an alarm (the caller turns it into a metric and a log event,
//! never with prompt text) and throttles the tenant's logprob requests for a cool-down.
//!
//! Pure: time is passed in (seconds), prompts are reduced to signatures at once and never kept;
//! memory per tenant is bounded by [`MAX_TRACKED`].

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;

/// Hash functions per MinHash signature.
pub const MINHASH_LEN: usize = 32;
/// Most requests remembered per tenant (older ones leave the window early).
pub const MAX_TRACKED: usize = 512;
const SHINGLE: usize = 5;

/// Per-plan thresholds (`[plans.<name>.extraction]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractionPolicy {
    /// Sliding window, seconds.
    pub window_secs: u64,
    /// Logprob-bearing requests in the window that raise an alarm.
    pub max_logprob_requests: u32,
    /// Near-duplicate prompts in the window that raise an alarm.
    pub max_near_duplicates: u32,
    /// Estimated Jaccard similarity from which two prompts are near-duplicates.
    pub similarity: f32,
    /// How long logprob requests are refused after an alarm, seconds.
    pub cooldown_secs: u64,
}

impl ExtractionPolicy {
    /// Problems with this policy, as `(field, reason)` pairs.
    pub fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if self.window_secs == 0 {
            out.push(("extraction.window_secs", "must be greater than zero"));
        }
        if self.max_logprob_requests == 0 || self.max_near_duplicates == 0 {
            out.push((
                "extraction.max_logprob_requests/max_near_duplicates",
                "must be greater than zero",
            ));
        }
        if !(self.similarity > 0.0 && self.similarity <= 1.0) {
            out.push(("extraction.similarity", "must be in (0, 1]"));
        }
        out
    }
}

impl Default for ExtractionPolicy {
    fn default() -> Self {
        ExtractionPolicy {
            window_secs: 3600,
            max_logprob_requests: 300,
            max_near_duplicates: 100,
            similarity: 0.8,
            cooldown_secs: 900,
        }
    }
}

/// Which signal crossed its threshold (also a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    LogprobVolume,
    NearDuplicates,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::LogprobVolume => "logprob_volume",
            Signal::NearDuplicates => "near_duplicates",
        }
    }
}

/// A MinHash signature of a prompt's character 5-gram shingles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature([u64; MINHASH_LEN]);

impl Signature {
    pub fn of(text: &str) -> Self {
        let chars: Vec<char> = text.chars().collect();
        let mut sig = [u64::MAX; MINHASH_LEN];
        let mut shingle = |h: u64| {
            for (i, slot) in sig.iter_mut().enumerate() {
                *slot = (*slot).min(mix(h ^ SEEDS[i]));
            }
        };
        if chars.len() < SHINGLE {
            shingle(fnv(&chars));
        } else {
            for w in chars.windows(SHINGLE) {
                shingle(fnv(w));
            }
        }
        Signature(sig)
    }

    /// Estimated Jaccard similarity of the two shingle sets.
    pub fn similarity(&self, other: &Signature) -> f32 {
        let same = self.0.iter().zip(&other.0).filter(|(a, b)| a == b).count();
        same as f32 / MINHASH_LEN as f32
    }
}

/// Fixed seeds (any distinct odd constants; they need not be secret).
const SEEDS: [u64; MINHASH_LEN] = {
    let mut s = [0u64; MINHASH_LEN];
    let mut i = 0;
    while i < MINHASH_LEN {
        s[i] = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        i += 1;
    }
    s
};

fn fnv(chars: &[char]) -> u64 {
    chars.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Seen {
    at: u64,
    logprobs: bool,
    near_duplicate: bool,
    sig: Signature,
}

#[derive(Default)]
struct TenantState {
    seen: VecDeque<Seen>,
    throttled_until: u64,
}

/// What one observation found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// Signals that crossed their threshold with this request.
    pub alarms: Vec<Signal>,
}

/// Sliding-window counters for every tenant.
#[derive(Default)]
pub struct ExtractionMonitor {
    tenants: HashMap<String, TenantState>,
}

impl std::fmt::Debug for ExtractionMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtractionMonitor")
            .field("tenants", &self.tenants.len())
            .finish_non_exhaustive()
    }
}

impl ExtractionMonitor {
    /// Whether `tenant`'s logprob requests are refused at `now` (cool-down after an alarm).
    pub fn throttled(&self, tenant: &str, now: u64) -> bool {
        self.tenants
            .get(tenant)
            .is_some_and(|t| now < t.throttled_until)
    }

    /// Records one request; an alarm starts (or extends) the tenant's cool-down.
    pub fn observe(
        &mut self,
        tenant: &str,
        now: u64,
        prompt: &str,
        logprobs: bool,
        policy: &ExtractionPolicy,
    ) -> Observation {
        let state = self.tenants.entry(tenant.to_owned()).or_default();
        let start = now.saturating_sub(policy.window_secs);
        while state.seen.front().is_some_and(|s| s.at < start) || state.seen.len() >= MAX_TRACKED {
            state.seen.pop_front();
        }
        let sig = Signature::of(prompt);
        let near_duplicate = state
            .seen
            .iter()
            .any(|s| s.sig.similarity(&sig) >= policy.similarity);
        state.seen.push_back(Seen {
            at: now,
            logprobs,
            near_duplicate,
            sig,
        });
        let logprob_count = state.seen.iter().filter(|s| s.logprobs).count() as u64;
        let dup_count = state.seen.iter().filter(|s| s.near_duplicate).count() as u64;
        let mut alarms = Vec::new();
        // Alarm when the count first exceeds the threshold, and again at every further
        // threshold's worth (not on every request past it: one alarm per crossing).
        let crossed = |count: u64, max: u32, this: bool| {
            let max = u64::from(max.max(1));
            this && count > max && (count - max - 1).is_multiple_of(max)
        };
        if crossed(logprob_count, policy.max_logprob_requests, logprobs) {
            alarms.push(Signal::LogprobVolume);
        }
        if crossed(dup_count, policy.max_near_duplicates, near_duplicate) {
            alarms.push(Signal::NearDuplicates);
        }
        if !alarms.is_empty() {
            state.throttled_until = now.saturating_add(policy.cooldown_secs);
        }
        Observation { alarms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ExtractionPolicy {
        ExtractionPolicy {
            window_secs: 100,
            max_logprob_requests: 3,
            max_near_duplicates: 2,
            similarity: 0.8,
            cooldown_secs: 50,
        }
    }

    #[test]
    fn minhash_separates_near_duplicates_from_different_prompts() {
        let a = Signature::of("Translate the following sentence into French: the cat sleeps.");
        let b = Signature::of("Translate the following sentence into French: the cat sleeps!");
        let c = Signature::of("Write a haiku about autumn leaves falling on a quiet pond.");
        assert!(a.similarity(&b) >= 0.8, "{}", a.similarity(&b));
        assert!(a.similarity(&c) < 0.3, "{}", a.similarity(&c));
        assert_eq!(a.similarity(&a), 1.0);
    }

    #[test]
    fn logprob_volume_alarms_once_per_crossing_and_throttles() {
        let mut m = ExtractionMonitor::default();
        let p = policy();
        let prompts = [
            "alpha beta gamma",
            "delta epsilon",
            "zeta eta theta",
            "iota kappa",
        ];
        for (i, prompt) in prompts.iter().enumerate().take(3) {
            assert!(m.observe("t", i as u64, prompt, true, &p).alarms.is_empty());
        }
        assert!(!m.throttled("t", 3));
        let o = m.observe("t", 3, prompts[3], true, &p);
        assert_eq!(o.alarms, vec![Signal::LogprobVolume]);
        assert!(m.throttled("t", 10));
        assert!(!m.throttled("other", 10));
        assert!(!m.throttled("t", 53));
        // Outside the window the count starts over.
        assert!(m.observe("t", 500, "lambda mu", true, &p).alarms.is_empty());
    }

    #[test]
    fn near_duplicate_stream_alarms() {
        let mut m = ExtractionMonitor::default();
        let p = policy();
        let base = "You are a helpful assistant. Complete the following sentence exactly as it is \
                    written, without adding anything else, and answer in English only: the \
                    secret code word of the day is";
        let mut alarms = Vec::new();
        for i in 0..4 {
            let o = m.observe("t", i, &format!("{base} {i}"), false, &p);
            alarms.extend(o.alarms);
        }
        assert_eq!(alarms, vec![Signal::NearDuplicates]);
        // Unrelated prompts never alarm.
        let mut m = ExtractionMonitor::default();
        for (i, s) in [
            "one fish two fish",
            "red fish blue fish",
            "green eggs and ham",
        ]
        .iter()
        .enumerate()
        {
            assert!(m.observe("t", i as u64, s, false, &p).alarms.is_empty());
        }
    }
}
