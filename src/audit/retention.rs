//! Retention policy: how long audit logs must be kept.
//!
//! EU AI Act Art. 19(1) requires providers of high-risk systems to keep automatically generated
//! logs for at least six months; we round that to 183 days and refuse anything shorter, so a
//! typo in the config cannot silently shorten retention. (Art. 18's ten years applies to
//! technical documentation, not to these logs.)
//!
//! Only the policy and its check live here; deletion is not implemented. Rotation and archival
//! must keep the chain intact: a new file starts where the previous one ended, its first record
//! having `seq = previous next_seq` and `prev_hash = previous head_hash`
//! ([`ChainStart::At`](super::verify::ChainStart::At)), and the previous file ends with a
//! checkpoint (the writer's `close`). A file may be deleted only when all of it is older than
//! `min_days`, and then only together with every earlier file.

use serde::{Deserialize, Serialize};

/// Minimum retention in days (six months, rounded up).
pub const MIN_RETENTION_DAYS: u32 = 183;

/// A validated retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRetention", into = "RawRetention")]
pub struct RetentionPolicy {
    min_days: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    min_days: u32,
}

/// Retention shorter than the law allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit retention of {0} days is below the minimum of {MIN_RETENTION_DAYS} (EU AI Act Art. 19: six months)")]
pub struct RetentionError(pub u32);

impl RetentionPolicy {
    /// Accepts `min_days >= 183`.
    pub fn new(min_days: u32) -> Result<Self, RetentionError> {
        if min_days < MIN_RETENTION_DAYS {
            return Err(RetentionError(min_days));
        }
        Ok(Self { min_days })
    }

    /// Days to keep.
    pub fn min_days(&self) -> u32 {
        self.min_days
    }

    /// Whether a file whose newest record is from `newest_unix_ms` may be deleted at `now_unix_ms`.
    pub fn may_delete(&self, newest_unix_ms: u64, now_unix_ms: u64) -> bool {
        let keep_ms = u64::from(self.min_days) * 86_400_000;
        now_unix_ms.saturating_sub(newest_unix_ms) > keep_ms
    }
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            min_days: MIN_RETENTION_DAYS,
        }
    }
}

impl TryFrom<RawRetention> for RetentionPolicy {
    type Error = RetentionError;
    fn try_from(r: RawRetention) -> Result<Self, RetentionError> {
        Self::new(r.min_days)
    }
}

impl From<RetentionPolicy> for RawRetention {
    fn from(p: RetentionPolicy) -> Self {
        Self {
            min_days: p.min_days,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_less_than_six_months() {
        assert_eq!(RetentionPolicy::new(182), Err(RetentionError(182)));
        assert_eq!(RetentionPolicy::new(183).unwrap().min_days(), 183);
        assert_eq!(RetentionPolicy::default().min_days(), 183);
        assert!(serde_json::from_str::<RetentionPolicy>(r#"{"min_days":30}"#).is_err());
        let p: RetentionPolicy = serde_json::from_str(r#"{"min_days":3650}"#).unwrap();
        assert_eq!(p.min_days(), 3650);
        let day = 86_400_000u64;
        assert!(!p.may_delete(0, 3650 * day));
        assert!(p.may_delete(0, 3651 * day));
    }
}
