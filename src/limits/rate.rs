//! Per-tenant GCRA rate limiting: requests per second and tokens per minute.
//!
//! Each tenant has its own plan, hence its own quotas, so instead of one keyed limiter (which
//! shares one quota across keys) every tenant gets two *direct* `governor` limiters in a map.
//! The clock is a type parameter so tests run on [`FakeRelativeClock`](governor::clock::FakeRelativeClock)
//! and production on [`DefaultClock`].
//!
//! # Token reservations and refunds
//!
//! Admission reserves the worst case (prompt + `max_tokens`) with [`RateLimits::reserve_tokens`];
//! completion gives back the unused part with [`RateLimits::refund_tokens`]. GCRA cannot return
//! cells, so a refund becomes a per-tenant **credit** that the next reservation spends before
//! asking `governor`. A naive credit would let a tenant exceed its burst (refund a minute-old
//! reservation whose cells have already replenished, then spend credit *and* a full bucket), so
//! the credit is always clamped to the bucket's current *deficit* — the cells still missing from
//! a full bucket. That is exactly what moving GCRA's theoretical arrival time back would do:
//! a refund can only refill what is empty, and credit evaporates as the bucket refills on its own.
//!
//! The deficit is known because this module is the only user of the token limiter: after every
//! `governor` decision we record `(instant, deficit)` from its state snapshot and let it decay
//! by one cell per emission interval. The decay is rounded so that the clamp can only
//! *under*-credit (by at most one cell), never push the bucket above its burst.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};

use crate::limits::Plan;

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// Which limit a [`RateInfo`] or [`RateDenied`] is about (selects the `-requests` or `-tokens`
/// suffix of the `x-ratelimit-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Requests per second.
    Requests,
    /// Tokens per minute.
    Tokens,
}

impl LimitKind {
    /// Header suffix: `requests` or `tokens`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
        }
    }
}

/// State of one limit after a successful check, for `x-ratelimit-{limit,remaining,reset}-*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    /// Which limit.
    pub kind: LimitKind,
    /// Burst capacity (requests or tokens that may be used at once).
    pub limit: u32,
    /// Capacity left right now.
    pub remaining: u32,
    /// Time until the bucket is full again (rounded up to a whole emission interval).
    pub reset: Duration,
}

/// A refusal: the bucket does not hold enough right now. Carries everything for `Retry-After`
/// and the `x-ratelimit-*` headers of the 429 response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} rate limit reached; retry after {retry_after:?}", kind.as_str())]
pub struct RateDenied {
    /// Which limit refused.
    pub kind: LimitKind,
    /// Earliest time after which the same request can succeed (exact when no refund credit is
    /// outstanding; otherwise it may be one emission interval early, see module docs).
    pub retry_after: Duration,
    /// Burst capacity.
    pub limit: u32,
    /// Capacity left right now (less than what was asked for).
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// Why a rate check did not admit the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// Not now; try again after [`RateDenied::retry_after`] (HTTP 429).
    #[error(transparent)]
    Denied(RateDenied),
    /// More than the bucket can ever hold: waiting will not help (HTTP 400/413, no
    /// `Retry-After`). Plan validation keeps `max_context_tokens` within the burst, so this
    /// only happens for requests that are invalid anyway.
    #[error("{requested} {} exceed the burst capacity of {capacity}", kind.as_str())]
    InsufficientCapacity {
        /// Which limit.
        kind: LimitKind,
        /// Amount asked for.
        requested: u32,
        /// Burst capacity.
        capacity: u32,
    },
    /// No plan registered for this tenant (a configuration bug: fail closed).
    #[error("no rate plan for tenant {0:?}")]
    UnknownTenant(String),
}

/// Parameters that define a tenant's limiters; a plan change that keeps them keeps the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RateParams {
    requests_per_second: NonZeroU32,
    request_burst: NonZeroU32,
    tokens_per_minute: NonZeroU32,
    token_burst: NonZeroU32,
}

impl RateParams {
    fn of(plan: &Plan) -> Self {
        RateParams {
            requests_per_second: plan.requests_per_second,
            request_burst: plan.request_burst(),
            tokens_per_minute: plan.tokens_per_minute,
            token_burst: plan.token_burst(),
        }
    }
}

/// Refund credit and the last observed deficit of the token bucket.
#[derive(Debug)]
struct TokenCredit<I> {
    /// Refunded cells not yet spent; always ≤ the deficit at `last`.
    credit: u32,
    /// Last `governor` observation: when, and how many cells the bucket was missing
    /// (`limit - remaining`, i.e. the deficit rounded up). `None`: never used, bucket full.
    last: Option<(I, u32)>,
}

