"""RagService as a whole: what it leaves on disk is private to the user running it."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from rag.conversations import ConversationStore, StoredTurn
from rag.service import RagService

pytestmark = pytest.mark.milvus


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_data_dir_and_its_databases_are_private(service: RagService, tmp_path: Path) -> None:
    previous = os.umask(0o022)  # the usual umask would leave new files readable by everyone
    try:
        source = tmp_path / "src" / "notes.txt"
        source.parent.mkdir()
        source.write_text("Giraffes eat acacia leaves. " * 40, encoding="utf-8")
        assert service.ingest([source]).files[0].status == "indexed"
        store = ConversationStore.from_settings(service.settings)
        store.append("sid", StoredTurn(role="user", content="What do giraffes eat?"))
    finally:
        os.umask(previous)

    data = service.settings.data_dir
    assert _mode(data) == 0o700
    on_sqlite = not service.settings.database_url  # with PostgreSQL no database file lives in the data dir
    for name in ("rag.sqlite3", "keyword.sqlite3") if on_sqlite else ():
        assert _mode(data / name) == 0o600, name
        assert _mode(data / f"{name}-wal") == 0o600, name  # SQLite's journal takes the database's mode
    store.close()


def test_the_loop_never_stalls_while_documents_are_indexed_searched_and_reopened(
    service: RagService, corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every blocking step (reading, chunking, embedding, packing rows, SQLite, decoding big results, opening a
    collection) runs in a worker thread, so a heartbeat on the shared loop keeps its beat. asyncio's own report of
    steps that held the loop 50 ms or more is printed with a failure, to name the culprit."""
    from rag.store import DocumentStore

    loop = service.runtime.loop
    lags: list[float] = []
    stop = asyncio.Event()

    def debug(on: bool) -> None:
        loop.set_debug(on)  # from the loop's own thread: coroutine origin tracking is per thread
        loop.slow_callback_duration = 0.05

    async def heartbeat() -> None:
        while not stop.is_set():
            started = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - started - 0.005)

    caplog.set_level(logging.WARNING, logger="asyncio")
    service.runtime.call_soon(lambda: debug(True))
    beat = service.runtime.submit(heartbeat())
    try:
        report = service.ingest([corpus / "zoo.pdf", corpus / "federal-register-2020-17221.pdf"])
        assert all(f.status == "indexed" for f in report.files)

        async def questions() -> None:
            await asyncio.gather(*(service.engine.aretrieve(q) for q in QUESTIONS * 8))

        service.runtime.run(questions(), timeout=120)
        reopened = service.runtime.run(
            DocumentStore.abuild(service.settings, service.connection, service.embedder.dim, service.embedder.model_id)
        )
        service.runtime.run(reopened.aclose())
        service.delete_document(report.files[1].doc_id or "")
    finally:
        service.runtime.call_soon(stop.set)
        beat.result(10)
        service.runtime.call_soon(lambda: debug(False))
    slow = [r.getMessage()[-200:] for r in caplog.records if r.name == "asyncio" and " took " in r.getMessage()]
    lags.sort()
    assert len(lags) > 100
    # The heartbeat also waits for the GIL and the CPU (two cores shared with the embedding threads and Milvus):
    # single late beats are scheduling, so the bound holds for 95 beats in 100.
    p95 = lags[int(len(lags) * 0.95)]
    assert p95 < 0.05, f"p95 {p95 * 1000:.0f} ms, slowest {[round(x * 1000) for x in lags[-5:]]} ms; slow steps: {slow}"


QUESTIONS = ["How do I create a zoo series?", "How many airplanes does the AD affect?", "aggregate by month"]
