"""A real app in a real browser: `streamlit run app.py` on loopback, driven by Debian's Chromium.

The app runs against the shared test Milvus (a fresh collection and data dir) with the fake
OpenAI-compatible server as its LLM. On a failure the page's screenshot and the server log are
saved under test-artifacts/.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rag.milvus_server import EmbeddedMilvus
from tests.conftest import MODEL_CACHE
from tests.fakes.openai_server import FakeOpenAI

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class RunningApp:
    """A Streamlit server of app.py."""

    url: str
    log: Path
    collection: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"streamlit did not become healthy at {url}")


def app_environment(**settings: str) -> dict[str, str]:
    """This process's environment without the app's own settings, then `settings`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RAG_", "MILVUS_", "OPENAI_", "LLM_", "EMBED_", "STREAMLIT_"))
    }
    env.update(HF_HUB_OFFLINE="1", STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    env.update(settings)
    return env


@contextlib.contextmanager
def serve(env: dict[str, str], log: Path) -> Iterator[str]:
    """`streamlit run app.py` on a free loopback port, once healthy (no page has run yet); yields its URL."""
    with serve_process(env, log) as (url, _):
        yield url


@contextlib.contextmanager
def serve_process(env: dict[str, str], log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`serve`, yielding the server process too (scripts/upload_speed.py reads its CPU time)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1",
             "--server.port", str(port), "--server.headless", "true"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_healthy(url, proc)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def streamlit_app(
    tmp_path_factory: pytest.TempPathFactory, milvus_server: EmbeddedMilvus, fake_openai: FakeOpenAI
) -> Iterator[RunningApp]:
    """`streamlit run app.py` on a free loopback port; stopped (and its collection dropped) afterwards."""
    state = milvus_server.start()
    work = tmp_path_factory.mktemp("app")
    collection = f"t_{uuid.uuid4().hex[:12]}"
    env = milvus_app_environment(
        state.uri,
        milvus_server.token,
        work / "data",
        collection,
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_API_KEY="",
        LLM_MODEL="fake-model",
    )
    log = work / "streamlit.log"
    try:
        with serve(env, log) as url:
            yield RunningApp(url=url, log=log, collection=collection)
    finally:
        _drop(state.uri, milvus_server.token, collection)


def milvus_app_environment(uri: str, token: str, data_dir: Path, collection: str, **settings: str) -> dict[str, str]:
    """`app_environment` for an app on the tests' Milvus, in its own data dir and collection, searching with
    Strong consistency and using the models the tests already built."""
    return app_environment(
        MILVUS_URI=uri,
        MILVUS_TOKEN=token,
        RAG_DATA_DIR=str(data_dir),
        RAG_COLLECTION=collection,
        RAG_CONSISTENCY="Strong",
        RAG_EMBED_CACHE_DIR=str(MODEL_CACHE),
        **settings,
    )


def _drop(uri: str, token: str, collection: str) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri, token=token)
    try:
        if client.has_collection(collection):
            client.drop_collection(collection)
    finally:
        client.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """Debian's Chromium, headless, through Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's chromium (scripts/test.sh runs apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def sidebar_labels(page) -> list[str]:  # noqa: ANN001
    """The page names in the sidebar navigation, in order (each link's text after its icon)."""
    nav = page.get_by_test_id("stSidebarNav")
    return [link.inner_text().split("\n")[-1].strip() for link in nav.get_by_role("link").all()]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def page(request: pytest.FixtureRequest, chromium, streamlit_app: RunningApp):  # noqa: ANN001, ANN201
    """A fresh browser context and page; on failure a screenshot and the server log go to test-artifacts/."""
    context = chromium.new_context(viewport={"width": 1300, "height": 950})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        name = request.node.name.replace("/", "_")
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        except Exception:  # noqa: BLE001 - a dead page must not hide the real failure
            pass
        shutil.copy(streamlit_app.log, ARTIFACTS / f"{name}.streamlit.log")
    context.close()
