"""Sync-versus-async benchmarks on the connected Milvus, in scratch collections that are dropped after.

Shared by the Benchmarks page and `python -m rag bench`. Three experiments:

- `add`: N nodes written one per call, as the seed tutorial did it (a sync loop, and a gather of
  `async_add`), against this project's way (the engine's `DocumentStore.aadd` on a few large batches,
  a bounded number in flight).
- `search`: N top-3 searches: a sync loop, a gather of `aquery`, and a gather of the engine's
  `DocumentStore.asearch`, whose coalescer sends them as a few multi-vector requests.
- `ingest`: real documents end to end: a plain sync LlamaIndex pipeline (LlamaIndex's default embedding
  settings), the same sync pipeline with the engine's embedding (so the engine's gain over it is the
  async pipeline's alone, at equal backend and precision), the engine's `Ingestor`, and the engine's
  embedding of the same chunks with no Milvus at all (the ceiling for the engine on this machine).
- `embed`: the corpus chunks embedded by every backend available here (torch fp32, the baseline; torch
  bf16 on AMX; ONNX Runtime fp32 and int8), each warmed by one untimed group (every lane's session made),
  the rounds interleaved and repeated `repeat` times, reported as the median with its spread, plus each
  backend's cosine to torch fp32. The engine's own backend is marked `chosen`. No Milvus is needed.

Everything runs on the runtime loop; sync clients run in worker threads so the loop stays free.
Every collection is a fresh `bench_<uuid8>` dropped in a `finally`, so the user's documents are never
touched, even when the run is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import platform
import random
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from llama_index.core.schema import BaseNode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores import VectorStoreQuery
from pydantic import BaseModel, Field, field_validator

from rag.config import Settings
from rag.documents import DocumentLibrary, SourceFile
from rag.embeddings import (
    Embedder,
    cosines,
    cpu_description,
    cpu_has_amx,
    load_embedder,
    load_onnx_embedder,
    load_torch_embedder,
)
from rag.errors import BackendUnavailableError, IngestError, JobCancelledError
from rag.ingest import Ingestor, chunk_documents, embed_texts, make_splitter
from rag.readers import READERS, file_type, read_file
from rag.store import (
    Connection,
    DocumentStore,
    collection_schema,
    map_milvus_errors,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

Experiment = Literal["add", "search", "ingest", "embed", "scale"]
Mode = Literal[
    "sync",
    "sync-same-embedding",
    "seed-async",
    "project-async",
    "raw-embedding",
    "torch-fp32",
    "torch-bf16",
    "onnx",
    "onnx-int8",
    # the scale experiment's measurements
    "insert",
    "index",
    "load",
    "open",
    "dense",
    "keyword",
    "hybrid",
    "neighbours",
    "recall",
    "docs-list",
    "home",
    "chat",
    "question",
    "memory",
    "disk",
    "index-sweep",
]

BENCH_MODES: tuple[Mode, ...] = get_args(Mode)  # in the order the page shows them
EXPERIMENTS: tuple[Experiment, ...] = ("add", "search", "ingest", "embed", "scale")
MILVUS_EXPERIMENTS: tuple[Experiment, ...] = ("add", "search", "ingest", "scale")
MILVUS_MODES: tuple[Mode, ...] = ("sync", "seed-async", "project-async")
INGEST_MODES: tuple[Mode, ...] = ("sync", "sync-same-embedding", "project-async", "raw-embedding")
SEARCH_ROWS = 1000  # nodes in the searched collection, as in the seed
TIME_TICK = 0.2  # seconds between Milvus's time ticks (its proxy.timeTickInterval default), which Strong waits for
SIDE_BY_SIDE = 10  # under Strong, searches of at most this many queries are timed with the modes side by side
MAX_LOOPS = 200  # runs in one round at most, however quick one run is
STRONG_PHASES = 4  # a Strong search round: runs starting at this many evenly spaced phases of the time tick
TOP_K = 3
_CORPUS_NOTES = "SOURCES.md"
_THREAD_GRACE = 30.0  # seconds a cancelled sync loop gets to notice before its collection is dropped


def default_corpus_dir() -> Path:
    """The shared corpus next to the repository (`<repo>/../shared/corpus`)."""
    return Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"


class BenchConfig(BaseModel, frozen=True):
    """What to measure."""

    experiments: list[Experiment] = Field(default_factory=lambda: ["add", "search", "ingest"])
    counts: list[int] = Field(default_factory=lambda: [10, 100, 1000])
    dim: int = Field(768, ge=2, le=32768)
    consistency_level: Literal["Strong", "Session", "Bounded", "Eventually"] = "Strong"
    concurrency: int = Field(8, ge=1, le=256)
    corpus_dir: str | None = None
    files: list[str] | None = Field(
        None, description="These files instead of the corpus folder's (a workspace's uploads); None: the folder's."
    )
    max_files: int | None = Field(
        None, ge=1, description="Ingest only the first files of the corpus (by name); None: every file."
    )
    insert_batch: int = Field(250, ge=1, le=10_000, description="Rows per insert request on the project path.")
    repeat: int = Field(
        3, ge=1, le=50, description="Timed rounds of every measurement, modes interleaved; rows show the median."
    )
    min_round: float = Field(
        0.2,
        ge=0,
        le=10,
        description="Seconds a round of add or search lasts at least: a quicker run is repeated back to back within "
        "the round and the time of one run reported (timeit's autorange). Strong searches instead start 4 runs per "
        "round at evenly spaced phases of the server's time tick. 0: one run per round.",
    )
    modes: list[Mode] | None = Field(
        None, description="Only these modes of add, search and ingest (e.g. leave out the slow sync loops); None: all."
    )
    embed_chunks: int | None = Field(
        512, ge=1, description="Corpus chunks the embed experiment embeds, spread evenly over the corpus; None: all."
    )
    sizes: list[int] = Field(
        default_factory=lambda: [10_000, 100_000, 1_000_000], description="Chunks per collection (scale experiment)."
    )
    queries: int = Field(200, ge=16, le=100_000, description="Questions timed per search mode and client count.")
    clients: list[int] = Field(default_factory=lambda: [1, 16], description="Concurrent callers of the scale searches.")
    recall_queries: int = Field(100, ge=1, le=10_000, description="Questions whose recall@10 is checked (scale).")
    page_loads: int = Field(30, ge=1, le=1000, description="Timed page loads, `docs list` and questions (scale).")
    index_sweep: list[str] = Field(
        default_factory=list, description="Indexes to rebuild and measure at each size, e.g. HNSW:M=16,ef=64 (scale)."
    )
    results_file: str | None = Field(
        None,
        description="Scale: a JSON file the rows are saved to after each size; sizes it holds are not measured again, "
        "and a size whose build stopped is kept and resumed.",
    )
    keep_collections: bool = Field(False, description="Keep each size's collection after measuring it (scale).")

    @field_validator("counts")
    @classmethod
    def _counts(cls, value: list[int]) -> list[int]:
        if not value or any(n < 1 or n > 100_000 for n in value):
            raise ValueError("counts must be between 1 and 100000")
        return sorted(set(value))

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, value: list[int]) -> list[int]:
        if not value or any(n < 100 or n > 100_000_000 for n in value):
            raise ValueError("sizes must be between 100 and 100000000 chunks")
        return sorted(set(value))

    @field_validator("index_sweep")
    @classmethod
    def _index_sweep(cls, value: list[str]) -> list[str]:
        from rag.scale import IndexSpec

        return [str(IndexSpec.parse(spec)) for spec in value]

    @field_validator("experiments")
    @classmethod
    def _experiments(cls, value: list[Experiment]) -> list[Experiment]:
        return [e for e in EXPERIMENTS if e in value]  # a fixed order, each once

    @field_validator("modes")
    @classmethod
    def _modes(cls, value: list[Mode] | None) -> list[Mode] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("modes must name at least one mode")
        return [m for m in BENCH_MODES if m in value]

    def modes_of(self, experiment: Experiment) -> tuple[Mode, ...]:
        """The modes measured for an experiment, in the page's order."""
        every = INGEST_MODES if experiment == "ingest" else MILVUS_MODES
        return tuple(m for m in every if self.modes is None or m in self.modes)


