"""Only committed documents answer, against the real Milvus: an ingest killed mid-write (a real CLI process,
SIGKILL), a re-index racing a same-name upload from another engine, two engines writing the same bytes, and a
crash between a re-index's commit and its cleanup; `docs check` finds and repairs what is left."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag import documents
from rag.config import Settings
from rag.documents import LEASE_SECONDS, doc_key
from rag.errors import StoreUnavailableError
from rag.ingest import FileStatus
from rag.jobs import JobState
from rag.options import AskOptions
from rag.questions import QuestionService
from rag.service import RagService
from rag.store import chunk_id, chunk_stem
from tests.conftest import _drop
from tests.rag.test_jobs import _doc

pytestmark = pytest.mark.milvus
REPO = Path(__file__).resolve().parents[2]
MODES = ("dense", "keyword", "hybrid")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rag", *args]


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of `python -m rag ...` on the test's collection and data dir."""
    return {
        **os.environ,
        "MILVUS_URI": settings.milvus_uri,
        "MILVUS_TOKEN": settings.milvus_token.get_secret_value(),
        "RAG_COLLECTION": settings.collection,
        "RAG_DATA_DIR": str(settings.data_dir),
        "RAG_CONSISTENCY": "Strong",
        "RAG_DATABASE_URL": settings.database_url or "",
        **extra,
    }


def _run(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli(*args), cwd=REPO, env=_env(settings), capture_output=True, text=True, timeout=300)


def _milvus_ids(svc: RagService | QuestionService, doc_id: str | None = None) -> set[str]:
    """Chunk ids in Milvus, read with the sync client (no engine logic between the test and the server)."""
    from pymilvus import MilvusClient

    settings = svc.settings
    client = MilvusClient(uri=settings.milvus_uri, token=settings.milvus_token.get_secret_value())
    try:
        flt = f'doc_id == "{doc_id}"' if doc_id else 'doc_id != ""'
        rows = client.query(settings.collection, filter=flt, output_fields=["id"], consistency_level="Strong")
    finally:
        client.close()
    return {r["id"] for r in rows}


def _agree(svc: RagService) -> set[str]:
    """Milvus, the keyword index and the catalogue hold exactly the same chunk ids; returns them."""
    assert svc.store.keyword is not None
    expected = {
        chunk_id(r.doc_id, i, r.generation) for r in svc.library.list(None, status=None) for i in range(r.chunks)
    }
    assert {r.status for r in svc.library.list(None, status=None)} <= {"indexed"}
    assert _milvus_ids(svc) == svc.store.keyword.chunk_ids() == expected
    return expected


def _settled_ids(svc: QuestionService, doc_id: str) -> set[str]:
    """The chunk ids of a document once a killed writer's last requests have landed: an insert the process sent
    just before it died can still be applied after a first read."""
    ids, deadline = _milvus_ids(svc, doc_id), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        again = _milvus_ids(svc, doc_id)
        if again == ids:
            break
        ids = again
    return ids


def _sentence(path: Path, index: int = 1) -> str:
    return path.read_text(encoding="utf-8").split(". ")[index] + "."


