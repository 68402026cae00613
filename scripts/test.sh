#!/usr/bin/env bash
# README command 2: set up (with test tools and the headless browser), then run the tests.
# Fails when a test fails and when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh train,serve,dev
if [ -x scripts/install-test-deps.sh ]; then scripts/install-test-deps.sh; fi
.venv/bin/ruff check edge_smw tests benchmarks
set +e
.venv/bin/python -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then echo "no tests ran" >&2; exit 1; fi
exit "$status"
