#!/usr/bin/env bash
# Fuzz smoke test for CI: builds every cargo-fuzz target and runs each for a short time on its
# committed corpus (fuzz/corpus/<target>/), failing on any crash, panic, timeout or OOM.
#
# Usage: fuzz/smoke.sh [target ...]        (default: every target in fuzz/Cargo.toml)
# Environment:
#   FUZZ_SECONDS    time per target (default 25)
#   FUZZ_TOOLCHAIN  rustup toolchain (default: stable). With "nightly" the targets are built with
#                   AddressSanitizer; on stable they are built with --sanitizer none (libFuzzer's
#                   coverage instrumentation needs no nightly features; Rust code is memory-safe
#                   outside `unsafe`, so ASan adds little here).
#   CARGO_FUZZ_VERSION  cargo-fuzz version installed when `cargo fuzz` is missing (0.13.2).
#
# Needs: rustup, a C++ compiler (libFuzzer is built from source by libfuzzer-sys), network access
# to crates.io the first time. Crash inputs are kept in fuzz/artifacts/<target>/ (git-ignored);
# replay one with: cargo fuzz run --sanitizer none -a <target> fuzz/artifacts/<target>/<file>
set -euo pipefail

cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-25}"
toolchain="${FUZZ_TOOLCHAIN:-stable}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz --version "${CARGO_FUZZ_VERSION:-0.13.2}"
fi
if [ "$toolchain" = nightly ]; then
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
    sanitizer=address
else
    sanitizer=none
fi
# -a: debug assertions (integer overflow checks) on; -O: optimized, as the server runs.
flags=(+"$toolchain" --sanitizer "$sanitizer" -a -O)

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# The tokenizer targets use the real SmolLM2 tokenizer when its GGUF is cached locally; CI runs
# the synthetic one so results do not depend on the machine's cache.
export CLOISTER_FUZZ_SYNTHETIC_TOKENIZER=1

cargo "${flags[@]::1}" fuzz build "${flags[@]:1}"
for t in "${targets[@]}"; do
    # New inputs go to a scratch folder so the run does not dirty the committed corpus. One
    # in-process job (no -jobs/-workers): its output and exit status are the run's.
    work="$(mktemp -d)"
    mkdir -p "artifacts/$t"
    echo "== fuzz $t for ${seconds}s"
    cargo "${flags[@]::1}" fuzz run "${flags[@]:1}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1
    rm -rf "$work"
done
echo "fuzz smoke: ${#targets[@]} targets ran ${seconds}s each without a crash"
