"""Time whole page loads on collections the scale experiment kept: the Home and Chat pages as Streamlit runs them
(AppTest: the page script end to end, the cached service warm, as on a user's second visit) and `python -m rag
docs list` as a user types it (a new process).

    python -m rag --data-dir /tmp/scale bench --experiments scale --sizes 10000,100000 --keep --out scale.json
    python scripts/scale_pages.py /tmp/scale/bench-scale/bench_scale_10000_384_* /tmp/scale/bench-scale/...100000*

MILVUS_URI and MILVUS_TOKEN must point at the server the collections are on (unset: the embedded server of the
data dir the folders are in is not started for you). Prints a Markdown table; drop the collections afterwards
(`python -m rag --data-dir FOLDER --collection NAME` ... or with the Milvus client).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _clock(call: object, times: int) -> tuple[float, float]:
    """Median and slowest of `times` calls, in ms."""
    took = []
    for _ in range(times):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took), max(took)


def _pages(folder: Path, times: int) -> dict[str, tuple[float, float]]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["RAG_DATA_DIR"] = str(folder)
    os.environ["RAG_COLLECTION"] = folder.name
    st.cache_resource.clear()

    def load(page: str) -> None:
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
        at.query_params["sid"] = "0" * 32
        at.switch_page(page)
        at.run()
        if at.exception:
            raise RuntimeError(f"{page} failed: {at.exception[0].value}")

    found = {}
    for name, page in (("Home", "pages/home.py"), ("Chat", "pages/chat.py")):
        load(page)  # the first visit opens the service (the app's start); the timed ones are page loads
        found[name] = _clock(lambda page=page: load(page), times)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "rag", "--data-dir", str(folder), "--collection", folder.name, "docs", "list"]
    found["docs list (process)"] = _clock(
        lambda: subprocess.run(command, env=env, capture_output=True, check=True, timeout=300), max(3, times // 3)
    )
    st.cache_resource.clear()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="bench-scale/<collection> folders of kept collections")
    parser.add_argument("--times", type=int, default=10, help="timed loads of each page")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    print("| collection | Home page (ms, median / slowest) | Chat page | `docs list` (a new process) |")
    print("|---|---:|---:|---:|")
    for folder in args.folders:
        found = _pages(folder.resolve(), args.times)
        cells = " | ".join(f"{median:.0f} / {slowest:.0f}" for median, slowest in found.values())
        print(f"| `{folder.name}` | {cells} |", flush=True)


if __name__ == "__main__":
    main()
