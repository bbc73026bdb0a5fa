#!/usr/bin/env bash
# Create .venv and install everything the app needs (idempotent). Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/pip install -q -r requirements-dev.txt
else
  .venv/bin/pip install -q -r requirements.txt
  # The embedding backend is built here (ONNX export, and auto's timing of the backends: 1-2 minutes, once per
  # model and machine) so that the app's first start does not; the tests keep their own cache.
  HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} .venv/bin/python -m rag models build ||
    echo "setup: the embedding backend could not be built (see above); the app will embed with torch" >&2
fi
