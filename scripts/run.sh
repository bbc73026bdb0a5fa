#!/usr/bin/env bash
# One command for a fresh machine: install, start the embedded Milvus (unless MILVUS_URI is set), open the app.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
if [ -z "${MILVUS_URI:-}" ]; then
  .venv/bin/python -m rag milvus start
fi
exec .venv/bin/streamlit run app.py --server.address "${RAG_HOST:-127.0.0.1}" --server.port "${RAG_PORT:-8501}" "$@"
