//! Rate-limit behaviour on a fake clock: exact GCRA timings, token reservations and refunds.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use proptest::prelude::*;

use crate::limits::{LimitKind, Plan, RateDenied, RateError, RateInfo, RateLimits};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// 5 requests/s (one every 200 ms), 600 tokens/min (one every 100 ms).
fn plan() -> Plan {
    Plan {
        requests_per_second: nz(5),
        request_burst: None,
        tokens_per_minute: nz(600),
        token_burst: None,
        quota_tokens_per_day: None,
        quota_tokens_per_month: None,
        max_context_tokens: 600,
        max_tokens: 100,
        max_queued: 4,
        kv_pool_bytes: None,
        allowed_models: Vec::new(),
        confidence: Default::default(),
        watermark: true,
        extraction: Default::default(),
        guard: Default::default(),
    }
}

fn limits() -> (RateLimits<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    let limits = RateLimits::with_clock(clock.clone());
    limits.set_plan("acme", &plan());
    (limits, clock)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn denied(r: Result<RateInfo, RateError>) -> RateDenied {
    match r {
        Err(RateError::Denied(d)) => d,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn requests_burst_then_exact_retry_after() {
    let (limits, clock) = limits();
    for expected_remaining in (0..5).rev() {
        let info = limits.check_request("acme").unwrap();
        assert_eq!(info.kind, LimitKind::Requests);
        assert_eq!(info.limit, 5);
        assert_eq!(info.remaining, expected_remaining);
    }
    let d = denied(limits.check_request("acme"));
    assert_eq!(
        d,
        RateDenied {
            kind: LimitKind::Requests,
            retry_after: ms(200),
            limit: 5,
            remaining: 0,
            reset: ms(1000),
        }
    );

    clock.advance(ms(199));
    assert_eq!(denied(limits.check_request("acme")).retry_after, ms(1));
    clock.advance(ms(1));
    assert_eq!(limits.check_request("acme").unwrap().remaining, 0);
    assert_eq!(denied(limits.check_request("acme")).retry_after, ms(200));

    // A full period later the whole burst is back.
    clock.advance(ms(1000));
    for _ in 0..5 {
        limits.check_request("acme").unwrap();
    }
    denied(limits.check_request("acme"));
}

#[test]
fn request_burst_is_independent_of_rate() {
    let clock = FakeRelativeClock::default();
    let limits = RateLimits::with_clock(clock.clone());
    let p = Plan {
        requests_per_second: nz(1),
        request_burst: Some(nz(3)),
        ..plan()
    };
    limits.set_plan("acme", &p);
    for _ in 0..3 {
        limits.check_request("acme").unwrap();
    }
    let d = denied(limits.check_request("acme"));
    assert_eq!((d.retry_after, d.limit, d.reset), (ms(1000), 3, ms(3000)));
}

#[test]
fn tokens_over_burst_are_insufficient_capacity_not_a_wait() {
    let (limits, _clock) = limits();
    assert_eq!(
        limits.reserve_tokens("acme", 601),
        Err(RateError::InsufficientCapacity {
            kind: LimitKind::Tokens,
            requested: 601,
            capacity: 600
        })
    );
    // ...and the refusal consumed nothing.
    assert_eq!(limits.reserve_tokens("acme", 600).unwrap().remaining, 0);
}

#[test]
fn token_reservations_are_gcra_exact() {
    let (limits, clock) = limits();
    let info = limits.reserve_tokens("acme", 450).unwrap();
    assert_eq!(
        info,
        RateInfo {
            kind: LimitKind::Tokens,
            limit: 600,
            remaining: 150,
            reset: ms(45_000),
        }
    );
    limits.reserve_tokens("acme", 150).unwrap();
    let d = denied(limits.reserve_tokens("acme", 10));
    assert_eq!(
        (d.retry_after, d.remaining, d.reset),
        (ms(1000), 0, ms(60_000))
    );
    clock.advance(ms(999));
    denied(limits.reserve_tokens("acme", 10));
    clock.advance(ms(1));
    assert_eq!(limits.reserve_tokens("acme", 10).unwrap().remaining, 0);
    // n == 0 is a read-only peek.
    assert_eq!(limits.reserve_tokens("acme", 0).unwrap().remaining, 0);
}

#[test]
fn refund_makes_capacity_available_at_once() {
    let (limits, _clock) = limits();
    limits.reserve_tokens("acme", 600).unwrap();
    denied(limits.reserve_tokens("acme", 1));
    assert_eq!(limits.refund_tokens("acme", 400).unwrap().remaining, 400);
    assert_eq!(limits.reserve_tokens("acme", 400).unwrap().remaining, 0);
    denied(limits.reserve_tokens("acme", 1));
}

#[test]
fn refund_never_lifts_capacity_above_the_burst() {
    let (limits, clock) = limits();
    // Refund after the bucket has refilled on its own: worthless.
    limits.reserve_tokens("acme", 600).unwrap();
    clock.advance(ms(60_000));
    assert_eq!(limits.refund_tokens("acme", 600).unwrap().remaining, 600);
    limits.reserve_tokens("acme", 600).unwrap();
    denied(limits.reserve_tokens("acme", 1));

    // Half refilled: only the still-missing half can be credited, less the one-cell margin
    // of `credit_cap`.
    clock.advance(ms(30_000));
    assert_eq!(limits.refund_tokens("acme", 600).unwrap().remaining, 599);
    limits.reserve_tokens("acme", 599).unwrap();
    denied(limits.reserve_tokens("acme", 1));

    // Unspent credit evaporates as the bucket refills.
    clock.advance(ms(60_000));
    limits.reserve_tokens("acme", 100).unwrap();
    limits.refund_tokens("acme", 100).unwrap();
    clock.advance(ms(60_000));
    limits.reserve_tokens("acme", 600).unwrap();
    denied(limits.reserve_tokens("acme", 1));
}

#[test]
fn tenants_are_isolated_and_unknown_tenants_fail_closed() {
    let (limits, _clock) = limits();
    limits.set_plan("other", &plan());
    limits.reserve_tokens("acme", 600).unwrap();
    assert_eq!(limits.reserve_tokens("other", 600).unwrap().remaining, 0);
    assert_eq!(
        limits.check_request("nobody"),
        Err(RateError::UnknownTenant("nobody".into()))
    );
    limits.remove_tenant("other");
    assert!(matches!(
        limits.reserve_tokens("other", 1),
        Err(RateError::UnknownTenant(_))
    ));
}

#[test]
fn reloading_an_unchanged_plan_keeps_state_and_a_new_plan_resets_it() {
    let (limits, _clock) = limits();
    limits.reserve_tokens("acme", 600).unwrap();
    limits.set_plan("acme", &plan());
    denied(limits.reserve_tokens("acme", 1));
    limits.set_plan(
        "acme",
        &Plan {
            tokens_per_minute: nz(1200),
            ..plan()
        },
    );
    assert_eq!(limits.reserve_tokens("acme", 600).unwrap().remaining, 600);
}

#[derive(Debug, Clone)]
enum Op {
    Reserve(u32),
    /// Refund `pct`% of the reservation at index `i % len`, at most once per reservation.
    Refund(usize, u8),
    AdvanceMs(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..=600).prop_map(Op::Reserve),
        (any::<usize>(), 0u8..=100).prop_map(|(i, p)| Op::Refund(i, p)),
        (0u64..5_000).prop_map(Op::AdvanceMs),
    ]
}

proptest! {
    /// GCRA's guarantee with refunds as negative consumption: over any window [s, t], net
    /// admitted tokens ≤ burst + (t - s) / interval. Refund credit must never break it.
    #[test]
    fn refunds_never_exceed_the_gcra_envelope(ops in proptest::collection::vec(op(), 1..80)) {
        let (limits, clock) = limits();
        let interval_ms = 100u64;
        let mut now = 0u64;
        // (time, net tokens admitted at that time: + reserve, - refund)
        let mut events: Vec<(u64, i64)> = Vec::new();
        let mut reservations: Vec<(u32, bool)> = Vec::new();
        for op in ops {
            match op {
                Op::Reserve(n) => {
                    if limits.reserve_tokens("acme", n).is_ok() {
                        events.push((now, i64::from(n)));
                        reservations.push((n, false));
                    }
                }
                Op::Refund(i, pct) => {
                    if reservations.is_empty() { continue; }
                    let i = i % reservations.len();
                    if reservations[i].1 { continue; }
                    reservations[i].1 = true;
                    let n = reservations[i].0 * u32::from(pct) / 100;
                    limits.refund_tokens("acme", n).unwrap();
                    events.push((now, -i64::from(n)));
                }
                Op::AdvanceMs(d) => {
                    clock.advance(ms(d));
                    now += d;
                }
            }
        }
        for s in 0..events.len() {
            let mut net = 0i64;
            for &(t, n) in &events[s..] {
                net += n;
                let elapsed = t - events[s].0;
                prop_assert!(
                    net * interval_ms as i64 <= 600 * interval_ms as i64 + elapsed as i64,
                    "net {net} tokens admitted in {elapsed} ms"
                );
            }
        }
    }
}
