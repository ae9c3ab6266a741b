#!/usr/bin/env bash
# Create ./.venv (if missing) and install pml-anchors + every plugin under plugins/ with the tested pins.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python scripts/install.py
