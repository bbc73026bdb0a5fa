"""The Upload page against the CLI: the same files indexed both ways in one run, each into a fresh collection.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/upload_speed.py [FILE ...] [--repeat N] [--json]

The CLI path is `python -m rag ingest FILE ...` in a subprocess; its time is the engine's own ingestion time
(the "chunks written in" line, without the process's start), and its wall time is printed beside it. The web
path is `streamlit run app.py` driven by headless Chromium (Debian's, through Playwright; CHROMIUM names
another): the Upload page is opened and left open, the files are dropped on it, and the time runs from the
click on "Index files" until the page shows the job's summary, so it holds the upload's stashing, the job
queue, the page's polling and every rerun. Both share one warm model cache (built first with `python -m rag
models build`) and one Milvus: MILVUS_URI/MILVUS_TOKEN when set, else the embedded server of RAG_DATA_DIR
(started if needed). The ratio printed is web throughput over CLI throughput (issue 11's target: 0.9 or more).
With --repeat the two paths alternate, CLI first; every run gets fresh collections, dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rag import EmbeddedMilvus, load_settings  # noqa: E402
from tests.browser.conftest import _drop, serve_process  # noqa: E402 - the tests' own server helpers

CORPUS = REPO.parent / "shared" / "corpus"
DEFAULT_FILES = ("R-intro.pdf", "federal-register-2020-17221.pdf", "paul_graham_essay.txt")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
_PASSED_ON = ("RAG_", "MILVUS_", "OPENAI_", "LLM_", "EMBED_", "STREAMLIT_")


@dataclass
class Run:
    """One path's measurement."""

    path: str
    chunks: int
    seconds: float  # the time the throughput is computed from
    wall: float  # the CLI's whole process; the web path's click-to-summary (the same as seconds)
    engine_seconds: float  # the ingestion report's own figure
    cpu: float  # CPU seconds of the indexing process meanwhile (the CLI's whole process; the app's server)


def _env(milvus_uri: str, token: str, data_dir: Path, collection: str, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PASSED_ON)}
    for name in ("RAG_EMBED_BACKEND", "RAG_EMBED_BATCH_SIZE", "RAG_EMBED_PRECISION", "EMBED_MODEL"):
        if name in os.environ:  # the embedding choice is the one thing both paths take from the caller
            env[name] = os.environ[name]
    env.update(
        MILVUS_URI=milvus_uri,
        MILVUS_TOKEN=token,
        RAG_DATA_DIR=str(data_dir),
        RAG_COLLECTION=collection,
        RAG_EMBED_CACHE_DIR=str(cache),
        HF_HUB_OFFLINE="1",
        STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
    )
    return env


