"""Fair ingestion jobs against the real Milvus: one running job per owner, round robin between owners,
a cap on running jobs, cancelling a queued job, the same file in two jobs at once, and one benchmark at a time.

Order is checked from the jobs' own start and end times, never from wall-clock thresholds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.bench import BenchConfig, BenchRow
from rag.errors import BenchmarkBusyError
from rag.ingest import FileStatus
from rag.jobs import JobSnapshot, JobState
from rag.service import RagService
from tests.conftest import _drop

pytestmark = pytest.mark.milvus

SYLLABLES = ("ka", "lo", "mi", "ra", "tu", "ve", "sen", "dor", "pil", "quo", "zan", "bel", "gri", "hov")


def _doc(folder: Path, name: str, sentences: int = 120) -> Path:
    """A text document of its own (different bytes for every name), about `sentences` / 7 chunks."""
    rng = random.Random(name)

    def word() -> str:
        return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))

    text = " ".join(" ".join(word() for _ in range(rng.randint(8, 16))).capitalize() + "." for _ in range(sentences))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def service_with(make_settings, embedder) -> Iterator:  # noqa: ANN001
    """Build services with setting overrides (e.g. the running-jobs cap); each is dropped afterwards."""
    built: list[RagService] = []

    def _make(**overrides: object) -> RagService:
        svc = RagService(make_settings(**overrides), embedder=embedder)
        built.append(svc)
        return svc

    yield _make
    for svc in built:
        _drop(svc)


def _wait_all(service: RagService, jobs: list[JobSnapshot]) -> list[JobSnapshot]:
    return [service.wait_job(job.id, timeout=300) for job in jobs]


def _overlap(jobs: list[JobSnapshot]) -> int:
    """Most jobs running at the same moment, from their start and end times."""
    assert all(j.started_at is not None and j.finished_at is not None for j in jobs)
    return max(sum(1 for o in jobs if o.started_at <= j.started_at < o.finished_at) for j in jobs)


def test_an_owner_runs_one_job_at_a_time(service_with, tmp_path: Path) -> None:  # noqa: ANN001
    service = service_with(max_running_jobs=2)
    first = service.start_job([_doc(tmp_path, "a1.txt")], owner="alice")
    second = service.start_job([_doc(tmp_path, "a2.txt")], owner="alice")

    assert second.state == JobState.QUEUED and second.active and second.started_at is None
    assert all(f.stage == "queued" for f in second.files)
    first, second = _wait_all(service, [first, second])
    assert first.state == second.state == JobState.DONE
    assert second.started_at >= first.finished_at  # a free slot was there all along: it waited for alice's first
    assert {d.file_name for d in service.documents()} == {"a1.txt", "a2.txt"}


def test_owners_take_turns(service_with, tmp_path: Path) -> None:  # noqa: ANN001
    service = service_with(max_running_jobs=1)
    docs = {name: _doc(tmp_path, f"{name}.txt", 60) for name in ("a1", "a2", "a3", "b1", "b2")}
    jobs = [service.start_job([docs[name]], owner="alice") for name in ("a1", "a2", "a3")]
    jobs += [service.start_job([docs[name]], owner="bob") for name in ("b1", "b2")]

    ended = _wait_all(service, jobs)
    assert all(j.state == JobState.DONE for j in ended)
    order = [j.files[0].file for j in sorted(ended, key=lambda j: j.started_at)]
    assert order == ["a1.txt", "b1.txt", "a2.txt", "b2.txt", "a3.txt"]  # alice queued three first, yet bob alternates
    assert _overlap(ended) == 1


def test_the_running_cap_holds_across_owners(service_with, tmp_path: Path) -> None:  # noqa: ANN001
    service = service_with(max_running_jobs=2)
    docs = {owner: _doc(tmp_path, f"{owner}.txt") for owner in ("ann", "ben", "cat")}
    jobs = [service.start_job([doc], owner=owner) for owner, doc in docs.items()]
    seen_queued = False
    running_at_once = 0
    while any(service.job(j.id).active for j in jobs):
        states = [service.job(j.id).state for j in jobs]
        running_at_once = max(running_at_once, states.count(JobState.RUNNING))
        seen_queued = seen_queued or JobState.QUEUED in states
        time.sleep(0.05)

    ended = _wait_all(service, jobs)
    assert all(j.state == JobState.DONE for j in ended)
    assert running_at_once <= 2 and _overlap(ended) == 2  # two ran side by side, never three
    assert seen_queued
    third = max(ended, key=lambda j: j.started_at)
    assert third.files[0].file == "cat.txt"
    assert third.started_at >= min(j.finished_at for j in ended if j is not third)


def test_cancelling_a_queued_job_leaves_nothing(service_with, tmp_path: Path) -> None:  # noqa: ANN001
    service = service_with(max_running_jobs=1)
    docs = [_doc(tmp_path, name) for name in ("long.txt", "never.txt", "nor.txt")]
    running = service.start_job(docs[:1], owner="alice")
    waiting = service.start_job(docs[1:], owner="bob")
    assert service.job(waiting.id).state == JobState.QUEUED

    assert service.cancel_job(waiting.id, owner="bob")
    cancelled = service.wait_job(waiting.id, timeout=5)
    assert cancelled.state == JobState.CANCELLED and cancelled.started_at is None
    assert all(f.status == FileStatus.CANCELLED and f.stage == "cancelled" for f in cancelled.files)
    assert not service.cancel_job(waiting.id, owner="bob")  # already over

    done = service.wait_job(running.id, timeout=300)
    assert done.state == JobState.DONE
    assert [d.file_name for d in service.documents()] == ["long.txt"]
    assert service.count_chunks() == done.report.chunks
    stored = sorted(p.name for p in (service.settings.data_dir / "uploads").iterdir())
    assert stored == [service.documents()[0].stored_path]  # bob's bytes are gone with his job


def test_the_same_file_in_two_jobs_at_once_is_indexed_once(service_with, tmp_path: Path) -> None:  # noqa: ANN001
    service = service_with(max_running_jobs=2)
    shared = _doc(tmp_path, "handbook.txt")
    jobs = [service.start_job([shared], owner=owner) for owner in ("alice", "bob")]

    ended = _wait_all(service, jobs)
    statuses = sorted(j.report.files[0].status for j in ended)
    assert statuses == [FileStatus.INDEXED, FileStatus.UNCHANGED]
    [record] = service.documents()
    assert service.count_chunks() == record.chunks > 0


@pytest.mark.parametrize("cancelled", ["writer", "waiter"])
def test_cancelling_one_owner_does_not_spoil_the_same_file_for_another(
    service_with,  # noqa: ANN001
    tmp_path: Path,
    cancelled: str,
) -> None:
    """Two owners upload the same bytes; one writes while the other waits its turn for that document.
    Cancelling the waiter must not touch the writer's chunks; cancelling the writer removes its partial
    chunks before the waiter writes the document whole."""
    service = service_with(max_running_jobs=2)
    shared = _doc(tmp_path, "handbook.txt", 400)
    jobs = [service.start_job([shared], owner=owner) for owner in ("alice", "bob")]
    deadline = time.time() + 300
    while not any(service.job(j.id).files[0].chunks_embedded for j in jobs) and time.time() < deadline:
        time.sleep(0.02)
    writer, waiter = sorted(jobs, key=lambda j: -service.job(j.id).files[0].chunks_embedded)
    assert service.job(waiter.id).files[0].chunks_embedded == 0
    victim, survivor = (writer, waiter) if cancelled == "writer" else (waiter, writer)
    assert service.cancel_job(victim.id)

    assert service.wait_job(victim.id, timeout=300).state == JobState.CANCELLED
    done = service.wait_job(survivor.id, timeout=300)
    assert done.state == JobState.DONE, done
    assert done.report.files[0].status == FileStatus.INDEXED, done.report.files[0].error
    [record] = service.documents()
    assert record.status == "indexed"
    assert service.count_chunks() == record.chunks == done.report.files[0].chunks


def test_a_second_benchmark_is_refused_while_one_runs(service_with) -> None:  # noqa: ANN001
    service = service_with()
    config = BenchConfig(experiments=["add"], counts=[2], dim=8, consistency_level="Session")
    first = service.bench(config)
    assert isinstance(next(first), BenchRow)  # the first run holds the lock from its first row on

    with pytest.raises(BenchmarkBusyError) as refused:
        next(service.bench(config))
    assert "a benchmark is already running" in refused.value.user_message.lower()

    first.close()  # stopping the run frees the lock
    rows = [item for item in service.bench(config) if isinstance(item, BenchRow)]
    assert [r.mode for r in rows] == ["sync", "seed-async", "project-async"]


def test_jobs_outlive_the_process_that_queued_them(make_settings, embedder, tmp_path: Path) -> None:  # noqa: ANN001
    """Closing the app puts its running job back in the queue (files that ended stay ended) and leaves the queued
    one queued; the next start runs both to the end, each file indexed once."""
    settings = make_settings(max_running_jobs=1)
    first = RagService(settings, embedder=embedder)
    running = first.start_job([_doc(tmp_path, "first.txt", 400)], owner="alice")
    waiting = first.start_job([_doc(tmp_path, "second.txt")], owner="bob")
    deadline = time.time() + 120
    while not first.job(running.id).files[0].chunks_embedded and time.time() < deadline:
        time.sleep(0.02)
    first.close()

    second = RagService(settings, embedder=embedder)
    try:
        back, still = second.job(running.id), second.job(waiting.id)
        assert back.state == still.state == JobState.QUEUED
        assert back.attempts == 1 and back.files[0].stage == "queued" and still.attempts == 0
        done = [second.wait_job(job.id, timeout=300) for job in (running, waiting)]
        assert [j.state for j in done] == [JobState.DONE, JobState.DONE]
        assert done[0].attempts == 2 and done[0].report.files[0].status == FileStatus.INDEXED
        assert {d.file_name for d in second.documents()} == {"first.txt", "second.txt"}
        assert second.count_chunks() == sum(j.report.chunks for j in done)
    finally:
        _drop(second)


def test_snapshots_never_change_once_taken(service_with, tmp_path: Path) -> None:  # noqa: ANN001
    service = service_with()
    job = service.start_job([_doc(tmp_path, "long.txt", sentences=1200)], owner="alice")
    seen: list[tuple[JobSnapshot, dict]] = []
    while (snap := service.job(job.id)) is not None and snap.active:
        seen.append((snap, snap.model_dump()))
        time.sleep(0.05)
    final = service.wait_job(job.id, timeout=300)
    assert final.state == JobState.DONE and final.files[0].chunks_done == final.files[0].chunks_total > 0
    assert len({d["files"][0]["chunks_done"] for _s, d in seen}) > 1  # progress was published as it went
    for snap, dumped in seen:
        assert snap.model_dump() == dumped  # later progress never reached into an earlier snapshot
