"""Ingestion against the real embedded Milvus: ids, re-uploads, replacement, delete, cancel, bad files."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from rag.errors import DocumentNotFoundError
from rag.ingest import FileStatus, chunk_documents, clean_name, make_splitter
from rag.jobs import JobState
from rag.readers import read_file

pytestmark = pytest.mark.milvus


def test_whole_corpus_indexes_with_exact_chunk_counts(indexed_corpus) -> None:  # noqa: ANN001
    svc, report = indexed_corpus
    assert {f.status for f in report.files} == {FileStatus.INDEXED}, [f for f in report.files if f.error]
    assert len(report.files) == 14
    for result in report.files:
        assert result.chunks > 0
        assert svc.count_chunks(result.doc_id) == result.chunks
    docs = {d.file_name: d for d in svc.documents()}
    assert docs["zoo.pdf"].pages == 30 and docs["R-intro.pdf"].pages == 113
    assert svc.count_chunks() == report.chunks


def test_chunks_fit_the_embedding_window(embedder, make_settings, corpus: Path) -> None:  # noqa: ANN001
    splitter = make_splitter(make_settings(), embedder)
    for name in ("R-intro.pdf", "titanic_train.csv", "doj_ust_chapter13_trustee_handbook_2012.docx"):
        nodes = chunk_documents(read_file(corpus / name, name), splitter, "d" * 64, embedder.model_id, "x")
        worst = max(embedder.count_tokens(n.get_content(metadata_mode="embed")) for n in nodes)
        assert worst <= embedder.max_tokens, (name, worst)


def test_chunk_sizes_are_counted_untruncated_in_the_models_tokens(embedder) -> None:  # noqa: ANN001
    from rag.ingest import _token_ids

    count = _token_ids(embedder.tokenizer)
    for text in ("Giraffes eat acacia leaves.", "Tokenizers split words like unbelievability. " * 80):
        assert len(count(text)) == embedder.count_tokens(text) - 2  # [CLS] and [SEP] are not counted
    assert len(count("word " * 2000)) == 2000  # far past the model's window: nothing is cut


def test_same_bytes_are_already_indexed(service, corpus: Path, tmp_path: Path) -> None:  # noqa: ANN001
    first = service.ingest([corpus / "paul_graham_essay.txt"]).files[0]
    copy = tmp_path / "renamed.txt"
    shutil.copy(corpus / "paul_graham_essay.txt", copy)
    again = service.ingest([corpus / "paul_graham_essay.txt", copy]).files
    assert first.status == FileStatus.INDEXED
    assert [f.status for f in again] == [FileStatus.UNCHANGED, FileStatus.UNCHANGED]
    assert "already indexed" in (again[0].error or "")
    assert service.count_chunks() == first.chunks and len(service.documents()) == 1


def test_changed_file_replaces_old_version(service, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / "notes.md"
    path.write_text("# Notes\n\nThe launch code word is PELICAN. " * 40)
    v1 = service.ingest([path]).files[0]
    path.write_text("# Notes\n\nThe launch code word is now FLAMINGO. " * 60)
    v2 = service.ingest([path]).files[0]
    assert v1.status == FileStatus.INDEXED and v2.status == FileStatus.REPLACED and v1.doc_id != v2.doc_id
    assert service.count_chunks(v1.doc_id) == 0
    assert service.count_chunks() == v2.chunks
    assert [d.doc_id for d in service.documents()] == [v2.doc_id]
    assert "FLAMINGO" in service.retrieve("launch code word")[0].text


def test_delete_removes_every_chunk(service, corpus: Path) -> None:  # noqa: ANN001
    result = service.ingest([corpus / "zoo.pdf"]).files[0]
    assert service.count_chunks(result.doc_id) == result.chunks > 0
    record = service.delete_document(result.doc_id[:12])
    assert record.file_name == "zoo.pdf"
    assert service.count_chunks() == 0 and service.documents() == []
    assert not Path(record.stored_path).exists()
    with pytest.raises(DocumentNotFoundError):
        service.delete_document(result.doc_id)


def test_corrupt_file_fails_alone(service, corpus: Path, tmp_path: Path) -> None:  # noqa: ANN001
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7\n" + b"garbage" * 100)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    report = service.ingest([corpus / "pdfplumber_README.md", bad, empty, corpus / "unstructured_README.md"])
    statuses = {f.file: f for f in report.files}
    assert statuses["pdfplumber_README.md"].status == FileStatus.INDEXED
    assert statuses["unstructured_README.md"].status == FileStatus.INDEXED
    assert statuses["broken.pdf"].status == FileStatus.FAILED and "broken.pdf" in statuses["broken.pdf"].error
    assert "empty" in statuses["empty.txt"].error
    indexed = sum(f.chunks for f in report.files if f.status == FileStatus.INDEXED)
    assert service.count_chunks() == indexed
    assert {d.file_name for d in service.documents()} == {"pdfplumber_README.md", "unstructured_README.md"}


def test_cancel_leaves_nothing_half_done(service, corpus: Path) -> None:  # noqa: ANN001
    files = [corpus / "doj_ust_chapter13_trustee_handbook_2012.docx", corpus / "R-intro.pdf"]
    job = service.start_job(files, owner="me")
    deadline = time.time() + 120
    while time.time() < deadline:
        snap = service.job(job.id)
        if snap.files[0].chunks_done > 0:
            break
        time.sleep(0.05)
    assert service.cancel_job(job.id, owner="me")
    final = service.wait_job(job.id, timeout=120)
    assert final.state == JobState.CANCELLED
    assert all(f.status == FileStatus.CANCELLED for f in final.files)
    assert service.documents() == []
    assert service.count_chunks() == 0


def test_jobs_are_private_to_their_owner(service, corpus: Path) -> None:  # noqa: ANN001
    job = service.start_job([corpus / "python3.11-doc_whatsnew_3.1.html"], owner="alice")
    assert service.job(job.id, owner="bob") is None
    assert service.list_jobs(owner="bob") == []
    assert not service.cancel_job(job.id, owner="bob")
    final = service.wait_job(job.id, timeout=120)
    assert final.state == JobState.DONE and final.files[0].status == FileStatus.INDEXED
    assert [j.id for j in service.list_jobs(owner="alice")] == [job.id]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("../../etc/passwd", "passwd"),
        ("/abs/path/report.pdf", "report.pdf"),
        ("a\x00b\x1bc.txt", "abc.txt"),
        ("..\\..\\win.txt", "win.txt"),
        ("Отчёт.pdf", "Отчёт.pdf"),
        ("q" * 205 + ".txt", "q" * 205 + ".txt"),  # 209 characters: kept whole
        ("é" * 125 + ".txt", "é" * 125 + ".txt"),  # 254 bytes of UTF-8: still whole
        ("[x](mailto:a@b.c) <b>bold.txt", "[x](mailto:a@b.c) <b>bold.txt"),  # markup is the UI's to escape
        ("x" * 300 + ".pdf", None),
        ("é" * 200 + ".pdf", None),
    ],
)
def test_clean_name(raw: str, clean: str | None) -> None:
    out = clean_name(raw)
    if clean is not None:
        assert out == clean
    else:  # longer than any file system's name: cut to 255 bytes, the extension kept
        assert len(out.encode()) <= 255 and out.endswith("….pdf") and raw.startswith(out[:-5])


def test_no_stored_chunk_keeps_a_soft_hyphen(indexed_corpus) -> None:  # noqa: ANN001
    """pypdfium2 marks a hyphen at a line end with U+FFFE; every such word is rejoined before chunking."""
    svc, report = indexed_corpus
    texts = svc.store.keyword.texts(sorted(svc.runtime.run(svc.store.achunk_ids())))
    pdf_chunks = [text for text, _page in texts.values() if _page is not None]
    assert len(texts) == report.chunks and pdf_chunks
    assert not [t for t, _p in texts.values() if "\ufffe" in t or "\u00ad" in t]
    assert any("observations" in t for t in pdf_chunks)  # zoo.pdf's "obser\ufffevations", rejoined