class BenchRow(BaseModel, frozen=True):
    """One measurement: `seconds` is the median of `repeats` timed rounds, `seconds_min`/`seconds_max` their
    spread; speedup compares medians (against sync, or torch fp32 for the embed experiment). The embed
    experiment also fills the chunk and cosine fields."""

    experiment: Experiment
    mode: Mode
    n: int
    seconds: float
    ms_per_item: float
    speedup: float | None = None
    note: str = ""
    chunks: int | None = None
    chunks_per_s: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    seconds_min: float | None = None
    seconds_max: float | None = None
    repeats: int | None = None
    loops: int | None = None
    """Runs timed back to back in each round (`seconds` is per run); None or 1: one run per round."""
    chosen: bool | None = None
    # the scale experiment (n is the collection's size in chunks; seconds the p50 of latency rows)
    clients: int | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    per_s: float | None = None
    recall: float | None = None
    rss_milvus_mb: float | None = None
    rss_app_mb: float | None = None
    disk_mb: float | None = None
    details: dict[str, float | str] = Field(default_factory=dict)


class BenchReport(BaseModel, frozen=True):
    """All rows of a run with the machine and server they ran on."""

    rows: list[BenchRow]
    milvus_version: str
    machine: dict[str, str]
    config: BenchConfig
    versions: dict[str, str] = Field(default_factory=dict)
    started_at: str = ""
    seconds: float = 0.0


def machine_info() -> dict[str, str]:
    """The facts a figure needs next to it."""
    import os

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_description(),
    }


