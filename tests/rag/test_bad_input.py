"""Bad input against the real embedded Milvus: each file fails alone, names itself and its reason, leaves nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pypdf import PdfWriter

from rag.ingest import FileStatus

pytestmark = pytest.mark.milvus


def _encrypted_pdf(path: Path) -> None:
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    with open(path, "wb") as fh:
        writer.write(fh)


def _textless_pdf(path: Path) -> None:
    writer = PdfWriter()
    for _ in range(3):
        writer.add_blank_page(width=612, height=792)
    with open(path, "wb") as fh:
        writer.write(fh)


def test_a_batch_of_bad_files_fails_file_by_file(service, corpus: Path, tmp_path: Path) -> None:  # noqa: ANN001
    bad = tmp_path / "bad"
    bad.mkdir()
    _encrypted_pdf(bad / "locked.pdf")
    _textless_pdf(bad / "scan.pdf")
    (bad / "empty.md").write_bytes(b"")
    (bad / "program.txt").write_bytes(bytes(range(256)) * 64)
    (bad / "data.xyz").write_text("some text")
    (bad / "corrupt.docx").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    (bad / "Отчёт 報告.md").write_text("# Квартальный отчёт\n\nВыручка выросла на 12 процентов. " * 20)
    files = sorted(bad.iterdir()) + [corpus / "pdfplumber_CHANGELOG.md"]
    report = service.ingest(files)
    by_name = {r.file: r for r in report.files}
    expected = {
        "locked.pdf": "encrypted",
        "scan.pdf": "no text layer",
        "empty.md": "empty",
        "program.txt": "binary",
        "data.xyz": "unsupported type",
        "corrupt.docx": "not a valid",
    }
    for name, reason in expected.items():
        result = by_name[name]
        assert result.status == FileStatus.FAILED, name
        assert name in result.error and reason in result.error, result.error
    assert by_name["Отчёт 報告.md"].status == FileStatus.INDEXED
    assert by_name["pdfplumber_CHANGELOG.md"].status == FileStatus.INDEXED
    good = by_name["Отчёт 報告.md"].chunks + by_name["pdfplumber_CHANGELOG.md"].chunks
    assert service.count_chunks() == good  # failed files left no chunk behind
    assert sorted(d.file_name for d in service.documents()) == ["pdfplumber_CHANGELOG.md", "Отчёт 報告.md"]
    assert service.retrieve("Выручка выросла")[0].file_name == "Отчёт 報告.md"


def test_huge_single_line_text_is_refused_quickly(service, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / "one-line.txt"
    with open(path, "w", encoding="ascii") as fh:
        for _ in range(50):
            fh.write("lorem ipsum dolor sit amet " * 38_000)  # about 1 MB per write, no newline at all
    assert path.stat().st_size > 50_000_000
    result = service.ingest([path]).files[0]
    assert result.status == FileStatus.FAILED and "RAG_MAX_CHUNKS_PER_FILE" in result.error
    assert service.count_chunks() == 0


def test_size_limit_is_configurable(make_settings, embedder, tmp_path: Path) -> None:  # noqa: ANN001
    from rag.service import RagService

    svc = RagService(make_settings(max_file_mb=0.001), embedder=embedder)
    try:
        path = tmp_path / "big.txt"
        path.write_text("word " * 1000)
        result = svc.ingest([path]).files[0]
        assert result.status == FileStatus.FAILED and "RAG_MAX_FILE_MB" in result.error and "big.txt" in result.error
    finally:
        svc.runtime.run(svc.store.adrop())
        svc.close()


def test_uploads_are_kept_under_content_hash_names(service, corpus: Path) -> None:  # noqa: ANN001
    import hashlib

    result = service.ingest([corpus / "zoo.pdf"]).files[0]
    record = service.documents()[0]
    assert record.stored_path == f"{result.doc_id}.pdf"  # a key in RAG_STORAGE_URL, not a path
    stored = service.library.storage.local_path(record.stored_path)
    uploads = (Path(service.settings.data_dir) / "uploads").resolve()
    assert stored.resolve().parent == uploads
    assert stored.name == f"{result.doc_id}.pdf"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == result.doc_id


def test_too_many_files_is_refused(make_settings, embedder, corpus: Path) -> None:  # noqa: ANN001
    from rag.errors import RagError
    from rag.service import RagService

    svc = RagService(make_settings(max_files=1), embedder=embedder)
    try:
        with pytest.raises(RagError) as err:
            svc.ingest([corpus / "zoo.pdf", corpus / "paul_graham_essay.txt"])
        assert "limit is 1" in err.value.user_message
    finally:
        svc.runtime.run(svc.store.adrop())
        svc.close()
