//! The ledger contract, its value types, and UTC calendar periods.
//!
//! Lifecycle of one request: [`Ledger::reserve`] the worst case at admission (prompt +
//! `max_tokens`), then exactly one of [`Ledger::commit`] (the tokens actually used, ≤ the
//! reservation; the rest is refunded) or [`Ledger::release`] (nothing was generated). Quota
//! checks count outstanding reservations, so concurrent requests can never overshoot a quota:
//! what is admitted is, at worst, what is reserved.
//!
//! A reservation belongs to the day and month in which it was made: a request admitted at
//! 23:59:59 and finished after midnight is charged to the day it was checked against, so the
//! check and the charge always agree.

use std::fmt;

/// Seconds in a UTC day (Unix time has no leap seconds).
const DAY: u64 = 86_400;

/// A quota period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// UTC calendar day.
    Day,
    /// UTC calendar month.
    Month,
}

impl Period {
    /// Stable name (`day`, `month`), used in storage and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Proof of a successful [`Ledger::reserve`]: only a ledger can create one, and it names the
/// periods it will be charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    id: i64,
    tenant: String,
    request_id: String,
    tokens: u64,
    day_start: u64,
    month_start: u64,
}

impl Reservation {
    pub(crate) fn new(
        id: i64,
        tenant: String,
        request_id: String,
        tokens: u64,
        day_start: u64,
        month_start: u64,
    ) -> Self {
        Reservation {
            id,
            tenant,
            request_id,
            tokens,
            day_start,
            month_start,
        }
    }

    /// Ledger-assigned id (never reused).
    pub fn id(&self) -> i64 {
        self.id
    }
    /// Tenant charged.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
    /// Caller's request id (unique per tenant among open reservations).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }
    /// Tokens reserved: the most [`Ledger::commit`] may charge.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
    /// Start (Unix seconds) of the UTC day this reservation is charged to.
    pub fn day_start(&self) -> u64 {
        self.day_start
    }
    /// Start (Unix seconds) of the UTC month this reservation is charged to.
    pub fn month_start(&self) -> u64 {
        self.month_start
    }
}

/// Consumption in one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodUsage {
    /// Committed tokens.
    pub used: u64,
    /// Tokens held by open reservations.
    pub reserved: u64,
    /// The quota; `None` = unlimited.
    pub limit: Option<u64>,
    /// Period start, Unix seconds (UTC).
    pub period_start: u64,
    /// Start of the next period, Unix seconds: when `used` goes back to zero.
    pub resets_at: u64,
}

impl PeriodUsage {
    /// Tokens that can still be reserved (`None` = unlimited).
    pub fn remaining(&self) -> Option<u64> {
        self.limit
            .map(|l| l.saturating_sub(self.used.saturating_add(self.reserved)))
    }
}

/// A tenant's consumption in the current day and month (for `GET /v1/usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Current UTC day.
    pub day: PeriodUsage,
    /// Current UTC month.
    pub month: PeriodUsage,
}

/// Ledger failures. `QuotaExceeded` is the tenant's problem (HTTP 429 with `Retry-After` at
/// `reset_at`); the others are the caller's or the operator's.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Reserving would take the tenant past a quota.
    #[error(
        "{period} token quota of {limit} exceeded ({used} used or reserved, {requested} \
         requested); resets at {reset_at}"
    )]
    QuotaExceeded {
        /// The quota that refused (the month is reported when both are exhausted, since its
        /// reset is the one that matters).
        period: Period,
        /// The quota.
        limit: u64,
        /// Committed plus outstanding reservations in the period.
        used: u64,
        /// Tokens asked for.
        requested: u64,
        /// Unix seconds when the period ends.
        reset_at: u64,
    },
    /// The reservation is not open: already committed or released, reconciled after a
    /// restart, or never made by this ledger. Nothing was changed, so nothing is counted twice.
    #[error("reservation {id} is not open")]
    UnknownReservation {
        /// The reservation's id.
        id: i64,
    },
    /// `commit` asked to charge more than was reserved; nothing was changed.
    #[error("cannot commit {used} tokens against a reservation of {reserved}")]
    CommitExceedsReservation {
        /// Tokens reserved.
        reserved: u64,
        /// Tokens the caller tried to commit.
        used: u64,
    },
    /// The tenant already has an open reservation with this request id.
    #[error("request id {request_id:?} already has an open reservation")]
    DuplicateRequest {
        /// The request id.
        request_id: String,
    },
    /// A number too large for the store.
    #[error("token count {0} is too large")]
    TooLarge(u64),
    /// The database was written by a newer Cloister.
    #[error("ledger schema version {found} is newer than supported version {supported}")]
    UnsupportedSchema {
        /// `user_version` found.
        found: i64,
        /// Highest version this build understands.
        supported: i64,
    },
    /// The backing store failed (I/O, corruption, lock timeout).
    #[error("ledger storage error: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Durable per-tenant token accounting. Implementations must make each call one atomic,
