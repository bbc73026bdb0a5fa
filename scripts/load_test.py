"""Load: concurrent question streams and uploads against a real Milvus for a fixed time; prints p50/p95.

Usage (from the repo, after scripts/setup.sh):
    .venv/bin/python scripts/load_test.py --seconds 60 --streams 10 --uploads 2 [--json out.json]

With no MILVUS_URI it uses the embedded Milvus (starting it when needed). Unless OPENAI_API_KEY or
OPENAI_BASE_URL is set, answers are streamed by the loopback OpenAI-compatible test server, so every
stream exercises real HTTP streaming. Everything runs in a scratch collection that is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QUESTIONS = [
    "How many airplanes of U.S. registry does the proposed AD affect?",
    "What is the zoo class for irregular time series?",
    "How does declarative partitioning work in PostgreSQL?",
    "What did the author work on before college?",
    "How do you fit a linear model in R?",
    "What changed in pdfplumber 0.11.0?",
    "How many employees were affected by layoffs in total?",
    "What are class variables and instance variables in Python?",
]
SEED_FILES = [
    "zoo.pdf",
    "federal-register-2020-17221.pdf",
    "postgresql15_ddl-partitioning.html",
    "paul_graham_essay.txt",
    "python3.11-doc_tutorial_classes.html",
    "pdfplumber_CHANGELOG.md",
]
UPLOAD_FILES = ["unstructured_README.md", "python3.11-doc_whatsnew_3.1.html", "pdfplumber_README.md"]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to keep the load on")
    parser.add_argument("--streams", type=int, default=10, help="concurrent question streams")
    parser.add_argument("--uploads", type=int, default=2, help="concurrent upload loops")
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus", help="documents folder")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from rag import RagService, load_settings

    fake = None
    overrides: dict[str, object] = {"collection": f"load_{uuid.uuid4().hex[:8]}"}
    base = load_settings()
    if not base.llm_enabled:
        from tests.fakes.openai_server import FakeOpenAI

        fake = FakeOpenAI(chunk_delay=0.01).start()
        overrides.update(openai_base_url=fake.base_url, llm_model="fake-model")
    service = RagService(load_settings(**overrides))
    scratch = Path(tempfile.mkdtemp(prefix="rag-load-"))
    try:
        seed = service.ingest([args.corpus / name for name in SEED_FILES])
        print(f"seeded {seed.chunks} chunks in {seed.seconds:.1f} s", file=sys.stderr)
        stop_at = time.monotonic() + args.seconds
        lock = threading.Lock()
        retrieval: list[float] = []
        answer_total: list[float] = []
        errors: list[str] = []
        uploads = {"files": 0, "chunks": 0, "failed": 0}

        def ask_loop(worker: int) -> None:
            i = worker
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    stream = service.stream_answer(QUESTIONS[i % len(QUESTIONS)])
                    text = "".join(stream)
                    assert stream.answer is not None and text and stream.answer.sources
                    with lock:
                        retrieval.append(stream.answer.retrieval_seconds or 0.0)
                        answer_total.append(time.perf_counter() - started)
                except Exception as exc:  # noqa: BLE001 - a load test counts every failure
                    with lock:
                        errors.append(f"stream: {type(exc).__name__}: {exc}")
                i += 1

        def upload_loop(worker: int) -> None:
            n = 0
            while time.monotonic() < stop_at:
                name = UPLOAD_FILES[(worker + n) % len(UPLOAD_FILES)]
                copy = scratch / f"w{worker}-{n}-{name}"
                shutil.copy(args.corpus / name, copy)
                with open(copy, "a", encoding="utf-8") as fh:
                    fh.write(f"\n\nload-test revision {worker}-{n}\n")  # new bytes: a new document each time
                try:
                    result = service.ingest([copy]).files[0]
                    with lock:
                        uploads["files"] += 1
                        uploads["chunks"] += result.chunks
                        uploads["failed"] += result.status == "failed"
                        if result.status == "failed":
                            errors.append(f"upload: {result.error}")
                except Exception as exc:  # noqa: BLE001
                    with lock:
                        errors.append(f"upload: {type(exc).__name__}: {exc}")
                n += 1

        threads = [threading.Thread(target=ask_loop, args=(w,)) for w in range(args.streams)]
        threads += [threading.Thread(target=upload_loop, args=(w,)) for w in range(args.uploads)]
        wall = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - wall
        expected = sum(d.chunks for d in service.documents())
        stored = service.count_chunks()
        report = {
            "seconds": round(wall, 1),
            "streams": args.streams,
            "uploads": args.uploads,
            "answers": len(answer_total),
            "errors": len(errors),
            "error_samples": errors[:5],
            "retrieval_p50_ms": round(_pct(retrieval, 0.5) * 1000, 1),
            "retrieval_p95_ms": round(_pct(retrieval, 0.95) * 1000, 1),
            "answer_p50_ms": round(_pct(answer_total, 0.5) * 1000, 1),
            "answer_p95_ms": round(_pct(answer_total, 0.95) * 1000, 1),
            "answers_per_second": round(len(answer_total) / wall, 2),
            "uploaded_files": uploads["files"],
            "uploaded_chunks": uploads["chunks"],
            "chunks_in_catalog": expected,
            "chunks_in_milvus": stored,
            "milvus": service.status().store.version,
            "cpus": os.cpu_count(),
            "mean_retrieval_ms": round(statistics.fmean(retrieval) * 1000, 1) if retrieval else None,
        }
        print(json.dumps(report, indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return 0 if not errors and expected == stored and answer_total else 1
    finally:
        service.runtime.run(service.store.adrop(), timeout=60)
        service.close()
        shutil.rmtree(scratch, ignore_errors=True)
        if fake:
            fake.stop()


if __name__ == "__main__":
    raise SystemExit(main())
