"""`python -m rag serve` as a real process on a free loopback port, for the API tests and scripts/api_load_test.py."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.browser.conftest import _free_port

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def serve_api(env: dict[str, str], log: Path, timeout: float = 180) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start the API server with `env` (its output in `log`), wait until /health answers, yield (base URL,
    process); stop it afterwards."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rag", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the API server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API server did not answer at {url}:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
