#!/usr/bin/env bash
# The one prepared GPU check (issue 7, DESIGN.md §10). The GPU machines have no Rust toolchain and
# no network, so everything is built here and copied:
#
#   benches/gpu-check.sh prepare <dir>
#       (CPU machine) writes <dir>/ptx/*.ptx (NVRTC, tests/nvrtc_compile.rs), the GPU test binaries
#       <dir>/bin/gpu_device and <dir>/bin/gpu_model and the server <dir>/bin/cloister (feature
#       cuda, debug info stripped), and <dir>/reference/greedy.json. Needs libnvrtc.so.13 here
#       (pip nvidia-cuda-nvrtc==13.0.88); `serve` needs it there too (their Python has it).
#   benches/gpu-check.sh run <dir> <model.gguf>
#       (GPU machine) runs every GPU test and bench and prints the figures: kernel vs RustCrypto
#       on the device, CTR decrypt and zero-fill GB/s, sealed-load ÷ plaintext-load time, the
#       canary host-memory scan, greedy output of the sealed demo model against the llama.cpp
#       reference, per-tenant device KV pools, decode tokens/s next to the CPU engine, and
#       `cloister serve` with device = "cuda" answering the reference over HTTPS.
#       <model.gguf> is the demo model (SmolLM2-135M-Instruct Q4_1; sha256 checked by the tests).
#
# A few minutes end to end; see README.md "GPU path" for the lease logistics.
set -euo pipefail
mode=${1:?prepare|run}
dir=${2:?dir}
case $mode in
prepare)
  mkdir -p "$dir/ptx" "$dir/bin" "$dir/reference"
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
  CLOISTER_REQUIRE_NVRTC=1 CLOISTER_WRITE_PTX_DIR="$dir/ptx" cargo test --locked --test nvrtc_compile
  cargo test --locked --features cuda --test gpu_device --test gpu_model --no-run \
      --message-format=json \
    | python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    name = m.get("target", {}).get("name")
    if m.get("executable") and name in ("gpu_device", "gpu_model", "cloister"):
        print(name, m["executable"])' \
    | while read -r name exe; do objcopy --strip-debug "$exe" "$dir/bin/$name"; done
  ref=${CLOISTER_REFERENCE_DIR:-tests/data/reference}
  cp "$ref/greedy.json" "$dir/reference/"
  ls -la "$dir/bin" "$dir/ptx" ;;
run)
  model=${3:?model.gguf}
  dir=$(cd "$dir" && pwd)
  cache=$(mktemp -d)
  mkdir -p "$cache/models"
  ln -s "$(cd "$(dirname "$model")" && pwd)/$(basename "$model")" \
    "$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
  export CLOISTER_KERNEL_PTX_DIR="$dir/ptx" CLOISTER_CACHE_DIR="$cache" CLOISTER_GPU_MODEL="$model" \
    CLOISTER_REFERENCE_DIR="$dir/reference"
  export CLOISTER_BIN="$dir/bin/cloister"
  # The server compiles its kernels with NVRTC: use the one in the machine's Python if needed.
  nvrtc=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))' \
    2>/dev/null || true)
  [ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$nvrtc${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  status=0
  for t in gpu_device gpu_model; do
    echo "== $t"
    "$dir/bin/$t" --nocapture --test-threads=1 || status=1
  done
  exit $status ;;
*)
  echo "usage: $0 prepare|run <dir> [model.gguf]" >&2
  exit 2 ;;
esac
