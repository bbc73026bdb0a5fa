"""Ingestion jobs that live in the engine, not in a browser tab.

A job runs on the runtime loop; pages and the CLI read snapshots of it by id, so refreshing the page,
leaving it or opening a second tab neither loses nor duplicates the work. Each job has an owner (a
browser session id) and only its owner lists it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Sequence
from enum import StrEnum

from pydantic import BaseModel

from rag.errors import RagError
from rag.ingest import FileProgress, FileStatus, Ingestor, IngestReport, SourceFile, Stage, clean_name


class JobState(StrEnum):
    """Where a job is."""

    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


class JobSnapshot(BaseModel, frozen=True):
    """A copy of a job's state at one moment, safe to hand to any thread."""

    id: str
    owner: str
    state: JobState
    created_at: float
    files: list[FileProgress]
    report: IngestReport | None = None
    error: str | None = None

    @property
    def chunks_done(self) -> int:
        """Chunks stored so far across files."""
        return sum(f.chunks_done for f in self.files)

    @property
    def chunks_total(self) -> int:
        """Chunks known so far across files."""
        return sum(f.chunks_total for f in self.files)

    @property
    def fraction(self) -> float:
        """Share of the job finished, by files and by chunks of the current file."""
        if not self.files:
            return 1.0
        finished = sum(1 for f in self.files if f.status is not None)
        current = next((f for f in self.files if f.status is None and f.chunks_total), None)
        partial = current.chunks_done / current.chunks_total if current else 0.0
        return min(1.0, (finished + partial) / len(self.files))


class _Job:
    def __init__(self, owner: str, files: Sequence[SourceFile]) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.owner = owner
        self.created_at = time.time()
        self.files = [FileProgress(file=clean_name(f.name)) for f in files]
        self.state = JobState.RUNNING
        self.report: IngestReport | None = None
        self.error: str | None = None
        self.task: asyncio.Task[IngestReport] | None = None
        self.cancel_requested = False

    def snapshot(self, lock: threading.Lock) -> JobSnapshot:
        with lock:
            return JobSnapshot(
                id=self.id,
                owner=self.owner,
                state=self.state,
                created_at=self.created_at,
                files=[f.model_copy() for f in self.files],
                report=self.report,
                error=self.error,
            )


class JobManager:
    """Starts, lists and cancels ingestion jobs; every method is safe from any thread."""

    def __init__(self, ingestor: Ingestor, loop: asyncio.AbstractEventLoop, keep: int = 50) -> None:
        self._ingestor = ingestor
        self._loop = loop
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._keep = keep
        self._serial = asyncio.Lock()  # one job writes at a time; others queue

    def start(self, files: Sequence[SourceFile], owner: str = "cli") -> JobSnapshot:
        """Queue a job on the loop and return at once."""
        job = _Job(owner, files)
        with self._lock:
            self._jobs[job.id] = job
            self._trim()

        def _create() -> None:
            job.task = self._loop.create_task(self._run(job, list(files)), name=f"ingest-{job.id}")
            if job.cancel_requested:
                job.task.cancel()

        self._loop.call_soon_threadsafe(_create)
        return job.snapshot(self._lock)

    async def _run(self, job: _Job, files: list[SourceFile]) -> IngestReport:
        try:
            async with self._serial:
                report = await self._ingestor.aingest(files, progress=job.files)
        except asyncio.CancelledError:
            with self._lock:
                job.state = JobState.CANCELLED
                for progress in job.files:
                    if progress.status is None:
                        progress.stage, progress.status = Stage.CANCELLED, FileStatus.CANCELLED
            raise
        except RagError as exc:
            with self._lock:
                job.state, job.error = JobState.FAILED, exc.user_message
            raise
        except Exception as exc:
            with self._lock:
                job.state, job.error = JobState.FAILED, f"Unexpected error: {type(exc).__name__}"
            raise
        with self._lock:
            job.report = report
            cancelled = job.cancel_requested or any(f.status == "cancelled" for f in report.files)
            job.state = JobState.CANCELLED if cancelled else JobState.DONE
        return report

    def get(self, job_id: str, owner: str | None = None) -> JobSnapshot | None:
        """A snapshot of one job (None if unknown, or owned by someone else)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            return None
        return job.snapshot(self._lock)

    def list(self, owner: str | None = None) -> list[JobSnapshot]:
        """Snapshots of an owner's jobs (all jobs when owner is None), newest first."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if owner is None or j.owner == owner]
        return sorted((j.snapshot(self._lock) for j in jobs), key=lambda s: s.created_at, reverse=True)

    def cancel(self, job_id: str, owner: str | None = None) -> bool:
        """Ask a running job to stop; what it stored for unfinished files is removed."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or (owner is not None and job.owner != owner) or job.state != JobState.RUNNING:
                return False
            job.cancel_requested = True

        def _cancel() -> None:
            if job.task is not None:
                job.task.cancel()

        self._loop.call_soon_threadsafe(_cancel)
        return True

    def future(self, job_id: str) -> asyncio.Task[IngestReport] | None:
        """The job's task (for awaiting on the loop)."""
        with self._lock:
            job = self._jobs.get(job_id)
        return job.task if job else None

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.state != JobState.RUNNING]
        for job in sorted(finished, key=lambda j: j.created_at)[: max(0, len(self._jobs) - self._keep)]:
            del self._jobs[job.id]