struct TenantLimits<C: Clock> {
    params: RateParams,
    requests: Limiter<C>,
    request_interval: Duration,
    tokens: Limiter<C>,
    token_interval: Duration,
    /// Held for the whole of a token reservation or refund so that credit, `governor` and the
    /// recorded deficit change together.
    credit: Mutex<TokenCredit<C::Instant>>,
}

impl<C: Clock + Clone> TenantLimits<C> {
    fn new(params: RateParams, clock: &C) -> Self {
        let rq = Quota::per_second(params.requests_per_second).allow_burst(params.request_burst);
        let tq = Quota::per_minute(params.tokens_per_minute).allow_burst(params.token_burst);
        TenantLimits {
            params,
            requests: RateLimiter::direct_with_clock(rq, clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            request_interval: rq.replenish_interval(),
            tokens: RateLimiter::direct_with_clock(tq, clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            token_interval: tq.replenish_interval(),
            credit: Mutex::new(TokenCredit {
                credit: 0,
                last: None,
            }),
        }
    }
}

/// Number of whole emission intervals in `d`, rounded up or down.
fn intervals(d: Duration, interval: Duration, round_up: bool) -> u64 {
    let i = interval.as_nanos().max(1);
    let n = d.as_nanos();
    let q = if round_up { n.div_ceil(i) } else { n / i };
    u64::try_from(q).unwrap_or(u64::MAX)
}

/// Deficit (missing cells) at `now` given the last observation, which decays one cell per
/// interval. `round_up_decay = true` gives a value that never exceeds the true (rounded-up)
/// deficit — used to clamp credit; `false` gives one that is never below it — used to report
/// `remaining` conservatively.
fn deficit_at<I: Reference>(
    last: &Option<(I, u32)>,
    now: I,
    interval: Duration,
    round_up_decay: bool,
) -> u32 {
    match last {
        None => 0,
        Some((at, deficit)) => {
            let elapsed: Duration = now.duration_since(*at).into();
            let decayed = intervals(elapsed, interval, round_up_decay);
            u64::from(*deficit).saturating_sub(decayed) as u32
        }
    }
}

/// The most refund credit the bucket can hold at `now`: one cell below the observed deficit.
/// Governor reports whole remaining cells, so the recorded deficit can exceed the true
/// (fractional) one by up to a cell; crediting all of it let one token more through than GCRA
/// allows (found by the property test `refunds_never_exceed_the_gcra_envelope`).
fn credit_cap<I: Reference>(last: &Option<(I, u32)>, now: I, interval: Duration) -> u32 {
    deficit_at(last, now, interval, true).saturating_sub(1)
}

/// Per-tenant request and token rate limits.
pub struct RateLimits<C: Clock = DefaultClock> {
    clock: C,
    tenants: RwLock<HashMap<String, Arc<TenantLimits<C>>>>,
}

impl<C: Clock> std::fmt::Debug for RateLimits<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self
            .tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("RateLimits").field("tenants", &n).finish()
    }
}

impl RateLimits<DefaultClock> {
    /// Rate limits on the real monotonic clock.
    pub fn new() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl Default for RateLimits<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    /// Rate limits on an injected clock (tests: `FakeRelativeClock`).
    pub fn with_clock(clock: C) -> Self {
        RateLimits {
            clock,
            tenants: RwLock::new(HashMap::new()),
        }
    }

    /// Registers or updates a tenant's plan. If the rate parameters are unchanged the existing
    /// buckets are kept, so a configuration reload does not hand every tenant a fresh burst.
    pub fn set_plan(&self, tenant: &str, plan: &Plan) {
        let params = RateParams::of(plan);
        let mut map = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        if map.get(tenant).is_some_and(|t| t.params == params) {
            return;
        }
        map.insert(
            tenant.to_owned(),
            Arc::new(TenantLimits::new(params, &self.clock)),
        );
    }

