"""The job queue measured: claim latency with 1, 4 and 16 workers, and corpus throughput with 1 and 2 worker processes.

    .venv/bin/python scripts/queue_bench.py claims [--workers 1,4,16] [--jobs 200] [--engine postgresql|sqlite]
    .venv/bin/python scripts/queue_bench.py throughput [--workers 1,2] [--corpus ../shared/corpus]

`claims` starts a throwaway PostgreSQL cluster (tests/postgres.py; or an SQLite file), then N claimer processes that
poll and claim exactly as `rag.jobs.Worker` does (a cheap read every POLL_SECONDS, then the claim transaction) and
end each job at once: no ingestion, so what is measured is the queue alone. Jobs are queued at a steady rate by
different owners (so fairness never holds one back) and each one's time from enqueue to claim, and the claim
transaction's own duration, are reported.

`throughput` indexes the corpus with N real `python -m rag worker` processes on one machine (PostgreSQL, the
embedded Milvus of RAG_TEST_MILVUS_DIR, a shared uploads folder), one job per file from its own owner so that
workers can share the corpus, and reports the wall time from the first enqueue to the last job's end (workers
already registered, their model loaded), chunks per second and the ratio to one worker.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _claimer(url: str, data_dir: str, collection: str, stop: object, ready: mp.Queue, out: mp.Queue) -> None:
    """One worker's claim loop, minus the ingestion: claim, record, end the job at once."""
    from rag.config import load_settings
    from rag.database import Database
    from rag.jobs import POLL_SECONDS, JobQueue, JobState, new_worker_id

    db = Database.open(load_settings(data_dir=Path(data_dir), database_url=url))
    queue = JobQueue(db, collection, max_running=64, lease=60)
    me = new_worker_id()
    queue.register(me, "worker", 1)
    queue.claimable()  # connected
    ready.put(me)
    results = []
    while not stop.is_set():  # type: ignore[attr-defined]
        if queue.claimable():
            started = time.perf_counter()
            claimed = queue.claim(me)
            seconds = time.perf_counter() - started
            if claimed is not None:
                now = time.time()
                with db.read() as conn:
                    from sqlalchemy import select

                    from rag import schema

                    created = conn.execute(
                        select(schema.jobs.c.created_at).where(schema.jobs.c.id == claimed.id)
                    ).scalar_one()
                results.append((now - created, seconds))
                queue.finish(claimed.id, me, JobState.DONE, None, None)
                continue
        time.sleep(POLL_SECONDS)
    queue.unregister(me)
    out.put(results)


def claims(args: argparse.Namespace) -> list[dict[str, object]]:
    from tests.postgres import PostgresCluster

    rows = []
    cluster = PostgresCluster().start() if args.engine == "postgresql" else None
    try:
        for workers in args.workers:
            work = Path(tempfile.mkdtemp(prefix="queue-bench-"))
            if cluster is not None:
                with cluster.database() as url:
                    rows.append(_claims_once(url, work, workers, args))
            else:
                rows.append(_claims_once("", work, workers, args))
    finally:
        if cluster is not None:
            cluster.stop()
    return rows


def _claims_once(url: str, work: Path, workers: int, args: argparse.Namespace) -> dict[str, object]:
    from rag.config import load_settings
    from rag.database import Database
    from rag.jobs import JobQueue, NewFile

    collection = "bench"
    db = Database.open(load_settings(data_dir=work, database_url=url))
    queue = JobQueue(db, collection, max_running=64)
    spawn = mp.get_context("spawn")
    out, ready, stop = spawn.Queue(), spawn.Queue(), spawn.Event()
    procs = [
        spawn.Process(target=_claimer, args=(url, str(work), collection, stop, ready, out)) for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=600)  # every claimer connected and polling
    time.sleep(1)
    for i in range(args.jobs):
        queue.enqueue(f"owner-{i}", "default", [NewFile(name=f"f{i}.txt", error="not a real file")])
        time.sleep(args.interval)
    while queue.status().queued:
        time.sleep(0.2)
    stop.set()
    results = [r for _ in procs for r in out.get(timeout=120)]
    for proc in procs:
        proc.join(timeout=30)
    db.close()
    latency = sorted(r[0] for r in results)
    tx = sorted(r[1] for r in results)
    return {
        "engine": "postgresql" if url else "sqlite",
        "workers": workers,
        "jobs": len(results),
        "enqueue_to_claim_ms_p50": round(1000 * statistics.median(latency), 1),
        "enqueue_to_claim_ms_p95": round(1000 * latency[int(0.95 * (len(latency) - 1))], 1),
        "claim_tx_ms_p50": round(1000 * statistics.median(tx), 2),
        "claim_tx_ms_p95": round(1000 * tx[int(0.95 * (len(tx) - 1))], 2),
    }


