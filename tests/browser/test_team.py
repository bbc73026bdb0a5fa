"""A team deployment on one machine: two app processes and two worker processes (`python -m rag worker`) on one
PostgreSQL, the embedded Milvus and a shared uploads folder; the apps run no jobs themselves.

- Six files uploaded through app A's page (two browser sessions, three files each) run on both workers, and app
  B's page shows their progress, where they run, and how they ended.
- A worker SIGKILLed mid-write leaves its job to the other, which indexes the file exactly once.

Every process has its own data dir (as separate machines would); they share only the database, Milvus and the
uploads folder (RAG_STORAGE_URL). One set of processes serves both tests (starting them is most of the cost).
"""

from __future__ import annotations

import re
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rag.config import load_settings
from rag.embeddings import Embedder
from rag.jobs import JobState
from rag.milvus_server import EmbeddedMilvus
from rag.service import RagService
from rag.store import chunk_id
from tests.browser.conftest import ARTIFACTS, milvus_app_environment, serve
from tests.conftest import _drop
from tests.postgres import PostgresCluster
from tests.rag.test_jobs import _doc
from tests.workers import live_pids, wait_for, worker_processes

pytestmark = [pytest.mark.browser, pytest.mark.milvus]


@dataclass
class Deployment:
    service: RagService  # the test's own view: queues nothing itself, reads the database, Milvus and the store
    apps: tuple[str, str]
    workers: dict[str, object]  # name -> Popen
    root: Path


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    milvus_server: EmbeddedMilvus,
    embedder: Embedder,
    postgres: PostgresCluster,
) -> Iterator[Deployment]:
    state = milvus_server.start()
    root = tmp_path_factory.mktemp("team")
    with postgres.database() as url:
        settings = load_settings(
            data_dir=root / "test",
            database_url=url,
            storage_url=str(root / "shared-uploads"),
            milvus_uri=state.uri,
            milvus_token=milvus_server.token,
            collection=f"t_{uuid.uuid4().hex[:12]}",
            consistency_level="Strong",
            inprocess_worker="off",
            job_lease=8.0,
            max_running_jobs=4,
        )
        service = RagService(settings, embedder=embedder, worker="none")
        shared = {
            "RAG_DATABASE_URL": url,
            "RAG_STORAGE_URL": settings.storage_url,
            "RAG_INPROCESS_WORKER": "off",
            "RAG_JOB_LEASE": "8",
            "RAG_MAX_RUNNING_JOBS": "4",
        }
        try:
            with worker_processes(settings, root) as start:
                workers = {name: start(name) for name in ("w1", "w2")}
                with (
                    serve(milvus_app_environment(state.uri, milvus_server.token, root / "a", settings.collection,
                                                 **shared), root / "a.log") as app_a,
                    serve(milvus_app_environment(state.uri, milvus_server.token, root / "b", settings.collection,
                                                 **shared), root / "b.log") as app_b,
                ):  # fmt: skip
                    pids = {proc.pid for proc in workers.values()}
                    wait_for(lambda: live_pids(service) == pids, 300, "both workers to register")
                    yield Deployment(service, (app_a, app_b), workers, root)
        finally:
            _drop(service)


def _upload(page, url: str, files: list[Path]) -> str:  # noqa: ANN001
    """Upload files on an app's page in a new browser session; returns the session id."""
    page.goto(f"{url}/upload")
    page.wait_for_selector("input[type=file]", state="attached")
    page.set_input_files("input[type=file]", [str(f) for f in files])
    for f in files:
        page.get_by_text(f.name, exact=True).first.wait_for()  # the upload reached app A
    page.get_by_role("button", name="Index files").click()
    page.get_by_text(re.compile(r"Indexing 3 file\(s\)|Queued: 3 file\(s\)")).first.wait_for()
    sid = re.search(r"sid=([\w-]+)", page.url)
    assert sid, page.url
    return sid.group(1)


