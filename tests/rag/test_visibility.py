""" "Indexed" means searchable: from a new process, at once, with the machine busy, under the app's default
Session consistency (a fresh client has no write of its own to wait for)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.milvus
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cpu_burners() -> Iterator[None]:
    """Every core busy while the test runs."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()


def run_cli(settings, *args: str) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    """`python -m rag ...` in a new process against the test's collection and data dir."""
    env = {
        **os.environ,
        "MILVUS_URI": settings.milvus_uri,
        "MILVUS_TOKEN": settings.milvus_token.get_secret_value(),
        "RAG_COLLECTION": settings.collection,
        "RAG_DATA_DIR": str(settings.data_dir),
        "RAG_CONSISTENCY": "Session",
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "rag", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def test_a_new_process_finds_what_ingest_just_indexed(make_settings, corpus: Path, cpu_burners) -> None:  # noqa: ANN001
    settings = make_settings(consistency_level="Session")
    try:
        ingested = run_cli(settings, "ingest", str(corpus / "python3.11-doc_whatsnew_3.1.html"), "--json")
        assert ingested.returncode == 0, ingested.stderr[-2000:]
        assert json.loads(ingested.stdout)["status"] == "indexed"
        asked = run_cli(
            settings, "ask", "Which new dictionary class remembers the order in which keys were inserted?", "--json"
        )
        assert asked.returncode == 0, asked.stderr[-2000:]
        sources = json.loads(asked.stdout)["sources"]
        assert sources and sources[0]["file_name"] == "python3.11-doc_whatsnew_3.1.html"
    finally:
        from pymilvus import MilvusClient

        client = MilvusClient(uri=settings.milvus_uri, token=settings.milvus_token.get_secret_value())
        client.drop_collection(settings.collection)
        client.close()
