//! Bounded load and crash run against a real `cloister serve` process on 127.0.0.1.
//!
//! Phase 1 (load): 64 concurrent clients across 4 tenants for `LOAD_SECS` (default 60) send a
//! mix of streamed and non-streamed chat and text completions with small `max_tokens`, so a
//! 2-core machine still turns requests over. Three tenants are on a roomy plan; `throttled` is
//! deliberately rate-limited, so its 429s exercise the refusal path under load (429s are
//! counted, not failures; 5xx, in-band stream errors and transport errors are failures).
//! Afterwards, per tenant, three independent counts must agree exactly: the `usage` the clients
//! received, the ledger (`GET /v1/usage`, committed tokens once no reservation is open), and
//! the `RequestCompleted` records of the audit log.
//!
//! Phase 2 (crash): load again, SIGKILL the server once requests have completed, restart it on
//! the same state and check the ledger's crash contract (`store::sqlite`): nothing the clients
//! received is lost, and reservations left open are charged at most at their reserved worst
//! case (prompt + `max_tokens`) and none stays open. The restarted server must serve (and
//! account exactly) again, and `cloister audit verify` must accept the log across the crash.
//!
//! Prints one summary table; exits non-zero if any check failed.
//!
//! Run: `cargo bench --bench load` (`LOAD_SECS=10` for a quick run). A cold release build is
//! slow on a small machine; `cargo bench --profile dev --bench load` reuses `target/debug`,
//! whose dependencies (the model's kernels included) are optimized in dev too.

#[path = "../tests/common/figures.rs"]
mod figures;
#[path = "../tests/common/serve.rs"]
mod serve;
#[path = "support/mod.rs"]
mod support;

#[path = "support/load.rs"]
mod load_support;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use figures::figure;
use load_support::{
    audit_counts, percentile, settled_usage, Bench, Check, Kind, Outcome, Sample, CLIENTS, TENANTS,
};
use rand::{Rng, SeedableRng};
use serve::ServeProcess;

/// What the run found: printed together at the end.
#[derive(Default)]
struct Summary {
    lines: Vec<String>,
    checks: Vec<Check>,
}

/// `println!` into the summary.
macro_rules! say {
    ($sum:expr, $($arg:tt)*) => {
        $sum.lines.push(format!($($arg)*))
    };
}

/// Shared by the clients of one phase.
struct Run {
    bench: Arc<Bench>,
    url: String,
    /// Clients start no new request once set.
    stop: AtomicBool,
    /// Set just before the server is killed: transport errors after it are expected.
    killed: AtomicBool,
    ok: AtomicU64,
}

impl Run {
    /// A fresh phase against the server at `url`: nothing stopped, killed or answered yet.
    fn new(bench: &Arc<Bench>, url: &str) -> Arc<Run> {
        Arc::new(Run {
            bench: Arc::clone(bench),
            url: url.to_owned(),
            stop: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            ok: AtomicU64::new(0),
        })
    }
}

async fn client_loop(run: Arc<Run>, client: usize, deadline: Instant) -> Vec<Sample> {
    let tenant = client % TENANTS.len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(client as u64);
    let http = run.bench.client();
    let mut samples = Vec::new();
    while !run.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let kind = Kind {
            chat: rng.gen_bool(0.5),
            stream: rng.gen_bool(0.5),
        };
        let prompt = rng.gen_range(0..load_support::PROMPTS.len());
        let max_tokens = [8, 16, 24, 32][rng.gen_range(0..4)];
        let greedy = rng.gen_bool(0.3);
        let mut sample = run
            .bench
            .request(&http, &run.url, tenant, kind, prompt, max_tokens, greedy)
            .await;
        if matches!(sample.outcome, Outcome::Transport(_)) && run.killed.load(Ordering::SeqCst) {
            sample.outcome = Outcome::Killed;
        }
        let pause = match &sample.outcome {
            Outcome::Ok { .. } => {
                run.ok.fetch_add(1, Ordering::Relaxed);
                None
            }
            // Back off a little on refusals instead of spinning on a 2-core machine.
            Outcome::TooMany(_) => Some(Duration::from_millis(rng.gen_range(100..300))),
            Outcome::Killed => {
                samples.push(sample);
                break;
            }
            _ => Some(Duration::from_millis(50)),
        };
        samples.push(sample);
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
    }
    samples
}

