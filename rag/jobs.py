"""Ingestion jobs in the database: a durable queue that any number of workers, on any machine, take turns on.

The web app, the CLI and the API enqueue (`JobQueue.enqueue`); a `Worker` — the in-process one of the app or
CLI, or `python -m rag worker` anywhere — claims a job, renews a lease on it while it runs, and writes each
file's progress to the job's rows, which every app replica reads. Pages and the CLI read snapshots by id, so a
refresh, a second tab or another replica neither loses nor duplicates the work.

Scheduling, so that nobody's upload stalls anybody else's, holds across every worker:

- at most `RAG_MAX_RUNNING_JOBS` jobs run at once, for all owners together;
- an owner runs one job at a time (a unique index on running jobs per owner makes it a constraint): their next
  job waits, `queued`, until the previous one ends;
- a free slot goes to the waiting owner whose last job started longest ago (round robin between owners);
- cancelling a queued job takes it out of the queue; cancelling a running one tells its worker, which stops it
  and removes what it stored for unfinished files.

Claiming is one short transaction on either engine (SQLAlchemy Core, one code path): claimers are serialised by
the database (SQLite's write lock; a PostgreSQL advisory lock per collection), and the row is taken with
`SELECT … FOR UPDATE SKIP LOCKED` (a no-op on SQLite, where the write lock already excludes everyone else), so a
row another transaction holds (a cancel in flight) is skipped rather than waited for.

A worker that dies stops renewing: once the lease has run out (or at once, when its process is known to be gone
on this machine) another worker claims the job again and runs the files that had not ended. What a dead writer
left of a file is removed before the file is written again (stable chunk ids, `DocumentLibrary.abegin`), so the
file ends indexed exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel
from sqlalchemy import Connection, delete, func, insert, select, update

from rag import schema
from rag.config import Settings
from rag.database import Database
from rag.documents import DocumentLibrary, SourceFile
from rag.errors import RagError
from rag.ingest import FileProgress, FileResult, FileStatus, Ingestor, IngestReport, Stage, clean_name
from rag.processes import machine, started
from rag.runtime import Runtime

log = logging.getLogger(__name__)

_jobs, _files, _workers = schema.jobs, schema.job_files, schema.workers

POLL_SECONDS = 0.5
"""How often an idle worker looks for a job (a cheap read; an in-process enqueue wakes it at once)."""
KEEP_FINISHED = 50
"""Finished jobs kept per owner (older ones are forgotten when the owner enqueues another)."""
KEEP_DAYS = 30.0
"""Finished jobs older than this are forgotten, and so are workers stopped or lost that long ago."""


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


class WorkerInfo(BaseModel, frozen=True):
    """A worker as the database knows it: where it runs and when it last said it was alive."""

    id: str
    host: str
    pid: int
    kind: str
    concurrency: int
    started_at: float
    heartbeat_at: float
    stopped_at: float | None = None
    lost: bool = False
    """Not stopped cleanly, yet silent for longer than a lease: its process died or hangs."""
    jobs: list[str] = []
    """Ids of the jobs it is running now."""

    @property
    def where(self) -> str:
        """`host (pid N)`, for people."""
        return f"{self.host} (pid {self.pid})"

    @property
    def state(self) -> str:
        """running, stopped or lost."""
        return "stopped" if self.stopped_at is not None else "lost" if self.lost else "running"


class JobSnapshot(BaseModel, frozen=True):
    """A copy of a job's state at one moment, read from the database, safe to hand to any thread."""

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
    worker: WorkerInfo | None = None
    """The worker running it (or that ran it last)."""
    attempts: int = 0
    """How many times a worker claimed it (more than one: a worker died or stopped while running it)."""

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


class QueueStatus(BaseModel, frozen=True):
    """The queue at one moment: `status --json`'s `queue` and `workers`."""

    queued: int
    running: int
    workers: list[WorkerInfo]
    checked_at: float


def queue_status(settings: Settings) -> QueueStatus:
    """The queue and its workers, read from the database alone (`python -m rag status`)."""
    with Database.open(settings) as db:
        return JobQueue(db, settings.collection, lease=settings.job_lease).status()


@dataclass(frozen=True)
class NewFile:
    """A file of a job being enqueued: its bytes already stored under `stored` (a storage key), or refused
    before staging (`error`: too large, unreadable), which the job then reports as failed."""

    name: str
    stored: str | None = None
    content_hash: str | None = None
    reindex: bool = False
    uploader: str | None = None
    error: str | None = None


