#!/usr/bin/env bash
# One prepared GPU check (DESIGN.md §10: the GPU machines have no Rust toolchain or NVRTC wheel).
#   Here (CPU machine):   benches/gpu-check.sh prepare <dir>   -> <dir>/gpu_device (test binary) + PTX
#   On the GPU machine:   benches/gpu-check.sh run <dir>       -> device tests + 1 GiB throughput line
# libnvrtc (109 MB) is too big to carry, so the PTX is compiled here by tests/nvrtc_compile.rs.
set -euo pipefail
mode=${1:?prepare|run}; dir=${2:?dir}
case $mode in
prepare)
  mkdir -p "$dir"
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
  CLOISTER_REQUIRE_NVRTC=1 CLOISTER_WRITE_PTX_DIR="$dir" cargo test --test nvrtc_compile
  bin=$(cargo test --features cuda --test gpu_device --no-run --message-format=json \
        | python3 -c 'import sys,json
for l in sys.stdin:
    m=json.loads(l)
    if m.get("executable") and m.get("target",{}).get("name")=="gpu_device": print(m["executable"])')
  cp "$bin" "$dir/gpu_device" ;;
run)
  CLOISTER_KERNEL_PTX_DIR="$dir" "$dir/gpu_device" --nocapture --test-threads=1 ;;
esac
