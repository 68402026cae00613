#!/usr/bin/env bash
# Create .venv (once) and install edge-smw with its extras, pinned by constraints.txt.
# Idempotent: a second run only checks. Usage: scripts/setup.sh [extras, default train,serve,ray,openvino,dev]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train,serve,ray,openvino,dev}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "edge-smw needs Python >= 3.10 (found $("$python" --version))" >&2; exit 1; }
  "$python" -m venv .venv
fi
stamp=".venv/.edge-smw-installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-$extras"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c constraints.txt -e ".[$extras]"
  rm -f .venv/.edge-smw-installed-*
  touch "$stamp"
fi