    /// Forgets a tenant; its requests fail with [`RateError::UnknownTenant`] afterwards.
    pub fn remove_tenant(&self, tenant: &str) {
        self.tenants
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tenant);
    }

    fn tenant(&self, tenant: &str) -> Result<Arc<TenantLimits<C>>, RateError> {
        self.tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .cloned()
            .ok_or_else(|| RateError::UnknownTenant(tenant.to_owned()))
    }

    /// Counts one request against the tenant's requests-per-second limit.
    pub fn check_request(&self, tenant: &str) -> Result<RateInfo, RateError> {
        let t = self.tenant(tenant)?;
        let limit = t.params.request_burst.get();
        match t.requests.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Ok(RateInfo {
                    kind: LimitKind::Requests,
                    limit,
                    remaining,
                    reset: t
                        .request_interval
                        .saturating_mul(limit - remaining.min(limit)),
                })
            }
            Err(not_until) => Err(RateError::Denied(denied(
                LimitKind::Requests,
                &not_until,
                self.clock.now(),
                1,
                limit,
                t.request_interval,
                0,
            ))),
        }
    }

    /// Reserves `n` tokens (prompt + `max_tokens`) against the tokens-per-minute limit,
    /// spending refund credit first. `n == 0` reserves nothing and reports the current state.
    pub fn reserve_tokens(&self, tenant: &str, n: u32) -> Result<RateInfo, RateError> {
        let t = self.tenant(tenant)?;
        let limit = t.params.token_burst.get();
        if n > limit {
            return Err(RateError::InsufficientCapacity {
                kind: LimitKind::Tokens,
                requested: n,
                capacity: limit,
            });
        }
        let mut st = t.credit.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.clock.now();
        st.credit = st.credit.min(credit_cap(&st.last, now, t.token_interval));
        let from_credit = st.credit.min(n);
        let Some(rest) = NonZeroU32::new(n - from_credit) else {
            // Entirely covered by credit (or n == 0): governor's state is untouched.
            st.credit -= from_credit;
            let deficit = deficit_at(&st.last, now, t.token_interval, false);
            return Ok(token_info(limit, deficit, st.credit, t.token_interval));
        };
        match t.tokens.check_n(rest) {
            Ok(Ok(snapshot)) => {
                st.credit -= from_credit;
                let deficit = limit - snapshot.remaining_burst_capacity().min(limit);
                // Read the clock after governor did, so the recorded deficit is never
                // attributed to an earlier instant than it was measured at.
                st.last = Some((self.clock.now(), deficit));
                Ok(token_info(limit, deficit, st.credit, t.token_interval))
            }
            Ok(Err(not_until)) => Err(RateError::Denied(denied(
                LimitKind::Tokens,
                &not_until,
                self.clock.now(),
                rest.get(),
                limit,
                t.token_interval,
                st.credit,
            ))),
            Err(governor::InsufficientCapacity(capacity)) => Err(RateError::InsufficientCapacity {
                kind: LimitKind::Tokens,
                requested: n,
                capacity,
            }),
        }
    }

    /// Gives back `n` reserved-but-unused tokens. The credit is clamped to what the bucket is
    /// currently missing (see module docs), so refunding more than was reserved, or refunding
    /// after the bucket refilled by itself, cannot raise capacity above the burst.
    pub fn refund_tokens(&self, tenant: &str, n: u32) -> Result<RateInfo, RateError> {
        let t = self.tenant(tenant)?;
        let limit = t.params.token_burst.get();
        let mut st = t.credit.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.clock.now();
        st.credit = st
            .credit
            .saturating_add(n)
            .min(credit_cap(&st.last, now, t.token_interval));
        let deficit = deficit_at(&st.last, now, t.token_interval, false);
        Ok(token_info(limit, deficit, st.credit, t.token_interval))
    }
}

/// Token bucket state from a (conservative) deficit and the outstanding credit.
fn token_info(limit: u32, deficit: u32, credit: u32, interval: Duration) -> RateInfo {
    let missing = deficit.saturating_sub(credit).min(limit);
    RateInfo {
        kind: LimitKind::Tokens,
        limit,
        remaining: limit - missing,
        reset: interval.saturating_mul(missing),
    }
}

/// Builds a refusal from governor's answer for `asked` cells. GCRA refuses `asked` cells while
/// `tat + (asked - 1)·T - τ > now`, so the time until the bucket is full, `tat - now`, is
/// exactly `retry_after + (limit - asked)·T`.
fn denied<I: Reference>(
    kind: LimitKind,
    not_until: &NotUntil<I>,
    now: I,
    asked: u32,
    limit: u32,
    interval: Duration,
    credit: u32,
) -> RateDenied {
    let retry_after = not_until.wait_time_from(now);
    let reset = retry_after.saturating_add(interval.saturating_mul(limit.saturating_sub(asked)));
    let deficit = u32::try_from(intervals(reset, interval, true)).unwrap_or(u32::MAX);
    let missing = deficit.saturating_sub(credit).min(limit);
    RateDenied {
        kind,
        retry_after,
        limit,
        remaining: limit - missing,
        // Exact when no credit shortens the deficit; otherwise rounded to whole intervals.
        reset: if missing == deficit {
            reset
        } else {
            interval.saturating_mul(missing)
        },
    }
}
