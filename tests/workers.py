"""Worker processes for tests: `python -m rag worker` with the settings' database, Milvus, collection and uploads
store, each in its own data dir (as on separate machines), logging to a file."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rag.config import Settings
from rag.service import RagService
from tests.conftest import MODEL_CACHE, REPO


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
    """Poll `condition` until it is truthy (returned) or `timeout` seconds pass (AssertionError naming `what`)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def live_pids(service: RagService) -> set[int]:
    """Process ids of the workers heart-beating now."""
    return {w.pid for w in service.queue_status().workers if w.state == "running"}