def _cli(files: list[Path], env: dict[str, str]) -> Run:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "rag", "ingest", *map(str, files)], cwd=REPO, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    found = re.search(r"(\d+) chunks written in ([\d.]+) s", done.stderr)
    if done.returncode != 0 or not found:
        raise SystemExit(f"the CLI failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    chunks, seconds = int(found.group(1)), float(found.group(2))
    return Run("cli", chunks, seconds, round(wall, 2), seconds, round(cpu, 1))


def _web(files: list[Path], env: dict[str, str], work: Path, browser: object) -> Run:
    with serve_process(env, work / f"streamlit-{uuid.uuid4().hex[:8]}.log") as (url, proc):
        context = browser.new_context(viewport={"width": 1300, "height": 950})  # type: ignore[attr-defined]
        page = context.new_page()
        page.set_default_timeout(600_000)
        page.goto(f"{url}/upload")  # the first request builds the service: not part of the timing
        page.get_by_role("button", name="Index files").wait_for()
        page.set_input_files("input[type=file]", [str(f) for f in files])
        page.wait_for_function(  # every file listed and none still uploading (chips shorten long names)
            "n => document.querySelectorAll('[data-testid=stFileChip]').length === n"
            " && !document.querySelector('[data-testid=stFileUploader] [role=progressbar]')",
            arg=len(files),
        )
        cpu = _cpu_seconds(proc.pid)
        started = time.perf_counter()
        page.get_by_role("button", name="Index files").click()
        summary = page.get_by_text(re.compile(r"Job \w+ \(started [\d:]+\) \w+ in .*chunk\(s\) written")).first
        summary.wait_for()
        wall = time.perf_counter() - started
        cpu = _cpu_seconds(proc.pid) - cpu
        text = summary.inner_text()
        context.close()
    chunks = int(re.search(r"(\d+) chunk\(s\) written", text).group(1))  # type: ignore[union-attr]
    return Run("web", chunks, round(wall, 2), round(wall, 2), _duration(text), round(cpu, 1))


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a running process, every thread included (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _duration(text: str) -> float:
    """The summary's `in 1 min 5 s` / `in 42 s` / `in 3.2 s` as seconds."""
    found = re.search(r" in (?:(\d+) min )?([\d.]+) s", text)
    return (int(found.group(1) or 0) * 60 + float(found.group(2))) if found else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="files to index (default: two corpus PDFs and a text)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of CLI then web (default 1)")
    parser.add_argument("--json", action="store_true", help="print the runs and the ratio as JSON")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the app and drop the collections
    files = [f.resolve() for f in args.files] or [CORPUS / name for name in DEFAULT_FILES]
    settings = load_settings()
    if settings.milvus_uri:
        uri, token = settings.milvus_uri, settings.milvus_token.get_secret_value() if settings.milvus_token else ""
    else:
        server = EmbeddedMilvus(settings.data_dir, settings.milvus_start_timeout)
        uri, token = server.start().uri, server.token
    cache = settings.model_cache_dir.resolve()
    work = Path(tempfile.mkdtemp(prefix="upload-speed-"))
    collections: list[str] = []
    runs: list[Run] = []
    try:
        build = subprocess.run([sys.executable, "-m", "rag", "models", "build"], cwd=REPO,
                               env=_env(uri, token, work / "build", "unused", cache))  # fmt: skip
        if build.returncode != 0:
            raise SystemExit("building the embedding backend failed")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
            )
            for round_ in range(args.repeat):
                for path in ("cli", "web"):
                    collection = f"speed_{path}_{uuid.uuid4().hex[:8]}"
                    collections.append(collection)
                    env = _env(uri, token, work / f"{path}-{round_}", collection, cache)
                    run = _cli(files, env) if path == "cli" else _web(files, env, work, browser)
                    runs.append(run)
                    print(f"round {round_ + 1} {run.path}: {run.chunks} chunks in {run.seconds:.1f} s "
                          f"(wall {run.wall:.1f} s, {run.cpu:.1f} s CPU, load {os.getloadavg()[0]:.1f})",
                          file=sys.stderr, flush=True)  # fmt: skip
            browser.close()
    finally:
        for name in collections:
            _drop(uri, token, name)
        shutil.rmtree(work, ignore_errors=True)
    cli_rates = [r.chunks / r.seconds for r in runs if r.path == "cli"]
    web_rates = [r.chunks / r.seconds for r in runs if r.path == "web"]
    ratio = statistics.median(web_rates) / statistics.median(cli_rates)
    cli_walls = [r.chunks / r.wall for r in runs if r.path == "cli"]
    ratio_wall = statistics.median(web_rates) / statistics.median(cli_walls)
    if args.json:
        print(json.dumps({"files": [f.name for f in files], "runs": [asdict(r) for r in runs],
                          "ratio": round(ratio, 3), "ratio_vs_cli_wall": round(ratio_wall, 3)}))  # fmt: skip
        return
    print(f"files: {', '.join(f.name for f in files)}")
    for run in runs:
        print(f"{run.path}: {run.chunks} chunks in {run.seconds:.1f} s = {run.chunks / run.seconds:.1f} chunks/s "
              f"(wall {run.wall:.1f} s, engine's report {run.engine_seconds:.1f} s, {run.cpu:.1f} s CPU)")  # fmt: skip
    print(f"web / CLI throughput: {ratio:.2f}x (against the CLI's whole process, start included: {ratio_wall:.2f}x)")


if __name__ == "__main__":
    main()
