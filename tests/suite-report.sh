#!/usr/bin/env bash
# The reliability and attack suite in one run, ending with ONE summary table of its figures.
#
#   bash tests/suite-report.sh                      # about 25 minutes on 2 cores
#   SUITE_PARTS="vectors canary" bash tests/suite-report.sh
#
# Parts (each also runs on its own; README.md, "Reliability and attack suite"):
#   fuzz          the latest long campaign, read from fuzz/results/<target>.txt. Ten million
#                 executions per target take hours, so fuzz/campaign.sh runs them separately;
#                 FUZZ_SMOKE=1 also runs fuzz/smoke.sh (a short run of every target) here.
#   vectors       Wycheproof / NIST vectors through our container and kernel code
#   schemathesis  tests/schemathesis/run.sh against the live server
#   load          64 clients x 4 tenants for 60 s, then SIGKILL mid-load and restart
#                 (cargo bench --profile dev --bench load; LOAD_SECS changes the 60)
#   canary        /proc/<pid>/mem scans for a canary sealed into the weights
#   prefix        cross-tenant prefix timing (KS test), in a release build with 192-token
#                 prompts (CLOISTER_PREFIX_TOKENS changes that)
#   isolation     every endpoint, called by tenant B after tenant A's activity
#   secrets       trace logs and audit log grepped for secrets; core dumps and peer reads
#
# Each test or bench records its figures through tests/common/figures.rs into one file; this
# script prints them with the goal each must meet. Exit status: non-zero if any part failed.
# Logs of every part stay in the folder printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."

PARTS=${SUITE_PARTS:-"fuzz vectors schemathesis load canary prefix isolation secrets"}
LOGS=$(mktemp -d -t cloister-suite.XXXXXX)
export CLOISTER_SUITE_FIGURES="$LOGS/figures.tsv"
: >"$CLOISTER_SUITE_FIGURES"
declare -A STATUS

# run <part> <command...>: runs one part, its output to $LOGS/<part>.log.
run() {
    local part=$1
    shift
    echo "== $part: $*"
    local start=$SECONDS
    "$@" >"$LOGS/$part.log" 2>&1
    local rc=$?
    STATUS[$part]=$([ "$rc" = 0 ] && echo pass || echo "FAIL (exit $rc)")
    echo "   ${STATUS[$part]} in $((SECONDS - start)) s"
}

record() { printf '%s\t%s\n' "$1" "$2" >>"$CLOISTER_SUITE_FIGURES"; }

# 1234567 -> 1,234,567
thousands() { sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"; }

fuzz_part() {
    local ok=0
    if [ "${FUZZ_SMOKE:-0}" = 1 ]; then
        FUZZ_SECONDS=${FUZZ_SECONDS:-15} bash fuzz/smoke.sh || ok=1
    fi
    local t
    for t in $(basename -s .rs fuzz/fuzz_targets/*.rs); do
        local f=fuzz/results/$t.txt
        if [ ! -e "$f" ]; then
            record "fuzz.$t" "no campaign result: run fuzz/campaign.sh $t"
            ok=1
            continue
        fi
        # key=value lines written by fuzz/campaign.sh, read by key (never sourced).
        local -A r=()
        local key value
        while IFS='=' read -r key value; do r[$key]=$value; done <"$f"
        local status=${r[status]:-missing} executions=${r[executions]:-0} date=${r[date]:-?}
        [[ $executions =~ ^[0-9]+$ ]] || executions=0
        record "fuzz.$t" "$(thousands "$executions") runs, $([ "$status" = ok ] &&
            echo "0 crashes" || echo "status $status") (${r[exec_per_s]:-?} exec/s, \
${r[seconds]:-?} s, commit ${r[commit]:-?}, ${date%%T*}${r[options]:+, ${r[options]}})"
        [ "$status" = ok ] && [ "$executions" -ge 10000000 ] || ok=1
        unset r
    done
    return $ok
}

for part in $PARTS; do
    case $part in
    fuzz | vectors | schemathesis | load | canary | prefix | isolation | secrets) ;;
    *)
        echo "unknown part $part (parts: fuzz vectors schemathesis load canary prefix isolation secrets)" >&2
        exit 2
        ;;
    esac
done

for part in $PARTS; do
    case $part in
    fuzz) run fuzz fuzz_part ;;
    vectors) run vectors cargo test --test vectors -- --nocapture ;;
    schemathesis)
        run schemathesis bash tests/schemathesis/run.sh
        cases=$(grep -A1 '^Test cases:' "$LOGS/schemathesis.log" | tail -1 | sed 's/^ *//')
        record schemathesis.cases "${cases:-NOT FOUND in the log}"
        ;;
    load) run load env LOAD_SECS="${LOAD_SECS:-60}" cargo bench --profile dev --bench load ;;
    canary) run canary cargo test --test canary -- --nocapture ;;
    prefix)
        run prefix env CLOISTER_PREFIX_TOKENS="${CLOISTER_PREFIX_TOKENS:-192}" \
            cargo test --release --test prefix_timing -- --nocapture
        ;;
    isolation) run isolation cargo test --test isolation -- --nocapture ;;
    secrets) run secrets cargo test --test secrets_hygiene -- --nocapture ;;
    esac
