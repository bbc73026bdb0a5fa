"""Load through the HTTP API: concurrent OpenAI-client chats and uploads against `python -m rag serve` for a fixed
time; prints p50/p95, errors and the catalogue against Milvus.

Usage (from the repo, after scripts/setup.sh):
    .venv/bin/python scripts/api_load_test.py --seconds 60 --clients 20 --uploads 2 [--json out.json]

The server is a real `python -m rag serve` process on loopback, in a scratch data dir and collection (dropped at
the end), on MILVUS_URI when set, else the embedded Milvus of RAG_DATA_DIR (started when needed). Every client
has its own API token (so each has its own RAG_API_RATE_LIMIT allowance, as separate tools would) and streams its
answers with the official `openai` client, one question after the other; each upload loop posts a new version
of a corpus file (multipart) and polls its job until it ends. Unless OPENAI_API_KEY or OPENAI_BASE_URL is set,
answers are written by the loopback OpenAI-compatible test server, as in scripts/load_test.py (the same
questions and seed files), whose figures it is compared with in BENCHMARKS.md. An answer's latency runs from
sending the request to the stream's last event; "first token" to the first piece of answer text.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import load_test  # noqa: E402 - beside this script: the same questions, files and percentiles

from rag import EmbeddedMilvus, RemoteAccess, load_settings  # noqa: E402
from tests.browser.conftest import _drop, milvus_app_environment  # noqa: E402 - the tests' own server helpers
from tests.rag.api_server import serve_api  # noqa: E402


def _ms(values: list[float], q: float) -> float:
    return round(load_test._pct(values, q) * 1000, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to keep the load on")
    parser.add_argument("--clients", type=int, default=20, help="concurrent chat clients, one token each")
    parser.add_argument("--uploads", type=int, default=2, help="concurrent upload loops")
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus", help="documents folder")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import httpx
    from openai import OpenAI

    base = load_settings()
    if base.milvus_uri:
        uri, token = base.milvus_uri, base.milvus_token.get_secret_value() if base.milvus_token else ""
    else:
        server = EmbeddedMilvus(base.data_dir, base.milvus_start_timeout)
        uri, token = server.start().uri, server.token
    fake = None
    llm: dict[str, str] = {}
    if not base.llm_enabled:
        from tests.fakes.openai_server import FakeOpenAI

        fake = FakeOpenAI(chunk_delay=0.01).start()
        llm = {"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "", "LLM_MODEL": "fake-model"}
    work = Path(tempfile.mkdtemp(prefix="rag-api-load-"))
    collection = f"apiload_{uuid.uuid4().hex[:8]}"
    env = milvus_app_environment(uri, token, work / "data", collection, **llm)
    env["RAG_EMBED_CACHE_DIR"] = str(base.model_cache_dir.resolve())
    access = RemoteAccess.from_settings(load_settings(data_dir=work / "data", collection=collection))
    try:
        asking = [access.issue(f"client-{i}")[1] for i in range(args.clients)]
        uploading = [access.issue(f"uploader-{i}")[1] for i in range(args.uploads)]
    finally:
        access.close()
    try:
        with serve_api(env, work / "serve.log") as (url, proc):
            seeder = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {uploading[0]}"}, timeout=600)
            files = [("files", (name, (args.corpus / name).read_bytes())) for name in load_test.SEED_FILES]
            seeded = _wait(seeder, seeder.post("/v1/documents", files=files).json()["id"])
            chunks = sum(f["chunks"] for f in seeded["report"]["files"])
            print(f"seeded {chunks} chunks in {seeded['report']['seconds']:.1f} s", file=sys.stderr)
            stop_at = time.monotonic() + args.seconds
            lock = threading.Lock()
            answers: list[float] = []
            first: list[float] = []
            errors: list[str] = []
            uploads = {"files": 0, "chunks": 0, "seconds": 0.0}

            def ask_loop(worker: int) -> None:
                client = OpenAI(base_url=f"{url}/v1", api_key=asking[worker], max_retries=0, timeout=300)
                i = worker
                while time.monotonic() < stop_at:
                    started = time.perf_counter()
                    try:
                        stream = client.chat.completions.create(
                            model="workspace:default",
                            messages=[{"role": "user", "content": load_test.QUESTIONS[i % len(load_test.QUESTIONS)]}],
                            stream=True,
                        )
                        text, got_first, last = [], None, None
                        for chunk in stream:
                            piece = chunk.choices[0].delta.content if chunk.choices else None
                            if piece and got_first is None and chunk.choices[0].delta.role is None:
                                got_first = time.perf_counter() - started
                            text.append(piece or "")
                            last = chunk
                        ended = time.perf_counter() - started
                        assert last is not None and "".join(text) and last.sources, "an answer without text or sources"
                        with lock:
                            answers.append(ended)
                            first.append(got_first or ended)
                    except Exception as exc:  # noqa: BLE001 - a load test counts every failure
                        with lock:
                            errors.append(f"chat: {type(exc).__name__}: {exc}")
                    i += 1

            def upload_loop(worker: int) -> None:
                client = httpx.Client(
                    base_url=url, headers={"Authorization": f"Bearer {uploading[worker]}"}, timeout=600
                )
                n = 0
                while time.monotonic() < stop_at:
                    name = load_test.UPLOAD_FILES[(worker + n) % len(load_test.UPLOAD_FILES)]
                    data = (args.corpus / name).read_bytes() + f"\n\nload-test revision {worker}-{n}\n".encode()
                    try:
                        posted = client.post("/v1/documents", files={"files": (f"w{worker}-{n}-{name}", data)})
                        posted.raise_for_status()
                        job = _wait(client, posted.json()["id"])
                        result = job["report"]["files"][0] if job.get("report") else None
                        with lock:
                            if result is None or result["status"] == "failed":
                                errors.append(f"upload: {job.get('error') or (result or {}).get('error')}")
                            else:
                                uploads["files"] += 1
                                uploads["chunks"] += result["chunks"]
                                uploads["seconds"] += job["report"]["seconds"]
                    except Exception as exc:  # noqa: BLE001
                        with lock:
                            errors.append(f"upload: {type(exc).__name__}: {exc}")
                    n += 1

            threads = [threading.Thread(target=ask_loop, args=(w,)) for w in range(args.clients)]
            threads += [threading.Thread(target=upload_loop, args=(w,)) for w in range(args.uploads)]
            cpu_before, here_before = _cpu(proc.pid), _own_cpu()
            wall = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - wall
            server_cpu, client_cpu = _cpu(proc.pid) - cpu_before, _own_cpu() - here_before
            listed = seeder.get("/v1/documents").json()["documents"]
        in_catalog = sum(d["chunks"] for d in listed)
        in_milvus = _count(uri, token, collection)
        report = {
            "seconds": round(wall, 1),
            "clients": args.clients,
            "uploads": args.uploads,
            "answers": len(answers),
            "errors": len(errors),
            "error_samples": errors[:5],
            "first_token_p50_ms": _ms(first, 0.5),
            "first_token_p95_ms": _ms(first, 0.95),
            "answer_p50_ms": _ms(answers, 0.5),
            "answer_p95_ms": _ms(answers, 0.95),
            "answers_per_second": round(len(answers) / wall, 2),
            "uploaded_files": uploads["files"],
            "uploaded_chunks": uploads["chunks"],
            "chunks_in_catalog": in_catalog,
            "chunks_in_milvus": in_milvus,
            "server_cpu_seconds": round(server_cpu, 1),
            "client_cpu_seconds": round(client_cpu, 1),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(report, indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return 0 if not errors and answers and in_catalog == in_milvus else 1
    finally:
        _drop(uri, token, collection)
        shutil.rmtree(work, ignore_errors=True)
        if fake:
            fake.stop()


def _wait(client, job_id: str, timeout: float = 900) -> dict:  # noqa: ANN001
    """Poll a job until it ends, once a second (as the Upload page does)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        time.sleep(1.0)


def _cpu(pid: int) -> float:
    """User plus system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    """CPU seconds of this process so far: the clients, and the test LLM server when it runs here."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _count(uri: str, token: str, collection: str) -> int:
    """Chunks stored in the scratch collection, read with Strong consistency."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri, token=token)
    try:
        rows = client.query(collection, filter='doc_id != ""', output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
