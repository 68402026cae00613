#!/usr/bin/env bash
# README command 1: set up, then run the main job on the built-in synthetic demo faces.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh train,serve,dev
exec .venv/bin/edge-smw demo --out "${DEMO_OUT:-demo-run}" "$@"
