#!/bin/bash
# Same-run speed comparison with the peer our users would otherwise pick: llama.cpp's own server
# (issue "Engine"). Both servers serve the same demo GGUF with the same thread count (all
# cores), and both are measured by the same client, ../shared/tools/openai-load.py:
#
#   - 1 stream, 128 tokens per request (3 requests): decode tokens/s and TTFT;
#   - 8 concurrent streams, 64 tokens each (16 requests): aggregate tokens/s and TTFT p95
#     (the peer runs with --parallel 4, as the issue specifies);
#   - prefill: 3 prompts per round of PREFILL_WORDS (default 400) random words, one token
#     generated, each prompt new to both servers: median TTFT and prompt tokens/s.
#
# Rounds alternate ours/peer (ROUNDS, default 2) and each side keeps its best, because these
# machines are noisy. Prints both servers' RSS after each phase too (weights resident once:
# RSS with 8 sequences ≤ RSS with 1 + their KV blocks).
#
#   bash benches/compare-peer.sh            # needs: cargo, python3; builds the peer once (~20 min)
#
# Cloister runs from the repo's dev state (`cloister quickstart --no-serve` creates it) on
# 127.0.0.1:8443 with configs/dev.toml, tenant `demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${CLOISTER_TOOLS:-$(readlink -f ../shared/tools)}
ROUNDS=${ROUNDS:-2}
PEER_PORT=18080
BIN=target/release/cloister
LOAD="python3 $TOOLS/openai-load.py"
OUT=$(mktemp -d)
trap 'kill $CL_PID $PEER_PID 2>/dev/null || true; rm -rf "$OUT"' EXIT
CL_PID=""
PEER_PID=""

cargo build --release --quiet --bin cloister
"$BIN" quickstart --no-serve >/dev/null
GGUF=$(ls "${XDG_CACHE_HOME:-$HOME/.cache}"/cloister/models/*.gguf | head -1)
TOKEN=$("$BIN" token mint --tenant demo)

rss() { awk '/^VmRSS/ {printf "%.0f MiB", $2 / 1024}' "/proc/$1/status"; }

start_cloister() {
  "$BIN" serve --config configs/dev.toml >"$OUT/cloister.log" 2>&1 &
  CL_PID=$!
  for _ in $(seq 1 120); do
    curl -skf https://127.0.0.1:8443/readyz >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "cloister did not become ready; log:" >&2
  cat "$OUT/cloister.log" >&2
  exit 1
}

ours() { $LOAD --url https://127.0.0.1:8443 --token "$TOKEN" --insecure --model smollm2-135m-instruct "$@"; }
peer() { $LOAD --url "http://127.0.0.1:$PEER_PORT" "$@"; }

start_cloister
PEER_PID=$("$TOOLS/peer-llamacpp" start "$GGUF" "$PEER_PORT" 4)
echo "idle RSS: cloister $(rss "$CL_PID"), llama.cpp $(rss "$PEER_PID")"

for round in $(seq 1 "$ROUNDS"); do
  for side in ours peer; do
    pid=$CL_PID; [ "$side" = peer ] && pid=$PEER_PID
    $side -c 1 -n 3 --max-tokens 128 --warmup 1 >"$OUT/$side-1-$round.json"
    one=$(rss "$pid")
    $side -c 8 -n 16 --max-tokens 64 --warmup 1 >"$OUT/$side-8-$round.json"
    echo "round $round $side: RSS after 1 stream $one, after 8 streams $(rss "$pid")"
  done
done

# Prefill: one long prompt, one generated token, so TTFT is the prompt's processing time. Every
# request gets a prompt neither server has seen (llama.cpp's prompt cache would otherwise skip
# the work); ours and the peer get the same prompts.
PREFILL_WORDS=${PREFILL_WORDS:-400}
prompt() { python3 -c "import random, sys
words = 'the of and to in is was for on that with as by at from it an be this which or are'.split()
words += 'river mountain garden letter window market silver winter morning answer'.split()
rng = random.Random(int(sys.argv[1]))
print('Summarize this text: ' + ' '.join(rng.choice(words) for _ in range($PREFILL_WORDS)))" "$1"; }
PROMPT_TOKENS=$(curl -sk https://127.0.0.1:8443/v1/completions -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' \
  -d "$(python3 -c 'import json, sys; print(json.dumps({"model": "smollm2-135m-instruct", "prompt": sys.argv[1], "max_tokens": 1}))' "$(prompt 0)")" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["usage"]["prompt_tokens"])')
for round in $(seq 1 "$ROUNDS"); do
  for i in 1 2 3; do
    p=$(prompt $((round * 10 + i)))
    for side in ours peer; do
      $side -c 1 -n 1 --warmup 0 --max-tokens 1 --prompt "$p" >"$OUT/$side-prefill-$round-$i.json"
    done
  done
done
echo "prefill prompt: $PROMPT_TOKENS tokens"

python3 - "$OUT" "$ROUNDS" "$PROMPT_TOKENS" <<'EOF'
import json, sys, pathlib
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def load(side, c):
    runs = []
    for r in range(1, rounds + 1):
        text = (out / f"{side}-{c}-{r}.json").read_text().strip().splitlines()
        runs.append(json.loads(text[-1]))
    return runs
def best(runs, key, hi=True):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return (max if hi else min)(vals)
rows = []
for c, label in [(1, "1 stream (128 tok)"), (8, "8 streams (64 tok)")]:
    o, p = load("ours", c), load("peer", c)
    for key, hi in [("tokens_per_s", True), ("ttft_p50_s", False), ("ttft_p95_s", False), ("errors", False)]:
        if key not in o[0]:
            continue
        bo, bp = best(o, key, hi), best(p, key, hi)
        ratio = (bo / bp) if bp else float("nan")
        rows.append((label, key, bo, bp, ratio))
# Prefill: the median over every round's prompts (each prompt is one cold request).
prompt_tokens = int(sys.argv[3])
def prefill(side):
    ttfts = sorted(json.loads(f.read_text().strip().splitlines()[-1])["ttft_p50_s"]
                   for f in out.glob(f"{side}-prefill-*.json"))
    return ttfts[len(ttfts) // 2]
po, pp = prefill("ours"), prefill("peer")
rows.append((f"prefill ({prompt_tokens} tok)", "ttft_median_s", po, pp, po / pp))
rows.append((f"prefill ({prompt_tokens} tok)", "tokens_per_s", prompt_tokens / po, prompt_tokens / pp, pp / po))
print("ratio = cloister / llama.cpp (higher is better for tokens/s, lower for TTFT)")
print(f"{'phase':<20} {'metric':<14} {'cloister':>10} {'llama.cpp':>10} {'ratio':>7}")
for label, key, bo, bp, ratio in rows:
    print(f"{label:<20} {key:<14} {bo:>10.3f} {bp:>10.3f} {ratio:>7.2f}")
EOF
