#!/usr/bin/env bash
# README command 2: set up (with test tools and the headless browser), then run the tests.
# Fails when a test fails and when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh train,serve,ray,dev
scripts/install-test-deps.sh || echo "warning: Chromium could not be installed; browser tests will skip" >&2
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then echo "no tests ran" >&2; exit 1; fi
exit "$status"