def library_versions() -> dict[str, str]:
    """Client-side versions that shape the figures."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in (
        "pymilvus",
        "llama-index-core",
        "llama-index-vector-stores-milvus",
        "sentence-transformers",
        "torch",
        "onnxruntime",
    ):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def plan(config: BenchConfig) -> list[tuple[Experiment, Mode, int | None]]:
    """The measurements a run makes, in order (N is None where it is only known when measured)."""
    steps: list[tuple[Experiment, Mode, int | None]] = []
    for experiment in config.experiments:
        if experiment == "ingest":
            steps += [(experiment, mode, None) for mode in config.modes_of(experiment)]
        elif experiment == "embed":
            steps += [(experiment, mode, None) for mode in embed_modes()]
        elif experiment == "scale":
            steps += [(experiment, "insert", n) for n in config.sizes]
        elif experiment in ("add", "search"):  # every mode of one N is measured round by round, then reported
            steps += [(experiment, mode, n) for n in config.counts for mode in config.modes_of(experiment)]
    return steps


def corpus_files(config: BenchConfig) -> list[Path]:
    """The readable files of the corpus folder, by name, limited to `max_files`.

    The shared corpus's provenance table (SOURCES.md) describes the documents and is not one of them.
    """
    if config.files is not None:
        listed = sorted((Path(f) for f in config.files if file_type(f) in READERS), key=lambda p: p.name)
        return listed[: config.max_files] if config.max_files else listed
    folder = Path(config.corpus_dir) if config.corpus_dir else default_corpus_dir()
    if not folder.is_dir():
        raise IngestError(str(folder), "is not a folder of documents")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and file_type(p.name) in READERS and p.name != _CORPUS_NOTES
    )
    return files[: config.max_files] if config.max_files else files


def _row(
    experiment: Experiment,
    mode: Mode,
    n: int,
    times: Sequence[float],
    sync: float | None,
    note: str = "",
    loops: int = 1,
) -> BenchRow:
    """A row of the median of `times` (seconds per run), with their spread; speedup is `sync` (a median) over that
    median."""
    seconds = statistics.median(times)
    return BenchRow(
        experiment=experiment,
        mode=mode,
        n=n,
        seconds=seconds,
        ms_per_item=seconds * 1000 / n if n else 0.0,
        speedup=sync / seconds if sync is not None and mode != "sync" and seconds > 0 else None,
        note=note,
        seconds_min=min(times),
        seconds_max=max(times),
        repeats=len(times),
        loops=loops,
    )


def loops_for(seconds: float, min_round: float) -> int:
    """How many runs make a round of about `min_round` seconds, given one run's time (timeit's autorange).

    A single run of a few milliseconds is mostly the scheduler's and the server's noise (one insert takes 2 to
    9 ms on an idle 2-core machine); the median of rounds that each last a fifth of a second is not.
    """
    if min_round <= 0 or seconds >= min_round:
        return 1
    return min(MAX_LOOPS, math.ceil(min_round / max(seconds, 1e-4)))


def _loops_note(note: str, loops: int, how: str = "") -> str:
    return f"{note}; {loops} runs per round{' ' + how if how else ''}" if loops > 1 else note


async def _calibrated(
    modes: Sequence[Mode], open_: dict[Mode, bool], min_round: float, run: Callable[[Mode], Awaitable[float]]
) -> dict[Mode, int]:
    """Runs per round for each mode at one N, from one untimed run each. A mode whose single run already fills a
    round is not calibrated again at larger N (`open_` is updated): its runs only grow longer."""
    loops: dict[Mode, int] = {}
    for mode in modes:
        if not open_[mode]:
            loops[mode] = 1
            continue
        loops[mode] = loops_for(await run(mode), min_round)
        open_[mode] = loops[mode] > 1
    return loops


def rotated(modes: Sequence[T], round_: int) -> list[T]:
    """The order of the modes in a round: each round starts one mode later, so none always runs first or right
    after another (a busy neighbour, a server flush or a warm cache then hits every mode alike)."""
    shift = round_ % len(modes) if modes else 0
    return [*modes[shift:], *modes[:shift]]


async def _in_thread(fn: Callable[[threading.Event], T]) -> T:
    """Run a blocking loop in a worker thread; on cancel, tell it to stop and let it finish first.

    Without the wait, a cancelled run would drop its scratch collection while the thread still writes.
    """
    stop = threading.Event()
    future = asyncio.ensure_future(asyncio.to_thread(fn, stop))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([future], timeout=_THREAD_GRACE)
        raise


async def _timed(work: Awaitable[T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = await work
    return time.perf_counter() - started, result


# -- scratch collections ----------------------------------------------------------------------------
def _scratch_name() -> str:
    return f"bench_{uuid.uuid4().hex[:8]}"


async def _drop(client: Any, name: str) -> None:
    """Drop a scratch collection with the sync client in a thread (works even if the async one broke)."""

    def _go() -> None:
        if client.has_collection(name):
            client.drop_collection(name)

    try:
        await asyncio.to_thread(_go)
    except Exception:  # noqa: BLE001 - cleanup must not hide the error that brought us here
        log.warning("could not drop the scratch collection %s", name, exc_info=True)


@contextlib.asynccontextmanager
async def _scratch_store(
    connection: Connection, dim: int, consistency: str, sync_only: bool = False, batch_size: int = 100
) -> AsyncIterator[Any]:
    """A fresh MilvusVectorStore on a scratch collection, built on the loop and dropped afterwards."""
    from llama_index.vector_stores.milvus import MilvusVectorStore

    name = _scratch_name()
    store = None
    try:
        with map_milvus_errors("create a scratch collection"):
            # Creating a collection waits for its index (seconds on a busy server) in sync calls: that runs in a
            # worker thread, so other users' questions on the loop are not held up; opening it is quick.
            await asyncio.to_thread(_create_collection, connection, name, dim, consistency)
            store = MilvusVectorStore(
                **collection_schema(connection, name, dim, consistency),
                overwrite=False,
                batch_size=batch_size,
                use_async_client=not sync_only,
                timeout=60,
            )
        yield store
    finally:
        if store is not None:
            await _drop(store.client, name)
            if store.aclient is not None:
                with contextlib.suppress(Exception):
                    await store.aclient.close()
            with contextlib.suppress(Exception):
                store.client.close()
        else:  # the constructor may have created the collection before it failed
            await _drop_by_name(connection, name)


def _create_collection(connection: Connection, name: str, dim: int, consistency: str) -> None:
    from llama_index.vector_stores.milvus import MilvusVectorStore

    creator = MilvusVectorStore(
        **collection_schema(connection, name, dim, consistency), overwrite=True, use_async_client=False
    )
    creator.client.close()


# -- the seed's node shapes -------------------------------------------------------------------------
def produce_nodes(count: int, dim: int, rng: random.Random) -> list[TextNode]:
    """Nodes exactly like the seed's `produce_nodes` (random 16-digit ids, one varying coordinate)."""
    return [
        TextNode(
            id_="".join(str(rng.randint(0, 9)) for _ in range(16)),
            text=f"n{i}_text",
            embedding=[0.5] * (dim - 1) + [rng.random()],
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"n{i + 1}")},
        )
        for i in range(count)
    ]


