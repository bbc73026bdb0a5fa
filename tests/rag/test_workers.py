"""Workers as separate processes (`python -m rag worker`) on one PostgreSQL and the embedded Milvus: a worker killed
mid-job (SIGKILL: no clean-up of any kind) leaves its job to another, which indexes the file exactly once.

The test process queues the job (a RagService that runs no jobs itself) and checks the outcome in the catalogue,
Milvus and the keyword index; the workers are real processes with their own data dirs (two machines, as far as
their local files go), sharing the database and the uploads folder (RAG_STORAGE_URL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rag.config import Settings
from rag.jobs import JobState
from rag.service import RagService
from rag.store import chunk_id
from tests.conftest import MODEL_CACHE, REPO, _drop
from tests.rag.test_jobs import _doc

pytestmark = pytest.mark.milvus


def worker_environment(settings: Settings, data_dir: Path) -> dict[str, str]:
    """A worker's environment: the settings' database, Milvus, collection and store; its own data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "MILVUS_", "OPENAI_", "EMBED_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        RAG_DATA_DIR=str(data_dir),
        RAG_DATABASE_URL=settings.database_url,
        RAG_STORAGE_URL=settings.storage_url,
        MILVUS_URI=settings.milvus_uri,
        MILVUS_TOKEN=settings.milvus_token.get_secret_value() if settings.milvus_token else "",
        RAG_COLLECTION=settings.collection,
        RAG_CONSISTENCY="Strong",
        RAG_EMBED_CACHE_DIR=str(MODEL_CACHE),
        RAG_JOB_LEASE=str(settings.job_lease),
        RAG_MAX_RUNNING_JOBS=str(settings.max_running_jobs),
    )
    return env


@contextlib.contextmanager
def worker_processes(settings: Settings, root: Path) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Start `python -m rag worker` processes by name (each its own data dir and log); all stopped afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> subprocess.Popen[bytes]:
        log = open(root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process below
        proc = subprocess.Popen(
            [sys.executable, "-m", "rag", "worker", "--concurrency", "1"],
            cwd=REPO,
            env=worker_environment(settings, root / name),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc.log = log  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.terminate()
        for proc in started:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            proc.log.close()  # type: ignore[attr-defined]


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def live_pids(service: RagService) -> set[int]:
    return {w.pid for w in service.queue_status().workers if w.state == "running"}


@pytest.fixture
def team(make_settings, embedder, postgres, tmp_path: Path) -> Iterator[RagService]:  # noqa: ANN001
    """A service on a fresh PostgreSQL database and a shared uploads folder that runs no jobs itself."""
    with postgres.database() as url:
        settings = make_settings(
            database_url=url,
            storage_url=str(tmp_path / "shared-uploads"),
            inprocess_worker="off",
            job_lease=8.0,
            max_running_jobs=4,
        )
        service = RagService(settings, embedder=embedder, worker="none")
        try:
            yield service
        finally:
            _drop(service)


def test_a_killed_worker_s_job_is_finished_once_by_another(team: RagService, tmp_path: Path) -> None:
    big = _doc(tmp_path / "src", "ledger.txt", 2400)  # a few hundred chunks: long enough to kill it mid-write
    with worker_processes(team.settings, tmp_path) as start:
        first = start("w1")
        wait_for(lambda: first.pid in live_pids(team), 180, "the first worker to register")
        job = team.start_job([big], owner="alice")
        running = wait_for(
            lambda: (snap := team.job(job.id)).files[0].chunks_done > 0 and snap,
            300,
            "the first worker to store some chunks",
        )
        assert running.worker.pid == first.pid and running.state == JobState.RUNNING
        doc_id = running.files[0].doc_id
        assert team.count_chunks(doc_id) > 0

        second = start("w2")
        first.send_signal(signal.SIGKILL)  # mid-job, mid-write: nothing of it gets to clean up
        first.wait(timeout=30)

        done = team.wait_job(job.id, timeout=600)
        assert done.state == JobState.DONE, done
        assert done.attempts == 2 and done.worker.pid == second.pid
        [result] = done.report.files
        assert result.status == "indexed" and result.doc_id == doc_id
        lost = {w.pid: w.state for w in team.queue_status().workers}
        assert lost[first.pid] == "lost" and lost[second.pid] == "running"

    [record] = team.documents()
    expected = {chunk_id(doc_id, i, record.generation) for i in range(record.chunks)}
    in_milvus = team.runtime.run(team.store.achunk_ids(doc_id))
    assert in_milvus == expected  # every chunk of the catalogue's, and nothing else
    assert team.count_chunks(doc_id) == record.chunks == result.chunks  # no id twice
    assert team.store.keyword.chunk_ids(doc_id) == expected  # the keyword index in PostgreSQL agrees
    assert team.library.storage.keys() == [record.stored_path]  # the file is kept once, in the shared folder
