#!/usr/bin/env bash
# One-step set-up: a virtual environment in .venv with stg and everything it needs.
# Safe to re-run: it only installs what is missing. Uses python3 (3.10+) from PATH, or $PYTHON.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -r requirements.txt
echo "stg is installed in .venv ($(.venv/bin/stg --help >/dev/null && echo ok))"