def test_a_killed_ingest_never_answers_and_docs_check_repairs_it(make_settings, embedder, tmp_path: Path) -> None:  # noqa: ANN001
    settings = make_settings()
    svc = RagService(settings, embedder=embedder)
    kept = svc.ingest([_doc(tmp_path, "kept.txt")]).files[0]
    svc.close()  # no engine with its recovery runs until `docs check`
    big = _doc(tmp_path, "big.txt", sentences=4000)  # about 570 chunks: a minute of embedding
    doc_id = hashlib.sha256(big.read_bytes()).hexdigest()
    question = _sentence(big)  # in the first chunk, the first one stored

    ingest = subprocess.Popen(
        _cli("ingest", str(big)),
        cwd=REPO,
        env=_env(settings, RAG_INSERT_BATCH_SIZE="16"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    asker = QuestionService(settings, embedder=embedder)
    try:
        assert asker.store.keyword is not None
        deadline = time.monotonic() + 300
        while len(_milvus_ids(asker, doc_id)) < 16 or not asker.store.keyword.chunk_ids(doc_id):
            assert ingest.poll() is None, f"the ingest ended before it could be killed: {ingest.stderr.read()[-2000:]}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no chunk of the ingest reached Milvus in 5 minutes"
            time.sleep(0.05)
        ingest.send_signal(signal.SIGKILL)
        ingest.wait()
        stored = _settled_ids(asker, doc_id)

        # At once, with the writer's lease still running: its chunks are in Milvus and the keyword index...
        catalog = asker.catalog
        row = catalog.get(doc_id)
        assert row is not None and row.status == "indexing"
        assert catalog.claims(doc_key(doc_id))[doc_key(doc_id)][1] > time.time() + LEASE_SECONDS / 2
        assert 16 <= len(stored) < row.chunks and asker.store.keyword.chunk_ids(doc_id)
        # ...an unfiltered search would return them (so the check below can fail)...
        embedding = embedder.embed_query_sync(question)
        committed_only, asker.store.visibility = asker.store.visibility, None
        for mode in MODES:
            raw = asker.runtime.run(asker.store.asearch(embedding, 5, None, mode, question))
            assert doc_id in {h.node.metadata["doc_id"] for h in raw}, mode
        asker.store.visibility = committed_only
        # ...but no question returns them, in any mode, with neighbouring context or not.
        for mode in MODES:
            sources = asker.retrieve(question, AskOptions(retrieval=mode, top_k=5))  # type: ignore[arg-type]
            assert doc_id not in {s.doc_id for s in sources}, mode
            if mode != "keyword":
                assert sources and {s.doc_id for s in sources} == {kept.doc_id}, mode
    finally:
        if ingest.poll() is None:
            ingest.kill()
            ingest.wait()
        asker.close()

    # `docs check` reports what the dead writer left (before its lease expires: its process is known dead)...
    checked = _run(settings, "docs", "check", "--json")
    assert checked.returncode == 1, checked.stderr[-2000:]
    report = json.loads(checked.stdout)
    (finding,) = report["findings"]
    assert (finding["kind"], finding["doc_id"], finding["repaired"]) == ("unfinished-write", doc_id, False)
    assert finding["milvus"] == len(stored) and finding["keyword"] > 0 and not report["clean"]
    assert len(_milvus_ids(svc, doc_id)) == len(stored)  # a check alone changes nothing

    # ...and `--repair` removes it: chunks, keyword rows and the row. The killed ingest's job is not lost: it
    # waits for a worker to run it again (this engine runs none), so its stored bytes stay for it.
    repaired = _run(settings, "docs", "check", "--repair", "--json")
    assert repaired.returncode == 0, repaired.stderr[-2000:]
    report = json.loads(repaired.stdout)
    assert [(f["kind"], f["doc_id"], f["repaired"]) for f in report["findings"]] == [("unfinished-write", doc_id, True)]
    svc = RagService(settings.model_copy(update={"inprocess_worker": "off"}), embedder=embedder)
    try:
        assert [d.doc_id for d in svc.documents()] == [kept.doc_id]
        assert _agree(svc) == {chunk_id(kept.doc_id, i) for i in range(kept.chunks)}
        assert svc.library.catalog.claims() == {}  # the dead writer's claim was taken over, then given back
        (job,) = [j for j in svc.jobs.list() if j.state == "running"]  # its worker is gone: claimable again
        assert [f.file for f in job.files] == ["big.txt"]
        assert sorted(p.name for p in (Path(settings.data_dir) / "uploads").iterdir()) == sorted(
            [Path(svc.documents()[0].stored_path).name, f"{doc_id}.txt"]
        )
    finally:
        _drop(svc)


def test_two_engines_serialise_writers_through_the_catalogue(
    make_settings,
    embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    """Two engines on one data dir and collection stand for two processes: their in-process locks are their own,
    so only the catalogue's claims keep them apart."""
    settings = make_settings()
    one, two = RagService(settings, embedder=embedder), RagService(settings, embedder=embedder)
    try:
        # The same bytes from both at once: one indexes them, the other finds them indexed.
        same = _doc(tmp_path / "same", "same.txt")
        jobs = [one.start_job([same], owner="alice"), two.start_job([same], owner="bob")]
        ends = [one.wait_job(jobs[0].id, 300), two.wait_job(jobs[1].id, 300)]
        assert sorted(e.files[0].status for e in ends) == [FileStatus.INDEXED, FileStatus.UNCHANGED], ends
        _agree(one)

        # A re-index by one user racing a same-name upload (other bytes) by another. The re-index is held after its
        # first batch until the upload has ended, or has stored all its chunks and waited 2 s more: the upload reaches
        # its commit (which replaces the re-indexed document) while the re-index is still writing. The commit must
        # wait for the re-index, then remove the document whole: no chunk of the old one is left, let alone answers.
        first = one.ingest([_doc(tmp_path / "v1", "report.txt", sentences=600)]).files[0]
        old_question = _sentence(tmp_path / "v1" / "report.txt")
        upload_id: list[str] = []
        stored_at: list[float] = []
        real_add = one.store.aadd

        def upload_ended_or_waiting() -> bool:
            snap = two.job(upload_id[0]) if upload_id else None
            if snap is None:
                return False
            if 0 < snap.files[0].chunks_total == snap.files[0].chunks_done and not stored_at:
                stored_at.append(time.monotonic())
            return not snap.active or bool(stored_at and time.monotonic() - stored_at[0] > 2)

        async def held_add(nodes):  # noqa: ANN001, ANN202
            while nodes[0].metadata["chunk"] > 0 and not upload_ended_or_waiting():
                await asyncio.sleep(0.05)
            return await real_add(nodes)

        monkeypatch.setattr(one.store, "aadd", held_add)
        reindex = one.reindex_document(first.doc_id, owner="alice")
        while (snap := one.job(reindex.id)) and snap.active and snap.files[0].chunks_done == 0:
            time.sleep(0.02)
        assert snap is not None and snap.active, "the re-index ended before the upload started"
        newer = _doc(tmp_path / "v2", "other.txt").read_bytes()
        upload_id.append(two.start_upload_job([("report.txt", io.BytesIO(newer))], owner="bob").id)
        reindexed, uploaded = one.wait_job(reindex.id, 600), two.wait_job(upload_id[0], 600)
        assert _milvus_ids(one, first.doc_id) == set() and one.store.keyword.chunk_ids(first.doc_id) == set()  # type: ignore[union-attr]
        assert reindexed.state == JobState.DONE and uploaded.state == JobState.DONE
        assert reindexed.files[0].status == FileStatus.REPLACED, reindexed.files  # finished first...
        assert uploaded.files[0].status == FileStatus.REPLACED, uploaded.files  # ...then was replaced whole
        assert reindexed.files[0].finished_at <= uploaded.files[0].finished_at  # type: ignore[operator]
        names = sorted((d.file_name, d.doc_id) for d in one.documents())
        assert names == sorted([("report.txt", uploaded.files[0].doc_id), ("same.txt", ends[0].files[0].doc_id)])
        _agree(one)
        for mode in MODES:
            sources = two.retrieve(old_question, AskOptions(retrieval=mode, top_k=5))  # type: ignore[arg-type]
            assert first.doc_id not in {s.doc_id for s in sources}, mode
    finally:
        two.close()
        _drop(one)


def test_a_crash_between_commit_and_cleanup_is_finished_by_periodic_recovery(
    make_settings,
    embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    monkeypatch.setattr(documents, "RECOVERY_SECONDS", 0.5)
    svc = RagService(make_settings(), embedder=embedder)
    try:
        path = _doc(tmp_path, "notes.txt", sentences=300)
        result = svc.ingest([path]).files[0]
        doc_id = result.doc_id
        assert doc_id is not None
        question = _sentence(path, 20)
        before = {m: svc.retrieve(question, AskOptions(retrieval=m, top_k=5)) for m in MODES}  # type: ignore[arg-type]

        # The re-index commits its generation, then cannot remove the previous one (Milvus refuses the delete,
        # as if the process had died there): the document answers from the new generation only, top 5 still full.
        real_delete = svc.store.adelete_chunks

        async def refuse(ids: object) -> None:
            raise StoreUnavailableError("Milvus could not delete chunks (injected)")

        monkeypatch.setattr(svc.store, "adelete_chunks", refuse)
        job = svc.wait_job(svc.reindex_document(doc_id, owner="alice").id, 600)
        assert job.state == JobState.DONE and job.files[0].status == FileStatus.REPLACED, job.files
        record = svc.library.get(doc_id)
        assert record is not None and (record.status, record.generation, record.pending) == ("indexed", 1, 1)
        assert len(_milvus_ids(svc, doc_id)) == 2 * record.chunks  # two generations side by side
        embedding = embedder.embed_query_sync(question)
        for mode in MODES:
            hits = svc.runtime.run(svc.store.asearch(embedding, 5, None, mode, question))
            assert len(hits) == 5 and {h.node.node_id.rsplit("-", 1)[0] for h in hits} == {chunk_stem(doc_id, 1)}
            after = svc.retrieve(question, AskOptions(retrieval=mode, top_k=5))  # type: ignore[arg-type]
            assert [s.text for s in after] == [s.text for s in before[mode]], mode  # same passages, new chunks

        # Milvus accepts deletes again: recovery (every RECOVERY_SECONDS, no restart) removes the old generation.
        monkeypatch.setattr(svc.store, "adelete_chunks", real_delete)
        deadline = time.monotonic() + 60
        while (row := svc.library.get(doc_id)) is not None and row.pending is not None:
            assert time.monotonic() < deadline, "recovery did not finish the re-index's cleanup"
            time.sleep(0.2)
        assert _agree(svc) == {chunk_id(doc_id, i, 1) for i in range(record.chunks)}
    finally:
        _drop(svc)


def test_an_engine_on_another_catalogue_never_empties_a_shared_collection_at_start(
    make_settings,
    embedder,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,  # noqa: ANN001
) -> None:
    """An app started with the wrong RAG_DATABASE_URL (an empty catalogue) on a collection another database owns:
    its start-up check finds chunks it does not know, reports them and keeps them; only `docs check --repair`,
    asked for, removes them."""
    owner = make_settings()
    svc = RagService(owner, embedder=embedder)
    try:
        kept = svc.ingest([_doc(tmp_path, "kept.txt")]).files[0]
        assert kept.doc_id is not None
        ids = _milvus_ids(svc, kept.doc_id)
        assert len(ids) == kept.chunks
    finally:
        svc.close()
    stranger_settings = owner.model_copy(
        update={"data_dir": tmp_path / "other", "database_url": "", "inprocess_worker": "off"}
    )
    caplog.set_level("WARNING", logger="rag.documents")
    stranger = RagService(stranger_settings, embedder=embedder)
    try:
        deadline = time.monotonic() + 120
        while "another database may own them" not in caplog.text:
            assert time.monotonic() < deadline, f"the start-up check did not finish: {caplog.text[-2000:]}"
            time.sleep(0.2)
        assert "unknown-document" in caplog.text and "(repaired)" not in caplog.text
        assert _milvus_ids(stranger, kept.doc_id) == ids  # nothing removed
    finally:
        _drop(stranger)
