"""The scale experiment: how writing, searching, start-up, memory and disk behave as a collection grows.

Embedding a million real chunks takes this kind of machine most of a day, so the collections are built from
synthetic chunks that look like the engine's to everything downstream of the model: the engine's schema,
index, ids and metadata; texts of realistic length (about 140 words: stopwords, Zipf-distributed vocabulary
and topic words, so the BM25 side index holds postings of realistic shape); unit vectors built like real
embeddings' neighbourhoods, so an approximate index faces the same task: a direction every vector shares, its
topic's, its document's, and a walk along the document (neighbouring chunks are alike, as overlapping chunks
are), plus noise. The shares were fitted to the bundled model's vectors of the shared corpus (2,360 chunks,
57 labelled questions): a chunk's nearest neighbour at cosine 0.81 (real 0.80), its 10th 0.64 (0.65), random
pairs 0.12 (0.12); a question's best chunk 0.64 (0.65), its 10th 0.49 (0.48), its 50th 0.42 (0.31).
Documents hold a log-normal number of chunks (median about 55), each with its catalogue row.

Everything is written through the engine's own paths: a `DocumentLibrary.write` per document (its claim, row,
lease and commit) whose `add` stores the chunks (Milvus upserts and the keyword index). Everything is measured
through them too: searches through `DocumentStore.asearch`, a restart by opening a fresh `RagService`, the
Home and Chat pages by the service calls they make, `docs list` by `list_documents`.

Every chunk is a pure function of (seed, document, position), so a build that stopped is resumed from the
first document not yet committed, and the exact neighbours of a query (for recall) are computed by generating
the vectors again rather than keeping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import shutil
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.catalog import DocumentRecord
from rag.config import Settings
from rag.keyword import STOPWORDS
from rag.store import (
    DOC_ID_FIELD,
    EMBEDDING_FIELD,
    MODEL_KEY,
    WORKSPACE_FIELD,
    Connection,
    DocumentStore,
    chunk_id,
    map_milvus_errors,
)
from rag.workspaces import DEFAULT_ID

if TYPE_CHECKING:
    from llama_index.core.schema import TextNode

    from rag.bench import BenchConfig, BenchRow
    from rag.embeddings import Embedder

log = logging.getLogger(__name__)

SYNTHETIC_MODEL = "synthetic"  # the model id stored when no embedder of the collection's dimension is at hand
_VOCABULARY = 30_000
_TOPICS = 1_000
_TOPIC_WORDS = 40
_WORDS_MEAN, _WORDS_SD = 140, 35  # words per chunk (the shared corpus's 256-token chunks: about 137)
_STOP_SHARE, _TOPIC_SHARE = 0.35, 0.15  # of a chunk's words
# Shares of a chunk vector's squared length (before normalising): shared, topic, document, walk, noise; the walk
# is AR(1) along the document; a question is a chunk's vector without its noise plus noise of _QUESTION_NOISE.
_SHARED, _TOPIC, _DOCUMENT, _WALK, _NOISE = 0.12, 0.15, 0.265, 0.33, 0.135
_WALK_CORRELATION = 0.8
_QUESTION_NOISE = 1.0
_WAVE = 4_000  # chunks generated and written per step (their documents' rows begun and committed together)
RECALL_K = 10
_SLOW = 3600.0  # seconds a flush, load or index call may take on a large collection (the clients' default: 30)


@dataclass(frozen=True)
class IndexSpec:
    """An index for the embedding field and the search parameter that goes with it, e.g. `HNSW:M=16,efConstruction=
    200,ef=64` or `IVF_FLAT:nlist=1024,nprobe=32` (the search parameters `ef`, `nprobe` are split off)."""

    index_type: str
    build: dict[str, int] = field(default_factory=dict)
    search: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> IndexSpec:
        name, _, params = text.strip().partition(":")
        build: dict[str, int] = {}
        search: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in params.split(","))):
            key, _, value = part.partition("=")
            if not value.strip().isdigit():
                raise ValueError(f"index parameter {part!r} is not name=integer")
            (search if key in ("ef", "nprobe", "search_k") else build)[key.strip()] = int(value)
        if not name.strip():
            raise ValueError(f"index spec {text!r} names no index type")
        return cls(name.strip().upper(), build, search)

    def __str__(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in {**self.build, **self.search}.items())
        return f"{self.index_type}:{params}" if params else self.index_type


class SyntheticCorpus:
    """Deterministic synthetic chunks: texts, vectors and document layout from one seed."""

    def __init__(self, dim: int, seed: int = 21) -> None:
        self.dim, self.seed = dim, seed
        rng = np.random.default_rng([seed, 0])
        self.stopwords = np.array(sorted(STOPWORDS))
        self.words = _pseudo_words(rng, _VOCABULARY)  # the most frequent first
        ranks = np.arange(1, _VOCABULARY + 1, dtype=np.float64)
        weights = 1.0 / (ranks + 2.7) ** 1.07  # Zipf-Mandelbrot, as word frequencies in text
        self._cdf = np.cumsum(weights / weights.sum())
        self.shared = _unit(rng.standard_normal(dim))
        self.centres = _unit(rng.standard_normal((_TOPICS, dim)))
        self.topic_words = rng.integers(200, _VOCABULARY, size=(_TOPICS, _TOPIC_WORDS))

    # -- layout ---------------------------------------------------------------------------------
    def layout(self, size: int) -> list[int]:
        """Chunks per document, in order, summing to `size` (the same prefix for every size)."""
        rng = np.random.default_rng([self.seed, 1])
        counts: list[int] = []
        total = 0
        while total < size:
            block = np.clip(np.round(rng.lognormal(4.0, 1.2, 1024)), 1, 5000).astype(int)
            for n in block:
                n = int(min(n, size - total))
                counts.append(n)
                total += n
                if total >= size:
                    break
        return counts

    def doc_id(self, doc: int) -> str:
        """A document id shaped like the engine's (a SHA-256 in hex)."""
        return hashlib.sha256(f"synthetic:{self.seed}:{doc}".encode()).hexdigest()

    def topic(self, doc: int) -> int:
        """The topic a document keeps to."""
        return int(np.random.default_rng([self.seed, 2, doc]).integers(_TOPICS))

    # -- content --------------------------------------------------------------------------------
    def _signal(self, doc: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """A document's chunk vectors before noise and normalising, and their noise."""
        rng = np.random.default_rng([self.seed, 3, doc])
        steps = rng.standard_normal((count, self.dim)) / math.sqrt(self.dim)
        walk = np.empty_like(steps)
        walk[0] = steps[0]
        keep, fresh = _WALK_CORRELATION, math.sqrt(1 - _WALK_CORRELATION**2)
        for i in range(1, count):
            walk[i] = keep * walk[i - 1] + fresh * steps[i]
        base = (
            math.sqrt(_SHARED) * self.shared
            + math.sqrt(_TOPIC) * self.centres[self.topic(doc)]
            + math.sqrt(_DOCUMENT) * _unit(rng.standard_normal(self.dim))
        )
        noise = rng.standard_normal((count, self.dim)) / math.sqrt(self.dim)
        return base + math.sqrt(_WALK) * walk, noise

    def vectors(self, doc: int, count: int) -> np.ndarray:
        """A document's chunk vectors (unit length, float32)."""
        signal, noise = self._signal(doc, count)
        return _unit(signal + math.sqrt(_NOISE) * noise).astype(np.float32)

    def texts(self, doc: int, count: int) -> list[str]:
        """A document's chunk texts: about 140 words each of stopwords, vocabulary and its topic's words."""
        rng = np.random.default_rng([self.seed, 4, doc])
        lengths = np.clip(np.round(rng.normal(_WORDS_MEAN, _WORDS_SD, count)), 20, 260).astype(int)
        total = int(lengths.sum())
        kind = rng.random(total)
        words = self.words[np.searchsorted(self._cdf, rng.random(total))]
        topic = self.topic_words[self.topic(doc)][rng.integers(_TOPIC_WORDS, size=total)]
        words = np.where(kind < _TOPIC_SHARE, self.words[topic], words)
        words = np.where(kind > 1 - _STOP_SHARE, self.stopwords[rng.integers(len(self.stopwords), size=total)], words)
        ends = np.cumsum(lengths)
        return [" ".join(words[end - n : end].tolist()) for n, end in zip(lengths, ends)]

    def queries(self, count: int, layout: Sequence[int]) -> tuple[np.ndarray, list[str]]:
        """Questions about chunks of the first 10,000 (so every size is asked the same): the chunk's vector without
        its noise, plus a question's noise; a few of its topic's words, common words and stopwords."""
        rng = np.random.default_rng([self.seed, 5])
        first = self.layout(min(10_000, sum(layout)))
        vectors, texts = [], []
        for _ in range(count):
            doc = int(rng.integers(len(first)))
            signal, _ = self._signal(doc, first[doc])
            noise = rng.standard_normal(self.dim) / math.sqrt(self.dim)
            vectors.append(_unit(signal[rng.integers(first[doc])] + math.sqrt(_QUESTION_NOISE) * noise))
            own = self.words[self.topic_words[self.topic(doc)][rng.integers(_TOPIC_WORDS, size=3)]]
            common = self.words[np.searchsorted(self._cdf, rng.random(2))]
            stop = self.stopwords[rng.integers(len(self.stopwords), size=3)]
            texts.append(" ".join([stop[0], stop[1], *own, stop[2], *common]) + "?")
        return np.array(vectors, dtype=np.float32), texts

    def nodes(self, doc: int, count: int, model_id: str, workspace: str = DEFAULT_ID) -> list[TextNode]:
        """A document's chunks as the engine's ingestion makes them (ids, source, metadata, embedding)."""
        from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

        doc_id = self.doc_id(doc)
        name = _file_name(doc)
        nodes = []
        for position, (text, vector) in enumerate(zip(self.texts(doc, count), self.vectors(doc, count))):
            metadata = {
                "file_name": name,
                "page": position // 3 + 1,
                DOC_ID_FIELD: doc_id,
                "chunk": position,
                "file_type": "pdf",
                MODEL_KEY: model_id,
                WORKSPACE_FIELD: workspace,
            }
            node = TextNode(
                id_=chunk_id(doc_id, position),
                text=text,
                embedding=vector.tolist(),
                metadata=metadata,
                relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc_id)},
            )
            node.excluded_embed_metadata_keys = list(metadata)
            node.excluded_llm_metadata_keys = list(metadata)
            nodes.append(node)
        return nodes

    def record(self, doc: int, count: int, uploads: Path) -> DocumentRecord:
        """The catalogue row of a document (no stored bytes: nothing reads them in this experiment)."""
        doc_id = self.doc_id(doc)
        return DocumentRecord(
            doc_id=doc_id,
            file_name=_file_name(doc),
            file_type="pdf",
            size=count * 1_500,
            pages=count // 3 + 1,
            chunks=count,
            status="indexing",
            stored_path=str(uploads / f"{doc_id}.pdf"),
            added_at=time.time(),
        )

    def exact_top(self, queries: np.ndarray, layout: Sequence[int], k: int = RECALL_K) -> list[set[str]]:
        """The chunk ids of each query's k nearest chunks by cosine, by brute force over regenerated vectors."""
        starts = np.concatenate([[0], np.cumsum(layout)])
        best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        best_index = np.zeros((len(queries), k), dtype=np.int64)
        group: list[np.ndarray] = []
        first = 0  # the global index of the group's first chunk

        def _merge() -> None:
            nonlocal best_scores, best_index, first
            block = np.concatenate(group)
            scores = np.concatenate([best_scores, queries @ block.T], axis=1)  # unit vectors: dot is cosine
            index = np.concatenate(
                [best_index, np.broadcast_to(np.arange(first, first + len(block)), (len(queries), len(block)))], axis=1
            )
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            best_scores, best_index = np.take_along_axis(scores, keep, axis=1), np.take_along_axis(index, keep, axis=1)
            first += len(block)
            group.clear()

        for doc, count in enumerate(layout):
            group.append(self.vectors(doc, count))
            if sum(len(g) for g in group) >= 20_000:
                _merge()
        if group:
            _merge()
        docs = np.searchsorted(starts, best_index, side="right") - 1
        return [
            {chunk_id(self.doc_id(int(d)), int(i - starts[d])) for d, i in zip(row_docs, row)}
            for row_docs, row in zip(docs, best_index)
        ]


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _file_name(doc: int) -> str:
    return f"synthetic-{doc:07d}.pdf"