def test_six_files_through_app_a_run_on_both_workers_and_show_on_app_b(
    deployment: Deployment,
    chromium,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    service, (app_a, app_b) = deployment.service, deployment.apps
    long = [_doc(tmp_path / "one", f"long{i}.txt", 900) for i in range(3)]  # keeps its worker busy a while
    short = [_doc(tmp_path / "two", f"short{i}.txt", 150) for i in range(3)]
    contexts = [chromium.new_context(viewport={"width": 1300, "height": 950}) for _ in range(3)]
    try:
        first, second, watcher = (c.new_page() for c in contexts)
        for page in (first, second, watcher):
            page.set_default_timeout(120_000)
        sid_one = _upload(first, app_a, long)
        job_one = wait_for(lambda: [j for j in service.list_jobs(sid_one) if j.state == "running"], 120, "job one")
        sid_two = _upload(second, app_a, short)  # another person, while the first job runs

        # app B, in the first person's session: the same job, live, and where it runs
        watcher.goto(f"{app_b}/upload?sid={sid_one}")
        watcher.get_by_text("Indexing 3 file(s)").first.wait_for()
        watcher.get_by_text(re.compile(r"long\d\.txt · (reading|chunking|embedding|storing|done)")).first.wait_for()
        where = watcher.get_by_text(re.compile(r"Running on .+ \(pid \d+\)")).first.inner_text()
        assert f"pid {job_one[0].worker.pid}" in where, where
        watcher.get_by_text(re.compile(r"Indexed \(3\): long\d\.txt")).wait_for(timeout=600_000)
        watcher.goto(f"{app_b}/upload?sid={sid_two}")
        watcher.get_by_text(re.compile(r"Indexed \(3\): short\d\.txt")).wait_for(timeout=600_000)
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        for i, context in enumerate(contexts):
            for page in context.pages:
                page.screenshot(path=str(ARTIFACTS / f"team-{i}.png"), full_page=True)
        raise
    finally:
        for context in contexts:
            context.close()

    jobs = service.list_jobs(sid_one) + service.list_jobs(sid_two)
    assert [j.state for j in jobs] == [JobState.DONE, JobState.DONE]
    ran_on = {j.worker.pid for j in jobs}
    assert ran_on == {p.pid for p in deployment.workers.values()}  # one job on each worker
    records = service.documents()
    assert sorted(r.file_name for r in records) == sorted(f.name for f in long + short)
    assert service.count_chunks() == sum(r.chunks for r in records)


def test_a_killed_worker_s_job_is_finished_once_by_the_other(deployment: Deployment, tmp_path: Path) -> None:
    service = deployment.service
    big = _doc(tmp_path / "src", "ledger.txt", 2400)  # a few hundred chunks: long enough to kill it mid-write
    job = service.start_job([big], owner="alice")
    running = wait_for(
        lambda: (snap := service.job(job.id)).files[0].chunks_done > 0 and snap, 300, "some chunks to be stored"
    )
    victim = next(p for p in deployment.workers.values() if p.pid == running.worker.pid)
    other = next(p for p in deployment.workers.values() if p is not victim)
    doc_id = running.files[0].doc_id
    assert service.count_chunks(doc_id) > 0
    victim.send_signal(signal.SIGKILL)  # mid-job, mid-write: nothing of it gets to clean up
    victim.wait(timeout=30)

    done = service.wait_job(job.id, timeout=600)
    assert done.state == JobState.DONE, done
    assert done.attempts == 2 and done.worker.pid == other.pid
    [result] = done.report.files
    assert result.status == "indexed" and result.doc_id == doc_id
    states = {w.pid: w.state for w in service.queue_status().workers}
    assert states[victim.pid] == "lost" and states[other.pid] == "running"

    record = service.document(doc_id)
    expected = {chunk_id(doc_id, i, record.generation) for i in range(record.chunks)}
    assert service.runtime.run(service.store.achunk_ids(doc_id)) == expected  # the catalogue's chunks, nothing else
    assert service.count_chunks(doc_id) == record.chunks == result.chunks  # no id twice
    assert service.store.keyword.chunk_ids(doc_id) == expected  # the keyword index in PostgreSQL agrees
    assert record.stored_path in service.library.storage.list_keys()  # the file is kept once, in the shared folder