@dataclass
class _FileRow:
    position: int
    name: str
    stored: str | None
    content_hash: str | None
    reindex: bool
    uploader: str | None
    progress: FileProgress
    result: FileResult | None


@dataclass
class ClaimedJob:
    """A job a worker claimed: its row and its files' rows as they were when claimed."""

    id: str
    owner: str
    workspace: str
    started_at: float
    attempts: int
    files: list[_FileRow]


# -- who is a worker ---------------------------------------------------------------------------------------
def new_worker_id() -> str:
    """A worker id that names this process and lets others on this machine check it: host|machine|pid|start|token."""
    pid = os.getpid()
    return f"{socket.gethostname()}|{machine()}|{pid}|{started(pid) or ''}|{uuid.uuid4().hex[:8]}"


def worker_gone(worker_id: str | None) -> bool:
    """True only when the worker ran on this machine and its process is gone (or its pid is another process's now);
    a worker elsewhere is alive until its lease runs out."""
    parts = (worker_id or "").split("|")
    if len(parts) != 5 or not parts[1] or parts[1] != machine() or not parts[2].isdigit():
        return False
    return started(int(parts[2])) != parts[3]


# -- the queue -----------------------------------------------------------------------------------------------
class JobQueue:
    """The jobs of one collection in the database: enqueue, read, cancel (any process), and claim, renew and
    finish (workers). Blocking calls; every method is safe from any thread."""

    def __init__(
        self,
        db: Database,
        collection: str,
        max_running: int = 2,
        lease: float = 60.0,
        release: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        self.db = db
        self.collection = collection
        self.max_running = max(1, max_running)
        self.lease = lease
        self._release = release or (lambda _keys: None)
        self._lock_name = f"jobs:{collection}"
        self.wakeups: list[Callable[[], None]] = []  # in-process workers to wake when a job is enqueued here

    # -- enqueue ----------------------------------------------------------------------------------
    def enqueue(
        self,
        owner: str,
        workspace: str,
        files: Sequence[NewFile],
        publish: Callable[[], None] | None = None,
    ) -> JobSnapshot:
        """Queue a job and return its first snapshot. `publish` (moving staged bytes under their keys) runs inside
        the transaction that records the job, under the storage lock, so no clean-up can remove those bytes in
        between (`DocumentLibrary.release` takes the same lock)."""
        job_id = uuid.uuid4().hex[:12]
        now = time.time()
        rows = []
        for position, new in enumerate(files):
            progress = FileProgress(file=clean_name(new.name))
            result = None
            if new.error is not None:
                progress = progress.model_copy(
                    update={"stage": Stage.FAILED, "status": FileStatus.FAILED, "error": new.error, "finished_at": now}
                )
                result = FileResult(file=progress.file, status=FileStatus.FAILED, error=new.error)
            rows.append(
                {
                    "job_id": job_id,
                    "position": position,
                    "name": new.name,
                    "stored": new.stored,
                    "content_hash": new.content_hash,
                    "reindex": new.reindex,
                    "uploader": new.uploader,
                    "progress": progress.model_dump_json(),
                    "result": result.model_dump_json() if result else None,
                    "updated_at": now,
                }
            )
        with self.db.write(serialize="storage") as conn:
            if publish is not None:
                publish()
            conn.execute(
                insert(_jobs).values(
                    id=job_id,
                    collection=self.collection,
                    owner=owner,
                    workspace=workspace,
                    state=JobState.QUEUED.value,
                    created_at=now,
                )
            )
            if rows:
                conn.execute(insert(_files), rows)
            self._trim(conn, owner, now)
        for wake in list(self.wakeups):
            wake()
        snapshot = self.get(job_id)
        assert snapshot is not None
        return snapshot

    def _trim(self, conn: Connection, owner: str, now: float) -> None:
        """Forget an owner's finished jobs beyond the newest KEEP_FINISHED, and anyone's older than KEEP_DAYS."""
        ended = _jobs.c.state.not_in((JobState.QUEUED.value, JobState.RUNNING.value))
        mine = conn.execute(
            select(_jobs.c.id)
            .where(_jobs.c.collection == self.collection, _jobs.c.owner == owner, ended)
            .order_by(_jobs.c.created_at.desc())
            .offset(KEEP_FINISHED)
        ).scalars()
        old = conn.execute(
            select(_jobs.c.id).where(
                _jobs.c.collection == self.collection, ended, _jobs.c.created_at < now - KEEP_DAYS * 86400
            )
        ).scalars()
        forget = sorted(set(mine) | set(old))
        if forget:
            conn.execute(delete(_files).where(_files.c.job_id.in_(forget)))
            conn.execute(delete(_jobs).where(_jobs.c.id.in_(forget)))
        conn.execute(
            delete(_workers).where(
                _workers.c.collection == self.collection, _workers.c.heartbeat_at < now - KEEP_DAYS * 86400
            )
        )

    # -- reading ----------------------------------------------------------------------------------
    def get(self, job_id: str, owner: str | None = None) -> JobSnapshot | None:
        """A snapshot of one job (None if unknown, or owned by someone else)."""
        found = self._snapshots(_jobs.c.id == job_id)
        if not found or (owner is not None and found[0].owner != owner):
            return None
        return found[0]

    def list(self, owner: str | None = None, workspace: str | None = None) -> list[JobSnapshot]:
        """Snapshots of an owner's jobs (everyone's when owner is None), newest first."""
        where = []
        if owner is not None:
            where.append(_jobs.c.owner == owner)
        if workspace is not None:
            where.append(_jobs.c.workspace == workspace)
        return self._snapshots(*where)

    def _snapshots(self, *where: object) -> list[JobSnapshot]:
        now = time.time()
        with self.db.read() as conn:
            jobs = conn.execute(
                select(_jobs).where(_jobs.c.collection == self.collection, *where).order_by(_jobs.c.created_at.desc())
            ).all()
            if not jobs:
                return []
            ids = [j.id for j in jobs]
            files: dict[str, list[FileProgress]] = {}
            for row in conn.execute(
                select(_files.c.job_id, _files.c.progress).where(_files.c.job_id.in_(ids)).order_by(_files.c.position)
            ):
                files.setdefault(row.job_id, []).append(FileProgress.model_validate_json(row.progress))
            worker_ids = {j.worker for j in jobs if j.worker}
            workers = {
                w.id: self._worker_info(w, now, [])
                for w in (conn.execute(select(_workers).where(_workers.c.id.in_(worker_ids))) if worker_ids else [])
            }
        return [
            JobSnapshot(
                id=j.id,
                owner=j.owner,
                state=JobState(j.state),
                created_at=j.created_at,
                files=files.get(j.id, []),
                report=IngestReport.model_validate_json(j.report) if j.report else None,
                error=j.error,
                started_at=j.started_at,
                finished_at=j.finished_at,
                workspace=j.workspace,
                worker=workers.get(j.worker) if j.worker else None,
                attempts=j.attempts,
            )
            for j in jobs
        ]

    def _worker_info(self, row: object, now: float, jobs: list[str]) -> WorkerInfo:
        info = WorkerInfo(
            id=row.id,  # type: ignore[attr-defined]
            host=row.host,  # type: ignore[attr-defined]
            pid=row.pid,  # type: ignore[attr-defined]
            kind=row.kind,  # type: ignore[attr-defined]
            concurrency=row.concurrency,  # type: ignore[attr-defined]
            started_at=row.started_at,  # type: ignore[attr-defined]
            heartbeat_at=row.heartbeat_at,  # type: ignore[attr-defined]
            stopped_at=row.stopped_at,  # type: ignore[attr-defined]
            jobs=jobs,
        )
        lost = info.stopped_at is None and (info.heartbeat_at < now - self.lease or worker_gone(info.id))
        return info.model_copy(update={"lost": lost}) if lost else info

    def status(self) -> QueueStatus:
        """Queue depth and every worker known (running, stopped recently, or lost), newest first."""
        now = time.time()
        with self.db.read() as conn:
            counts = dict(
                conn.execute(
                    select(_jobs.c.state, func.count())
                    .where(_jobs.c.collection == self.collection, _jobs.c.state.in_(("queued", "running")))
                    .group_by(_jobs.c.state)
                ).all()
            )
            running: dict[str, list[str]] = {}
            for job_id, worker in conn.execute(
                select(_jobs.c.id, _jobs.c.worker).where(
                    _jobs.c.collection == self.collection, _jobs.c.state == "running"
                )
            ):
                running.setdefault(worker, []).append(job_id)
            rows = conn.execute(
                select(_workers)
                .where(_workers.c.collection == self.collection, _workers.c.heartbeat_at >= now - 86400)
                .order_by(_workers.c.started_at.desc())
            ).all()
        return QueueStatus(
            checked_at=now,
            queued=counts.get("queued", 0),
            running=counts.get("running", 0),
            workers=[self._worker_info(w, now, running.get(w.id, [])) for w in rows],
        )

    def live_workers(self) -> int:
        """Workers that are running and heart-beating now (any kind)."""
        return sum(1 for w in self.status().workers if w.state == "running")

    # -- cancelling -------------------------------------------------------------------------------
    def cancel(self, job_id: str, owner: str | None = None) -> bool:
        """Stop a job: a queued one leaves the queue (its bytes are released); a running one is flagged, and its
        worker stops it within a second or so and removes what it stored for unfinished files."""
        now = time.time()
        with self.db.write() as conn:
            job = conn.execute(
                select(_jobs.c.owner, _jobs.c.state).where(_jobs.c.id == job_id, _jobs.c.collection == self.collection)
            ).first()
            if job is None or (owner is not None and job.owner != owner) or not JobState(job.state).active:
                return False
            dequeued = conn.execute(
                update(_jobs)
                .where(_jobs.c.id == job_id, _jobs.c.state == JobState.QUEUED.value)
                .values(state=JobState.CANCELLED.value, finished_at=now, cancel_requested=True)
            ).rowcount
            if not dequeued:
                conn.execute(update(_jobs).where(_jobs.c.id == job_id).values(cancel_requested=True))
                return True
            rows = self._file_rows(conn, job_id)
            for row in rows:
                if row.result is None:
                    self._write_file(conn, job_id, row.position, _cancelled(row.progress), None, now)
        self._release([r.stored for r in rows if r.stored])
        return True

    def cancel_workspace(self, workspace: str) -> list[str]:
        """Cancel every queued or running job writing into a workspace (it is being deleted); returns their ids."""
        with self.db.read() as conn:
            ids = conn.execute(
                select(_jobs.c.id).where(
                    _jobs.c.collection == self.collection,
                    _jobs.c.workspace == workspace,
                    _jobs.c.state.in_(("queued", "running")),
                )
            ).scalars()
            ids = list(ids)
        return [job_id for job_id in ids if self.cancel(job_id)]

    # -- waiting ----------------------------------------------------------------------------------
    def wait(self, job_id: str, timeout: float | None = None) -> JobSnapshot | None:
        """Block until a job ends and return its final snapshot (None if unknown); TimeoutError after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.02
        while True:
            snapshot = self.get(job_id)
            if snapshot is None or not snapshot.active:
                return snapshot
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still active after {timeout} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def ajoin(self, job_id: str) -> JobSnapshot | None:
        """Await a job's end without blocking the loop and return its final snapshot (None if unknown)."""
        delay = 0.02
        while True:
            snapshot = await asyncio.to_thread(self.get, job_id)
            if snapshot is None or not snapshot.active:
                return snapshot
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    # -- workers ----------------------------------------------------------------------------------
    def register(self, worker_id: str, kind: str, concurrency: int) -> None:
        """Record a worker (it then heart-beats through `renew`)."""
        parts = worker_id.split("|")
        now = time.time()
        with self.db.write() as conn:
            conn.execute(
                insert(_workers).values(
                    id=worker_id,
                    collection=self.collection,
                    host=parts[0],
                    pid=int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else os.getpid(),
                    kind=kind,
                    concurrency=concurrency,
                    started_at=now,
                    heartbeat_at=now,
                )
            )

    def unregister(self, worker_id: str) -> None:
        """A worker stopped cleanly (it put its running jobs back in the queue first)."""
        with self.db.write() as conn:
            conn.execute(update(_workers).where(_workers.c.id == worker_id).values(stopped_at=time.time()))

    def claimable(self, only: Iterable[str] | None = None) -> bool:
        """A cheap read: is any job waiting, or running under a lease that ran out?"""
        now = time.time()
        waiting = (_jobs.c.state == JobState.QUEUED.value) | (
            (_jobs.c.state == JobState.RUNNING.value) & (_jobs.c.lease_until < now)
        )
        query = select(_jobs.c.id, _jobs.c.state, _jobs.c.worker).where(_jobs.c.collection == self.collection)
        if only is not None:
            query = query.where(_jobs.c.id.in_(list(only)))
        with self.db.read() as conn:
            if conn.execute(query.where(waiting).limit(1)).first() is not None:
                return True
            running = conn.execute(query.where(_jobs.c.state == JobState.RUNNING.value)).all()
        return any(worker_gone(r.worker) for r in running)

    def claim(self, worker_id: str, only: Iterable[str] | None = None) -> ClaimedJob | None:
        """Take the next job by the fairness rules (None when the cap is reached or nothing may start): a job whose
        worker is gone first, then the oldest job of the owner served longest ago among owners running nothing."""
        release: list[str] = []
        try:
            return self._claim(worker_id, set(only) if only is not None else None, release)
        finally:
            if release:
                self._release(release)

    def _claim(self, worker_id: str, allowed: set[str] | None, release: list[str]) -> ClaimedJob | None:
        now = time.time()
        with self.db.write(serialize=self._lock_name) as conn:
            active = conn.execute(
                select(
                    _jobs.c.id,
                    _jobs.c.owner,
                    _jobs.c.state,
                    _jobs.c.created_at,
                    _jobs.c.started_at,
                    _jobs.c.lease_until,
                    _jobs.c.worker,
                    _jobs.c.cancel_requested,
                ).where(_jobs.c.collection == self.collection, _jobs.c.state.in_(("queued", "running")))
            ).all()
            running = [r for r in active if r.state == JobState.RUNNING.value]
            orphaned = [r for r in running if (r.lease_until or 0) < now or worker_gone(r.worker)]
            if len(running) - len(orphaned) >= self.max_running:
                return None
            busy = {r.owner for r in running}
            first: dict[str, object] = {}
            for row in sorted((r for r in active if r.state == JobState.QUEUED.value), key=lambda r: r.created_at):
                if row.owner not in busy:
                    first.setdefault(row.owner, row)
            served = (
                dict(
                    conn.execute(
                        select(_jobs.c.owner, func.max(_jobs.c.started_at))
                        .where(_jobs.c.collection == self.collection, _jobs.c.owner.in_(list(first)))
                        .group_by(_jobs.c.owner)
                    ).all()
                )
                if first
                else {}
            )
            waiting = sorted(first.values(), key=lambda r: (served.get(r.owner) or 0.0, r.created_at))  # type: ignore[attr-defined]
            for row in [*sorted(orphaned, key=lambda r: r.started_at or 0.0), *waiting]:
                if allowed is not None and row.id not in allowed:  # type: ignore[attr-defined]
                    continue
                taken = conn.execute(
                    select(_jobs.c.id, _jobs.c.state, _jobs.c.lease_until, _jobs.c.worker, _jobs.c.started_at)
                    .where(_jobs.c.id == row.id)  # type: ignore[attr-defined]
                    .with_for_update(skip_locked=True)
                ).first()
                if taken is None or taken.state not in ("queued", "running"):
                    continue
                if taken.state == "running" and (taken.lease_until or 0) >= now and not worker_gone(taken.worker):
                    continue
                if taken.state == "running" and row.cancel_requested:  # type: ignore[attr-defined]
                    # cancelled while its worker was dying: end it (recovery removes what that worker stored)
                    conn.execute(
                        update(_jobs)
                        .where(_jobs.c.id == taken.id)
                        .values(state=JobState.CANCELLED.value, finished_at=now, lease_until=None)
                    )
                    for file in self._file_rows(conn, taken.id):
                        release.extend([file.stored] if file.stored else [])
                        if file.result is None:
                            self._write_file(conn, taken.id, file.position, _cancelled(file.progress), None, now)
                    continue
                if taken.state == "running":
                    log.warning("job %s: its worker %s is gone; running it again", row.id, taken.worker)  # type: ignore[attr-defined]
                conn.execute(
                    update(_jobs)
                    .where(_jobs.c.id == taken.id)
                    .values(
                        state=JobState.RUNNING.value,
                        worker=worker_id,
                        lease_until=now + self.lease,
                        started_at=taken.started_at or now,
                        attempts=_jobs.c.attempts + 1,
                    )
                )
                job = conn.execute(select(_jobs).where(_jobs.c.id == taken.id)).one()
                return ClaimedJob(
                    id=job.id,
                    owner=job.owner,
                    workspace=job.workspace,
                    started_at=job.started_at,
                    attempts=job.attempts,
                    files=self._file_rows(conn, job.id),
                )
        return None

    def renew(self, worker_id: str, job_ids: Sequence[str], extend: bool) -> dict[str, bool]:
        """Heart-beat: the worker's running jobs still its own, each with whether a cancel was asked; with `extend`,
        their leases and the worker's heartbeat are renewed. A job missing from the answer was taken over (the
        worker stalled past its lease) or deleted: its worker must stop it without cleaning up."""
        now = time.time()
        mine = (_jobs.c.worker == worker_id) & (_jobs.c.state == JobState.RUNNING.value)
        if not extend:
            if not job_ids:
                return {}
            with self.db.read() as conn:
                rows = conn.execute(select(_jobs.c.id, _jobs.c.cancel_requested).where(_jobs.c.id.in_(job_ids), mine))
                return {r.id: bool(r.cancel_requested) for r in rows}
        with self.db.write() as conn:
            conn.execute(update(_workers).where(_workers.c.id == worker_id).values(heartbeat_at=now, stopped_at=None))
            if not job_ids:
                return {}
            conn.execute(update(_jobs).where(_jobs.c.id.in_(job_ids), mine).values(lease_until=now + self.lease))
            rows = conn.execute(select(_jobs.c.id, _jobs.c.cancel_requested).where(_jobs.c.id.in_(job_ids), mine))
            return {r.id: bool(r.cancel_requested) for r in rows}

    def save_progress(self, job_id: str, updates: dict[int, tuple[FileProgress, FileResult | None]]) -> None:
        """Write the latest progress (and results) of a job's files."""
        if not updates:
            return
        now = time.time()
        with self.db.write() as conn:
            for position, (progress, result) in updates.items():
                self._write_file(conn, job_id, position, progress, result, now)

    def finish(
        self, job_id: str, worker_id: str, state: JobState, report: IngestReport | None, error: str | None
    ) -> bool:
        """A worker ended its job; its files' bytes are released. False when the job was no longer the worker's."""
        now = time.time()
        with self.db.write() as conn:
            ended = conn.execute(
                update(_jobs)
                .where(_jobs.c.id == job_id, _jobs.c.worker == worker_id, _jobs.c.state == JobState.RUNNING.value)
                .values(
                    state=state.value,
                    finished_at=now,
                    lease_until=None,
                    report=report.model_dump_json() if report else None,
                    error=error,
                )
            ).rowcount
            rows = self._file_rows(conn, job_id) if ended else []
            if ended and state != JobState.DONE:
                for row in rows:
                    if row.result is None:
                        self._write_file(conn, job_id, row.position, _cancelled(row.progress), None, now)
        if ended:
            self._release([r.stored for r in rows if r.stored])
        return bool(ended)

    def requeue(self, job_id: str, worker_id: str) -> None:
        """A worker is stopping: its job goes back to the queue; files that ended stay ended, the others start over."""
        now = time.time()
        with self.db.write() as conn:
            back = conn.execute(
                update(_jobs)
                .where(_jobs.c.id == job_id, _jobs.c.worker == worker_id, _jobs.c.state == JobState.RUNNING.value)
                .values(state=JobState.QUEUED.value, lease_until=None)
            ).rowcount
            if back:
                for row in self._file_rows(conn, job_id):
                    if row.result is None:
                        self._write_file(conn, job_id, row.position, FileProgress(file=row.progress.file), None, now)

    def _file_rows(self, conn: Connection, job_id: str) -> list[_FileRow]:
        return [
            _FileRow(
                position=r.position,
                name=r.name,
                stored=r.stored,
                content_hash=r.content_hash,
                reindex=bool(r.reindex),
                uploader=r.uploader,
                progress=FileProgress.model_validate_json(r.progress),
                result=FileResult.model_validate_json(r.result) if r.result else None,
            )
            for r in conn.execute(select(_files).where(_files.c.job_id == job_id).order_by(_files.c.position))
        ]

    @staticmethod
    def _write_file(
        conn: Connection, job_id: str, position: int, progress: FileProgress, result: FileResult | None, now: float
    ) -> None:
        values: dict[str, object] = {"progress": progress.model_dump_json(), "updated_at": now}
        if result is not None:
            values["result"] = result.model_dump_json()
        conn.execute(update(_files).where(_files.c.job_id == job_id, _files.c.position == position).values(**values))


def _cancelled(progress: FileProgress) -> FileProgress:
    if progress.status is not None:
        return progress
    return progress.model_copy(
        update={"stage": Stage.CANCELLED, "status": FileStatus.CANCELLED, "finished_at": time.time()}
    )


# -- the worker ----------------------------------------------------------------------------------------------
@dataclass
class _Running:
    claimed: ClaimedJob
    task: asyncio.Task[None] | None = None
    cancel: bool = False  # a user asked to cancel it
    requeue: bool = False  # the worker is stopping: back to the queue
    lost: bool = False  # another worker took it over: stop without touching anything
    dirty: dict[int, tuple[FileProgress, FileResult | None]] = field(default_factory=dict)  # not yet written
    latest: dict[int, FileProgress] = field(default_factory=dict)


class Worker:
    """Claims jobs from a queue and runs them with an Ingestor, on the runtime loop: the in-process worker of the
    app (and of a CLI `ingest`), and `python -m rag worker`, are this one class.

    `only` restricts it to some jobs (a CLI runs its own job and nobody else's, so exiting never interrupts
    another user's upload).
    """

    def __init__(
        self,
        queue: JobQueue,
        ingestor: Ingestor,
        library: DocumentLibrary,
        runtime: Runtime,
        kind: str = "app",
        concurrency: int = 2,
        only: Iterable[str] | None = None,
    ) -> None:
        self.queue = queue
        self.ingestor = ingestor
        self.library = library
        self.runtime = runtime
        self.kind = kind
        self.concurrency = max(1, concurrency)
        self.only = set(only) if only is not None else None
        self.id = new_worker_id()
        self._running: dict[str, _Running] = {}
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Future[None] | None = None
        self._stopping = False
        self.beat_at: float | None = None
        """When (epoch seconds) this worker last wrote its heartbeat to the database."""

    @property
    def running(self) -> list[str]:
        """Ids of the jobs this worker runs now."""
        return list(self._running)

    def start(self) -> Worker:
        """Register and start claiming (returns at once; the work happens on the runtime loop)."""
        self.queue.register(self.id, self.kind, self.concurrency)
        self.queue.wakeups.append(self.wake)
        self._loop_task = self.runtime.submit(self._main())
        return self

    def wake(self) -> None:
        """Look for a job now (called from any thread when this process enqueued one)."""
        if self._wake is not None and not self.runtime.closed:
            self.runtime.loop.call_soon_threadsafe(self._wake.set)

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        last_beat = 0.0
        beat = self.queue.lease / 6
        while not self._stopping:
            try:
                now = time.monotonic()
                await self._flush()
                states = await asyncio.to_thread(
                    self.queue.renew, self.id, list(self._running), now - last_beat >= beat
                )
                if now - last_beat >= beat:
                    last_beat, self.beat_at = now, time.time()
                for job_id, running in list(self._running.items()):
                    if job_id not in states and running.task is not None and not running.task.done():
                        log.warning("job %s was taken over by another worker; stopping it here", job_id)
                        running.lost = True
                        running.task.cancel()
                    elif states.get(job_id) and not running.cancel and running.task is not None:
                        running.cancel = True
                        running.task.cancel()
                while len(self._running) < self.concurrency and not self._stopping:
                    if self.only is not None and not (self.only - set(self._running)):
                        break
                    if not await asyncio.to_thread(self.queue.claimable, self.only):
                        break
                    claimed = await asyncio.to_thread(self.queue.claim, self.id, self.only)
                    if claimed is None:
                        break
                    running = _Running(claimed)
                    self._running[claimed.id] = running
                    running.task = asyncio.create_task(self._run(running), name=f"ingest-{claimed.id}")
            except RagError as exc:
                log.warning("the job queue could not be read (retrying): %s", exc)
            except Exception:  # noqa: BLE001 - a database hiccup must not stop the worker
                log.exception("worker %s: queue round failed (retrying)", self.id)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    async def _run(self, running: _Running) -> None:
        claimed = running.claimed
        todo = [f for f in claimed.files if f.result is None]
        results: dict[int, FileResult] = {f.position: f.result for f in claimed.files if f.result is not None}
        state, error, report = JobState.DONE, None, None
        try:
            sources = [await self._source(claimed, f) for f in todo]
            ready = [(f, s) for f, s in zip(todo, sources) if isinstance(s, SourceFile)]
            for row, failure in ((f, s) for f, s in zip(todo, sources) if isinstance(s, FileResult)):
                results[row.position] = failure
                self._publish(running, row.position, _failed(row.progress, failure), failure)

            def on_progress(index: int, progress: FileProgress) -> None:
                self._publish(running, ready[index][0].position, progress, None)

            done = await self.ingestor.aingest([s for _r, s in ready], on_progress)
            if running.requeue or running.lost:
                return  # stopped by the worker, not by the user: the files that had not ended start over elsewhere
            for (row, _source), result in zip(ready, done.files):
                if (
                    result.status == FileStatus.UNCHANGED
                    and claimed.attempts > 1
                    and _was_writing(row.progress, result)
                ):
                    result = result.model_copy(update={"status": FileStatus.INDEXED, "error": None})  # noqa: PLW2901
                results[row.position] = result
                self._publish(running, row.position, running.latest.get(row.position, row.progress), result)
            ordered = [results[p] for p in sorted(results)]
            report = IngestReport(files=ordered, seconds=time.time() - claimed.started_at)
            if running.cancel or any(r.status == FileStatus.CANCELLED for r in ordered):
                state = JobState.CANCELLED
        except asyncio.CancelledError:
            state = JobState.CANCELLED
        except RagError as exc:
            state, error = JobState.FAILED, exc.user_message
        except Exception as exc:  # noqa: BLE001 - a bug must not take the worker down with it
            log.exception("ingestion job %s failed", claimed.id)
            state, error = JobState.FAILED, f"Unexpected error: {type(exc).__name__}"
        finally:
            await asyncio.shield(self._end(running, state, report, error))

    async def _end(self, running: _Running, state: JobState, report: IngestReport | None, error: str | None) -> None:
        job_id = running.claimed.id
        try:
            if running.lost:
                return
            await self._flush_job(running)
            if running.requeue and not running.cancel:
                await asyncio.to_thread(self.queue.requeue, job_id, self.id)
            else:
                await asyncio.to_thread(self.queue.finish, job_id, self.id, state, report, error)
        except Exception:  # noqa: BLE001 - the lease runs out and another worker finishes it
            log.exception("could not record the end of job %s", job_id)
        finally:
            self._running.pop(job_id, None)
            if self._wake is not None:
                self._wake.set()

    async def _source(self, claimed: ClaimedJob, row: _FileRow) -> SourceFile | FileResult:
        """What the ingestor reads for a file: its stored bytes as a local file (fetched from a remote store)."""
        name = clean_name(row.name)
        if row.stored is None:
            return FileResult(file=name, status=FileStatus.FAILED, error=f"{name}: was not stored")
        try:
            path = await asyncio.to_thread(self.library.storage.local_path, row.stored)
        except OSError as exc:
            return FileResult(
                file=name, status=FileStatus.FAILED, error=f"{name}: its stored copy cannot be read ({exc})"
            )
        return SourceFile(
            path,
            row.name,
            content_hash=row.content_hash,
            reindex=row.reindex,
            workspace=claimed.workspace,
            owner=row.uploader,
            key=row.stored,
        )

    def _publish(self, running: _Running, position: int, progress: FileProgress, result: FileResult | None) -> None:
        """Keep a file's latest progress for the next write (at most every POLL_SECONDS); a new stage or an end is
        written at once, so readers see each step of a file."""
        old = running.dirty.get(position)
        before = running.latest.get(position)
        if (before is None or before.stage != progress.stage or result is not None) and self._wake is not None:
            self._wake.set()
        running.latest[position] = progress
        running.dirty[position] = (progress, result or (old[1] if old else None))

    async def _flush(self) -> None:
        for running in list(self._running.values()):
            if not running.lost:
                await self._flush_job(running)

    async def _flush_job(self, running: _Running) -> None:
        if not running.dirty:
            return
        updates, running.dirty = running.dirty, {}
        try:
            await asyncio.to_thread(self.queue.save_progress, running.claimed.id, updates)
        except Exception:
            for position, value in updates.items():  # written next round
                running.dirty.setdefault(position, value)
            raise

    async def astop(self) -> None:
        """Stop claiming; running jobs stop and go back to the queue (another worker, or the next start, runs
        them again from their first unfinished file); then the worker is marked stopped."""
        self._stopping = True
        if self.wake in self.queue.wakeups:
            self.queue.wakeups.remove(self.wake)
        if self._wake is not None:
            self._wake.set()
        tasks = []
        for running in list(self._running.values()):
            running.requeue = True
            if running.task is not None:
                running.task.cancel()
                tasks.append(running.task)
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self.queue.unregister, self.id)

    def stop(self, timeout: float = 60.0) -> None:
        """`astop` from another thread (the service closing, a signal)."""
        if self.runtime.closed:
            return
        try:
            self.runtime.run(self.astop(), timeout=timeout)
        except Exception:  # noqa: BLE001 - stopping is best effort: leases run out and others take over
            log.warning("worker %s did not stop cleanly", self.id, exc_info=True)


def _failed(progress: FileProgress, result: FileResult) -> FileProgress:
    return progress.model_copy(
        update={"stage": Stage.FAILED, "status": FileStatus.FAILED, "error": result.error, "finished_at": time.time()}
    )


def _was_writing(before: FileProgress, result: FileResult) -> bool:
    """On a second attempt, a file found already indexed that the first attempt was writing was indexed by this
    job (the first worker committed it, then died before saying so)."""
    return before.doc_id == result.doc_id and before.stage in (Stage.EMBEDDING, Stage.STORING)
