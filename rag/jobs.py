"""Ingestion jobs that live in the engine, not in a browser tab, and take turns fairly.

A job runs on the runtime loop; pages and the CLI read snapshots of it by id, so refreshing the page,
leaving it or opening a second tab neither loses nor duplicates the work. Each job has an owner (a
browser session id) and only its owner lists it.

Scheduling, so that nobody's upload stalls anybody else's:

- at most `max_running` jobs run at once, for all owners together (RAG_MAX_RUNNING_JOBS);
- an owner runs one job at a time: their next job waits, `queued`, until the previous one ends;
- when a slot frees up, it goes to the waiting owner served longest ago (round robin between owners),
  so one person queueing ten uploads cannot get ahead of someone who queued one;
- cancelling a queued job removes it from the queue: it never ran, so it left nothing to clean up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from enum import StrEnum

from pydantic import BaseModel

from rag.documents import SourceFile
from rag.errors import RagError
from rag.ingest import FileProgress, FileStatus, Ingestor, IngestReport, Stage, clean_name
from rag.runtime import Runtime

log = logging.getLogger(__name__)


class JobState(StrEnum):
    """Where a job is."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        """Queued or running: the job has not ended yet."""
        return self in (JobState.QUEUED, JobState.RUNNING)


class JobSnapshot(BaseModel, frozen=True):
    """A copy of a job's state at one moment, safe to hand to any thread."""

    id: str
    owner: str
    state: JobState
    created_at: float
    files: list[FileProgress]
    report: IngestReport | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    workspace: str | None = None  # the workspace (by id) its files go into

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.state.active

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
        self.sources = list(files)
        self.files = [FileProgress(file=clean_name(f.name)) for f in files]
        self.state = JobState.QUEUED
        self.report: IngestReport | None = None
        self.error: str | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.task: asyncio.Task[None] | None = None
        self.cancel_requested = False
        self.ended: concurrent.futures.Future[None] = concurrent.futures.Future()  # set once, from any thread

    def snapshot(self, lock: threading.Lock) -> JobSnapshot:
        with lock:
            return JobSnapshot(
                id=self.id,
                owner=self.owner,
                state=self.state,
                created_at=self.created_at,
                files=list(self.files),  # copies published by the ingestor, never changed afterwards
                report=self.report,
                error=self.error,
                started_at=self.started_at,
                finished_at=self.finished_at,
                workspace=self.sources[0].workspace if self.sources else None,
            )


