#!/usr/bin/env bash
# Fuzz smoke test for CI: builds every cargo-fuzz target and runs each for a short time on its
# committed corpus (fuzz/corpus/<target>/), failing on any crash, panic, timeout or OOM.
#
# Usage: fuzz/smoke.sh [target ...]        (default: every target in fuzz/Cargo.toml)
# Environment:
#   FUZZ_SECONDS    time per target (default 25)
#   FUZZ_TOOLCHAIN  rustup toolchain, e.g. "nightly" (default: cargo's default toolchain; no
#                   rustup needed). Works on stable: cargo-fuzz's coverage flags
#                   (-Cpasses=sancov-module, -Cllvm-args=...) are stable; only sanitizers need
#                   nightly (-Zsanitizer), so the default is --sanitizer none.
#   FUZZ_SANITIZER  none (default) | address (needs FUZZ_TOOLCHAIN=nightly; installed via rustup
#                   if missing). Rust code is memory-safe outside `unsafe`, so ASan adds little.
#   CARGO_FUZZ_VERSION  cargo-fuzz version installed when `cargo fuzz` is missing (0.13.2).
#
# Needs: cargo, a C++ compiler (libFuzzer is built from source by libfuzzer-sys), network access
# to crates.io the first time; rustup only with FUZZ_TOOLCHAIN. Tested on stable 1.95 with
# cargo-fuzz 0.13.2. The first build compiles the whole server with coverage instrumentation
# (minutes); -rss_limit_mb turns runaway memory into a failure. Crash inputs are kept in fuzz/artifacts/<target>/ (git-ignored);
# replay one with: cargo fuzz run --sanitizer none -a <target> fuzz/artifacts/<target>/<file>
set -euo pipefail

cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-25}"
toolchain="${FUZZ_TOOLCHAIN:-}"
sanitizer="${FUZZ_SANITIZER:-none}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz --version "${CARGO_FUZZ_VERSION:-0.13.2}"
fi
cargo=(cargo)
if [ -n "$toolchain" ]; then
    rustup toolchain list | grep -q "^$toolchain" ||
        rustup toolchain install "$toolchain" --profile minimal
    cargo=(cargo "+$toolchain")
fi
# -a: debug assertions (integer overflow checks) on; -O: optimized, as the server runs.
flags=(--sanitizer "$sanitizer" -a -O)

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <("${cargo[@]}" fuzz list)
fi

# The tokenizer targets use the real SmolLM2 tokenizer when its GGUF is cached locally; CI runs
# the synthetic one so results do not depend on the machine's cache.
export CLOISTER_FUZZ_SYNTHETIC_TOKENIZER=1

"${cargo[@]}" fuzz build "${flags[@]}"
for t in "${targets[@]}"; do
    # New inputs go to a scratch folder so the run does not dirty the committed corpus. One
    # in-process job (no -jobs/-workers): its output and exit status are the run's.
    work="$(mktemp -d)"
    mkdir -p "artifacts/$t"
    echo "== fuzz $t for ${seconds}s"
    "${cargo[@]}" fuzz run "${flags[@]}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1
    rm -rf "$work"
done
echo "fuzz smoke: ${#targets[@]} targets ran ${seconds}s each without a crash"
