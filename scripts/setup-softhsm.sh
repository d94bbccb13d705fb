#!/usr/bin/env bash
# Installs SoftHSM2 (the PKCS#11 token the `keys::pkcs11` tests run against) if it is missing.
# Idempotent; needs root (or sudo) only when it has to install. The tests create their own
# token in a temp dir, so nothing is configured system-wide here.
set -euo pipefail

MODULE="${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"

if command -v softhsm2-util >/dev/null 2>&1 && [ -f "$MODULE" ]; then
    echo "softhsm2 already installed: $(softhsm2-util --version), module $MODULE"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup-softhsm: need root or sudo to install softhsm2" >&2; exit 1
    fi
fi

if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends softhsm2
else
    echo "setup-softhsm: no apt-get; install SoftHSM2 (>= 2.6) with the system package manager" >&2
    exit 1
fi

if ! command -v softhsm2-util >/dev/null 2>&1 || [ ! -f "$MODULE" ]; then
    echo "setup-softhsm: softhsm2 installed but softhsm2-util or $MODULE is missing" >&2
    exit 1
fi
echo "softhsm2 installed: $(softhsm2-util --version), module $MODULE"