def throughput(args: argparse.Namespace) -> list[dict[str, object]]:
    from rag.config import load_settings
    from rag.milvus_server import EmbeddedMilvus
    from rag.service import RagService
    from tests.postgres import PostgresCluster
    from tests.workers import live_pids, wait_for, worker_processes

    milvus = EmbeddedMilvus(Path(os.environ.get("RAG_TEST_MILVUS_DIR", REPO / ".pytest-milvus")))
    state = milvus.start()
    files = sorted(p for p in Path(args.corpus).iterdir() if p.is_file() and p.name != "SOURCES.md")
    cluster = PostgresCluster().start()
    rows = []
    try:
        for workers in args.workers:
            root = Path(tempfile.mkdtemp(prefix="queue-throughput-"))
            with cluster.database() as url:
                settings = load_settings(
                    data_dir=root / "bench",
                    database_url=url,
                    storage_url=str(root / "uploads"),
                    milvus_uri=state.uri,
                    milvus_token=milvus.token,
                    collection=f"qb_{uuid.uuid4().hex[:10]}",
                    inprocess_worker="off",
                    max_running_jobs=8,
                )
                service = RagService(settings, worker="none")
                try:
                    with worker_processes(settings, root) as start:
                        procs = [start(f"w{i}") for i in range(workers)]
                        pids = {p.pid for p in procs}
                        wait_for(lambda s=service, p=pids: live_pids(s) == p, 600, "workers")
                        began = time.time()
                        jobs = [service.start_job([f], owner=f"bench-{i}") for i, f in enumerate(files)]
                        done = [service.wait_job(j.id, timeout=3600) for j in jobs]
                        seconds = time.time() - began
                    chunks = sum(j.report.chunks for j in done if j.report)
                    by_worker: dict[int, int] = {}
                    for job in done:
                        by_worker[job.worker.pid] = by_worker.get(job.worker.pid, 0) + 1
                    rows.append(
                        row := {
                            "workers": workers,
                            "files": len(files),
                            "chunks": chunks,
                            "seconds": round(seconds, 1),
                            "chunks_per_s": round(chunks / seconds, 1),
                            "jobs_per_worker": sorted(by_worker.values()),
                        }
                    )
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    if workers == args.workers[-1]:
                        rows.append(_evaluate(service, "postgresql"))
                finally:
                    service.runtime.run(service.store.adrop(), timeout=120)
                    service.close()
    finally:
        cluster.stop()
    measured = [r for r in rows if "chunks_per_s" in r]
    for row in measured:
        row["ratio"] = round(row["chunks_per_s"] / measured[0]["chunks_per_s"], 2)
    return rows


def _evaluate(service: object, engine: str) -> dict[str, object]:
    """hit@1/3/5 and MRR of the three modes on tests/data/qa.jsonl, as `python -m rag eval --retrieval all`."""
    from rag.evaluate import parse_pairs

    path = REPO / "tests" / "data" / "qa.jsonl"
    pairs = parse_pairs(path.read_text(encoding="utf-8"), str(path))
    reports = service.evaluate(pairs, ["dense", "keyword", "hybrid"])  # type: ignore[attr-defined]
    return {
        "eval": engine,
        "keyword_index": service.store.keyword.describe(),  # type: ignore[attr-defined]
        "modes": {r.mode: {"hit_at": r.hit_at, "mrr": round(r.mrr, 3)} for r in reports},
    }


def embedded(args: argparse.Namespace) -> list[dict[str, object]]:
    """The corpus through the embedded default (SQLite, the app's in-process worker), then the labelled eval."""
    from rag.config import load_settings
    from rag.milvus_server import EmbeddedMilvus
    from rag.service import RagService

    milvus = EmbeddedMilvus(Path(os.environ.get("RAG_TEST_MILVUS_DIR", REPO / ".pytest-milvus")))
    state = milvus.start()
    files = sorted(p for p in Path(args.corpus).iterdir() if p.is_file() and p.name != "SOURCES.md")
    settings = load_settings(
        data_dir=Path(tempfile.mkdtemp(prefix="queue-sqlite-")),
        milvus_uri=state.uri,
        milvus_token=milvus.token,
        collection=f"qb_{uuid.uuid4().hex[:10]}",
    )
    service = RagService(settings)
    try:
        began = time.time()
        report = service.ingest(files)
        seconds = time.time() - began
        row = {"workers": "in-process", "files": len(files), "chunks": report.chunks, "seconds": round(seconds, 1)}
        return [row, _evaluate(service, "sqlite")]
    finally:
        service.runtime.run(service.store.adrop(), timeout=120)
        service.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("claims")
    c.add_argument("--workers", default="1,4,16", type=lambda s: [int(x) for x in s.split(",")])
    c.add_argument("--jobs", type=int, default=200)
    c.add_argument("--interval", type=float, default=0.1, help="seconds between enqueues")
    c.add_argument("--engine", choices=["postgresql", "sqlite"], default="postgresql")
    t = sub.add_parser("throughput")
    t.add_argument("--workers", default="1,2", type=lambda s: [int(x) for x in s.split(",")])
    t.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus"))
    e = sub.add_parser("sqlite", help="the embedded default: in-process worker, SQLite and FTS5; then eval")
    e.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = {"claims": claims, "throughput": throughput, "sqlite": embedded}[args.what](args)
    print(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} cores", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
