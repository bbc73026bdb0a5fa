#!/usr/bin/env bash
# One command for the whole test suite: installs the dev tools and Chromium, lints, runs every test
# against a real embedded Milvus (started once by the tests) and stops that server at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
# PostgreSQL's server binaries: the tests start their own throwaway cluster (tests/postgres.py).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
fi
export HF_HUB_OFFLINE=1
export RAG_TEST_MILVUS_DIR=${RAG_TEST_MILVUS_DIR:-$PWD/.pytest-milvus}
stop_milvus() { .venv/bin/python -m rag --data-dir "$RAG_TEST_MILVUS_DIR" milvus stop >/dev/null 2>&1 || true; }
.venv/bin/ruff check .
status=0
.venv/bin/python -m pytest -m "not restart" "$@" || status=$?
if [ "$status" = 0 ] && [ "$#" = 0 ]; then
  # The engine suite again on PostgreSQL: the same tests, the database chosen by RAG_TEST_DATABASE.
  RAG_TEST_DATABASE=postgresql .venv/bin/python -m pytest -m "not restart and not browser" -q tests/rag || status=$?
fi
if [ "$status" = 0 ]; then
  .venv/bin/python -m pytest -m restart -q "$@" || status=$?
fi
stop_milvus
exit "$status"
