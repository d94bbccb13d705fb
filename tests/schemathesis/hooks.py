"""Schemathesis hooks of tests/schemathesis/run.sh.

`model` is any string in the schema (the served id is configuration, not code), so nearly
every generated request would stop at 404 `model_not_found`. A string `model` is replaced
with the served id so generation reaches validation and the engine; non-string values
(negative cases) are left alone so they stay invalid.
"""

import os

import schemathesis

MODEL = os.environ.get("CLOISTER_MODEL", "smollm2-135m-instruct")


# `before_call` rather than `map_body`: it runs in every phase (coverage cases too).
@schemathesis.hook
def before_call(ctx, case, kwargs):
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        body["model"] = MODEL