fn spawn_clients(run: &Arc<Run>, deadline: Instant) -> Vec<tokio::task::JoinHandle<Vec<Sample>>> {
    (0..CLIENTS)
        .map(|c| tokio::spawn(client_loop(Arc::clone(run), c, deadline)))
        .collect()
}

async fn join(handles: Vec<tokio::task::JoinHandle<Vec<Sample>>>) -> Vec<Sample> {
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("client task"));
    }
    all
}

fn main() -> ExitCode {
    let secs: u64 = std::env::var("LOAD_SECS")
        .ok()
        .map(|s| s.parse().expect("LOAD_SECS must be a number of seconds"))
        .unwrap_or(60);
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut sum = Summary::default();
    rt.block_on(phases(secs, &mut sum));
    // Everything is printed here, in one piece, after the run (progress went to stderr).
    for line in &sum.lines {
        println!("{line}");
    }
    let checks = &sum.checks;
    let failed = checks.iter().filter(|c| !c.pass).count();
    figure(
        "load.checks",
        format!("{}/{} pass", checks.len() - failed, checks.len()),
    );
    println!("\n== checks ==");
    for c in checks {
        println!("[{}] {}", if c.pass { "PASS" } else { "FAIL" }, c.what);
    }
    println!(
        "\n{} checks, {failed} failed; total run time {:.0} s",
        checks.len(),
        started.elapsed().as_secs_f64()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn phases(secs: u64, sum: &mut Summary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bench = Arc::new(Bench::setup(dir.path(), secs));
    let mut server = ServeProcess::start_with(&bench.config_path, "info");
    let url = server.url();
    bench.learn_prompt_lengths(&url).await;

    eprintln!("load: {CLIENTS} clients for {secs} s, then draining");
    let run = Run::new(&bench, &url);
    let t0 = Instant::now();
    let samples = join(spawn_clients(&run, t0 + Duration::from_secs(secs))).await;
    let elapsed = t0.elapsed();
    let mut ledger = Vec::new();
    for t in 0..TENANTS.len() {
        ledger.push(settled_usage(&bench, &url, t).await);
    }
    let audit = audit_counts(&bench.audit_path);
    load_report(secs, &bench, &samples, elapsed, &ledger, &audit, sum);
    let errors: Vec<String> = server
        .drain_log()
        .iter()
        .filter(|l| l.contains("ERROR"))
        .cloned()
        .collect();
    sum.checks.push(Check::new(
        format!(
            "no ERROR lines in the server log during load ({})",
            errors.len()
        ),
        errors.is_empty(),
    ));
    for e in errors.iter().take(5) {
        say!(sum, "server error: {e}");
    }

    eprintln!(
        "crash: load again, SIGKILL once {} requests completed",
        CLIENTS / 4
    );
    let before: Vec<u64> = ledger.iter().map(|u| u.used).collect();
    let run = Run::new(&bench, &url);
    // Kill once a quarter of the clients have had an answer, so the ledger holds committed
    // usage of this phase as well as open reservations. Bounded: on a machine so slow that
    // nothing completes in the window the kill happens anyway and a check below fails.
    let window = Duration::from_secs(secs.clamp(30, 180));
    let handles = spawn_clients(&run, Instant::now() + window + Duration::from_secs(60));
    let crash_start = Instant::now();
    while run.ok.load(Ordering::Relaxed) < (CLIENTS / 4) as u64 && crash_start.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Mid-load: let the just-admitted requests get going so some are mid-stream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.killed.store(true, Ordering::SeqCst);
    run.stop.store(true, Ordering::SeqCst);
    server.signal("KILL");
    let killed_at = crash_start.elapsed();
    let status = server.wait(Duration::from_secs(10));
    let crash_samples = join(handles).await;
    let ok_before_kill = run.ok.load(Ordering::Relaxed);
    sum.checks.push(Check::new(
        format!(
            "server killed by SIGKILL ({status}) {:.0} s into the load, after {ok_before_kill} completed requests",
            killed_at.as_secs_f64()
        ),
        ok_before_kill > 0,
    ));
    drop(server);

    let mut restarted = ServeProcess::start_with(&bench.config_path, "info");
    let rurl = restarted.url();
    let dangling: u64 = restarted
        .log
        .iter()
        .find(|l| l.contains("charged reservations left open"))
        .and_then(|l| l.split("dangling=").nth(1))
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let mut after = Vec::new();
    for t in 0..TENANTS.len() {
        after.push(settled_usage(&bench, &rurl, t).await);
    }
    crash_report(
        &bench,
        &crash_samples,
        &before,
        &after,
        dangling,
        ok_before_kill,
        sum,
    );

    // The restarted server serves and accounts exactly again.
    let mut received = [0u64; TENANTS.len()];
    let mut served = true;
    let http = bench.client();
    for (t, r) in received.iter_mut().enumerate() {
        let s = bench
            .request(&http, &rurl, t, Kind::default(), 0, 8, true)
            .await;
        match s.outcome {
            Outcome::Ok { total, .. } => *r = total,
            other => {
                say!(sum, "after restart, {}: {other:?}", TENANTS[t].0);
                served = false;
            }
        }
    }
    let mut exact = served;
    for (t, r) in received.iter().enumerate() {
        let u = settled_usage(&bench, &rurl, t).await;
        exact &= u.used == after[t].used + r && u.reserved == 0;
    }
    sum.checks.push(Check::new(
        "restarted server serves every tenant and its ledger moves by exactly what it served"
            .to_string(),
        exact,
    ));

    // Clean stop (final checkpoint), then verify the whole chain across the crash.
    restarted.signal("TERM");
    let stopped = restarted.wait(Duration::from_secs(30));
    sum.checks.push(Check::new(
        format!("restarted server stops cleanly on SIGTERM ({stopped})"),
        stopped.success(),
    ));
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_cloister"))
        .args(["audit", "verify", "--config"])
        .arg(&bench.config_path)
        .output()
        .expect("run cloister audit verify");
    let said = String::from_utf8_lossy(&verify.stdout).trim().to_string()
        + String::from_utf8_lossy(&verify.stderr).trim();
    say!(sum, "\ncloister audit verify: {said}");
    figure(
        "crash.audit_verify",
        if verify.status.success() {
            "chain verifies across the crash"
        } else {
            "FAILED"
        },
    );
    figure("crash.restart_exact", if exact { "yes" } else { "NO" });
    sum.checks.push(Check::new(
        "`cloister audit verify` accepts the audit log across the crash".to_string(),
        verify.status.success(),
    ));
}

fn load_report(
    secs: u64,
    bench: &Bench,
    samples: &[Sample],
    elapsed: Duration,
    ledger: &[load_support::Settled],
    audit: &load_support::AuditCounts,
    sum: &mut Summary,
) {
    say!(
        sum,
        "\n== load: {CLIENTS} clients, {} tenants, new requests for {secs} s, all answered after {:.1} s ==",
        TENANTS.len(),
        elapsed.as_secs_f64()
    );
    say!(
        sum,
        "{:<10} {:<10} {:>6} {:>6} {:>5} {:>5} {:>6} {:>9} {:>9} {:>9}",
        "tenant",
        "plan",
        "ok",
        "429",
        "4xx",
        "5xx",
        "transp",
        "tokens",
        "ledger",
        "audit"
    );
    let mut totals = load_support::Tally::default();
    let mut exact = true;
    let mut audit_ok = true;
    for (t, (name, plan)) in TENANTS.iter().enumerate() {
        let tally = load_support::Tally::of(samples.iter().filter(|s| s.tenant == t));
        let a = audit.tenant(name);
        say!(
            sum,
            "{:<10} {:<10} {:>6} {:>6} {:>5} {:>5} {:>6} {:>9} {:>9} {:>9}",
            name,
            plan,
            tally.ok,
            tally.too_many,
            tally.client_err,
            tally.server_err,
            tally.transport,
            tally.tokens,
            ledger[t].used,
            a.tokens
        );
        exact &= ledger[t].used == tally.tokens && ledger[t].reserved == 0;
        audit_ok &= a.tokens == tally.tokens && a.answered() == tally.ok + tally.too_many;
        totals.add(&tally);
    }
    let ledger_total: u64 = ledger.iter().map(|u| u.used).sum();
    say!(
        sum,
        "{:<10} {:<10} {:>6} {:>6} {:>5} {:>5} {:>6} {:>9} {:>9} {:>9}",
        "total",
        "",
        totals.ok,
        totals.too_many,
        totals.client_err,
        totals.server_err,
        totals.transport,
        totals.tokens,
        ledger_total,
        audit.total_tokens()
    );
    let secs = elapsed.as_secs_f64();
    say!(
        sum,
        "throughput: {:.2} requests/s ok, {:.1} tokens/s served ({:.1} completion tokens/s)",
        totals.ok as f64 / secs,
        totals.tokens as f64 / secs,
        totals.completion_tokens as f64 / secs
    );
    let lat = |stream: bool, ttft: bool| {
        let mut v: Vec<Duration> = samples
            .iter()
            .filter(|s| s.kind.stream == stream)
            .filter_map(|s| match s.outcome {
                Outcome::Ok { ttft: f, .. } => Some(if ttft { f } else { s.latency }),
                _ => None,
            })
            .collect();
        v.sort();
        (percentile(&v, 0.5), percentile(&v, 0.99), v.len())
    };
    for (label, stream) in [("streamed", true), ("non-streamed", false)] {
        let (t50, t99, n) = lat(stream, true);
        let (l50, l99, _) = lat(stream, false);
        figure(
            &format!("load.ttft.{label}"),
            format!(
                "p50 {:.0} ms, p99 {:.0} ms (n = {n})",
                t50.as_secs_f64() * 1e3,
                t99.as_secs_f64() * 1e3
            ),
        );
        say!(
sum,
            "{label:<13} n={n:<5} TTFT p50 {:>7.0} ms  p99 {:>7.0} ms   latency p50 {:>7.0} ms  p99 {:>7.0} ms",
            t50.as_secs_f64() * 1e3,
            t99.as_secs_f64() * 1e3,
            l50.as_secs_f64() * 1e3,
            l99.as_secs_f64() * 1e3
        );
    }
    let mut refusals: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for s in samples {
        if let Outcome::TooMany(code) = &s.outcome {
            *refusals
                .entry((TENANTS[s.tenant].0, code.as_str()))
                .or_default() += 1;
        }
    }
    for ((tenant, code), n) in &refusals {
        say!(sum, "429 {tenant}: {n} x {code}");
    }
    for s in samples.iter().filter(|s| s.outcome.is_failure()).take(5) {
        say!(
            sum,
            "failure: {} {:?}: {:?}",
            TENANTS[s.tenant].0,
            s.kind,
            s.outcome
        );
    }
    let mismatched = samples
        .iter()
        .filter(|s| !bench.usage_consistent(s))
        .count();
    figure(
        "load.requests",
        format!(
            "{CLIENTS} clients, {} tenants, {secs} s: {} ok, {} 5xx or in-band errors, {} transport \
             errors, {} other 4xx",
            TENANTS.len(),
            totals.ok,
            totals.server_err,
            totals.transport,
            totals.client_err
        ),
    );
    figure(
        "load.ledger_equals_served",
        if exact { "yes" } else { "NO" },
    );
    figure(
        "load.audit_matches_served",
        if audit_ok { "yes" } else { "NO" },
    );
    sum.checks.push(Check::new(
        format!("load ran ({} ok requests)", totals.ok),
        totals.ok > 0,
    ));
    sum.checks.push(Check::new(
        format!("0 5xx or in-band stream errors ({})", totals.server_err),
        totals.server_err == 0,
    ));
    sum.checks.push(Check::new(
        format!("0 transport errors ({})", totals.transport),
        totals.transport == 0,
    ));
    sum.checks.push(Check::new(
        format!("0 other 4xx ({})", totals.client_err),
        totals.client_err == 0,
    ));
    sum.checks.push(Check::new(
        format!(
            "every response's usage is consistent: prompt as tokenized, completion <= max_tokens ({mismatched} not)"
        ),
        mismatched == 0,
    ));
    sum.checks.push(Check::new(
        "ledger == tokens served, per tenant, nothing left reserved".to_string(),
        exact,
    ));
    sum.checks.push(Check::new(
        "audit log: RequestCompleted tokens == tokens served and one record per ok/429, per tenant"
            .to_string(),
        audit_ok,
    ));
    let throttled = samples
        .iter()
        .filter(|s| TENANTS[s.tenant].1 == "throttled")
        .filter(|s| matches!(s.outcome, Outcome::TooMany(_)))
        .count();
    sum.checks.push(Check::new(
        format!("the rate-limited tenant was refused with 429 ({throttled} times)"),
        throttled > 0,
    ));
}

fn crash_report(
    bench: &Bench,
    samples: &[Sample],
    before: &[u64],
    after: &[load_support::Settled],
    dangling: u64,
    ok_before_kill: u64,
    sum: &mut Summary,
) {
    let in_flight = samples
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Killed))
        .count();
    say!(
sum,
        "\n== crash: SIGKILL after {ok_before_kill} completed requests, {in_flight} in flight; restart charged {dangling} dangling reservations =="
    );
    say!(
        sum,
        "{:<10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>10}  ok",
        "tenant",
        "ledger@0",
        "received",
        "inflight",
        "min",
        "max",
        "ledger@1"
    );
    let mut all_ok = true;
    let mut failures = 0;
    for (t, (name, _)) in TENANTS.iter().enumerate() {
        let mine = samples.iter().filter(|s| s.tenant == t);
        let (mut received, mut slack, mut inflight) = (0u64, 0u64, 0usize);
        for s in mine {
            let worst = bench.worst_case(s);
            match s.outcome {
                // Received in full: committed, or (kill between response and commit) still
                // reserved and charged at its worst case at restart.
                Outcome::Ok { total, .. } => {
                    received += total;
                    slack += worst.saturating_sub(total);
                }
                // Outcome unknown: anything from nothing to its worst case.
                Outcome::Killed => {
                    slack += worst;
                    inflight += 1;
                }
                Outcome::TooMany(_) => {}
                _ => failures += 1,
            }
        }
        let min = before[t] + received;
        let max = min + slack;
        let ok = (min..=max).contains(&after[t].used) && after[t].reserved == 0;
        all_ok &= ok;
        say!(
            sum,
            "{:<10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>10}  {}",
            name,
            before[t],
            received,
            inflight,
            min,
            max,
            after[t].used,
            if ok { "yes" } else { "NO" }
        );
    }
    sum.checks.push(Check::new(
        format!("crash phase: no 5xx or transport errors before the kill ({failures})"),
        failures == 0,
    ));
    sum.checks.push(Check::new(
        format!("SIGKILL hit requests in flight ({in_flight})"),
        in_flight > 0,
    ));
    sum.checks.push(Check::new(
        format!(
            "restart charged the crash's open reservations: 0 < {dangling} <= one per client ({CLIENTS})"
        ),
        dangling > 0 && dangling as usize <= CLIENTS,
    ));
    figure(
        "crash.usage",
        format!(
            "SIGKILL after {ok_before_kill} requests, {in_flight} in flight: {}",
            if all_ok {
                "no received usage lost, none left open"
            } else {
                "LEDGER OUT OF BOUNDS"
            }
        ),
    );
    sum.checks.push(Check::new(
        "after restart: no received usage lost, dangling charged <= worst case, none left open"
            .to_string(),
        all_ok,
    ));
}
