#!/usr/bin/env bash
# README command 2: set up (with test tools and the headless browser), then run the tests.
# Fails when a test fails, when no test ran, and when tests were skipped for want of setup
# (no real face crops, no browser) unless EDGE_SMW_ALLOW_SKIPS=1 says that is meant.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh train,serve,ray,openvino,dev
scripts/install-test-deps.sh || echo "warning: Chromium could not be installed; browser tests will skip" >&2
# Real face crops: $EDGE_SMW_SMILES_DIR, ../shared/data/smilesmiled, the user cache, or a
# checksum-verified download of the pinned SMILEsmileD archive when online.
.venv/bin/edge-smw data smiles --quiet \
  || echo "warning: no real face crops (offline?); the tests that need them will not run" >&2
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then echo "no tests ran" >&2; exit 1; fi
exit "$status"
