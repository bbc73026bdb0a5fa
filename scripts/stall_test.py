"""Stall: does one user's upload or benchmark slow down another user's questions?

A second client asks retrieval-only questions one after another and we time each whole answer (the
question embedded, the Milvus search, the passages and sentences picked). First with nothing else
running, then while another owner's ~500-chunk upload job and a small benchmark (add and search,
N=100) run through the same RagService. Prints p50/p95 of both phases and the ratio of the p95s.

Meanwhile a heartbeat on the runtime's event loop measures how late the loop wakes up (loop lag), and a
watchdog thread samples the loop thread's stack whenever a beat is more than --stall-ms late, so the
report names the code that held the loop.

Usage (from the repo, after scripts/setup.sh):
    .venv/bin/python scripts/stall_test.py [--questions 40] [--json out.json]
    .venv/bin/python scripts/stall_test.py --milvus-dir .pytest-milvus   # the embedded server kept there
    .venv/bin/python scripts/stall_test.py --load bench                  # only the benchmark meanwhile

It uses the configured Milvus (with no MILVUS_URI: the embedded one of RAG_DATA_DIR), or with --milvus-dir
the embedded server of that data dir and a scratch data dir. Everything runs in a scratch collection that
is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import load_test  # noqa: E402 - beside this script: the same questions and percentiles

# The load test's questions about the seed files (not the two on files this test does not index), and two more.
QUESTIONS = [q for q in load_test.QUESTIONS if "linear model" not in q and "layoffs" not in q] + [
    "How are partitions pruned during query planning?",
    "Which function merges two zoo series?",
]
SEED_FILES = load_test.SEED_FILES  # what the questions are about: 401 chunks
UPLOAD_FILES = ["R-intro.pdf", "WARN-Report-for-7-1-2015-to-03-25-2016.pdf", "unstructured_README.md"]  # 500 chunks


def _ms(values: list[float], q: float) -> float:
    return round(load_test._pct(values, q) * 1000, 1)


class LoopWatch:
    """Loop lag from a heartbeat on the loop; stacks of the loop thread sampled while a beat is late."""

    def __init__(self, runtime, period: float = 0.02, stall: float = 0.1) -> None:  # noqa: ANN001
        self.runtime = runtime
        self.period, self.stall = period, stall
        self.lags: list[tuple[float, float]] = []  # (when, seconds late)
        self.stalls: collections.Counter[str] = collections.Counter()
        self.stall_seconds: collections.Counter[str] = collections.Counter()
        self._last_beat = time.monotonic()
        self._stop = threading.Event()
        self._loop_thread = next(t for t in threading.enumerate() if t.name == "rag-runtime")

    async def _beat(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            await asyncio.sleep(self.period)
            now = time.monotonic()
            self.lags.append((time.time(), now - started - self.period))
            self._last_beat = now

    def _watch(self) -> None:
        sampled_for = 0.0
        while not self._stop.is_set():
            time.sleep(self.stall / 4)
            overdue = time.monotonic() - self._last_beat - self.period
            if overdue < self.stall or self._last_beat == sampled_for:
                continue
            sampled_for = self._last_beat  # one sample per late beat, when it is first seen late
            frame = sys._current_frames().get(self._loop_thread.ident)
            if frame is None:
                continue
            key = self._describe(traceback.extract_stack(frame))
            self.stalls[key] += 1

    @staticmethod
    def _describe(stack: traceback.StackSummary) -> str:
        """The loop thread's innermost frame in this repository, with the innermost frame of all."""
        ours = [f for f in stack if str(REPO) in f.filename and "/.venv/" not in f.filename]
        inner = stack[-1]
        where = f"{Path(inner.filename).name}:{inner.lineno} {inner.name}"
        if ours:
            mine = ours[-1]
            return f"{Path(mine.filename).relative_to(REPO)}:{mine.lineno} {mine.name} -> {where}"
        return where

    def start(self) -> LoopWatch:
        self.runtime.submit(self._beat())
        threading.Thread(target=self._watch, name="loop-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def window(self, start: float, end: float) -> dict[str, float]:
        lags = [lag for when, lag in self.lags if start <= when <= end]
        return {
            "beats": len(lags),
            "lag_p50_ms": _ms(lags, 0.5),
            "lag_p95_ms": _ms(lags, 0.95),
            "lag_max_ms": round(max(lags, default=0.0) * 1000, 1),
            "beats_over_100ms": sum(1 for lag in lags if lag > 0.1),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--questions",
        type=int,
        default=40,
        help="questions in the idle phase (under load: as many as fit while it lasts)",
    )
    parser.add_argument("--bench-counts", default="100", help="N values of the benchmark run (add and search)")
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus", help="documents folder")
    parser.add_argument(
        "--stall-ms", type=float, default=100.0, help="sample the loop's stack when a beat is this late"
    )
    parser.add_argument("--load", default="upload,bench", help="what runs meanwhile: upload, bench or both")
    parser.add_argument("--milvus-dir", type=Path, help="use the embedded Milvus of this data dir (scratch data dir)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from rag import BenchConfig, EmbeddedMilvus, RagService, load_settings

    scratch = Path(tempfile.mkdtemp(prefix="rag-stall-"))
    overrides: dict[str, object] = {
        "collection": f"stall_{uuid.uuid4().hex[:8]}",
        "openai_api_key": "",
        "openai_base_url": "",
    }
    if args.milvus_dir:
        server = EmbeddedMilvus(args.milvus_dir)
        overrides.update(milvus_uri=server.start().uri, milvus_token=server.token, data_dir=scratch / "data")
    service = RagService(load_settings(**overrides))
    assert service.mode == "retrieval-only"
    watch = LoopWatch(service.runtime, stall=args.stall_ms / 1000).start()
    try:
        seed = service.ingest([args.corpus / name for name in SEED_FILES])
        print(f"seeded {seed.chunks} chunks in {seed.seconds:.1f} s", file=sys.stderr)
        for question in QUESTIONS[:2]:  # warm up: first calls build clients and caches
            service.ask(question)

        retrieval: dict[str, list[float]] = {"idle": [], "loaded": []}

        def ask(i: int, phase: str) -> float:
            started = time.perf_counter()
            answer = service.ask(QUESTIONS[i % len(QUESTIONS)])
            assert answer.sources and answer.mode == "retrieval-only"
            retrieval[phase].append(answer.retrieval_seconds or 0.0)  # question embedded + Milvus search
            return time.perf_counter() - started

        idle_start = time.time()
        idle = [ask(i, "idle") for i in range(args.questions)]
        idle_end = time.time()
        watch_idle = dict(watch.stalls)
        watch.stalls.clear()
        print(f"idle: p50 {_ms(idle, 0.5)} ms, p95 {_ms(idle, 0.95)} ms", file=sys.stderr)

        bench_config = BenchConfig(
            experiments=["add", "search"], counts=[int(n) for n in args.bench_counts.split(",")], dim=768
        )
        bench_rows: list[object] = []
        bench_done = threading.Event()
        bench_window: list[float] = []
        load = {part.strip() for part in args.load.split(",")}

        def run_bench() -> None:
            bench_window.append(time.time())
            try:
                bench_rows.extend(service.bench(bench_config))
            finally:
                bench_window.append(time.time())
                bench_done.set()

        load_start = time.time()
        files = [args.corpus / name for name in UPLOAD_FILES] if "upload" in load else []
        job = service.start_job(files, owner="uploader")
        if "bench" in load:
            threading.Thread(target=run_bench, name="bench", daemon=True).start()
        else:
            bench_window += [load_start, load_start]
            bench_done.set()
        loaded: list[tuple[float, bool, bool]] = []  # (seconds, upload active, bench active) per question
        i = 0
        while service.job(job.id).active or not bench_done.is_set():  # ask for as long as the load lasts
            upload_active, bench_active = service.job(job.id).active, not bench_done.is_set()
            loaded.append((ask(i, "loaded"), upload_active, bench_active))
            i += 1
        load_end = time.time()
        final = service.wait_job(job.id, timeout=600)
        during = [seconds for seconds, _up, _bench in loaded]
        both = [seconds for seconds, up, bench in loaded if up and bench]
        upload_only = [seconds for seconds, up, bench in loaded if up and not bench]
        bench_only = [seconds for seconds, up, bench in loaded if bench and not up]
        report = {
            "machine": {"cpus": os.cpu_count(), "milvus": service.status().store.version},
            "seed_chunks": seed.chunks,
            "load": sorted(load),
            "idle": {"questions": len(idle), "p50_ms": _ms(idle, 0.5), "p95_ms": _ms(idle, 0.95)},
            "retrieval_idle": {"p50_ms": _ms(retrieval["idle"], 0.5), "p95_ms": _ms(retrieval["idle"], 0.95)},
            "retrieval_loaded": {"p50_ms": _ms(retrieval["loaded"], 0.5), "p95_ms": _ms(retrieval["loaded"], 0.95)},
            "loaded": {
                "questions": len(during),
                "p50_ms": _ms(during, 0.5),
                "p95_ms": _ms(during, 0.95),
                "with_upload_and_bench": {"questions": len(both), "p50_ms": _ms(both, 0.5), "p95_ms": _ms(both, 0.95)},
                "with_upload_only": {"questions": len(upload_only), "p95_ms": _ms(upload_only, 0.95)},
                "with_bench_only": {"questions": len(bench_only), "p95_ms": _ms(bench_only, 0.95)},
            },
            "p95_ratio": round(load_test._pct(during, 0.95) / load_test._pct(idle, 0.95), 2)
            if idle and during
            else None,
            "upload": {
                "state": final.state,
                "chunks": final.report.chunks if final.report else 0,
                "seconds": round((final.finished_at or 0) - (final.started_at or 0), 1),
            },
            "bench": {
                "rows": sum(1 for r in bench_rows if getattr(r, "experiment", None)),
                "seconds": round(bench_window[-1] - bench_window[0], 1),
            },
            "loop_idle": watch.window(idle_start, idle_end),
            "loop_loaded": watch.window(load_start, load_end),
            "loop_upload": watch.window(final.started_at or load_start, final.finished_at or load_end),
            "loop_bench": watch.window(bench_window[0], bench_window[-1]),
            "stalls_idle": dict(collections.Counter(watch_idle).most_common(8)),
            "stalls_loaded": dict(watch.stalls.most_common(12)),
        }
        print(json.dumps(report, indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return 0
    finally:
        watch.stop()
        try:
            service.runtime.run(service.store.adrop(), timeout=60)
        finally:
            service.close()
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