class JobManager:
    """Starts, lists and cancels ingestion jobs, and decides which waiting job runs next.

    Every public method is safe from any thread; the state lives behind one lock, and tasks are created
    on the loop.
    """

    def __init__(
        self,
        ingestor: Ingestor,
        runtime: Runtime,
        max_running: int = 2,
        keep: int = 50,
        release: Callable[[SourceFile], None] | None = None,
    ) -> None:
        self._ingestor = ingestor
        self._runtime = runtime
        self._release = release or (lambda _source: None)
        self._max_running = max(1, max_running)
        self._keep = keep
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._waiting: dict[str, deque[_Job]] = {}  # owner -> their queued jobs, oldest first
        self._running: dict[str, _Job] = {}  # owner -> their running job (one each)
        self._served: dict[str, int] = {}  # owner -> turn number of their last start (round robin)
        self._turns = 0
        self._closed = False

    @property
    def max_running(self) -> int:
        """Most jobs running at once."""
        return self._max_running

    def start(self, files: Sequence[SourceFile], owner: str = "cli") -> JobSnapshot:
        """Queue a job and return at once; it starts when its owner's previous job ended and a slot is free."""
        job = _Job(owner, files)
        with self._lock:
            self._jobs[job.id] = job
            self._waiting.setdefault(owner, deque()).append(job)
            self._trim()
        self._runtime.call_soon(self._dispatch)
        return job.snapshot(self._lock)

    def _dispatch(self) -> None:
        """Start waiting jobs while slots are free (runs on the loop)."""
        with self._lock:
            chosen = self._choose()
        for job in chosen:
            job.task = asyncio.get_running_loop().create_task(self._run(job), name=f"ingest-{job.id}")

    def _choose(self) -> list[_Job]:
        """Jobs to start now, marked running; the caller holds the lock."""
        chosen = []
        while not self._closed and len(self._running) < self._max_running:
            owners = [o for o, queue in self._waiting.items() if queue and o not in self._running]
            if not owners:
                break
            # The owner served longest ago goes first (never served: first of all); ties go to the older job.
            owner = min(owners, key=lambda o: (self._served.get(o, 0), self._waiting[o][0].created_at))
            job = self._waiting[owner].popleft()
            if not self._waiting[owner]:
                del self._waiting[owner]
            self._turns += 1
            self._served[owner] = self._turns
            self._running[owner] = job
            job.state, job.started_at = JobState.RUNNING, time.time()
            chosen.append(job)
        if len(self._served) > 10_000:  # forget owners with nothing queued or running, oldest turns first
            idle = sorted((t, o) for o, t in self._served.items() if o not in self._waiting and o not in self._running)
            for _turn, owner in idle[: len(self._served) - 10_000]:
                del self._served[owner]
        return chosen

    async def _run(self, job: _Job) -> None:
        try:
            report = await self._ingestor.aingest(job.sources, lambda i, p: self._publish(job, i, p))
        except asyncio.CancelledError:
            with self._lock:
                job.state = JobState.CANCELLED
                _mark_cancelled(job)
        except RagError as exc:
            with self._lock:
                job.state, job.error = JobState.FAILED, exc.user_message
        except Exception as exc:  # noqa: BLE001 - a bug must not take the queue down with it
            log.exception("ingestion job %s failed", job.id)
            with self._lock:
                job.state, job.error = JobState.FAILED, f"Unexpected error: {type(exc).__name__}"
        else:
            with self._lock:
                job.report = report
                cancelled = job.cancel_requested or any(f.status == FileStatus.CANCELLED for f in report.files)
                job.state = JobState.CANCELLED if cancelled else JobState.DONE
        finally:
            with self._lock:
                job.finished_at = time.time()
                if self._running.get(job.owner) is job:
                    del self._running[job.owner]
            self._end(job)
            self._dispatch()

    def _publish(self, job: _Job, index: int, progress: FileProgress) -> None:
        """Take an ingestor's copy of one file's progress (called on the loop)."""
        with self._lock:
            job.files[index] = progress

    def _end(self, job: _Job) -> None:
        """A job is over: let go of the bytes it was given, then wake its waiters."""
        for source in job.sources:
            if source.doc_id is not None:  # staged for this job (uploads, re-index)
                try:
                    self._release(source)
                except OSError:
                    log.warning("could not remove the staged copy of %s", source.name, exc_info=True)
        job.ended.set_result(None)

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
        """Stop a job: a queued one leaves the queue untouched by it; a running one stops and what it stored
        for unfinished files is removed."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or (owner is not None and job.owner != owner) or not job.state.active:
                return False
            job.cancel_requested = True
            if job.state == JobState.QUEUED:
                queue = self._waiting.get(job.owner)
                if queue is not None and job in queue:
                    queue.remove(job)
                    if not queue:
                        del self._waiting[job.owner]
                job.state, job.finished_at = JobState.CANCELLED, time.time()
                _mark_cancelled(job)
                dequeued = True
            else:
                dequeued = False
        if dequeued:  # it never ran, so it left nothing to clean up but its staged bytes
            self._end(job)
            return True

        def _cancel() -> None:
            if job.task is not None:
                job.task.cancel()

        self._runtime.call_soon(_cancel)
        return True

    def cancel_workspace(self, workspace: str) -> list[str]:
        """Cancel every queued or running job writing into a workspace (it is being deleted); returns their ids."""
        with self._lock:
            ids = [
                j.id for j in self._jobs.values() if j.state.active and any(s.workspace == workspace for s in j.sources)
            ]
        return [job_id for job_id in ids if self.cancel(job_id)]

    def wait(self, job_id: str, timeout: float | None = None) -> JobSnapshot | None:
        """Block until a job ends and return its final snapshot (None if unknown); TimeoutError after `timeout`."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return None
        job.ended.result(timeout)
        return job.snapshot(self._lock)

    async def ajoin(self, job_id: str) -> JobSnapshot | None:
        """Await a job's end on the loop and return its final snapshot (None if unknown)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return None
        await asyncio.wrap_future(job.ended)
        return job.snapshot(self._lock)

    def close(self) -> None:
        """Start nothing more and cancel every queued job (running ones stop with the runtime's loop)."""
        with self._lock:
            self._closed = True
            queued = [job for queue in self._waiting.values() for job in queue]
            self._waiting.clear()
            for job in queued:
                job.state, job.finished_at, job.cancel_requested = JobState.CANCELLED, time.time(), True
                _mark_cancelled(job)
        for job in queued:
            self._end(job)

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if not j.state.active]
        for job in sorted(finished, key=lambda j: j.created_at)[: max(0, len(self._jobs) - self._keep)]:
            del self._jobs[job.id]


def _mark_cancelled(job: _Job) -> None:
    """Every file that had not ended is cancelled (the caller holds the lock)."""
    job.files = [
        p if p.status is not None else p.model_copy(update={"stage": Stage.CANCELLED, "status": FileStatus.CANCELLED})
        for p in job.files
    ]
