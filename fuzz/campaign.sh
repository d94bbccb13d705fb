#!/usr/bin/env bash
# Long fuzz campaign: runs each target for a fixed number of executions (default 10 million, the
# reliability suite's goal) and records the outcome in fuzz/results/<target>.txt, which
# tests/suite-report.sh reads into its summary table.
#
# Usage: fuzz/campaign.sh [target ...]     (default: every target in fuzz/Cargo.toml)
# Environment:
#   FUZZ_RUNS   executions per target (default 10000000)
#   FUZZ_FLAGS  extra libFuzzer options, e.g. "-max_len=512" (recorded in the result file)
#   NICE        nice level the fuzzer runs at (default 19). Where util-linux `chrt` exists it
#               also runs under SCHED_IDLE, so it only soaks up idle CPU: a nice-19 task still
#               delays the wake-ups of a benchmark's worker threads, a SCHED_IDLE one does not.
#
# A target that crashes, panics, hangs (-timeout) or runs out of memory (-rss_limit_mb) stops the
# campaign with a non-zero status; its input is in fuzz/artifacts/<target>/ and its result file
# says "crashed". Any other failure (a build error, a signal) says "failed-exit-<code>", and a
# run that ends without a finding before FUZZ_RUNS executions (say -max_total_time in FUZZ_FLAGS)
# says "incomplete"; only "ok" counts towards the goal. The commit is read per target, marked
# "-dirty" when the working tree (outside fuzz/results) differs from it. Runs start from the committed seed corpus in a scratch folder, so the
# committed corpus stays as it is. Uses the real SmolLM2 tokenizer when the demo model is cached
# (see README.md), which is what a campaign should exercise.
set -euo pipefail

cd "$(dirname "$0")"
runs="${FUZZ_RUNS:-10000000}"
nice_level="${NICE:-19}"
flags=(--sanitizer none -a -O)

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build "${flags[@]}"
background=(nice -n "$nice_level")
if command -v chrt >/dev/null; then
    background=(chrt --idle 0 "${background[@]}")
fi
mkdir -p results
for t in "${targets[@]}"; do
    # cargo fuzz run rebuilds from the working tree, so this is what the target runs (changes
    # to the result files this script writes do not count).
    commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    git diff --quiet HEAD -- ':(top)' ':(top,exclude)fuzz/results' 2>/dev/null || commit+=-dirty
    work="$(mktemp -d)"
    log="$(mktemp)"
    mkdir -p "artifacts/$t"
    echo "== fuzz $t for $runs executions (log: $log)"
    start=$(date +%s)
    findings_before=$(find "artifacts/$t" -type f | wc -l)
    rc=0
    "${background[@]}" cargo fuzz run "${flags[@]}" "$t" "$work" "corpus/$t" -- \
        -runs="$runs" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 ${FUZZ_FLAGS:-} >"$log" 2>&1 ||
        rc=$?
    seconds=$(($(date +%s) - start))
    executed="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    if [ "$(find "artifacts/$t" -type f | wc -l)" -gt "$findings_before" ]; then
        status=crashed
    elif [ "$rc" != 0 ]; then
        status="failed-exit-$rc"
    elif [ "${executed:-0}" -lt "$runs" ]; then
        status=incomplete
    else
        status=ok
    fi
    corpus_size="$(find "$work" -type f | wc -l)"
    {
        echo "target=$t"
        echo "status=$status"
        echo "executions=${executed:-0}"
        echo "exec_per_s=${rate:-0}"
        echo "seconds=$seconds"
        echo "corpus_inputs=$corpus_size"
        echo "options=${FUZZ_FLAGS:-}" # one line, read by key (never sourced)
        echo "commit=$commit"
        echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"results/$t.txt"
    cat "results/$t.txt"
    rm -rf "$work"
    if [ "$status" != ok ]; then
        tail -40 "$log"
        echo "fuzz campaign: $t: $status (log: $log; findings in fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    rm -f "$log"
done
echo "fuzz campaign: ${#targets[@]} targets ran $runs executions each without a crash"