def _query_vectors(count: int, dim: int) -> list[list[float]]:
    rng = random.Random(count)  # the same vectors for every mode
    return [[0.5] * (dim - 1) + [rng.random()] for _ in range(count)]


async def _bounded(limit: int, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run coroutine factories with at most `limit` in flight."""
    gate = asyncio.Semaphore(limit)

    async def _one(job: Callable[[], Any]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(_one(job) for job in jobs))


# -- add --------------------------------------------------------------------------------------------
def _sync_add(store: Any, nodes: Sequence[BaseNode]) -> Callable[[threading.Event], None]:
    def _loop(stop: threading.Event) -> None:
        for node in nodes:
            if stop.is_set():
                raise JobCancelledError("benchmark stopped")
            store.add([node])

    return _loop


async def _seed_async_add(store: Any, nodes: Sequence[BaseNode]) -> None:
    await asyncio.gather(*(store.async_add([node]) for node in nodes))


async def _project_add(engine: DocumentStore, nodes: Sequence[BaseNode], config: BenchConfig) -> None:
    """The engine's own writes (`DocumentStore.aadd`: rows built directly, upserted) in batches of
    `insert_batch`, at most `concurrency` in flight, so converting one batch overlaps the server's
    work on the previous ones."""
    size = config.insert_batch
    await _bounded(
        config.concurrency, [lambda i=i: engine.aadd(nodes[i : i + size]) for i in range(0, len(nodes), size)]
    )


def _engine(store: Any, connection: Connection, config: BenchConfig) -> DocumentStore:
    """The engine's DocumentStore around a scratch MilvusVectorStore."""
    return DocumentStore(store, connection, Settings(), search_requests=config.concurrency)


def _add_work(mode: Mode, store: Any, engine: DocumentStore, nodes: Sequence[BaseNode], config: BenchConfig) -> Any:
    if mode == "sync":
        return _in_thread(_sync_add(store, nodes))
    if mode == "seed-async":
        return _seed_async_add(store, nodes)
    return _project_add(engine, nodes, config)


async def _aadd(connection: Connection, config: BenchConfig) -> AsyncIterator[BenchRow]:
    """Each mode writes into its own collection (reused across N, as the seed did); for every N the modes take
    turns for `repeat` rounds, and each row is the median of its mode's rounds."""
    modes = config.modes_of("add")
    rng = random.Random(42)
    async with contextlib.AsyncExitStack() as stack:
        stores = {m: await stack.enter_async_context(_scratch_store(connection, config.dim, config.consistency_level))
                  for m in modes}  # fmt: skip
        engines = {m: _engine(stores[m], connection, config) for m in modes}
        with map_milvus_errors("insert benchmark rows"):
            for mode in modes:  # untimed: connects each mode's clients, so no round pays for it
                warm = await asyncio.to_thread(produce_nodes, 1, config.dim, rng)
                await _add_work(mode, stores[mode], engines[mode], warm, config)
        open_ = {m: config.min_round > 0 for m in modes}
        for n in config.counts:

            async def _run(mode: Mode, loops: int = 1, n: int = n) -> float:
                """Seconds per run of `loops` runs back to back, each writing N new nodes."""
                batches = await asyncio.to_thread(  # off the loop: N nodes per run
                    lambda: [produce_nodes(n, config.dim, rng) for _ in range(loops)]
                )
                with map_milvus_errors("insert benchmark rows"):
                    started = time.perf_counter()
                    for nodes in batches:
                        await _add_work(mode, stores[mode], engines[mode], nodes, config)
                    return (time.perf_counter() - started) / loops

            loops = await _calibrated(modes, open_, config.min_round, _run)
            times: dict[Mode, list[float]] = {m: [] for m in modes}
            for round_ in range(config.repeat):
                for mode in rotated(modes, round_):
                    times[mode].append(await _run(mode, loops[mode]))
            sync = statistics.median(times["sync"]) if "sync" in times else None
            for mode in modes:
                note = "one node per call" if mode != "project-async" else _batch_note(n, config.insert_batch, config)
                yield _row("add", mode, n, times[mode], sync, _loops_note(note, loops[mode]), loops[mode])


def _batch_note(n: int, batch: int, config: BenchConfig) -> str:
    requests = -(-n // batch)
    return f"{requests} request{'s' if requests > 1 else ''} of ≤{batch}, ≤{config.concurrency} in flight"


# -- search -----------------------------------------------------------------------------------------
def _sync_search(store: Any, vectors: Sequence[list[float]]) -> Callable[[threading.Event], list[Any]]:
    def _loop(stop: threading.Event) -> list[Any]:
        results = []
        for vector in vectors:
            if stop.is_set():
                raise JobCancelledError("benchmark stopped")
            results.append(store.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=TOP_K)))
        return results

    return _loop


