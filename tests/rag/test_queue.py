"""The job queue's rules in the database, on both engines, without Milvus: claims by the fairness rules across
workers, leases that run out, workers that are gone, cancels, clean stops, and many claimers at once.

Workers here are ids claiming through `JobQueue` as `rag.jobs.Worker` does; the ingestion behind them is tested
with real workers in test_jobs.py and tests/browser/test_team.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import update

from rag import schema
from rag.database import Database
from rag.ingest import FileProgress, FileResult, FileStatus, Stage
from rag.jobs import JobQueue, JobState, NewFile, new_worker_id, worker_gone


def _queue(db: Database, released: list[str] | None = None, **options: object) -> JobQueue:
    return JobQueue(db, "docs", release=(released.extend if released is not None else None), **options)  # type: ignore[arg-type]


def _files(*names: str) -> list[NewFile]:
    return [NewFile(name=n, stored=f"{i:064x}.txt", content_hash=f"{i:064x}") for i, n in enumerate(names)]


def _elsewhere(name: str) -> str:
    """A worker on another machine: only its lease tells whether it lives."""
    return f"{name}|another-machine|1|1|{name}"


def test_claims_follow_the_cap_one_job_per_owner_and_round_robin(db: Database) -> None:
    queue = _queue(db, max_running=2)
    jobs = {}
    for owner, name in [("alice", "a1"), ("alice", "a2"), ("alice", "a3"), ("bob", "b1"), ("bob", "b2"), ("cat", "c1")]:
        jobs[name] = queue.enqueue(owner, "default", _files(f"{name}.txt")).id
        time.sleep(0.002)  # distinct creation times
    w1, w2, w3 = (_elsewhere(n) for n in ("w1", "w2", "w3"))
    order = []

    first, second = queue.claim(w1), queue.claim(w2)
    order += [first.id, second.id]
    assert queue.claim(w3) is None  # the cap holds for all workers together
    assert {first.owner, second.owner} == {"alice", "bob"}  # alice's second job waits for her first
    queue.finish(first.id, w1, JobState.DONE, None, None)
    order.append(queue.claim(w1).id)  # cat: never served, ahead of alice's and bob's next
    queue.finish(second.id, w2, JobState.DONE, None, None)
    queue.finish(order[-1], w1, JobState.DONE, None, None)
    while (claimed := queue.claim(w3)) is not None:
        order.append(claimed.id)
        queue.finish(claimed.id, w3, JobState.DONE, None, None)
    names = {v: k for k, v in jobs.items()}
    assert [names[i] for i in order] == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert [j.state for j in queue.list()] == [JobState.DONE] * 6


def test_a_lease_that_runs_out_lets_another_worker_finish_the_job(db: Database) -> None:
    queue = _queue(db, lease=3.0)
    job = queue.enqueue("alice", "default", _files("a.txt", "b.txt"))
    dead, alive = _elsewhere("dead"), _elsewhere("alive")
    queue.register(dead, "worker", 1)
    queue.register(alive, "worker", 1)
    assert queue.claim(dead).id == job.id
    done = FileProgress(file="a.txt", stage=Stage.DONE, status=FileStatus.INDEXED, chunks_total=3, chunks_done=3)
    queue.save_progress(job.id, {0: (done, FileResult(file="a.txt", status=FileStatus.INDEXED, chunks=3))})
    assert queue.claim(alive) is None  # the lease still holds
    assert queue.renew(dead, [job.id], extend=True) == {job.id: False}

    with db.write() as conn:  # the dead worker's lease ran out: as if 3 s had passed without a heartbeat
        conn.execute(update(schema.jobs).values(lease_until=time.time() - 1))
        conn.execute(update(schema.workers).where(schema.workers.c.id == dead).values(heartbeat_at=time.time() - 4))
    again = queue.claim(alive)
    assert again.id == job.id and again.attempts == 2
    assert [f.result is not None for f in again.files] == [True, False]  # a.txt is not indexed twice
    assert {w.id: w.state for w in queue.status().workers} == {dead: "lost", alive: "running"}
    assert queue.get(job.id).worker.id == alive
    assert queue.renew(dead, [job.id], extend=True) == {}  # a stalled worker that wakes learns it lost the job
    assert not queue.finish(job.id, dead, JobState.DONE, None, None)  # and cannot end it


def test_a_worker_gone_from_this_machine_is_taken_over_at_once(db: Database) -> None:
    queue = _queue(db, lease=600.0)
    job = queue.enqueue("alice", "default", _files("a.txt"))
    me = new_worker_id()
    ghost = me.replace(f"|{me.split('|')[2]}|", "|999999999|", 1)  # this machine, a process that does not exist
    assert worker_gone(ghost) and not worker_gone(me) and not worker_gone(_elsewhere("x"))
    queue.register(ghost, "worker", 1)
    assert queue.claim(ghost).id == job.id
    assert queue.claimable()
    taken = queue.claim(me)  # no need to wait for the ten-minute lease
    assert taken.id == job.id and taken.attempts == 2
    assert [w.state for w in queue.status().workers if w.id == ghost] == ["lost"]


def test_cancelling_queued_and_running_jobs(db: Database) -> None:
    released: list[str] = []
    queue = _queue(db, released, max_running=1)
    running = queue.enqueue("alice", "default", _files("a.txt"))
    waiting = queue.enqueue("bob", "default", _files("b.txt", "c.txt"))
    worker = _elsewhere("w")
    assert queue.claim(worker).id == running.id

    assert queue.cancel(waiting.id, owner="bob")
    gone = queue.get(waiting.id)
    assert gone.state == JobState.CANCELLED and gone.started_at is None
    assert [f.status for f in gone.files] == [FileStatus.CANCELLED] * 2
    assert released == [f.stored for f in _files("b.txt", "c.txt")]  # its stored bytes may go now
    assert not queue.cancel(waiting.id) and not queue.cancel(running.id, owner="bob")  # over; not bob's

    assert queue.cancel(running.id, owner="alice")
    assert queue.get(running.id).state == JobState.RUNNING  # its worker stops it...
    assert queue.renew(worker, [running.id], extend=False) == {running.id: True}  # ...told at its next round
    assert queue.finish(running.id, worker, JobState.CANCELLED, None, None)
    assert queue.get(running.id).files[0].status == FileStatus.CANCELLED


def test_a_cancel_while_its_worker_dies_ends_the_job(db: Database) -> None:
    released: list[str] = []
    queue = _queue(db, released, lease=3.0)
    job = queue.enqueue("alice", "default", _files("a.txt"))
    assert queue.claim(_elsewhere("dying")).id == job.id
    queue.cancel(job.id)
    with db.write() as conn:
        conn.execute(update(schema.jobs).values(lease_until=time.time() - 1))
    assert queue.claim(_elsewhere("next")) is None  # not run again: cancelled
    assert queue.get(job.id).state == JobState.CANCELLED and released == [_files("a.txt")[0].stored]


def test_a_stopping_worker_puts_its_job_back(db: Database) -> None:
    queue = _queue(db)
    job = queue.enqueue("alice", "default", _files("a.txt", "b.txt"))
    worker = _elsewhere("w")
    queue.register(worker, "app", 2)
    queue.claim(worker)
    ended = FileProgress(file="a.txt", stage=Stage.DONE, status=FileStatus.INDEXED)
    half = FileProgress(file="b.txt", stage=Stage.EMBEDDING, chunks_total=9, chunks_embedded=4)
    queue.save_progress(job.id, {0: (ended, FileResult(file="a.txt", status=FileStatus.INDEXED)), 1: (half, None)})
    queue.requeue(job.id, worker)
    queue.unregister(worker)
    back = queue.get(job.id)
    assert back.state == JobState.QUEUED and back.attempts == 1
    assert [f.stage for f in back.files] == [Stage.DONE, Stage.QUEUED]  # the finished file stays finished
    assert [w.state for w in queue.status().workers] == ["stopped"]
    assert queue.claim(_elsewhere("next")).attempts == 2


def test_files_refused_before_storing_are_reported_failed(db: Database) -> None:
    queue = _queue(db)
    job = queue.enqueue("alice", "default", [NewFile(name="huge.pdf", error="huge.pdf: is 80 MB; the limit is 50 MB")])
    assert job.files[0].status == FileStatus.FAILED and "the limit is 50 MB" in job.files[0].error
    claimed = queue.claim(_elsewhere("w"))
    assert claimed.files[0].result.status == FileStatus.FAILED  # the worker has nothing left to do for it


def test_many_claimers_at_once_never_break_the_rules(db: Database) -> None:
    """Eight threads, each its own worker and connection, race for 24 jobs of 6 owners with a cap of 3."""
    queue = _queue(db, max_running=3)
    for i in range(24):
        queue.enqueue(f"owner{i % 6}", "default", _files(f"f{i}.txt"))
    running: dict[str, str] = {}  # job id -> owner, while claimed
    lock = threading.Lock()
    violations: list[str] = []
    done: list[str] = []

    def work(name: str) -> None:
        me = _elsewhere(name)
        while True:
            claimed = queue.claim(me)
            if claimed is None:
                if queue.status().queued == 0:
                    return
                time.sleep(0.01)
                continue
            with lock:
                if len(running) >= 3:
                    violations.append(f"cap: {sorted(running.values())} + {claimed.owner}")
                if claimed.owner in running.values():
                    violations.append(f"owner twice: {claimed.owner}")
                running[claimed.id] = claimed.owner
            time.sleep(0.005)
            with lock:
                del running[claimed.id]
                done.append(claimed.id)
            assert queue.finish(claimed.id, me, JobState.DONE, None, None)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert violations == []
    assert sorted(done) == sorted(j.id for j in queue.list()) and len(done) == 24  # each job exactly once


@pytest.mark.parametrize("kind", ["app", "worker"])
def test_status_lists_workers_and_queue_depth(db: Database, kind: str) -> None:
    queue = _queue(db, max_running=1)
    me = _elsewhere("w")
    queue.register(me, kind, 3)
    first = queue.enqueue("alice", "default", _files("a.txt"))
    queue.enqueue("bob", "default", _files("b.txt"))
    queue.claim(me)
    status = queue.status()
    assert (status.queued, status.running) == (1, 1)
    [info] = status.workers
    assert (info.host, info.kind, info.concurrency, info.jobs, info.state) == ("w", kind, 3, [first.id], "running")
