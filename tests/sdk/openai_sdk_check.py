"""The official OpenAI Python SDK against a running Cloister server, unchanged.

Run by tests/openai_sdk.rs with CLOISTER_URL, CLOISTER_TOKEN, CLOISTER_CA and CLOISTER_MODEL set.
Exits non-zero (with a message) on the first mismatch.
"""
import os
import ssl
import sys

import openai

url, token, ca, model = (os.environ[k] for k in ("CLOISTER_URL", "CLOISTER_TOKEN", "CLOISTER_CA", "CLOISTER_MODEL"))
# Only the SDK's own client type and the standard library: no direct httpx import, which the
# SDK does not promise (3.x depends on httpx2).
tls = ssl.create_default_context(cafile=ca)
client = openai.OpenAI(base_url=url + "/v1", api_key=token, http_client=openai.DefaultHttpxClient(verify=tls), max_retries=0)


def check(cond, what):
    if not cond:
        print("FAIL:", what, file=sys.stderr)
        sys.exit(1)


# Chat completion, non-streamed.
chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=16,
    temperature=0,
)
check(chat.object == "chat.completion", f"object {chat.object}")
check(chat.choices[0].message.role == "assistant", "role")
check(len(chat.choices[0].message.content or "") > 0, "empty chat content")
check(chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, "usage sum")

# Completion, streamed, with usage in the final chunk.
stream = client.completions.create(
    model=model,
    prompt="The capital of France is",
    max_tokens=8,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
text, usage, finish = "", None, None
for chunk in stream:
    if chunk.choices:
        text += chunk.choices[0].text
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
check(text.startswith(" Paris"), f"streamed text {text!r}")
check(finish == "length", f"finish_reason {finish}")
check(usage is not None and usage.completion_tokens == 8, f"usage {usage}")

# Streamed chat.
parts = []
for chunk in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8, stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
check(len("".join(parts)) > 0, "streamed chat content")

# Models listing.
check(any(m.id == model for m in client.models.list()), "model not listed")

# Errors map to the SDK's exception types.
try:
    client.completions.create(model=model, prompt="hi", max_tokens=0)
    check(False, "max_tokens=0 accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400, "400 expected")
try:
    client.completions.create(model="no-such-model", prompt="hi")
    check(False, "unknown model accepted")
except openai.NotFoundError:
    pass
bad = openai.OpenAI(base_url=url + "/v1", api_key="not-a-token", http_client=openai.DefaultHttpxClient(verify=tls), max_retries=0)
try:
    bad.models.list()
    check(False, "bad token accepted")
except openai.AuthenticationError:
    pass

# Rate limits: a tenant allowed 1 request/s gets the SDK's RateLimitError on a quick second
# call, and a client that may retry honours Retry-After and then succeeds.
rl_token = os.environ["CLOISTER_RL_TOKEN"]
rl = openai.OpenAI(base_url=url + "/v1", api_key=rl_token, http_client=openai.DefaultHttpxClient(verify=tls), max_retries=0)
rl.completions.create(model=model, prompt="hi", max_tokens=1)
try:
    rl.completions.create(model=model, prompt="hi", max_tokens=1)
    check(False, "second request within the rate limit window accepted")
except openai.RateLimitError as e:
    check(e.status_code == 429, "429 expected")
    check(int(e.response.headers["retry-after"]) >= 1, "retry-after header")
    check(e.body["code"] == "rate_limit_exceeded", f"code {e.body}")
patient = openai.OpenAI(base_url=url + "/v1", api_key=rl_token, http_client=openai.DefaultHttpxClient(verify=tls), max_retries=3)
r = patient.completions.create(model=model, prompt="hi", max_tokens=1)
check(r.usage.completion_tokens == 1, "retried request succeeded")

print("openai sdk: all checks passed")