async def _seed_async_search(store: Any, vectors: Sequence[list[float]]) -> list[Any]:
    return await asyncio.gather(
        *(store.aquery(VectorStoreQuery(query_embedding=v, similarity_top_k=TOP_K)) for v in vectors)
    )


async def _project_search(engine: DocumentStore, vectors: Sequence[list[float]]) -> list[Any]:
    """The engine's own dense search, started for every query at once: its coalescer sends them as a few
    multi-vector requests, so under Strong consistency they all wait for the same time tick."""
    return await asyncio.gather(*(engine.asearch(v, TOP_K) for v in vectors))


def _search_work(mode: Mode, store: Any, engine: DocumentStore, vectors: Sequence[list[float]]) -> Any:
    if mode == "sync":
        return _in_thread(_sync_search(store, vectors))
    if mode == "seed-async":
        return _seed_async_search(store, vectors)
    return _project_search(engine, vectors)


async def _asearch(connection: Connection, config: BenchConfig) -> AsyncIterator[BenchRow]:
    """N top-3 searches of one collection of 1,000 nodes, the same query vectors in every mode; for every N the
    modes take turns for `repeat` rounds, and each row is the median of its mode's rounds."""
    modes = config.modes_of("search")
    async with _scratch_store(connection, config.dim, config.consistency_level) as store:
        engine = _engine(store, connection, config)
        with map_milvus_errors("insert benchmark rows"):
            rows = await asyncio.to_thread(produce_nodes, SEARCH_ROWS, config.dim, random.Random(7))
            await _project_add(engine, rows, config)
        with map_milvus_errors("search"):
            for mode in modes:  # untimed: connects the clients and makes the engine's one Strong read of an open
                await _search_work(mode, store, engine, _query_vectors(1, config.dim))
        loop = asyncio.get_running_loop()

        async def _measure(mode: Mode, vectors: list[list[float]], loops: int = 1) -> tuple[Mode, float, int]:
            """Seconds per run of `loops` runs back to back, and the requests the engine sent per run."""
            before = engine.searches.calls
            with map_milvus_errors("search"):
                started = time.perf_counter()
                for _ in range(loops):
                    results = await _search_work(mode, store, engine, vectors)
                    if len(results) != len(vectors):
                        raise RuntimeError(f"{mode} search returned {len(results)} results for {len(vectors)} queries")
                seconds = (time.perf_counter() - started) / loops
            return mode, seconds, (engine.searches.calls - before) // loops

        strong = config.consistency_level == "Strong"
        phases = STRONG_PHASES if config.min_round > 0 else 1

        def _strong_loops(mode: Mode, n: int) -> int:
            return 1 if mode == "sync" and n > SIDE_BY_SIDE else phases  # a sync loop meets many phases by itself

        async def _strong_round(round_: int, n: int, vectors: list[list[float]]) -> list[tuple[Mode, float, int]]:
            """One Strong round: every mode's runs start at `phases` evenly spaced phases of the time tick (from a
            random one), its time the mean of them; searches of a few queries are timed side by side."""
            anchor = loop.time() + random.uniform(0, TIME_TICK)
            total = {m: 0.0 for m in modes}
            sent = {m: 0 for m in modes}
            for k in range(phases):
                start = anchor + k * TIME_TICK / phases
                order = [m for m in rotated(modes, round_ + k) if k < _strong_loops(m, n)]
                if n <= SIDE_BY_SIDE:  # a handful of requests each: sent together, they share the tick
                    await _at_phase(start)
                    measured = await asyncio.gather(*(_measure(m, vectors) for m in order))
                else:
                    measured = []
                    for mode in order:
                        await _at_phase(start)
                        measured.append(await _measure(mode, vectors))
                for mode, seconds, requests in measured:
                    total[mode] += seconds
                    sent[mode] += requests
            return [(m, total[m] / _strong_loops(m, n), sent[m] // _strong_loops(m, n)) for m in modes]

        open_ = {m: config.min_round > 0 and not strong for m in modes}
        for n in config.counts:
            vectors = _query_vectors(n, config.dim)

            async def _run(mode: Mode, vectors: list[list[float]] = vectors) -> float:
                return (await _measure(mode, vectors))[1]

            if strong:
                loops = {m: _strong_loops(m, n) for m in modes}
            else:
                loops = await _calibrated(modes, open_, config.min_round, _run)
            times: dict[Mode, list[float]] = {m: [] for m in modes}
            requests: list[int] = []
            for round_ in range(config.repeat):
                if strong:
                    measured = await _strong_round(round_, n, vectors)
                else:
                    measured = [await _measure(m, vectors, loops[m]) for m in rotated(modes, round_)]
                for mode, seconds, sent in measured:
                    times[mode].append(seconds)
                    if mode == "project-async":
                        requests.append(sent)
            sync = statistics.median(times["sync"]) if "sync" in times else None
            for mode in modes:
                note = "one query per request"
                if mode == "project-async":
                    note = _requests_note(requests)
                note = _loops_note(note, loops[mode], "at evenly spaced phases of the time tick" if strong else "")
                yield _row("search", mode, n, times[mode], sync, note, loops[mode])


async def _at_phase(anchor: float) -> float:
    """Sleep until the next instant a whole number of time ticks after `anchor` (untimed); return it.

    Under Strong every search waits for the server's next time tick, or the one after (1 or 2 ticks, 0.1-0.4 s,
    decided by when the request leaves, not by what it carries; requests that leave together share the outcome, so
    searches of a few queries are timed with the modes side by side). Starting every mode of a round at the same phase
    of the tick (a random phase per round) gives them the same wait, so a round compares what the modes do
    differently, and the rounds together still sample every phase, as requests from users do.
    """
    loop = asyncio.get_running_loop()
    now = loop.time()
    start = anchor + max(0, -(-(now - anchor) // TIME_TICK)) * TIME_TICK
    await asyncio.sleep(start - now)
    return start


def _requests_note(requests: Sequence[int]) -> str:
    low, high = min(requests), max(requests)
    sent = f"{low}" if low == high else f"{low}-{high}"
    return f"{sent} request{'s' if high > 1 else ''} per run, dispatched by the engine's store"


# -- ingest -----------------------------------------------------------------------------------------
def _chunk_file(path: Path, splitter: Any, model_id: str) -> list[BaseNode]:
    """A file's chunks exactly as the engine makes them (same reader, splitter, ids); [] if unreadable."""
    doc_id = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        docs = read_file(path, path.name)
    except IngestError:
        return []
    return chunk_documents(docs, splitter, doc_id, model_id, file_type(path.name).lstrip("."))


def _sync_pipeline(
    settings: Settings, embedder: Embedder, store: Any, files: Sequence[Path], splitter: Any
) -> Callable[[threading.Event], int]:
    """The plain sync LlamaIndex way: read, split, embed a batch, add it, next batch, next file."""

    def _run(stop: threading.Event) -> int:
        chunks = 0
        for path in files:
            nodes = _chunk_file(path, splitter, embedder.model_id)
            size = settings.insert_batch_size
            for start in range(0, len(nodes), size):
                if stop.is_set():
                    raise JobCancelledError("benchmark stopped")
                batch = nodes[start : start + size]
                # As the engine embeds document chunks (its lanes), so only the pipeline differs between rows.
                for node, vector in zip(batch, embedder.embed_documents(embed_texts(batch))):
                    node.embedding = vector
                store.add(batch)
            chunks += len(nodes)
        return chunks

    return _run


def _plain_embedder(settings: Settings) -> Embedder:
    """The same model as LlamaIndex's HuggingFaceEmbedding runs it by default: fp32, its default batch size.

    The sync pipeline uses it, so that row is what a plain LlamaIndex script gets, not the engine's tuning.
    """
    from llama_index.core.constants import DEFAULT_EMBED_BATCH_SIZE

    return load_torch_embedder(settings.model_copy(update={"embed_batch_size": DEFAULT_EMBED_BATCH_SIZE}), "fp32")


def _raw_embedding(embedder: Embedder, texts: Sequence[str]) -> Callable[[threading.Event], int]:
    def _run(stop: threading.Event) -> int:
        _embed_round(embedder, texts)(stop)
        return len(texts)

    return _run


async def _project_ingest(
    settings: Settings, connection: Connection, embedder: Embedder, files: Sequence[Path], consistency: str
) -> tuple[float, int]:
    """The engine's Ingestor into a scratch collection with a scratch catalog and data dir."""
    name = _scratch_name()
    scratch_dir = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    scratch = settings.model_copy(
        update={"data_dir": scratch_dir, "collection": name, "max_files": max(settings.max_files, len(files))}
    )
    store: DocumentStore | None = None
    library: DocumentLibrary | None = None
    try:
        store = await DocumentStore.abuild(
            scratch, connection, embedder.dim, embedder.model_id, name, overwrite=True, consistency_level=consistency
        )
        library = DocumentLibrary(scratch, store)
        ingestor = Ingestor(scratch, embedder, library)
        seconds, report = await _timed(ingestor.aingest([SourceFile(p, p.name) for p in files]))
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # aingest turns a cancel into a report; pass it on
            raise asyncio.CancelledError
        return seconds, report.chunks
    finally:
        if library is not None:
            library.close()
        if store is not None:
            await _drop(store.vector_store.client, name)
            await store.aclose()
        else:
            await _drop_by_name(connection, name)
        shutil.rmtree(scratch_dir, ignore_errors=True)


async def _drop_by_name(connection: Connection, name: str) -> None:
    from pymilvus import MilvusClient

    try:
        client = await asyncio.to_thread(MilvusClient, uri=connection.uri, token=connection.token)
    except Exception:  # noqa: BLE001 - nothing to drop if we cannot even connect
        return
    await _drop(client, name)
    client.close()


async def _aingest(
    settings: Settings, connection: Connection, embedder: Embedder, config: BenchConfig
) -> AsyncIterator[BenchRow]:
    """The corpus ingested by every mode in turn, `repeat` rounds; each row is the median of its mode's rounds."""
    files = corpus_files(config)
    if not files:
        raise IngestError(str(config.corpus_dir or default_corpus_dir()), "holds no readable documents")
    modes = config.modes_of("ingest")
    splitter = make_splitter(settings, embedder)
    # Untimed: chunk once for the raw-embedding texts, warm the page cache and both models for every mode.
    chunked = await asyncio.to_thread(lambda: [_chunk_file(p, splitter, embedder.model_id) for p in files])
    texts = [t for nodes in chunked for t in embed_texts(nodes)]
    plain = await asyncio.to_thread(_plain_embedder, settings) if "sync" in modes else None
    for model in (embedder, plain):  # the lanes' sessions too: project-async must not pay for making them
        if model is not None:
            await asyncio.to_thread(model.embed_documents, texts[: model.document_group])
    size_mb = sum(p.stat().st_size for p in files) / 1048576
    note = f"{len(files)} files, {size_mb:.1f} MB"

    async def _sync(model: Embedder) -> tuple[float, int]:
        async with _scratch_store(
            connection, embedder.dim, config.consistency_level, sync_only=True, batch_size=settings.insert_batch_size
        ) as store:
            with map_milvus_errors("store chunks"):
                return await _timed(_in_thread(_sync_pipeline(settings, model, store, files, splitter)))

    async def _measure(mode: Mode) -> tuple[float, int]:
        if mode == "sync":
            return await _sync(plain)  # type: ignore[arg-type]
        if mode == "sync-same-embedding":
            return await _sync(embedder)
        if mode == "project-async":
            with map_milvus_errors("store chunks"):
                return await _project_ingest(settings, connection, embedder, files, config.consistency_level)
        return await _timed(_in_thread(_raw_embedding(embedder, texts)))

    times: dict[Mode, list[float]] = {m: [] for m in modes}
    chunks: dict[Mode, int] = {}
    for round_ in range(config.repeat):
        for mode in rotated(modes, round_):
            seconds, chunks[mode] = await _measure(mode)
            times[mode].append(seconds)
    medians = {m: statistics.median(t) for m, t in times.items()}
    sync = medians.get("sync")
    plain_setup = f"{plain.precision}, batches of {plain.model.embed_batch_size}" if plain else ""  # type: ignore[attr-defined]
    plain = None  # the second model's memory, freed before the rows are drawn
    notes: dict[Mode, str] = {
        "sync": f"{note}; LlamaIndex's default embedding ({plain_setup})",
        "sync-same-embedding": f"{note}; the engine's embedding ({embedder.backend}, batches of "
        f"{settings.embed_batch_size})",
        "project-async": note,
        "raw-embedding": f"{note}; the engine's embedding ({embedder.precision}), no Milvus",
    }
    if "project-async" in medians and "sync-same-embedding" in medians and medians["project-async"] > 0:
        gain = medians["sync-same-embedding"] / medians["project-async"]
        notes["project-async"] = f"{note}; {gain:.2f}× the sync pipeline with the same embedding"
    for mode in modes:
        yield _row("ingest", mode, chunks[mode], times[mode], sync, notes[mode])


# -- embed ------------------------------------------------------------------------------------------
def embed_modes() -> list[Mode]:
    """The embedding backends this machine can measure: torch fp32 first (the baseline)."""
    import importlib.util

    modes: list[Mode] = ["torch-fp32"]
    if cpu_has_amx():
        modes.append("torch-bf16")
    with contextlib.suppress(ImportError, ValueError):
        if importlib.util.find_spec("onnxruntime") is not None:
            modes += ["onnx", "onnx-int8"]
    return modes


def _spread(texts: Sequence[str], limit: int | None) -> list[str]:
    """At most `limit` texts taken evenly from the whole list, so every document is represented."""
    if not limit or limit >= len(texts):
        return list(texts)
    return [texts[i * len(texts) // limit] for i in range(limit)]


def _load_backends(settings: Settings, engine: Embedder, modes: Sequence[Mode]) -> dict[str, Embedder]:
    """One embedder per mode; the engine's own is reused for its mode. A backend that cannot be built is
    left out (the run still measures the others)."""
    loaded: dict[str, Embedder] = {}
    for mode in modes:
        if engine.backend == mode:
            loaded[mode] = engine
        elif mode.startswith("torch-"):
            loaded[mode] = load_torch_embedder(settings, mode.removeprefix("torch-"))  # type: ignore[arg-type]
        else:
            try:
                loaded[mode] = load_onnx_embedder(settings, mode)
            except BackendUnavailableError as exc:
                log.warning("embed benchmark: %s is not available here: %s", mode, exc)
    return loaded


def _embed_round(embedder: Embedder, texts: Sequence[str]) -> Callable[[threading.Event], Any]:
    """Embed `texts` as ingestion does (`embed_documents`, a group per step) and time it."""

    def _run(stop: threading.Event) -> tuple[float, list[list[float]]]:
        vectors: list[list[float]] = []
        started = time.perf_counter()
        group = embedder.document_group
        for start in range(0, len(texts), group):
            if stop.is_set():
                raise JobCancelledError("benchmark stopped")
            vectors.extend(embedder.embed_documents(list(texts[start : start + group])))
        return time.perf_counter() - started, vectors

    return _run


async def _aembed(settings: Settings, embedder: Embedder, config: BenchConfig) -> AsyncIterator[BenchRow]:
    files = corpus_files(config)
    if not files:
        raise IngestError(str(config.corpus_dir or default_corpus_dir()), "holds no readable documents")
    splitter = make_splitter(settings, embedder)
    chunked = await asyncio.to_thread(lambda: [_chunk_file(p, splitter, embedder.model_id) for p in files])
    every = [t for nodes in chunked for t in embed_texts(nodes)]
    texts = _spread(every, config.embed_chunks)
    backends = await asyncio.to_thread(_load_backends, settings, embedder, embed_modes())
    for model in backends.values():  # warmed alike: one untimed group each (every lane's session made)
        await asyncio.to_thread(model.embed_documents, texts[: model.document_group])
    seconds: dict[str, list[float]] = {mode: [] for mode in backends}
    vectors: dict[str, list[list[float]]] = {}
    for _ in range(config.repeat):  # interleaved, so a busy neighbour slows every backend alike
        for mode, model in backends.items():
            elapsed, vectors[mode] = await _in_thread(_embed_round(model, texts))
            seconds[mode].append(elapsed)
    base = statistics.median(seconds["torch-fp32"])
    note = f"{len(texts)} of {len(every)} corpus chunks from {len(files)} files, batches of {settings.embed_batch_size}"
    for mode, times in seconds.items():
        lanes = backends[mode].lanes
        median = statistics.median(times)
        cos = cosines(vectors[mode], vectors["torch-fp32"])
        chosen = mode == embedder.backend
        yield BenchRow(
            experiment="embed",
            mode=mode,  # type: ignore[arg-type]
            n=len(texts),
            seconds=median,
            ms_per_item=median * 1000 / len(texts),
            speedup=base / median if mode != "torch-fp32" else None,
            note=f"{note}, {lanes} lane{'s' * (lanes > 1)}" + ("; the engine's backend" if chosen else ""),
            chunks=len(texts),
            chunks_per_s=len(texts) / median,
            cosine_mean=float(cos.mean()),
            cosine_min=float(cos.min()),
            seconds_min=min(times),
            seconds_max=max(times),
            repeats=len(times),
            chosen=chosen,
        )


# -- the run ----------------------------------------------------------------------------------------
async def _aversion(connection: Connection) -> str:
    from pymilvus import MilvusClient

    def _get() -> str:
        client = MilvusClient(uri=connection.uri, token=connection.token)
        try:
            return str(client.get_server_version())
        finally:
            client.close()

    with map_milvus_errors("report its version"):
        return await asyncio.to_thread(_get)


async def aiter_bench(
    settings: Settings, connection: Connection | None, embedder: Embedder | None, config: BenchConfig
) -> AsyncIterator[BenchRow | BenchReport]:
    """Yield each BenchRow as it is measured, then the BenchReport.

    `connection` may be None when only the embed experiment runs (it needs no Milvus); `embedder` None
    loads the configured one.
    """
    started, clock = datetime.now(UTC), time.perf_counter()
    needs_milvus = any(e in MILVUS_EXPERIMENTS for e in config.experiments)
    if needs_milvus and connection is None:
        raise ValueError("the add, search and ingest experiments need a Milvus connection")
    version = await _aversion(connection) if connection is not None and needs_milvus else ""
    if embedder is None:
        embedder = await asyncio.to_thread(load_embedder, settings)
    rows: list[BenchRow] = []
    for experiment in config.experiments:
        if experiment == "add":
            measured = _aadd(connection, config)  # type: ignore[arg-type]
        elif experiment == "search":
            measured = _asearch(connection, config)  # type: ignore[arg-type]
        elif experiment == "ingest":
            measured = _aingest(settings, connection, embedder, config)  # type: ignore[arg-type]
        elif experiment == "scale":
            from rag.scale import ScaleRun

            measured = ScaleRun(settings, connection, embedder, config).arun()  # type: ignore[arg-type]
        else:
            measured = _aembed(settings, embedder, config)
        try:
            async for row in measured:
                rows.append(row)
                yield row
        finally:
            await measured.aclose()  # runs the scratch cleanup now, not whenever the GC finds it
    yield BenchReport(
        rows=rows,
        milvus_version=version,
        machine=machine_info(),
        config=config,
        versions=library_versions(),
        started_at=started.isoformat(timespec="seconds"),
        seconds=time.perf_counter() - clock,
    )
