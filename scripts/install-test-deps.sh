#!/bin/sh
# Install what the test suite needs beyond the Python packages: Debian's chromium, used by
# tests/test_serve_browser.py to load `edge-smw serve`'s live page headless.
# Idempotent: does nothing when /usr/bin/chromium is already there. Needs root (or sudo).
#   usage: scripts/install-test-deps.sh && .venv/bin/pytest
set -eu

if [ -x /usr/bin/chromium ]; then
    echo "install-test-deps: chromium already installed ($(/usr/bin/chromium --version 2>/dev/null || echo unknown version))"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: no apt-get here; install Chromium so /usr/bin/chromium exists" >&2
    echo "install-test-deps: (the browser test skips with a reason without it)" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-test-deps: run as root (or install sudo) to apt-get install chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=600 update
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends chromium fonts-liberation
/usr/bin/chromium --version