done

# The goal each figure is held to (the issue's outcome list); figures without one are context.
declare -A GOAL=(
    [fuzz]=">= 10M runs, 0 crashes"
    [vectors]="all pass"
    [schemathesis.cases]="0 failures"
    [load.requests]="0 5xx"
    [load.ttft]="printed"
    [load.ledger_equals_served]="yes"
    [load.audit_matches_served]="yes"
    [load.checks]="all pass"
    [crash.usage]="no committed usage lost"
    [crash.audit_verify]="chain verifies"
    [crash.restart_exact]="yes"
    [canary.served.hits]="1"
    [canary.served.mapping]="locked region"
    [canary.loaded.hits]="1"
    [canary.dropped.hits]="0"
    [prefix_timing.cross_tenant]="p > 0.05"
    [prefix_timing.within_tenant]="(observation)"
    [isolation.leaks]="0"
    [secrets.hits]="0"
    [secrets.core_limit]="0/0"
    [secrets.peer_mem_refused]="yes"
)
goal_of() {
    local key=$1
    while [ -n "$key" ]; do
        [ -n "${GOAL[$key]:-}" ] && { echo "${GOAL[$key]}"; return; }
        [[ $key == *.* ]] || break
        key=${key%.*}
    done
    echo ""
}

echo
echo "== Cloister reliability and attack suite: summary ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
printf '%-34s | %-26s | %s\n' "figure" "goal" "measured"
printf '%-34s-+-%-26s-+-%s\n' "$(printf -- '-%.0s' {1..34})" "$(printf -- '-%.0s' {1..26})" "--------"
# In the order recorded (a retried experiment records each of its runs).
while IFS=$'\t' read -r key value; do
    printf '%-34s | %-26s | %s\n' "$key" "$(goal_of "$key")" "$value"
done <"$CLOISTER_SUITE_FIGURES"
echo

# A goal with no figure, or a check that was skipped, is no evidence: it fails its part.
part_of() {
    case $1 in
    load* | crash*) echo load ;;
    prefix_timing*) echo prefix ;;
    *) echo "${1%%.*}" ;;
    esac
}
has_figure() { awk -F'\t' -v k="$1" '$1 == k || index($1, k ".") == 1 { found = 1 } END { exit !found }' "$CLOISTER_SUITE_FIGURES"; }
for key in "${!GOAL[@]}"; do
    part=$(part_of "$key")
    [[ " $PARTS " == *" $part "* ]] && [ "${STATUS[$part]}" = pass ] || continue
    if ! has_figure "$key"; then
        echo "MISSING: no figure for $key"
        STATUS[$part]="FAIL (figure $key missing)"
    fi
done
while IFS=$'\t' read -r key value; do
    part=$(part_of "$key")
    if [[ $value == SKIPPED* ]] && [ "${STATUS[$part]:-}" = pass ]; then
        STATUS[$part]="FAIL ($key skipped)"
    fi
done <"$CLOISTER_SUITE_FIGURES"

failed=0
for part in $PARTS; do
    printf '%-13s %s\n' "$part" "${STATUS[$part]}"
    [ "${STATUS[$part]}" = pass ] || failed=$((failed + 1))
done
echo "logs: $LOGS"
echo "suite: $(($(wc -w <<<"$PARTS") - failed)) parts passed, $failed failed"
[ "$failed" = 0 ]
