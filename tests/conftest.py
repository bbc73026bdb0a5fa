"""Shared fixtures: one embedded Milvus per machine (started once, reused), a loaded embedding model,
a fake OpenAI-compatible server on loopback, and services on temporary data dirs.

Milvus 2.3 allows one embedded server per machine (a pid lock in /run/milvus), so tests share the
server kept in RAG_TEST_MILVUS_DIR (default .pytest-milvus in the repo) and isolate themselves by
collection and data dir. `.ci/run` stops it when the run ends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.config import Settings, load_settings
from rag.database import Database
from rag.embeddings import Embedder, load_embedder
from rag.milvus_server import EmbeddedMilvus, ServerState
from rag.service import RagService
from tests.fakes.openai_server import FakeOpenAI
from tests.postgres import PostgresCluster

ENGINES = ("sqlite", "postgresql")
TEST_DATABASE = os.environ.get("RAG_TEST_DATABASE", "sqlite")
"""The engine of every test that does not choose one (RAG_TEST_DATABASE=postgresql runs them all on PostgreSQL)."""

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("RAG_CORPUS_DIR", REPO.parent / "shared" / "corpus"))
# One cache of built ONNX models (and auto's backend decision) for every test's data dir: built once.
MODEL_CACHE = Path(os.environ.get("RAG_TEST_MODEL_CACHE", REPO / ".pytest-models"))
_ENV_NAMES = (
    "RAG_DATA_DIR",
    "RAG_DATABASE_URL",
    "MILVUS_URI",
    "MILVUS_TOKEN",
    "RAG_COLLECTION",
    "RAG_CONSISTENCY",
    "EMBED_MODEL",
    "RAG_EMBED_BATCH_SIZE",
    "RAG_EMBED_PRECISION",
    "RAG_EMBED_BACKEND",
    "RAG_EMBED_CACHE_DIR",
    "RAG_CHUNK_SIZE",
    "RAG_CHUNK_OVERLAP",
    "RAG_INSERT_BATCH_SIZE",
    "RAG_INSERT_CONCURRENCY",
    "RAG_TOP_K",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "LLM_MODEL",
    "RAG_TEMPERATURE",
    "RAG_MAX_FILE_MB",
    "RAG_MAX_FILES",
    "APP_PASSWORD",
    "RAG_MAX_RUNNING_JOBS",
    "RAG_OCR",
    "RAG_STORAGE_URL",
    "RAG_INPROCESS_WORKER",
    "RAG_JOB_LEASE",
    "RAG_API_HOST",
    "RAG_API_PORT",
    "RAG_API_RATE_LIMIT",
    "RAG_MCP_TOKEN",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Timing comparisons (`benchmark`) take minutes and want a quiet machine: they run only when `-m` names them
    (`pytest -m benchmark`); otherwise they are deselected, never skipped."""
    if "benchmark" in (config.getoption("markexpr") or ""):
        return
    chosen = [item for item in items if item.get_closest_marker("benchmark") is None]
    if len(chosen) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in chosen])
        items[:] = chosen


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's settings; `.env` lookups happen in an empty folder. Every data dir shares
    one cache of exported models, so the ONNX export runs once per machine, not once per test."""
    for name in _ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAG_EMBED_CACHE_DIR", str(MODEL_CACHE))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the session (started on first use; each test gets its own database)."""
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


def _database(request: pytest.FixtureRequest, engine: str) -> Iterator[str]:
    if engine == "sqlite":
        yield ""  # the data dir's own file
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    with cluster.database() as url:
        yield url


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """RAG_DATABASE_URL on each engine in turn: "" (SQLite in the data dir), then a fresh PostgreSQL database.
    The tests of every database-backed module take it, so they run on both engines."""
    yield from _database(request, request.param)


