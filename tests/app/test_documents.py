"""The documents page: the table, delete after confirming, and re-index."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.support import AppEnv

pytestmark = pytest.mark.milvus

DOCUMENTS = "pages/documents.py"


def _ingest(app_env: AppEnv, tmp_path: Path, **texts: str) -> dict[str, str]:
    folder = tmp_path / "src"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
        paths.append(folder / name)
    report = app_env.service().ingest(paths)
    return {r.file: r.doc_id for r in report.files}


def test_no_documents(app_env: AppEnv) -> None:
    at = app_env.app(DOCUMENTS)
    at.run()
    assert not at.exception
    assert "No documents" in at.info[0].value
    assert not at.dataframe


def test_table_lists_name_type_pages_chunks_size_added(app_env: AppEnv, tmp_path: Path) -> None:
    _ingest(app_env, tmp_path, **{"a.txt": "Alpacas hum. " * 50, "b.md": "# Bees\n\nBees dance. " * 20})
    at = app_env.app(DOCUMENTS)
    at.run()

    table = at.dataframe[0].value
    assert list(table.columns) == ["Name", "Type", "Pages", "Chunks", "Size", "Added"]
    assert sorted(table["Name"]) == ["a.txt", "b.md"]
    assert sorted(table["Type"]) == ["md", "txt"]
    assert list(table["Pages"]) == ["—", "—"]  # formats without pages: a dash, never "None"
    assert (table["Chunks"] > 0).all()
    assert all(size.endswith(("B", "KB")) for size in table["Size"])


def test_delete_asks_for_confirmation(app_env: AppEnv, tmp_path: Path) -> None:
    ids = _ingest(app_env, tmp_path, **{"a.txt": "Alpacas hum. " * 50, "b.txt": "Bees dance. " * 50})
    service = app_env.service()
    at = app_env.app(DOCUMENTS)
    at.run()
    at.multiselect(key="documents.selected").set_value([ids["a.txt"]]).run()
    at.button(key="documents.delete").click().run()

    assert "Delete 1 document(s)" in at.warning[0].value
    assert len(service.documents()) == 2  # nothing happens before confirming
    at.button(key="documents.cancel_delete").click().run()
    assert not at.warning and len(service.documents()) == 2

    at.multiselect(key="documents.selected").set_value([ids["a.txt"]]).run()
    at.button(key="documents.delete").click().run()
    at.button(key="documents.confirm_delete").click().run()

    assert not at.exception
    assert [d.file_name for d in service.documents()] == ["b.txt"]
    assert service.count_chunks(ids["a.txt"]) == 0
    assert "Deleted 1 document(s)" in at.success[0].value
    assert list(at.dataframe[0].value["Name"]) == ["b.txt"]
    assert at.multiselect(key="documents.selected").value == []


def test_reindex_starts_a_job_for_this_session(app_env: AppEnv, tmp_path: Path) -> None:
    ids = _ingest(app_env, tmp_path, **{"a.txt": "Alpacas hum. " * 50})
    service = app_env.service()
    chunks = service.documents()[0].chunks
    at = app_env.app(DOCUMENTS)
    at.run()
    at.multiselect(key="documents.selected").set_value([ids["a.txt"]]).run()
    at.button(key="documents.reindex").click().run()

    assert not at.exception
    assert "Re-indexing 1 document(s)" in at.success[0].value
    jobs = service.list_jobs(owner=app_env.sid)
    assert len(jobs) == 1
    done = service.wait_job(jobs[0].id, timeout=120)
    assert done.state == "done"
    assert [(d.file_name, d.chunks) for d in service.documents()] == [("a.txt", chunks)]
    assert service.count_chunks(ids["a.txt"]) == chunks
    at.run()
    assert list(at.dataframe[0].value["Name"]) == ["a.txt"]
