#!/usr/bin/env bash
# API conformance: schemathesis against the live server, driven by the server's own OpenAPI
# document (GET /openapi.json). Starts the real binary on a throw-away dev state, mints a token
# with every scope, and fails if schemathesis finds a failure (5xx, a status, content type,
# header or body the document does not describe, a schema-invalid request that is accepted, an
# operation that ignores missing auth, ...).
#
#   bash tests/schemathesis/run.sh            # needs: cargo, python3 (venv), network to PyPI once
#   ST_MAX_EXAMPLES=50 bash tests/schemathesis/run.sh
#
# Bounded cost: generation requests run with the server's `limits.max_tokens_cap = 8` (and chat's
# default 8), so every completion is at most 8 tokens; at most ST_MAX_EXAMPLES (default 25)
# generated cases per operation and phase.
#
# Deliberate deviations (README.md here):
# - positive_data_acceptance also accepts 400 for schema-valid requests: limits a JSON schema
#   cannot express (tokens vs context window, byte lengths, vocabulary, plan policy, the
#   server's cap) are refused with an OpenAI 400 body (schemathesis.toml).
# - hooks.py sets a string `model` to the served id, so cases reach the engine instead of 404.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

ST_VERSION=4.32.5
VENV=${ST_VENV:-$ROOT/target/schemathesis-venv}
MAX_EXAMPLES=${ST_MAX_EXAMPLES:-25}
PORT=${ST_PORT:-18443}
MODEL=smollm2-135m-instruct

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi

cargo build --locked --quiet
BIN=$ROOT/target/debug/cloister

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# A config of its own: a port of its own, no admin listener, a roomy plan (so the run tests the
# API, not the rate limiter) whose completions stay short.
cat >"$WORK/cloister.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
queue_capacity = 64
require_locked_weights = false
[tls]
cert = "state/tls/cert.pem"
key = "state/tls/key.pem"
[model]
id = "$MODEL"
sealed = "state/models/$MODEL.sealed"
[keys]
keyring = "state/keys/kek.json"
trusted_publishers = [{ id = "dev-publisher", public_key = "state/keys/publisher.pub.pem" }]
[auth]
jwks = "state/keys/jwks.json"
issuer = "https://cloister.schemathesis.local"
audience = "cloister"
dev_issuer_key = "state/keys/jwt-issuer.pem"
[limits]
max_tokens_cap = 8
chat_default_max_tokens = 8
[ledger]
path = "state/state/ledger.sqlite"
[audit]
path = "state/state/audit.log"
signing_key = "state/keys/audit.pem"
public_key = "state/keys/audit.pub.pem"
log_id = "cloister-schemathesis"
key_id = "dev-audit-1"
[watermark]
keys = "state/keys/watermark.json"
[plans.fuzz]
requests_per_second = 10000
tokens_per_minute = 100000000
token_burst = 10000000
max_context_tokens = 8192
max_tokens = 8
max_queued = 64
[plans.fuzz.confidence]
logprobs = true
max_top_logprobs = 20
logprob_requests_per_day = 1000000
[[tenants]]
id = "demo"
plan = "fuzz"
TOML

"$BIN" quickstart --no-serve --config "$WORK/cloister.toml" --state-dir "$WORK/state" >/dev/null
TOKEN=$("$BIN" token mint --tenant demo --config "$WORK/cloister.toml" \
  --scope inference --scope usage:read --scope watermark:detect --scope admin)

CLOISTER_LOG=warn "$BIN" serve --config "$WORK/cloister.toml" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 120); do
  curl -ksf "https://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
  sleep 0.5
done

status=0
CLOISTER_MODEL=$MODEL SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$ROOT/tests/schemathesis" \
  "$VENV/bin/st" --config-file "$ROOT/tests/schemathesis/schemathesis.toml" run \
  "https://127.0.0.1:$PORT/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --tls-verify false \
  --checks all \
  --max-examples "$MAX_EXAMPLES" \
  --seed "${ST_SEED:-1}" \
  --workers 2 \
  --request-timeout 60 \
  --no-color \
  "$@" || status=$?

# A crash or panic would show here even when every response looked fine.
if grep -E "panicked|ERROR" "$WORK/server.log"; then
  echo "server logged errors (above)" >&2
  status=1
fi
kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server exited during the run" >&2; status=1; }
exit "$status"
