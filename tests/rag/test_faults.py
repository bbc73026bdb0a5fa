"""Faults against the real embedded Milvus: a restart under a running app, a stop in the middle of an ingestion.

These stop the shared server, so they run in their own pytest pass (`-m restart`, see scripts/test.sh).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from rag.ingest import FileStatus
from rag.options import AskOptions

pytestmark = [pytest.mark.milvus, pytest.mark.restart]


def test_question_after_milvus_restart_needs_no_app_restart(service, milvus_server, corpus: Path) -> None:  # noqa: ANN001
    service.ingest([corpus / "zoo.pdf"])
    before = service.retrieve("irregular time series", options=AskOptions(top_k=3))
    old = milvus_server.start()
    milvus_server.stop()
    new = milvus_server.start()
    assert new.proxy_port == old.proxy_port  # the restart keeps its port, so clients reconnect
    after = service.retrieve("irregular time series", options=AskOptions(top_k=3))
    assert [s.text for s in after] == [s.text for s in before]


def test_milvus_stopped_mid_ingestion_then_retry_is_exact(service, milvus_server, corpus: Path) -> None:  # noqa: ANN001
    big = corpus / "doj_ust_chapter13_trustee_handbook_2012.docx"
    job = service.start_job([big], owner="t")
    deadline = time.time() + 180
    while time.time() < deadline and service.job(job.id).files[0].chunks_done == 0:
        time.sleep(0.05)
    stopper = threading.Thread(target=milvus_server.stop)
    stopper.start()
    final = service.wait_job(job.id, timeout=300)
    stopper.join()
    result = final.files[0]
    assert result.status == FileStatus.FAILED
    assert "Milvus" in (result.error or "") and big.name in (result.error or "")
    milvus_server.start()
    retry = service.ingest([big]).files[0]
    assert retry.status == FileStatus.INDEXED
    assert service.count_chunks(retry.doc_id) == retry.chunks == service.count_chunks()
    assert [d.file_name for d in service.documents()] == [big.name]


def test_ask_at_once_after_a_restart_finds_indexed_chunks(make_settings, embedder, milvus_server, corpus: Path) -> None:  # noqa: ANN001
    """After Milvus restarts, a new process that asks at once either finds the chunks or waits; it never
    answers that no document matches."""
    from rag.service import RagService
    from tests.rag.test_visibility import run_cli

    settings = make_settings(consistency_level="Session")
    svc = RagService(settings, embedder=embedder)
    svc.ingest([corpus / "zoo.pdf"])
    svc.close()
    milvus_server.stop()
    milvus_server.start()
    asked = run_cli(settings, "ask", "Which R package provides a class for irregular time series?", "--json")
    assert asked.returncode == 0, asked.stderr[-2000:]
    sources = json.loads(asked.stdout)["sources"]
    assert sources and all(s["file_name"] == "zoo.pdf" for s in sources)