@pytest.fixture
def db_settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings on a temp data dir and, in turn, each engine (no Milvus: for the database's own tests)."""
    return load_settings(data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture
def db(db_settings: Settings) -> Iterator[Database]:
    """The migrated database of `db_settings` (each engine in turn)."""
    database = Database.open(db_settings)
    yield database
    database.close()


@pytest.fixture
def default_database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """RAG_DATABASE_URL for tests that do not choose an engine: RAG_TEST_DATABASE's (default: SQLite)."""
    yield from _database(request, TEST_DATABASE)


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared corpus of real documents."""
    assert CORPUS.is_dir(), f"corpus not found at {CORPUS}"
    return CORPUS


@pytest.fixture(scope="session")
def milvus_server() -> EmbeddedMilvus:
    """The embedded Milvus server, started once (or reused when already healthy)."""
    server = EmbeddedMilvus(Path(os.environ.get("RAG_TEST_MILVUS_DIR", REPO / ".pytest-milvus")))
    server.start()
    return server


@pytest.fixture
def milvus_state(milvus_server: EmbeddedMilvus) -> ServerState:
    """The running server's ports (restarting it if a test stopped it)."""
    return milvus_server.start()


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The bundled embedding model on the default backend (auto), loaded once."""
    return load_embedder(load_settings(data_dir=Path("/tmp"), embed_cache_dir=MODEL_CACHE))


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    """An OpenAI-compatible server on loopback."""
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def make_settings(  # noqa: ANN201
    tmp_path: Path, milvus_server: EmbeddedMilvus, milvus_state: ServerState, default_database_url: str
):
    """Settings on a temp data dir and a fresh collection of the shared server (and database, on PostgreSQL)."""

    def _make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "database_url": default_database_url,
            "milvus_uri": milvus_state.uri,
            "milvus_token": milvus_server.token,
            "collection": f"t_{uuid.uuid4().hex[:12]}",
            "consistency_level": "Strong",
            "inprocess_worker": "on",  # the service runs its jobs itself on either engine
        }
        values.update(overrides)
        return load_settings(**values)

    return _make


@pytest.fixture
def service(make_settings, embedder: Embedder) -> Iterator[RagService]:  # noqa: ANN001
    """A RagService in retrieval-only mode on its own collection; dropped afterwards."""
    svc = RagService(make_settings(), embedder=embedder)
    yield svc
    _drop(svc)


@pytest.fixture
def llm_service(make_settings, embedder: Embedder, fake_openai: FakeOpenAI) -> Iterator[RagService]:  # noqa: ANN001
    """A RagService whose LLM is the fake OpenAI-compatible server."""
    settings = make_settings(
        openai_base_url=fake_openai.base_url, llm_model="fake-model", llm_models=("fake-model", "other-model")
    )
    svc = RagService(settings, embedder=embedder)
    yield svc
    _drop(svc)


def _drop(svc: RagService) -> None:
    if not svc.runtime.closed:
        svc.runtime.run(svc.store.adrop(), timeout=60)
        svc.close()


def new_collection() -> str:
    """A collection name no other test uses."""
    return f"t_{uuid.uuid4().hex[:12]}"


def write_part_number_docs(folder: Path) -> Path:
    """Six maintenance notes and one line naming part QX7719ZK: a token that shares no meaning with any
    question about it, so keyword search finds it and dense search does not."""
    folder.mkdir(parents=True)
    filler = [
        "Quarterly maintenance of the hydraulic pumps keeps the assembly line running smoothly.",
        "Replace worn gaskets in the cooling system every six months to prevent leaks.",
        "Operators should inspect conveyor belts for fraying before each shift begins.",
        "Lubricate bearings on the packaging machine weekly with food-grade grease.",
        "The air compressor filters need cleaning whenever pressure drops below the mark.",
        "Calibrate the torque wrenches monthly against the reference standard in the lab.",
    ]
    for i, text in enumerate(filler):
        (folder / f"manual{i}.txt").write_text(text * 3)
    (folder / "parts.txt").write_text("Order spare item QX7719ZK from the warehouse catalogue. " * 2)
    return folder
