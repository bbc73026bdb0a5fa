"""The upload page: live progress of the session's jobs, cancel, and the summary when a job ends.

Most jobs are started through the same RagService the page uses, for the page's session id, as the
upload form would; one test drives the form itself (AppTest's file_uploader).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import update

from rag import schema
from rag.config import Settings
from tests.app.support import AppEnv, new_sid, page_text, write_doc

pytestmark = pytest.mark.milvus

UPLOAD = "pages/upload.py"


def test_no_jobs_shows_only_the_form(app_env: AppEnv) -> None:
    at = app_env.app(UPLOAD)
    at.run()

    assert not at.exception
    assert at.title[0].value == "Upload documents"
    assert not at.progress
    limit = Settings.model_fields["max_file_mb"].default
    assert f"{limit:g} MB each" in at.caption[0].value and ".pdf" in at.caption[0].value
    assert "a PDF up to 1000 pages" in at.caption[0].value  # RAG_MAX_PAGES


def test_a_running_job_shows_per_file_progress_and_can_be_cancelled(app_env: AppEnv, corpus: Path) -> None:
    service = app_env.service()
    job = service.start_job([corpus / "R-intro.pdf", corpus / "zoo.pdf"], owner=app_env.sid)

    at = app_env.app(UPLOAD)
    at.run()

    assert not at.exception
    texts = [p.proto.text for p in at.progress]
    assert texts[0].startswith("**Indexing 2 file(s)**")
    assert any("R-intro.pdf" in t for t in texts) and any("zoo.pdf" in t for t in texts)
    cancel = at.button(key=f"upload.cancel.{job.id}")
    cancel.click().run()

    ended = service.wait_job(job.id, timeout=120)
    assert ended.state == "cancelled"
    at.run()
    assert not at.button or all(b.key != f"upload.cancel.{job.id}" for b in at.button)
    assert any("cancelled" in w.value.lower() for w in at.warning)
    assert service.count_chunks() == sum(d.chunks for d in service.documents())


def test_a_finished_job_shows_indexed_unchanged_and_failed_with_reasons(app_env: AppEnv, tmp_path: Path) -> None:
    service = app_env.service()
    good = write_doc(tmp_path / "src", "giraffes.txt", "Giraffes eat acacia leaves in the savanna. " * 30)
    empty = write_doc(tmp_path / "src", "empty.txt", "")
    odd = write_doc(tmp_path / "src", "table.xyz", "not a supported type")
    first = service.start_job([good, empty, odd], owner=app_env.sid)
    service.wait_job(first.id, timeout=120)

    at = app_env.app(UPLOAD)
    at.run()

    assert not at.exception
    summary = at.warning[0].value
    assert "Indexed (1): giraffes.txt" in summary
    failed = at.error[0].value
    assert failed.startswith("Failed (2)")
    assert "**empty.txt**: is empty" in failed
    assert "**table.xyz**: has an unsupported type" in failed

    again = service.start_job([good], owner=app_env.sid)
    service.wait_job(again.id, timeout=120)
    at.run()
    assert "Already present (unchanged) (1): giraffes.txt" in at.success[0].value


def test_jobs_live_in_the_engine_not_the_tab(app_env: AppEnv, corpus: Path) -> None:
    service = app_env.service()
    job = service.start_job([corpus / "R-intro.pdf"], owner=app_env.sid)
    try:
        first_tab = app_env.app(UPLOAD)
        first_tab.run()
        second_tab = app_env.app(UPLOAD)  # a refresh or a second tab: same sid, new Streamlit session
        second_tab.run()
        stranger = app_env.app(UPLOAD, sid=new_sid())
        stranger.run()

        for at in (first_tab, second_tab):  # queued (names under its bar) or running (a bar per file)
            assert at.progress and "R-intro.pdf" in page_text(at)
        assert not stranger.progress and "R-intro.pdf" not in page_text(stranger)
        assert [j.id for j in service.list_jobs(owner=app_env.sid)] == [job.id]  # shown twice, started once
    finally:
        service.cancel_job(job.id)
        service.wait_job(job.id, timeout=120)


def test_jobs_are_listed_in_their_workspace_and_name_it(app_env: AppEnv, tmp_path: Path) -> None:
    service = app_env.service()
    research = service.create_workspace("Research")
    src = tmp_path / "src"
    mine = service.start_job([write_doc(src, "giraffes.txt", "Giraffes eat acacia leaves. " * 30)], owner=app_env.sid)
    theirs = service.start_job(
        [write_doc(src, "zebras.txt", "Zebras have stripes. " * 30)], owner=app_env.sid, workspace=research.id
    )
    for job in (mine, theirs):
        service.wait_job(job.id, timeout=120)

    at = app_env.app(UPLOAD)
    at.run()
    text = page_text(at)
    assert "giraffes.txt" in text and "zebras.txt" not in text
    assert "into default" in at.success[0].value and "Your uploads into **default**" in text

    at.selectbox(key="workspace.id").set_value(research.id).run()
    text = page_text(at)
    assert "zebras.txt" in text and "giraffes.txt" not in text
    assert "into Research" in at.success[0].value


def test_a_reindex_says_reindexed(app_env: AppEnv, tmp_path: Path) -> None:
    service = app_env.service()
    path = write_doc(tmp_path / "src", "notes.txt", "First version of the notes. " * 30)
    service.wait_job(service.start_job([path], owner=app_env.sid).id, timeout=120)
    write_doc(tmp_path / "src", "notes.txt", "Second version of the notes. " * 30)
    service.wait_job(service.start_job([path], owner=app_env.sid).id, timeout=120)
    at = app_env.app(UPLOAD)
    at.run()
    assert "Re-indexed (the older version replaced) (1): notes.txt" in at.success[0].value


def test_an_upload_is_indexed_and_its_bytes_are_stored_once(app_env: AppEnv) -> None:
    at = app_env.app(UPLOAD)
    at.run()
    at.file_uploader(key="upload.files").set_value(("zebras.txt", b"Zebras have stripes. " * 40, "text/plain"))
    at.button[0].click()  # the form's "Index files"
    at.run()

    assert not at.exception
    service = app_env.service()
    [job] = service.list_jobs(owner=app_env.sid)
    service.wait_job(job.id, timeout=120)
    at.run()

    assert "Indexed (1): zebras.txt" in at.success[0].value
    assert [d.file_name for d in service.documents()] == ["zebras.txt"]
    stored = service.library.storage.local_path(service.documents()[0].stored_path)
    assert stored.exists() and stored.parent == app_env.data_dir / "uploads"
    assert sorted(p.name for p in stored.parent.iterdir()) == [stored.name]  # one copy, no temporary file left
    assert not (app_env.data_dir / "incoming").exists()


def test_a_second_job_waits_its_turn_visibly_and_can_be_cancelled(
    app_env: AppEnv, corpus: Path, tmp_path: Path
) -> None:
    service = app_env.service()
    first = service.start_job([corpus / "R-intro.pdf"], owner=app_env.sid)
    second = service.start_job(
        [write_doc(tmp_path / "src", "later.txt", "Okapis live in forests. " * 30)], owner=app_env.sid
    )
    try:
        at = app_env.app(UPLOAD)
        at.run()

        assert not at.exception
        texts = [p.proto.text for p in at.progress]
        assert texts[0].startswith("**Indexing 1 file(s)**")  # the running job first, then the one waiting
        assert any(t.startswith("**Queued: 1 file(s)**") and "your upload above" in t for t in texts)
        assert "later.txt" in page_text(at)
        at.button(key=f"upload.cancel.{second.id}").click().run()

        assert service.job(second.id).state == "cancelled"
        assert service.job(first.id).state == "running"
        at.run()
        assert not any(t.startswith("**Queued") for t in (p.proto.text for p in at.progress))
    finally:
        service.cancel_job(first.id)
        service.wait_job(first.id, timeout=120)
    assert service.documents() == [] and service.count_chunks() == 0


def test_the_page_says_where_a_job_runs_and_when_its_worker_is_lost(
    app_env: AppEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A team deployment: the app runs no jobs itself; a worker on another machine claims the job; it then stops
    heart-beating (its heartbeat is set back a lease, as if that much time had passed)."""
    monkeypatch.setenv("RAG_INPROCESS_WORKER", "off")
    service = app_env.service()
    job = service.start_job([write_doc(tmp_path / "src", "memo.txt", "Quarterly figures. " * 40)], owner=app_env.sid)
    at = app_env.app(UPLOAD)
    at.run()
    assert "waits for a worker: none is running" in page_text(at)

    remote = "build-7|elsewhere|4242|1|abcd1234"  # another machine: only its lease tells whether it lives
    service.jobs.register(remote, "worker", 1)
    assert service.jobs.claim(remote).id == job.id
    at.run()
    shown = [c.value.replace("\\", "") for c in at.caption]
    assert ":material/dns: Running on build-7 (pid 4242) (worker)." in shown
    assert [(w.host, w.state, w.jobs) for w in service.queue_status().workers] == [("build-7", "running", [job.id])]

    with service.jobs.db.write() as conn:
        conn.execute(update(schema.workers).values(heartbeat_at=time.time() - 2 * service.settings.job_lease))
    at.run()
    assert any("build-7 (pid 4242) stopped answering (lost)" in w.value.replace("\\", "") for w in at.warning)
    assert [w.state for w in service.queue_status().workers] == ["lost"]
