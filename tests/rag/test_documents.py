"""A document's life against the real Milvus: staged bytes kept only while something uses them, leases that
protect a live writer from recovery, a re-index that swaps generations, and delete leaving nothing behind."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from rag.catalog import DocumentRecord
from rag.documents import LEASE_SECONDS, doc_key
from rag.errors import DocumentBusyError
from rag.ingest import FileStatus, Stage
from rag.jobs import JobState
from rag.options import AskOptions
from rag.service import RagService
from rag.store import chunk_id
from tests.conftest import _drop
from tests.rag.test_jobs import _doc

pytestmark = pytest.mark.milvus


def _uploads(svc: RagService) -> list[str]:
    folder = Path(svc.settings.data_dir) / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _keyword_ids(svc: RagService, doc_id: str) -> set[str]:
    assert svc.store.keyword is not None  # the embedded 2.3 server: BM25 lives in the local index
    return svc.store.keyword.chunk_ids(doc_id)


def test_uploads_keep_only_the_bytes_of_indexed_documents(service: RagService, tmp_path: Path) -> None:
    good = _doc(tmp_path, "good.txt").read_bytes()
    uploads = [
        ("good.txt", io.BytesIO(good)),
        ("empty.txt", io.BytesIO(b"")),
        ("broken.pdf", io.BytesIO(b"%PDF-1.7 this is not a PDF at all" * 20)),
        ("copy of good.txt", io.BytesIO(good)),  # the same bytes under another name: unchanged
        ("good.md", io.BytesIO(good)),  # the same bytes with another type: unchanged, its copy goes
    ]
    job = service.start_upload_job(uploads, owner="alice")
    final = service.wait_job(job.id, timeout=300)

    statuses = [f.status for f in final.files]
    assert statuses == [
        FileStatus.INDEXED,
        FileStatus.FAILED,
        FileStatus.FAILED,
        FileStatus.UNCHANGED,
        FileStatus.UNCHANGED,
    ], final.files
    assert "empty.txt" in (final.files[1].error or "") and "broken.pdf" in (final.files[2].error or "")
    (record,) = service.documents()
    assert _uploads(service) == [record.stored_path]


def test_a_cancelled_upload_leaves_no_bytes(service: RagService, tmp_path: Path) -> None:
    big = _doc(tmp_path, "big.txt", sentences=3000)
    job = service.start_upload_job([("big.txt", io.BytesIO(big.read_bytes()))], owner="bob")
    while (snap := service.job(job.id)) and snap.active and snap.files[0].chunks_embedded == 0:
        time.sleep(0.05)
    assert service.cancel_job(job.id)
    final = service.wait_job(job.id, timeout=120)
    assert final.state == JobState.CANCELLED and final.files[0].stage == Stage.CANCELLED
    assert service.documents() == [] and service.count_chunks() == 0 and _uploads(service) == []


def test_recovery_spares_a_live_writer_and_removes_what_a_dead_one_left(
    make_settings, embedder, tmp_path: Path
) -> None:  # noqa: ANN001
    settings = make_settings()
    svc = RagService(settings, embedder=embedder)
    try:
        result = svc.ingest([_doc(tmp_path, "notes.txt")]).files[0]
        record = svc.library.get(result.doc_id)
        assert record is not None
        # Another process (a CLI ingest on another machine sharing the data dir) is writing this document right
        # now: its claim is live.
        indexing = DocumentRecord(**{**record.model_dump(), "status": "indexing"})
        svc.library.catalog.begin(indexing, lease_until=time.time() + LEASE_SECONDS)
        owner = "another-host|4242|1|abc"
        assert svc.library.catalog.claim(doc_key(result.doc_id), owner, time.time() + LEASE_SECONDS, time.time())
    finally:
        svc.close()

    svc = RagService(settings, embedder=embedder)
    try:
        assert svc.recovered == ()
        assert svc.count_chunks(result.doc_id) == result.chunks
        with pytest.raises(DocumentBusyError) as busy:
            svc.delete_document(result.doc_id)
        assert "notes.txt is being indexed" in busy.value.user_message
        # The writer died: its lease runs out, and the next recovery round (no restart needed) removes what it left.
        svc.library.catalog.renew_claim(doc_key(result.doc_id), owner, time.time() - 1)
        assert [r.file_name for r in svc.runtime.run(svc.library.arecover_writes())] == ["notes.txt"]
        assert svc.documents() == [] and svc.count_chunks() == 0
        assert _keyword_ids(svc, result.doc_id) == set() and _uploads(svc) == []
        assert svc.library.catalog.list(status=None) == [] and svc.library.catalog.claims() == {}
    finally:
        _drop(svc)


def test_reindex_swaps_generations_and_a_failed_one_keeps_the_old(service: RagService, corpus: Path) -> None:
    result = service.ingest([corpus / "zoo.pdf"]).files[0]
    doc_id, chunks = result.doc_id, result.chunks
    assert doc_id is not None
    question = "How do I create a zoo series from a numeric vector?"
    before = service.retrieve(question, AskOptions(top_k=3))

    # A re-index stopped half-way (cancelled while writing): the current chunks stay and keep answering.
    job = service.reindex_document(doc_id, owner="alice")
    while (snap := service.job(job.id)) and snap.active and snap.files[0].chunks_done == 0:
        time.sleep(0.05)
    service.cancel_job(job.id)
    assert service.wait_job(job.id, timeout=300).state == JobState.CANCELLED
    record = service.library.get(doc_id)
    assert record is not None and record.generation == 0 and record.pending is None
    old_ids = {chunk_id(doc_id, i) for i in range(chunks)}
    assert service.runtime.run(service.store.achunk_ids(doc_id)) == old_ids == _keyword_ids(service, doc_id)
    assert [s.text for s in service.retrieve(question, AskOptions(top_k=3))] == [s.text for s in before]

    # A re-index that finishes makes the next generation current and removes the previous one.
    job = service.reindex_document(doc_id, owner="alice")
    final = service.wait_job(job.id, timeout=600)
    assert final.state == JobState.DONE and final.files[0].status == FileStatus.REPLACED, final
    record = service.library.get(doc_id)
    assert record is not None and record.generation == 1 and record.status == "indexed"
    new_ids = {chunk_id(doc_id, i, 1) for i in range(record.chunks)}
    assert service.runtime.run(service.store.achunk_ids(doc_id)) == new_ids == _keyword_ids(service, doc_id)
    assert [s.file_name for s in service.retrieve(question, AskOptions(top_k=3))][0] == "zoo.pdf"
    assert len(_uploads(service)) == 1  # the stored bytes were re-read, not copied again


def test_delete_leaves_no_chunk_keyword_entry_or_bytes(service: RagService, tmp_path: Path) -> None:
    keep = service.ingest([_doc(tmp_path, "keep.txt")]).files[0]
    gone = service.ingest([_doc(tmp_path, "gone.txt")]).files[0]
    stored = service.library.storage.local_path(service.library.resolve(gone.doc_id).stored_path)
    (stored.parent / f"{stored.name}.ocr.json").write_text("{}")  # a file derived from the bytes

    record = service.delete_document(gone.doc_id[:12])

    assert record.file_name == "gone.txt"
    assert [d.doc_id for d in service.documents()] == [keep.doc_id]
    assert service.count_chunks(gone.doc_id) == 0 and _keyword_ids(service, gone.doc_id) == set()
    assert not stored.exists() and not any(p.startswith(stored.name) for p in _uploads(service))
    assert service.count_chunks(keep.doc_id) == keep.chunks