def _pseudo_words(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` distinct pronounceable words, shortest first (short words are the frequent ones)."""
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "st", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st"]
    seen: set[str] = set()
    words: list[str] = []
    while len(words) < count:
        syllables = int(rng.integers(1, 5))
        word = "".join(
            onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))] + codas[rng.integers(len(codas))]
            for _ in range(syllables)
        )
        if len(word) > 2 and word not in seen and word not in STOPWORDS:
            seen.add(word)
            words.append(word)
    words.sort(key=len)
    return np.array(words)


# -- process facts --------------------------------------------------------------------------------
def rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory of a process in MB (Linux), None when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def milvus_process(connection: Connection, data_dir: Path) -> int | None:
    """The pid of the Milvus server on this machine: the embedded one's, or a local process running `milvus run`
    when the URI points at this machine; None for a remote server."""
    if connection.kind == "embedded":
        from rag.milvus_server import EmbeddedMilvus

        state = EmbeddedMilvus(data_dir).status().state
        return state.pid if state else None
    if not any(host in connection.uri for host in ("127.0.0.1", "localhost", "[::1]")):
        return None
    port = connection.uri.rsplit(":", 1)[-1].strip("/")
    found = None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and argv[0].endswith(b"milvus") and argv[1:3] == [b"run", b"standalone"]:
            found = int(proc.name)
            with contextlib.suppress(OSError):  # prefer the server whose config names this port
                config = (Path(os.readlink(proc / "exe")).parent.parent / "configs" / "milvus.yaml").read_text()
                if f"port: {port}" in config:
                    return found
    return found


def milvus_data_dir(pid: int | None) -> Path | None:
    """Where a local Milvus keeps its data (the embedded layout: `<milvus>/bin/milvus` beside `<milvus>/data`)."""
    if pid is None:
        return None
    with contextlib.suppress(OSError):
        data = Path(os.readlink(f"/proc/{pid}/exe")).parent.parent / "data"
        return data if data.is_dir() else None
    return None


def disk_mb(path: Path | None) -> float | None:
    """Bytes under a folder, in MB (None when there is no folder)."""
    if path is None or not path.exists():
        return None
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total / 1048576


def collection_disk_mb(client: Any, name: str, data: Path | None) -> float | None:
    """What one collection occupies in a local Milvus's data dir: its segments' insert, stats and delete logs and
    its segments' index files (the embedded layout). None for a server whose files are out of reach."""
    if data is None:
        return None
    collection = str(client.describe_collection(name)["collection_id"])
    segments = {str(s.segment_id) for s in client.list_persistent_segments(name)}
    total = sum(disk_mb(data / kind / collection) or 0.0 for kind in ("insert_log", "stats_log", "delta_log"))
    for folder in (data / "index_files").glob("*/*/*/*"):  # <build>/<version>/<partition>/<segment>
        if folder.name in segments:
            total += disk_mb(folder) or 0.0
    return total


def percentile(values: Sequence[float], share: float) -> float:
    """The value below which `share` of them lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


# -- the experiment -------------------------------------------------------------------------------
@dataclass
class _Size:
    """One size's collection and the scratch data dir of its catalogue and keyword index."""

    size: int
    name: str
    settings: Settings
    layout: list[int]
    store: DocumentStore | None = None
    library: Any = None
    index: tuple[str, dict[str, int]] | None = None  # the index the sweep built last


def collection_name(size: int, dim: int, data_dir: Path) -> str:
    """A size's collection: the same name on every run from one data dir, so a stopped build resumes."""
    tag = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:6]
    return f"bench_scale_{size}_{dim}_{tag}"


class ScaleRun:
    """Builds and measures one collection per size; yields BenchRows."""

    def __init__(
        self, settings: Settings, connection: Connection, embedder: Embedder | None, config: BenchConfig
    ) -> None:
        self.settings, self.connection, self.embedder, self.config = settings, connection, embedder, config
        self.corpus = SyntheticCorpus(config.dim)
        self.root = Path(settings.data_dir) / "bench-scale"
        self.milvus_pid = milvus_process(connection, Path(settings.data_dir))
        self.milvus_data = milvus_data_dir(self.milvus_pid)
        # The chunks claim the embedder's model when its dimension matches, so a RagService (restart, pages,
        # questions) opens the collection with it; question vectors then land among synthetic ones, which
        # costs the same as among real ones.
        self.service_embedder = embedder if embedder is not None and embedder.dim == config.dim else None
        self.model_id = self.service_embedder.model_id if self.service_embedder else SYNTHETIC_MODEL

    def _row(self, mode: str, size: int, seconds: float, note: str = "", **fields: Any) -> BenchRow:
        from rag.bench import BenchRow

        details = {**fields.pop("details", {}), "load_1m": round(os.getloadavg()[0], 2)}  # the machine's business
        return BenchRow(
            experiment="scale",
            mode=mode,  # type: ignore[arg-type]
            n=size,
            seconds=seconds,
            ms_per_item=seconds * 1000 / size if size else 0.0,
            note=note,
            details=details,
            **fields,
        )

    @property
    def resumable(self) -> bool:
        """Whether this run saves its rows and keeps a stopped build for the next run."""
        return self.config.results_file is not None

    async def arun(self) -> AsyncIterator[BenchRow]:
        """Every size in turn (smallest first): build or resume, measure, drop (unless kept). With a results file,
        sizes it already holds are yielded from it, and every size measured now is added to it."""
        from rag.bench import BenchRow

        path = Path(self.config.results_file) if self.config.results_file else None
        saved = [BenchRow(**r) for r in load_results(path)] if path else []
        saved = [r for r in saved if r.experiment == "scale" and r.details.get("dim") == self.config.dim]
        for size in self.config.sizes:
            earlier = [r for r in saved if r.n == size]
            if earlier:
                for row in earlier:
                    yield row
                continue
            rows = []
            async for row in self._asize(size):
                row = row.model_copy(update={"details": {**row.details, "dim": float(self.config.dim)}})
                rows.append(row)
                yield row
            if path is not None:
                saved += rows
                await asyncio.to_thread(_save_results, path, saved, self.config)

    async def _asize(self, size: int) -> AsyncIterator[BenchRow]:
        name = collection_name(size, self.config.dim, Path(self.settings.data_dir))
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        update: dict[str, Any] = {"data_dir": folder, "collection": name}
        if self.connection.kind == "embedded":  # the same server, not a new one in the scratch data dir
            update.update(milvus_uri=self.connection.uri, milvus_token=self.connection.token or None)
        settings = self.settings.model_copy(update=update)
        state = _Size(size, name, settings, self.corpus.layout(size))
        finished = False
        try:
            async for row in self._ameasure(state):
                yield row
            finished = True
        finally:
            if finished and not self.config.keep_collections or not finished and not self.resumable:
                await self._adrop(state, folder)
            else:
                await self._aclose(state)

    async def _aclose(self, state: _Size) -> None:
        if state.library is not None:
            state.library.close()
            state.library = None
        if state.store is not None:
            await state.store.aclose()
            state.store = None

    async def _adrop(self, state: _Size, folder: Path) -> None:
        with contextlib.suppress(Exception):
            if state.store is not None:
                await state.store.adrop()
        await self._aclose(state)
        from rag.bench import _drop_by_name

        await _drop_by_name(self.connection, state.name)
        shutil.rmtree(folder, ignore_errors=True)

    async def _aopen(self, state: _Size, overwrite: bool = False) -> None:
        from rag.documents import DocumentLibrary

        state.store = await DocumentStore.abuild(
            state.settings, self.connection, self.config.dim, self.model_id, state.name, overwrite=overwrite
        )
        state.library = DocumentLibrary(state.settings, state.store)

    async def _ameasure(self, state: _Size) -> AsyncIterator[BenchRow]:
        size, config = state.size, self.config
        log_before = disk_mb(self.milvus_data / "rocksmq") if self.milvus_data else None
        rss_app_before = rss_mb()
        inserted, seconds, resumed = await self._abuild(state)
        note = f"{len(state.layout):,} documents; batches of {state.settings.insert_batch_size}, "
        note += f"{state.settings.insert_concurrency} in flight; keyword index: {state.store.features.keyword_backend}"
        if resumed:
            note += f"; resumed: {inserted:,} chunks written in this run"
        per_s = inserted / seconds if seconds else None
        yield self._row("insert", size, seconds, note, chunks=inserted, chunks_per_s=per_s)

        seconds, segments, index = await self._aindex(state)
        yield self._row("index", size, seconds, f"flush and {index} built on {segments} sealed segment(s)")

        async for row in self._arestart(state):
            yield row

        queries, texts = self.corpus.queries(config.queries, state.layout)
        async for row in self._asearches(state, queries, texts):
            yield row

        exact = await asyncio.to_thread(self.corpus.exact_top, queries[: config.recall_queries], state.layout)
        recall = await self._arecall(state, queries[: config.recall_queries], exact)
        yield self._row("recall", size, 0.0, f"recall@{RECALL_K} of {index} against exact search", recall=recall)

        async for row in self._apages(state, texts):
            yield row

        gc.collect()
        rss_app = rss_mb()
        milvus = rss_mb(self.milvus_pid) if self.milvus_pid else None
        yield self._row(
            "memory",
            size,
            0.0,
            "after the searches: resident memory of the whole Milvus server and of this process (the app, its "
            "embedding model, and the builder's buffers)",
            rss_milvus_mb=milvus,
            rss_app_mb=rss_app,
            details={"app_growth_mb": rss_app - rss_app_before} if rss_app and rss_app_before else {},
        )
        client = state.store.vector_store.client  # type: ignore[union-attr]
        collection = await asyncio.to_thread(collection_disk_mb, client, state.name, self.milvus_data)
        side = disk_mb(Path(state.settings.data_dir))
        log_growth = disk_mb(self.milvus_data / "rocksmq") if self.milvus_data else None
        details = {"milvus_collection_mb": collection, "side_files_mb": side}
        if log_growth is not None and log_before is not None:
            details["message_log_growth_mb"] = log_growth - log_before
        yield self._row(
            "disk",
            size,
            0.0,
            "the collection's segments and index files in Milvus, and the catalogue and keyword index beside it "
            "(Milvus also keeps every insert in its message log for 3 days or 8 GB: details)",
            disk_mb=(collection or 0.0) + (side or 0.0),
            details={k: v for k, v in details.items() if v is not None},
        )

        for spec in config.index_sweep:
            yield await self._asweep(state, IndexSpec.parse(spec), queries, exact)

    # -- building ---------------------------------------------------------------------------------
    async def _abuild(self, state: _Size) -> tuple[int, float, bool]:
        """Write the size's documents (resuming after the last committed one); returns (chunks written, seconds
        spent writing, whether it resumed)."""
        from pymilvus import MilvusClient

        def _exists() -> bool:
            client = MilvusClient(uri=self.connection.uri, token=self.connection.token)
            try:
                return client.has_collection(state.name)
            finally:
                client.close()

        resumable = self.resumable and await asyncio.to_thread(_exists)
        await self._aopen(state, overwrite=not resumable)
        assert state.library is not None and state.store is not None
        done = {r.doc_id for r in await asyncio.to_thread(state.library.list, None)} if resumable else set()
        start = 0
        while start < len(state.layout) and self.corpus.doc_id(start) in done:
            start += 1
        waves: list[list[int]] = [[]]
        for doc in range(start, len(state.layout)):
            if sum(state.layout[d] for d in waves[-1]) >= _WAVE:
                waves.append([])
            waves[-1].append(doc)
        waves = [w for w in waves if w]
        uploads = Path(state.settings.data_dir) / "uploads"
        spent, written = 0.0, 0

        def _make(wave: list[int]) -> list[tuple[DocumentRecord, list[TextNode]]]:
            layout, corpus = state.layout, self.corpus
            return [(corpus.record(d, layout[d], uploads), corpus.nodes(d, layout[d], self.model_id)) for d in wave]

        def _next(number: int) -> asyncio.Future[Any] | None:  # made in a thread while the wave before is written
            return asyncio.ensure_future(asyncio.to_thread(_make, waves[number])) if number < len(waves) else None

        pending = _next(0)
        for number in range(len(waves)):
            assert pending is not None
            made = await pending
            pending = _next(number + 1)
            started = time.perf_counter()
            size = state.settings.insert_batch_size
            async with contextlib.AsyncExitStack() as stack:  # each document's write, as ingestion makes it
                writes = [await stack.enter_async_context(state.library.write(record)) for record, _ in made]
                batches = [
                    (write, nodes[i : i + size])
                    for write, (_, nodes) in zip(writes, made, strict=True)
                    for i in range(0, len(nodes), size)
                ]
                await _bounded(state.settings.insert_concurrency, [lambda w=w, b=b: w.add(b) for w, b in batches])
            # leaving the stack committed every document of the wave (or, on an error, removed what they stored)
            spent += time.perf_counter() - started
            written += sum(len(nodes) for _, nodes in made)
            if number % 25 == 0:
                log.info("scale %s: %d of %d chunks written", state.name, written, state.size)
        return written, spent, bool(done)

    async def _aindex(self, state: _Size) -> tuple[float, int, str]:
        """Flush (seal the segments) and wait until the embedding index covers every row."""
        client = state.store.vector_store.client  # type: ignore[union-attr]

        def _wait() -> tuple[int, str]:
            client.flush(state.name, timeout=_SLOW)
            while True:
                info = client.describe_index(state.name, EMBEDDING_FIELD)
                if info.get("state") == "Failed":
                    raise RuntimeError(f"the index of {state.name} failed: {info}")
                if int(info.get("pending_index_rows", 0)) == 0 and int(info.get("indexed_rows", 0)) >= int(
                    info.get("total_rows", 0)
                ):
                    break
                time.sleep(0.5)
            segments = client.list_persistent_segments(state.name)
            skip = (
                "field_name",
                "index_name",
                "index_type",
                "total_rows",
                "indexed_rows",
                "pending_index_rows",
                "state",
            )
            params = {k: int(v) for k, v in info.items() if k not in (*skip, "metric_type") and str(v).isdigit()}
            state.index = (str(info.get("index_type")), params)  # a sweep of the same build only changes search
            return len(segments), str(IndexSpec(str(info.get("index_type")), build=params))

        with map_milvus_errors("build the index"):
            started = time.perf_counter()
            segments, index = await asyncio.to_thread(_wait)
        return time.perf_counter() - started, segments, index

    # -- restart ----------------------------------------------------------------------------------
    async def _arestart(self, state: _Size) -> AsyncIterator[BenchRow]:
        """Milvus: release and load the collection (what a server restart makes it do), until a search answers.
        The app: open a fresh RagService on it (its own loop and clients, the recovery pass) until a question
        is answered."""
        client = state.store.vector_store.client  # type: ignore[union-attr]
        vector = self.corpus.queries(1, state.layout)[0][0].tolist()

        def _reload() -> tuple[float, float | None]:
            client.release_collection(state.name, timeout=_SLOW)
            time.sleep(5.0)  # the server gives memory back lazily; its RSS after this is the best "without"
            released = rss_mb(self.milvus_pid) if self.milvus_pid else None
            started = time.perf_counter()
            client.load_collection(state.name, timeout=_SLOW)
            return started, released

        with map_milvus_errors("reload the collection"):
            started, released = await asyncio.to_thread(_reload)
            hits = await state.store.asearch(vector, 5, workspace=DEFAULT_ID)
            reload = time.perf_counter() - started
        loaded = rss_mb(self.milvus_pid) if self.milvus_pid else None
        yield self._row(
            "load",
            state.size,
            reload,
            f"release, load, first dense search ({len(hits)} hits); the server's RSS grew by the details' "
            "collection_mb (only meaningful on a server nothing else uses)",
            rss_milvus_mb=loaded,
            details={"collection_mb": loaded - released} if loaded is not None and released is not None else {},
        )

        def _open() -> tuple[float, float]:
            from rag.options import AskOptions
            from rag.service import RagService

            started = time.perf_counter()
            service = RagService(state.settings, embedder=self.service_embedder)
            try:
                opened = time.perf_counter() - started
                service.retrieve("what does the first document say about safety?", AskOptions(retrieval="hybrid"))
                return opened, time.perf_counter() - started
            finally:
                service.close()

        if self.service_embedder is None:
            return  # the app cannot open a collection of another dimension than its model's
        opened, answered = await asyncio.to_thread(_open)
        yield self._row(
            "open",
            state.size,
            answered,
            f"a fresh RagService opened in {opened:.2f} s (collection, catalogue, recovery and keyword reconcile), "
            "then one hybrid question",
        )

    # -- searching --------------------------------------------------------------------------------
    async def _asearches(self, state: _Size, queries: np.ndarray, texts: list[str]) -> AsyncIterator[BenchRow]:
        store = state.store
        assert store is not None
        top_k = self.settings.top_k
        modes = [m for m in ("dense", "keyword", "hybrid") if m in store.features.retrieval_modes]
        hits_for_context: list[Any] = []

        async def _search(mode: str, i: int) -> None:
            hits = await store.asearch(
                queries[i].tolist(), top_k, retrieval=mode, query_text=texts[i], workspace=DEFAULT_ID
            )
            if mode == "hybrid" and len(hits_for_context) < len(texts):
                hits_for_context.append(hits)

        for mode in modes:
            await _search(mode, 0)  # warm: the first request of a kind pays for connections and caches
        for clients in self.config.clients:
            for mode in modes:
                latencies, wall = await _drive(clients, len(texts), lambda i, m=mode: _search(m, i))
                yield self._latency_row(mode, state.size, clients, latencies, wall, f"top {top_k}")
        context = self.settings.context_chunks or 1
        latencies, wall = await _drive(
            1, len(hits_for_context), lambda i: store.aneighbours(hits_for_context[i], context)
        )
        yield self._latency_row(
            "neighbours", state.size, 1, latencies, wall, f"±{context} chunks around {top_k} hits", "lookups"
        )

    def _latency_row(
        self, mode: str, size: int, clients: int, latencies: list[float], wall: float, note: str, unit: str = "queries"
    ) -> Any:
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        return self._row(
            mode,
            size,
            p50,
            f"{note}; {len(latencies)} {unit}, {clients} client{'s' * (clients > 1)}",
            clients=clients,
            p50_ms=p50 * 1000,
            p95_ms=p95 * 1000,
            per_s=len(latencies) / wall if wall else None,
            seconds_min=min(latencies),
            seconds_max=max(latencies),
            repeats=len(latencies),
        )

    async def _arecall(self, state: _Size, queries: np.ndarray, exact: list[set[str]]) -> float:
        store = state.store
        assert store is not None
        found = await asyncio.gather(*(store.asearch(q.tolist(), RECALL_K, workspace=DEFAULT_ID) for q in queries))
        shares = [len({h.node.node_id for h in hits} & truth) / RECALL_K for hits, truth in zip(found, exact)]
        return statistics.fmean(shares)

    # -- page loads -------------------------------------------------------------------------------
    async def _apages(self, state: _Size, texts: list[str]) -> AsyncIterator[BenchRow]:
        """`docs list` and the service calls of the Home and Chat pages, on a fresh service, repeated."""
        from rag.documents import list_documents

        if self.service_embedder is None:
            return

        def _measure() -> dict[str, list[float]]:
            from rag.options import AskOptions
            from rag.service import RagService

            times: dict[str, list[float]] = {"docs-list": [], "home": [], "chat": [], "question": []}
            service = RagService(state.settings, embedder=self.service_embedder)
            try:
                for i in range(self.config.page_loads):
                    times["docs-list"].append(_clock(lambda: list_documents(state.settings)))
                    times["home"].append(_clock(lambda: service.status(DEFAULT_ID)))
                    times["chat"].append(_clock(lambda: _chat_page(service)))
                    question = texts[i % len(texts)]
                    times["question"].append(
                        _clock(lambda q=question: service.retrieve(q, AskOptions(retrieval="hybrid")))
                    )
            finally:
                service.close()
            return times

        notes = {
            "docs-list": "`docs list`'s reading of the catalogue (list_documents: the newest page, the count)",
            "home": "the Home page's service call (status: server version, counts)",
            "chat": "the Chat page's service calls (the newest page of documents, their count, the load state)",
            "question": "a question's retrieval, embedding included (hybrid, with neighbouring chunks)",
        }
        for mode, times in (await asyncio.to_thread(_measure)).items():
            yield self._latency_row(mode, state.size, 1, times, sum(times), notes[mode], "times")

    # -- index sweep ------------------------------------------------------------------------------
    async def _asweep(self, state: _Size, spec: IndexSpec, queries: np.ndarray, exact: list[set[str]]) -> BenchRow:
        """Rebuild the embedding index as `spec`, then measure its build time, recall, latency and memory."""
        store = state.store
        assert store is not None
        client = store.vector_store.client

        def _rebuild() -> float:
            if state.index == (spec.index_type, spec.build):
                return 0.0  # the same index as the previous spec's: only the search parameter changes
            client.release_collection(state.name, timeout=_SLOW)
            client.drop_index(state.name, EMBEDDING_FIELD, timeout=_SLOW)
            params = client.prepare_index_params()
            params.add_index(
                field_name=EMBEDDING_FIELD,
                index_name=EMBEDDING_FIELD,
                index_type=spec.index_type,
                metric_type="COSINE",
                params=spec.build,
            )
            started = time.perf_counter()
            client.create_index(state.name, params, timeout=_SLOW)
            while True:
                info = client.describe_index(state.name, EMBEDDING_FIELD)
                if int(info.get("pending_index_rows", 0)) == 0 and int(info.get("indexed_rows", 0)) >= int(
                    info.get("total_rows", 0)
                ):
                    break
                time.sleep(0.5)
            built = time.perf_counter() - started
            client.load_collection(state.name, timeout=_SLOW)
            state.index = (spec.index_type, spec.build)
            return built

        with map_milvus_errors("rebuild the index"):
            built = await asyncio.to_thread(_rebuild)
        previous = store.vector_store.search_config, store.index_type
        store.vector_store.search_config = dict(spec.search)
        store.index_type = spec.index_type
        try:
            recall = await self._arecall(state, queries[: len(exact)], exact)
            vectors = [q.tolist() for q in queries]

            async def _one(i: int) -> None:
                await store.asearch(vectors[i], self.settings.top_k, workspace=DEFAULT_ID)

            latencies, wall = await _drive(1, len(vectors), _one)
        finally:
            store.vector_store.search_config, store.index_type = previous
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        milvus = rss_mb(self.milvus_pid) if self.milvus_pid else None
        return self._row(
            "index-sweep",
            state.size,
            built,
            f"{spec}: "
            + (f"built in {built:.1f} s" if built else "the index above")
            + f"; dense top {self.settings.top_k}",
            recall=recall,
            p50_ms=p50 * 1000,
            p95_ms=p95 * 1000,
            clients=1,
            rss_milvus_mb=milvus,
            details={"index": str(spec)},
        )


def _chat_page(service: Any) -> None:
    """What the Chat page asks the service for on every load (pages/chat.py, ui/chat.py's document filter)."""
    from rag.documents import DOCUMENTS_PAGE

    newest = service.documents(DEFAULT_ID, limit=DOCUMENTS_PAGE)
    if len(newest) >= DOCUMENTS_PAGE:
        service.document_count(DEFAULT_ID)
    service.collection_state()


def _clock(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


async def _drive(clients: int, count: int, call: Callable[[int], Awaitable[object]]) -> tuple[list[float], float]:
    """`count` calls spread over `clients` concurrent callers, each calling in turn; returns each call's latency
    and the wall time of all of them."""
    latencies: list[float] = []
    counter = iter(range(count))

    async def _client() -> None:
        for i in counter:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(_client() for _ in range(clients)))
    return latencies, time.perf_counter() - started


async def _bounded(limit: int, jobs: Sequence[Callable[[], Awaitable[object]]]) -> list[object]:
    gate = asyncio.Semaphore(limit)

    async def _one(job: Callable[[], Awaitable[object]]) -> object:
        async with gate:
            return await job()

    return await asyncio.gather(*(_one(job) for job in jobs))


def _save_results(path: Path, rows: Sequence[BenchRow], config: BenchConfig) -> None:
    """Write the rows so far (atomically: a run stopped while writing leaves the previous file)."""
    from rag.bench import library_versions, machine_info

    payload = {
        "rows": [r.model_dump() for r in rows],
        "machine": machine_info(),
        "versions": library_versions(),
        "config": config.model_dump(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def load_results(path: Path) -> list[dict[str, Any]]:
    """The rows a results file holds (the JSON report `bench --json` prints), [] when there is none."""
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")).get("rows", []))