/// durable transaction and must count outstanding reservations in quota checks.
pub trait Ledger: Send + Sync {
    /// Reserves `tokens` for `request_id`, failing with [`LedgerError::QuotaExceeded`] if the
    /// tenant's committed plus reserved tokens would exceed its day or month quota.
    fn reserve(
        &self,
        tenant: &str,
        request_id: &str,
        tokens: u64,
        now_unix: u64,
    ) -> Result<Reservation, LedgerError>;

    /// Charges `used_tokens` (≤ the reservation) and closes the reservation; the remainder is
    /// refunded.
    fn commit(&self, reservation: &Reservation, used_tokens: u64) -> Result<(), LedgerError>;

    /// Closes the reservation without charging anything.
    fn release(&self, reservation: &Reservation) -> Result<(), LedgerError>;

    /// The tenant's usage in the day and month containing `now_unix`.
    fn usage(&self, tenant: &str, now_unix: u64) -> Result<Usage, LedgerError>;

    /// Settles reservations left open by a previous process (crash before commit), returning
    /// how many were settled. Must never touch reservations of the running process.
    fn reconcile_dangling(&self) -> Result<u64, LedgerError>;
}

/// `[start, end)` of the UTC day containing `now_unix`.
pub fn day_bounds(now_unix: u64) -> (u64, u64) {
    let start = now_unix - now_unix % DAY;
    (start, start.saturating_add(DAY))
}

/// `[start, end)` of the UTC calendar month containing `now_unix`.
pub fn month_bounds(now_unix: u64) -> (u64, u64) {
    let days = i64::try_from(now_unix / DAY).unwrap_or(i64::MAX / 2);
    let (y, m, _) = civil_from_days(days);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let secs = |d: i64| u64::try_from(d).unwrap_or(0).saturating_mul(DAY);
    (
        secs(days_from_civil(y, m, 1)),
        secs(days_from_civil(ny, nm, 1)),
    )
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 — H. Hinnant's
/// `civil_from_days`. Hand-rolled because month boundaries are the only calendar math needed,
/// and a date crate would be a dependency for twenty lines.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Day count since 1970-01-01 of a proleptic Gregorian date — H. Hinnant's `days_from_civil`.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_round_trips_every_day_for_four_centuries() {
        let mut prev = civil_from_days(-1);
        for z in 0..146_097 {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
            // consecutive: either next day in the month, or the 1st of the next month
            if d != 1 {
                assert_eq!((y, m, d), (prev.0, prev.1, prev.2 + 1));
            }
            prev = (y, m, d);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn period_bounds_match_known_dates() {
        // 2024-02-29T12:34:56Z (leap day)
        let t = 1_709_210_096;
        assert_eq!(day_bounds(t), (1_709_164_800, 1_709_251_200));
        // 2024-02-01T00:00:00Z .. 2024-03-01T00:00:00Z
        assert_eq!(month_bounds(t), (1_706_745_600, 1_709_251_200));
        // 2023-12-31T23:59:59Z: December, next month is in the next year
        assert_eq!(month_bounds(1_704_067_199), (1_701_388_800, 1_704_067_200));
        // exact boundary belongs to the new period
        assert_eq!(month_bounds(1_704_067_200).0, 1_704_067_200);
        assert_eq!(day_bounds(1_704_067_200).0, 1_704_067_200);
    }
}
