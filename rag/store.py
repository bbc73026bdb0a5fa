"""The Milvus side: where to connect, the LlamaIndex MilvusVectorStore on the async client, admin.

`DocumentStore.abuild` runs on the runtime's loop: the blocking parts (the sync client's create, index
and load calls inside MilvusVectorStore) run in a worker thread, and the AsyncMilvusClient, which
connects on its first await, binds to the runtime loop it will always be used from. Milvus and gRPC
exceptions are translated to RagErrors in `map_milvus_errors`, and transient failures are retried with
backoff.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential

from rag.coalesce import Coalescer
from rag.config import Settings
from rag.errors import (
    CollectionNotFoundError,
    CollectionNotLoadedError,
    ConfigError,
    EmbeddingMismatchError,
    RagError,
    StoreUnavailableError,
    TransientStoreError,
)
from rag.keyword import KeywordHit, KeywordIndex, KeywordRow, PgKeywordIndex, open_keyword_index
from rag.milvus_server import EmbeddedMilvus
from rag.runtime import background_executor

if TYPE_CHECKING:  # LlamaIndex takes 2-3 s to import: searches work without it (see Hit), writes import it
    from llama_index.core.schema import BaseNode

log = logging.getLogger(__name__)

TEXT_FIELD = "text"
SPARSE_FIELD = "sparse_embedding"
EMBEDDING_FIELD = "embedding"
DOC_ID_FIELD = "doc_id"
WORKSPACE_FIELD = "workspace"
MODEL_KEY = "embed_model"
# Milvus 2.3 leaves dynamic fields out of "*", so name the ones a search must return.
_OUTPUT_FIELDS = ("_node_content", "_node_type", "file_name", "page", "doc_id", "chunk")
_MAX_NQ = 16_384  # Milvus's limit on query vectors per search request
_MAX_REQUEST_BYTES = 32 * 1024 * 1024  # well under gRPC's message limit
_MIN_QUERIES_PER_REQUEST = 32  # fewer gain nothing from a request of their own
_DECODE_INLINE = 200  # search hits decoded on the loop; more (coalesced batches) are decoded in a thread
_ROWS_INLINE = 4  # nodes turned into rows on the loop (under a millisecond); more are packed in a worker thread
RRF_K = 10  # reciprocal rank fusion's constant: best of 10/20/60 on the labelled sets (BENCHMARKS.md)
# The embedding index of collections created from now on, chosen on the scale curve (BENCHMARKS.md, "Scale"):
# HNSW finds 97.5-99% of the exact 10 nearest chunks at ef 64-128 in 8 ms where the exact (FLAT) search of the
# same 100,000 chunks takes 58 ms, and its cost grows with the logarithm of a segment's size, not linearly.
DENSE_INDEX = {"index_type": "HNSW", "M": 16, "efConstruction": 200}
_FUSION_DEPTH = 10  # hybrid fuses this many times top_k candidates from each side (at least 50)
_VISIBILITY_ROUNDS = 5  # searches again at most this often when hits of uncommitted chunks left top_k short
_MAX_LIMIT = 16_384  # Milvus's largest limit (topk) of one search

Visibility = Callable[[Sequence[str]], Awaitable[Mapping[str, tuple[int, int]]]]
"""Given document ids, the (generation, chunk count) of those that are committed: the only chunks that answer."""


def chunk_id(doc_id: str, position: int, generation: int = 0) -> str:
    """A chunk's id: stable for the same bytes, so retried writes are upserts and neighbours can be named.

    A re-index writes the next generation beside the current one (its ids differ), so the old chunks keep
    answering until the new ones are all stored.
    """
    stem = doc_id[:40] if generation == 0 else f"{doc_id[:40]}.{generation}"
    return f"{stem}-{position:06d}"


def chunk_stem(doc_id: str, generation: int = 0) -> str:
    """What every chunk id of one document's generation starts with (before `-position`)."""
    return chunk_id(doc_id, 0, generation).rsplit("-", 1)[0]


def committed_chunk(node_id: str, doc_id: str, committed: Mapping[str, tuple[int, int]]) -> bool:
    """Whether a stored chunk may answer: its document is committed, the chunk is of the document's current
    generation and within its chunk count. Anything else (a half-written document, a re-index's pending
    generation, leftovers of a deleted or replaced document or of an older chunking) is invisible."""
    state = committed.get(doc_id)
    if state is None:
        return False
    generation, chunks = state
    stem, _, position = node_id.rpartition("-")
    return stem == chunk_stem(doc_id, generation) and position.isdigit() and int(position) < chunks


def neighbour_id(of_chunk: str, position: int) -> str:
    """The id of the chunk at `position` in the same document and generation as `of_chunk`."""
    return f"{of_chunk.rsplit('-', 1)[0]}-{position:06d}"


@dataclass(frozen=True)
class Chunk:
    """A stored chunk as a search returns it. It answers what the engine asks of LlamaIndex's TextNode
    (`node_id`, `metadata`, `get_content()`), so questions are answered without importing LlamaIndex."""

    node_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def get_content(self) -> str:
        """The chunk's text."""
        return self.text


@dataclass(frozen=True)
class Hit:
    """A search result shaped like LlamaIndex's NodeWithScore: a chunk (or node) and its score."""

    node: Any  # Chunk, or a LlamaIndex node from the server's own hybrid search
    score: float


@dataclass(frozen=True)
class Connection:
    """Where the store connects, and what kind of Milvus it is."""

    uri: str
    token: str
    kind: str  # embedded, external or lite


@dataclass(frozen=True)
class StoreInfo:
    """What the home page and `milvus status` show about the connected Milvus."""

    uri: str
    kind: str
    version: str
    collection: str
    chunks: int


@dataclass(frozen=True)
class Features:
    """What the connected server and collection can do; `reason` says why the server's BM25 is not used."""

    version: str
    keyword_search: bool
    reason: str | None = None
    keyword_backend: str | None = None  # "milvus" (the server's BM25 function) or "local" (rag.keyword)
    keyword_where: str = "a local SQLite FTS5 index beside Milvus"  # for "local": the index's own describe()

    @property
    def retrieval_modes(self) -> tuple[str, ...]:
        """The retrieval modes this collection supports."""
        return ("dense", "keyword", "hybrid") if self.keyword_search else ("dense",)

    @property
    def keyword_note(self) -> str:
        """Where keyword search runs, for people."""
        if self.keyword_backend == "milvus":
            return f"Keyword (BM25) search runs in Milvus {self.version}."
        if self.keyword_backend == "local":
            return f"Keyword (BM25) search runs in {self.keyword_where} ({self.reason})."
        return f"Keyword search is unavailable: {self.reason}"


def _version_tuple(version: str) -> tuple[int, int]:
    match = re.search(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def probe_features(connection: Connection, collection: str, overwrite: bool = False) -> Features:
    """Ask the server its version and whether the collection has (or may get) a BM25 field."""
    from pymilvus import MilvusClient

    with map_milvus_errors("report its version"):
        client = MilvusClient(uri=connection.uri, token=connection.token, timeout=30)
        try:
            version = str(client.get_server_version())
            exists = not overwrite and client.has_collection(collection)
            fields = client.describe_collection(collection)["fields"] if exists else []
        finally:
            client.close()
    return _features(connection, collection, version, exists, fields)


def _features(connection: Connection, collection: str, version: str, exists: bool, fields: list[dict]) -> Features:
    lite = connection.kind == "lite" or version.startswith("milvus_lite")
    server_ok = lite or _version_tuple(version) >= (2, 5)
    if not server_ok:
        return Features(version, False, f"Milvus {version} has no BM25 function")
    if exists and not any(f["name"] == SPARSE_FIELD for f in fields):
        return Features(version, False, f"collection '{collection}' was created without a BM25 field")
    return Features(version, True, keyword_backend="milvus")


@contextlib.contextmanager
def map_milvus_errors(action: str) -> Iterator[None]:
    """Translate pymilvus and gRPC failures into RagErrors at one boundary."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except RagError:
        raise
    except asyncio.CancelledError:
        raise
    except MilvusException as exc:
        if _refused_credentials(exc):  # pymilvus says "illegal connection params or server unavailable"
            raise StoreUnavailableError(
                f"Milvus {action} failed: the server refused the credentials ({exc})",
                user_message=f"Milvus could not {action}: the server refused the credentials. Set MILVUS_TOKEN "
                "to its user:password (or API key); for the embedded server leave MILVUS_URI and MILVUS_TOKEN unset.",
            ) from exc
        text = str(exc)
        transient = any(s in text.lower() for s in ("unavailable", "connect", "deadline", "not ready", "closed"))
        cls = TransientStoreError if transient else StoreUnavailableError
        if "not loaded" in text.lower():
            cls = CollectionNotLoadedError
        raise cls(f"Milvus {action} failed: {text}", user_message=f"Milvus could not {action}: {exc.message}") from exc
    except (ConnectionError, OSError) as exc:
        raise TransientStoreError(
            f"Milvus {action} failed: {exc}", user_message=f"Milvus is unreachable ({action})."
        ) from exc
    except Exception as exc:
        if type(exc).__module__.startswith("grpc"):
            raise TransientStoreError(
                f"Milvus {action} failed: {exc}", user_message=f"Milvus is unreachable ({action})."
            ) from exc
        raise


def _refused_credentials(exc: BaseException) -> bool:
    """Whether a gRPC UNAUTHENTICATED status lies under `exc` (pymilvus hides it behind a connection error)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # pymilvus's chains can loop back on themselves
        seen.add(id(cause))
        code = getattr(cause, "code", None)
        if (
            type(cause).__module__.startswith("grpc")
            and callable(code)
            and getattr(code(), "name", "") == "UNAUTHENTICATED"
        ):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def collection_schema(connection: Connection, name: str, dim: int, consistency_level: str) -> dict[str, Any]:
    """MilvusVectorStore arguments that fix a collection's fields and metric; the benchmarks use the same."""
    return {
        "uri": connection.uri,
        "token": connection.token,
        "collection_name": name,
        "dim": dim,
        "embedding_field": EMBEDDING_FIELD,
        "text_key": TEXT_FIELD,
        "doc_id_field": DOC_ID_FIELD,
        "similarity_metric": "COSINE",
        "consistency_level": consistency_level,
    }


def resolve_connection(settings: Settings, start: bool = True) -> Connection:
    """Pick the Milvus to use; with no MILVUS_URI, start (or reuse) the embedded server."""
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
    if settings.milvus_lite:
        return Connection(uri=settings.milvus_uri, token=token, kind="lite")
    if settings.milvus_uri:
        return Connection(uri=settings.milvus_uri, token=token, kind="external")
    server = EmbeddedMilvus(settings.data_dir, settings.milvus_start_timeout)
    if start:
        state = server.start()
    else:
        status = server.status()
        if not status.healthy or status.state is None:
            raise StoreUnavailableError(
                "embedded Milvus is not running",
                user_message="The embedded Milvus is not running: python -m rag milvus start",
            )
        state = status.state
    return Connection(uri=state.uri, token=server.token, kind="embedded")


class DocumentStore:
    """One collection of document chunks, used only from the runtime loop."""

    def __init__(
        self,
        vector_store: Any,
        connection: Connection,
        settings: Settings,
        features: Features | None = None,
        search_requests: int = 4,
        keyword: KeywordIndex | PgKeywordIndex | None = None,
    ) -> None:
        self.vector_store = vector_store
        self.connection = connection
        self.settings = settings
        self.features = features or Features(version="?", keyword_search=False, reason="not probed")
        self.keyword = keyword
        # Set by the engine from the catalogue: searches then return committed chunks only. None (scratch
        # benchmark collections, which have no catalogue) returns every chunk.
        self.visibility: Visibility | None = None
        self._recent: dict[str, tuple[int, int] | None] = {}  # the last lookups: doc id -> committed state or None
        # A fresh client reads under Session consistency as if Eventually (it has written nothing yet), and a
        # server that restarted may still be replaying recent writes: until one Strong read has returned, a
        # search could miss chunks that are indexed. `_synced` is cleared by every transient failure.
        self._synced = False
        self.index_type = ""  # the embedding field's index, read when the collection is opened
        dim = int(getattr(vector_store, "dim", None) or 0) or 1024
        # Dense searches started together leave as a few multi-vector requests (see rag.coalesce).
        self.searches: Coalescer[tuple[int, str], list[float], list[Hit]] = Coalescer(
            self._adense_batch,
            max_batch=max(1, min(_MAX_NQ, _MAX_REQUEST_BYTES // (4 * dim))),
            max_requests=search_requests,
            min_batch=_MIN_QUERIES_PER_REQUEST,
        )

    @classmethod
    async def abuild(
        cls,
        settings: Settings,
        connection: Connection,
        dim: int | None,
        model_id: str | None,
        collection: str | None = None,
        overwrite: bool = False,
        consistency_level: str | None = None,
        local_keywords: bool = True,
    ) -> DocumentStore:
        """Open (or create) the collection; refuse one built with another embedding model.

        Where the server (or an old collection) has no BM25 function, keyword search is served by a local
        index beside Milvus (`rag.keyword`), unless `local_keywords` is False (scratch benchmark collections).
        """
        from llama_index.vector_stores.milvus import MilvusVectorStore

        name = collection or settings.collection
        features = await asyncio.to_thread(probe_features, connection, name, overwrite)
        keyword = None
        if not features.keyword_search and local_keywords:
            keyword = await asyncio.to_thread(open_keyword_index, settings, name)
            if overwrite:
                await asyncio.to_thread(keyword.clear)
            features = Features(
                features.version, True, features.reason, keyword_backend="local", keyword_where=keyword.describe()
            )
        sparse: dict[str, Any] = {}
        if features.keyword_backend == "milvus":
            from llama_index.vector_stores.milvus.utils import BM25BuiltInFunction

            sparse = {
                "enable_sparse": True,
                "sparse_embedding_field": SPARSE_FIELD,
                "sparse_embedding_function": BM25BuiltInFunction(
                    input_field_names=TEXT_FIELD, output_field_names=SPARSE_FIELD
                ),
                "hybrid_ranker": "RRFRanker",
                "hybrid_ranker_params": {"k": RRF_K},
            }
        from pymilvus import DataType

        with map_milvus_errors("open the collection"):
            store = await asyncio.to_thread(
                MilvusVectorStore,
                **collection_schema(connection, name, dim, consistency_level or settings.consistency_level),
                scalar_field_names=[WORKSPACE_FIELD],  # declared in collections created from now on
                scalar_field_types=[DataType.VARCHAR],
                overwrite=overwrite,
                batch_size=settings.insert_batch_size,
                output_fields=list(_OUTPUT_FIELDS),
                index_config=dict(DENSE_INDEX),  # for a new collection (an existing one keeps its index)
                use_async_client=True,
                timeout=30,
                **sparse,
            )
        self = cls(store, connection, settings, features, keyword=keyword)
        await self._check_model(dim, model_id)
        await self._amigrate_workspaces()
        return self

    async def _amigrate_workspaces(self) -> int:
        """Chunks written before workspaces existed join the `default` workspace (once; nothing is lost).

        Collections created since declare the workspace field; older ones keep it among their dynamic fields,
        which Milvus filters the same way once every row has it. Returns the number of chunks migrated.
        """

        def _legacy() -> list[dict[str, Any]]:
            client = self.vector_store.client
            with map_milvus_errors("read the collection's fields"):
                fields = {f["name"] for f in client.describe_collection(self.name)["fields"]}
            if WORKSPACE_FIELD in fields:
                return []
            rows: list[dict[str, Any]] = []
            with map_milvus_errors("read chunks from before workspaces"):
                iterator = client.query_iterator(
                    self.name,
                    filter=f'{DOC_ID_FIELD} != ""',
                    output_fields=["*"],
                    batch_size=500,
                    consistency_level="Strong",
                )
                while batch := iterator.next():
                    rows.extend(
                        {
                            **{k: v for k, v in r.items() if k != SPARSE_FIELD},
                            WORKSPACE_FIELD: "default",
                        }  # BM25 is derived
                        for r in batch
                        if WORKSPACE_FIELD not in r
                    )
                iterator.close()
            return rows

        rows = await asyncio.to_thread(_legacy)
        for start in range(0, len(rows), 500):
            async for attempt in self._retrying():
                with attempt, map_milvus_errors("move chunks into the default workspace"):
                    await self.aclient.upsert(self.name, rows[start : start + 500])
        if rows:
            log.info("moved %d chunks of collection %s into the default workspace", len(rows), self.name)
        return len(rows)

    @classmethod
    async def aopen_for_search(
        cls, settings: Settings, connection: Connection, dim: int | None = None, model_id: str | None = None
    ) -> DocumentStore:
        """Open the collection to search it only (`ask`): one async client, no LlamaIndex, no index or load calls.

        A collection that does not exist yet, whose keyword search runs in the server (LlamaIndex's hybrid
        query) or that predates workspaces (a migration writes) is opened by `abuild` instead. Without a model
        (`docs check`, which reads and deletes chunks but never embeds) the model is not checked and a missing
        collection is not created.
        """
        from pymilvus import AsyncMilvusClient

        name = settings.collection
        aclient = AsyncMilvusClient(uri=connection.uri, token=connection.token, timeout=30)
        try:
            with map_milvus_errors("open the collection"):
                version = str(await aclient.get_server_version())
                exists = await aclient.has_collection(name)
                fields = (await aclient.describe_collection(name))["fields"] if exists else []
            features = _features(connection, name, version, exists, fields)
        except BaseException:
            await aclient.close()
            raise
        if not exists and model_id is None:
            await aclient.close()
            raise CollectionNotFoundError(
                f"collection {name!r} does not exist",
                user_message=f"The collection '{name}' does not exist in Milvus (RAG_COLLECTION); nothing to check.",
            )
        if not exists or features.keyword_search or WORKSPACE_FIELD not in {f["name"] for f in fields}:
            # a new collection, the server's own BM25, or chunks from before workspaces (migrated by abuild)
            await aclient.close()
            return await cls.abuild(settings, connection, dim, model_id)
        keyword = await asyncio.to_thread(open_keyword_index, settings, name)
        features = Features(
            features.version, True, features.reason, keyword_backend="local", keyword_where=keyword.describe()
        )
        self = cls(_SearchCollection(aclient, connection, name, dim), connection, settings, features, keyword=keyword)
        if model_id is not None:
            await self._check_model(dim, model_id)
        return self

    def _retrying(self) -> AsyncRetrying:
        """Retry transient failures with backoff; a collection found unloaded is loaded before the retry."""

        async def _reload(state: RetryCallState) -> None:
            self._synced = False
            if isinstance(state.outcome and state.outcome.exception(), CollectionNotLoadedError):
                with contextlib.suppress(Exception):
                    await self.aclient.load_collection(self.name)

        return AsyncRetrying(
            retry=retry_if_exception_type(TransientStoreError),
            stop=stop_after_attempt(6),
            wait=wait_exponential(multiplier=0.5, max=8),
            before_sleep=_reload,
            reraise=True,
        )

    @property
    def name(self) -> str:
        """The collection name."""
        return self.vector_store.collection_name

    @property
    def aclient(self) -> Any:
        """The AsyncMilvusClient (bound to the runtime loop)."""
        return self.vector_store.aclient

    async def _check_model(self, dim: int | None, model_id: str | None) -> None:
        if model_id is None:  # a store that never embeds (`docs check`)
            return
        async for attempt in self._retrying():  # a collection found unloaded is loaded, then asked again
            with attempt, map_milvus_errors("describe the collection"):
                desc = await self.aclient.describe_collection(self.name)
                indexes = await self.aclient.list_indexes(self.name, field_name=EMBEDDING_FIELD)
                index = await self.aclient.describe_index(self.name, indexes[0]) if indexes else {}
                rows = await self.aclient.query(
                    self.name,
                    filter=f'{DOC_ID_FIELD} != ""',
                    output_fields=[MODEL_KEY],
                    limit=1,
                    consistency_level="Strong",  # also makes every chunk written before this open visible
                )
        stored_dim = next(
            (int(f.get("params", {}).get("dim", 0)) for f in desc["fields"] if f["name"] == EMBEDDING_FIELD), 0
        )
        self._synced = True
        self.index_type = str(index.get("index_type") or "")
        if self.index_type == "HNSW":  # LlamaIndex's own searches (the server's hybrid) search as deep as ours
            self.vector_store.search_config = self.search_params(100)
        stored_model = rows[0].get(MODEL_KEY) if rows else None
        if (stored_dim and stored_dim != dim) or (stored_model and stored_model != model_id):
            raise EmbeddingMismatchError(
                f"collection {self.name!r}: stored {stored_model} ({stored_dim}); configured {model_id} ({dim})",
                user_message=(
                    f"The collection '{self.name}' was built with the embedding model "
                    f"{stored_model or 'unknown'} ({stored_dim} dimensions), but the configured model is {model_id} "
                    f"({dim} dimensions). Vectors of different models cannot be compared: choose another collection "
                    "with RAG_COLLECTION, or set EMBED_MODEL back to the collection's model."
                ),
            )

    async def aadd(self, nodes: Sequence[BaseNode]) -> list[str]:
        """Insert embedded nodes (upserting by id, so a retried batch never duplicates), and their keywords."""
        if len(nodes) <= _ROWS_INLINE:  # a thread hop costs more than packing a few rows (a busy machine: ms)
            rows = rows_for(self.vector_store, nodes)
        else:  # packing 1000s of vectors: off the loop
            rows = await asyncio.to_thread(rows_for, self.vector_store, nodes)
        async for attempt in self._retrying():
            with attempt, map_milvus_errors("store chunks"):
                await self.aclient.upsert(self.name, rows)
        if self.keyword is not None:
            await asyncio.to_thread(self.keyword.add, [_keyword_row(n) for n in nodes])
        return [n.node_id for n in nodes]

    async def adelete_doc(self, doc_id: str) -> None:
        """Remove every chunk of a document, in Milvus and in the keyword index."""
        async for attempt in self._retrying():
            with attempt, map_milvus_errors("delete chunks"):
                await self.aclient.delete(self.name, filter=f'{DOC_ID_FIELD} == "{_quote(doc_id)}"')
        if self.keyword is not None:
            await asyncio.to_thread(self.keyword.delete_doc, doc_id)

    async def adelete_workspace(self, workspace: str) -> None:
        """Remove every chunk of a workspace, in Milvus and in the keyword index."""
        async for attempt in self._retrying():
            with attempt, map_milvus_errors("delete chunks"):
                await self.aclient.delete(self.name, filter=Scope(workspace).expression())
        if self.keyword is not None:
            await asyncio.to_thread(self.keyword.delete_workspace, workspace)

    async def adelete_chunks(self, ids: Sequence[str]) -> None:
        """Remove chunks by id, in Milvus and in the keyword index (a generation replaced by a re-index)."""
        for start in range(0, len(ids), 1000):
            batch = list(ids[start : start + 1000])
            async for attempt in self._retrying():
                with attempt, map_milvus_errors("delete chunks"):
                    await self.aclient.delete(self.name, ids=batch)
        if self.keyword is not None and ids:
            await asyncio.to_thread(self.keyword.delete_chunks, list(ids))

    async def achunk_ids(self, doc_id: str | None = None) -> set[str]:
        """Ids of the chunks Milvus holds (of one document, or all), read with Strong consistency."""
        flt = f'{DOC_ID_FIELD} == "{_quote(doc_id)}"' if doc_id else f'{DOC_ID_FIELD} != ""'
        return {str(row["id"]) for row in await self._aread_all(flt, ["id"], "list chunks")}

    async def aiter_chunk_ids(self, batch: int = 4096) -> AsyncIterator[list[tuple[str, str]]]:
        """Every (chunk id, document id) of the collection, a batch at a time (the reconcile pass: a million ids
        are never held at once). The sync client's query iterator pages in a low-priority thread."""
        loop = asyncio.get_running_loop()
        with map_milvus_errors("list chunks"):
            iterator = await loop.run_in_executor(
                self._scanner,
                lambda: self.vector_store.client.query_iterator(
                    self.name,
                    filter=f'{DOC_ID_FIELD} != ""',
                    output_fields=[DOC_ID_FIELD],
                    batch_size=batch,
                    consistency_level="Strong",
                ),
            )
        try:
            while True:
                with map_milvus_errors("list chunks"):
                    rows = await loop.run_in_executor(self._scanner, iterator.next)
                if not rows:
                    return
                yield [(str(r["id"]), str(r.get(DOC_ID_FIELD) or "")) for r in rows]
        finally:
            await loop.run_in_executor(self._scanner, iterator.close)

    @functools.cached_property
    def _scanner(self) -> concurrent.futures.ThreadPoolExecutor:
        """One low-priority thread for long scans of the collection, so they yield to questions and uploads."""
        return background_executor(self.settings.ingest_nice, 1, "rag-scan")

    async def _aread_all(self, flt: str, fields: list[str], action: str) -> list[dict[str, Any]]:
        """Every row matching a filter, paged by the sync client's query iterator in a worker thread
        (creating the iterator is a blocking call too, so it never runs on the loop)."""

        def _read() -> list[dict[str, Any]]:
            with map_milvus_errors(action):
                iterator = self.vector_store.client.query_iterator(
                    self.name, filter=flt, output_fields=fields, batch_size=1000, consistency_level="Strong"
                )
                rows: list[dict[str, Any]] = []
                while batch := iterator.next():
                    rows.extend(batch)
                iterator.close()
            return rows

        return await asyncio.to_thread(_read)

    async def areconcile_keywords(self, indexed: dict[str, int]) -> list[str]:
        """Bring the local keyword index in step with Milvus after a crash or an upgrade.

        `indexed` maps each indexed document to its chunk count (the catalog). Documents the index lacks
        (collections built before the index existed, or a crash between the two writes) are read back from
        Milvus; documents it holds that are not indexed are removed. Returns the documents that changed.
        """
        if self.keyword is None:
            return []
        changed = await asyncio.to_thread(self.keyword.delete_docs_except, indexed)
        held = await asyncio.to_thread(self.keyword.counts)
        for doc_id, chunks in indexed.items():
            if held.get(doc_id) != chunks:
                await asyncio.to_thread(self.keyword.delete_doc, doc_id)
                await asyncio.to_thread(self.keyword.add, await self.aread_keyword_rows(doc_id))
                changed.append(doc_id)
        return changed

    async def aread_keyword_rows(self, doc_id: str) -> list[KeywordRow]:
        """A document's chunks as stored in Milvus, for the keyword index."""
        fields = ["id", TEXT_FIELD, "file_name", "page", "chunk", WORKSPACE_FIELD]
        rows = await self._aread_all(f'{DOC_ID_FIELD} == "{_quote(doc_id)}"', fields, "read chunks")
        return [
            KeywordRow(
                chunk_id=str(r["id"]),
                doc_id=doc_id,
                file_name=str(r.get("file_name") or "?"),
                page=_int_or_none(r.get("page")),
                chunk=_int_or_none(r.get("chunk")),
                text=str(r.get(TEXT_FIELD) or ""),
                workspace=str(r.get(WORKSPACE_FIELD) or "default"),
            )
            for r in rows
        ]

    async def acount(self, doc_id: str | None = None) -> int:
        """Chunks stored (for one document, or all), read with Strong consistency."""
        return await self.acount_filtered(Scope(doc_ids=(doc_id,) if doc_id else None))

    async def asearch(
        self,
        embedding: list[float] | None,
        top_k: int,
        doc_ids: Sequence[str] | None = None,
        retrieval: str = "dense",
        query_text: str | None = None,
        workspace: str | None = None,
    ) -> list[Hit]:
        """Dense, keyword (BM25) or hybrid (both, fused by RRF) search within a workspace (every one when None),
        optionally limited to some of its documents."""
        if retrieval != "dense" and not self.features.keyword_search:
            raise ConfigError(f"{retrieval} retrieval is unavailable: {self.features.reason}")
        scope = Scope(workspace, tuple(doc_ids) if doc_ids else None)
        if retrieval == "keyword":
            (hits,) = await self._avisible([functools.partial(self._akeyword, query_text or "")], top_k, scope)
            return hits
        if retrieval == "dense":
            (hits,) = await self._avisible([functools.partial(self._adense, embedding)], top_k, scope)
            return hits
        if self.keyword is not None:
            sides = [functools.partial(self._adense, embedding), functools.partial(self._akeyword, query_text or "")]
            dense, keyword = await self._avisible(sides, max(top_k * _FUSION_DEPTH, 50), scope)
            return fuse_rrf([dense, keyword], top_k)
        (hits,) = await self._avisible([functools.partial(self._aserver_hybrid, embedding, query_text)], top_k, scope)
        return hits

    async def _aserver_hybrid(
        self, embedding: list[float] | None, text: str | None, top_k: int, scope: Scope
    ) -> list[Hit]:
        """The server's own hybrid search (BM25 function and dense, fused by RRF in Milvus), through LlamaIndex."""
        from llama_index.core.vector_stores import VectorStoreQuery
        from llama_index.core.vector_stores.types import VectorStoreQueryMode

        query = VectorStoreQuery(
            query_embedding=embedding, query_str=text, similarity_top_k=top_k, mode=VectorStoreQueryMode.HYBRID
        )
        async for attempt in self._retrying():
            with attempt, map_milvus_errors("search"):
                result = await self.vector_store.aquery(query, string_expr=scope.expression())
        return [
            Hit(node=node, score=float(score)) for node, score in zip(result.nodes or [], result.similarities or [])
        ]

    async def _avisible(
        self, searches: Sequence[Callable[[int, Scope], Awaitable[list[Hit]]]], top_k: int, scope: Scope
    ) -> list[list[Hit]]:
        """The best `top_k` hits of committed chunks only (see `committed_chunk`) of each search (run together),
        checked in the catalogue with one lookup per round.

        Hits of uncommitted documents are left out by the next search's filter; hits of a committed document's
        other generation (a re-index writing the next one beside it) are made up for by a deeper search. Nothing
        is being written in the common case: one search per side and one catalogue lookup.
        """
        if self.visibility is None:
            return list(await asyncio.gather(*(search(top_k, scope) for search in searches)))
        results: list[list[Hit] | None] = [None] * len(searches)
        limits = [top_k] * len(searches)
        for round_ in range(_VISIBILITY_ROUNDS):
            todo = [i for i, r in enumerate(results) if r is None]
            found = await asyncio.gather(*(searches[i](limits[i], scope) for i in todo))
            committed = await self._acommitted({_hit_doc(h) for hits in found for h in hits})
            strangers: set[str] = set()
            for i, hits in zip(todo, found):
                shown = [h for h in hits if committed_chunk(h.node.node_id, _hit_doc(h), committed)]
                if len(shown) >= top_k or len(hits) < limits[i]:
                    results[i] = shown[:top_k]
                    continue
                results[i] = shown if round_ == _VISIBILITY_ROUNDS - 1 else None  # the last round: what there is
                strangers |= {_hit_doc(h) for h in hits} - set(committed)
                stale = sum(1 for h in hits if _hit_doc(h) in committed) - len(shown)
                if stale:
                    limits[i] = min(_MAX_LIMIT, 2 * limits[i] + stale)
            if all(r is not None for r in results):
                break
            scope = scope.excluding(strangers)
        return [(r or [])[:top_k] for r in results]

    async def _acommitted(self, doc_ids: set[str]) -> Mapping[str, tuple[int, int]]:
        """The catalogue's committed state of these documents, remembered for the neighbour lookup that follows
        a search (`aneighbours`), so a question costs one lookup."""
        assert self.visibility is not None
        committed = await self.visibility(sorted(doc_ids))
        if len(self._recent) > 10_000:
            self._recent.clear()
        for doc_id in doc_ids:
            self._recent[doc_id] = committed.get(doc_id)
        return committed

    async def aload_state(self) -> str:
        """`loaded`, `loading` or `not loaded`: what a restart can leave the collection in for a while."""
        with map_milvus_errors("report the collection's state"):
            state = (await self.aclient.get_load_state(self.name)).get("state")
        name = getattr(state, "name", str(state))
        return {"Loaded": "loaded", "Loading": "loading", "NotLoad": "not loaded"}.get(name, name.lower())

    async def aneighbours(self, hits: Sequence[Hit], width: int) -> dict[str, tuple[str, int | None]]:
        """Text and page of the chunks up to `width` positions before and after each hit, by chunk id."""
        wanted: dict[str, str] = {}  # chunk id -> its document
        for hit in hits:
            position = _int_or_none(hit.node.metadata.get("chunk"))
            if position is not None:
                wanted.update(
                    (neighbour_id(hit.node.node_id, position + d), _hit_doc(hit))
                    for d in range(-width, width + 1)
                    if d and position + d >= 0
                )
        if self.visibility is not None and wanted:  # past a document's end lie only leftovers of an older chunking
            docs = set(wanted.values())
            known = {d: self._recent[d] for d in docs if d in self._recent}  # read by the search just made
            committed = {d: state for d, state in known.items() if state is not None}
            if len(known) < len(docs):
                committed.update(await self._acommitted(docs - set(known)))
            wanted = {i: doc for i, doc in wanted.items() if committed_chunk(i, doc, committed)}
        return await self.atexts(sorted(wanted))

    async def atexts(self, chunk_ids: Sequence[str]) -> dict[str, tuple[str, int | None]]:
        """Text and page of these chunks (those stored), by chunk id. Unfiltered: callers name chunks of a
        document's current generation (`rag.sources`), or of hits already checked (`aneighbours`)."""
        if not chunk_ids:
            return {}
        if self.keyword is not None:
            return await asyncio.to_thread(self.keyword.texts, list(chunk_ids))
        ids = ", ".join(f'"{_quote(i)}"' for i in chunk_ids)
        async for attempt in self._retrying():
            with attempt, map_milvus_errors("read chunks"):
                rows = await self.aclient.query(self.name, filter=f"id in [{ids}]", output_fields=[TEXT_FIELD, "page"])
        return {str(r["id"]): (str(r.get(TEXT_FIELD) or ""), _int_or_none(r.get("page"))) for r in rows}

    async def _adense(self, embedding: list[float] | None, top_k: int, scope: Scope) -> list[Hit]:
        """A dense search that never answers "nothing" for chunks that are stored but not yet visible."""
        if embedding is None:
            raise ValueError("a dense search needs an embedding")
        if not self._synced:
            await self.async_visible()
        hits = await self.searches.submit((top_k, scope.expression()), embedding)
        if not hits and await self.acount_filtered(scope):
            # Stored chunks must come back from a nearest-neighbour search; an empty answer means the server
            # had not caught up (restart, busy machine). The Strong count above waited until it had.
            hits = await self.searches.submit((top_k, scope.expression()), embedding)
        return hits

    async def async_visible(self) -> None:
        """Wait until every chunk written before now is visible to searches (one Strong read)."""
        await self.acount_filtered(Scope())
        self._synced = True

    async def acount_filtered(self, scope: Scope) -> int:
        """Chunks stored (of a workspace, of some documents, or all), read with Strong consistency."""
        flt = scope.expression() or f'{DOC_ID_FIELD} != ""'
        async for attempt in self._retrying():
            with attempt, map_milvus_errors("count chunks"):
                rows = await self.aclient.query(
                    self.name, filter=flt, output_fields=["count(*)"], consistency_level="Strong"
                )
        return int(rows[0]["count(*)"]) if rows else 0

    async def _adense_batch(self, key: tuple[int, str], vectors: list[list[float]]) -> list[list[Hit]]:
        """One search request for many query vectors; each query's hits become nodes as `aquery` makes them."""
        top_k, flt = key
        async for attempt in self._retrying():
            with attempt, map_milvus_errors("search"):
                res = await self.aclient.search(
                    self.name,
                    data=vectors,
                    anns_field=EMBEDDING_FIELD,
                    limit=top_k,
                    filter=flt,
                    output_fields=[*_OUTPUT_FIELDS, TEXT_FIELD],
                    search_params=self.search_params(top_k),
                )
        if len(vectors) * top_k <= _DECODE_INLINE:
            return [self._hits_to_nodes(hits) for hits in res]
        return await asyncio.to_thread(lambda: [self._hits_to_nodes(hits) for hits in res])  # big: off the loop

    def search_params(self, limit: int) -> dict[str, Any]:
        """A dense search's parameters: HNSW's breadth `ef` (RAG_SEARCH_EF, never below the hits asked for);
        other indexes search with their own defaults, or what `vector_store.search_config` says."""
        params = dict(self.vector_store.search_config or {})  # flat, as LlamaIndex keeps it: {"ef": 128}
        if self.index_type == "HNSW":
            params["ef"] = max(int(params.get("ef", self.settings.search_ef)), limit)
        return params

    def _hits_to_nodes(self, hits: Any) -> list[Hit]:
        return [Hit(node=_chunk(hit), score=float(hit["distance"])) for hit in hits]

    async def _akeyword(self, text: str, top_k: int, scope: Scope) -> list[Hit]:
        """BM25 search; LlamaIndex's sparse path sends a drop ratio that Milvus Lite refuses, so search directly."""
        if self.keyword is not None:
            hits = await asyncio.to_thread(
                self.keyword.search, text, top_k, scope.doc_ids, scope.workspace, scope.exclude
            )
            return [_keyword_node(hit) for hit in hits]
        flt = scope.expression()
        async for attempt in self._retrying():
            with attempt, map_milvus_errors("search"):
                res = await self.aclient.search(
                    self.name,
                    data=[text],
                    anns_field=SPARSE_FIELD,
                    limit=top_k,
                    filter=flt,
                    output_fields=list(_OUTPUT_FIELDS) + [TEXT_FIELD],
                    search_params={"metric_type": "BM25"},
                )
        return [Hit(node=n.node, score=abs(n.score or 0.0)) for n in self._hits_to_nodes(res[0])]

    async def aversion(self) -> str:
        """The server's version string."""
        with map_milvus_errors("report its version"):
            return str(await self.aclient.get_server_version())

    async def adrop(self) -> None:
        """Drop the whole collection (scratch collections, tests)."""
        with map_milvus_errors("drop the collection"):
            await self.aclient.drop_collection(self.name)
        if self.keyword is not None:
            await asyncio.to_thread(self.keyword.clear)

    async def aclose(self) -> None:
        """Close both clients."""
        with contextlib.suppress(Exception):
            await self.aclient.close()
        with contextlib.suppress(Exception):
            if isinstance(self.vector_store, _SearchCollection):
                self.vector_store.close()  # without opening the sync client it may never have used
            else:
                self.vector_store.client.close()
        if self.keyword is not None:
            self.keyword.close()
        if "_scanner" in self.__dict__:
            self._scanner.shutdown(wait=False)


class _SearchCollection:
    """The parts of MilvusVectorStore a search uses (`DocumentStore.aopen_for_search`), without LlamaIndex."""

    search_config: dict[str, Any] = {}  # noqa: RUF012 - MilvusVectorStore's default: the index's own parameters

    def __init__(self, aclient: Any, connection: Connection, name: str, dim: int | None) -> None:
        self.aclient, self.connection, self.collection_name, self.dim = aclient, connection, name, dim
        self._client: Any = None

    @property
    def client(self) -> Any:
        """A sync client, connected on first use (reading every row of a document pages through it)."""
        if self._client is None:
            from pymilvus import MilvusClient

            self._client = MilvusClient(uri=self.connection.uri, token=self.connection.token, timeout=30)
        return self._client

    def close(self) -> None:
        """Close the sync client if one was opened (the async one is closed by the store)."""
        if self._client is not None:
            self._client.close()


def fuse_rrf(rankings: Sequence[Sequence[Any]], top_k: int, k: int = RRF_K) -> list[Hit]:
    """Reciprocal rank fusion: each list gives a node 1/(k + rank); the fused score is the sum."""
    scores: dict[str, float] = {}
    nodes: dict[str, Any] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            key = hit.node.node_id
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
            nodes.setdefault(key, hit)
    best = sorted(scores, key=lambda key: scores[key], reverse=True)[:top_k]
    return [Hit(node=nodes[key].node, score=scores[key]) for key in best]


def _keyword_row(node: BaseNode) -> KeywordRow:
    meta = node.metadata
    return KeywordRow(
        chunk_id=node.node_id,
        doc_id=str(meta.get(DOC_ID_FIELD) or node.ref_doc_id or ""),
        file_name=str(meta.get("file_name") or "?"),
        page=_int_or_none(meta.get("page")),
        chunk=_int_or_none(meta.get("chunk")),
        text=node.get_content(),
        workspace=str(meta.get(WORKSPACE_FIELD) or "default"),
    )


def _chunk(hit: Any) -> Chunk:
    """A search hit's chunk as `MilvusVectorStore` would rebuild its node: id and metadata from the stored node
    JSON (`_node_content`), text from the text field."""
    entity = hit["entity"]
    stored = json.loads(entity["_node_content"]) if entity.get("_node_content") else {}
    metadata = stored.get("metadata") if isinstance(stored.get("metadata"), dict) else None
    if metadata is None:
        metadata = {key: entity.get(key) for key in _OUTPUT_FIELDS}
    return Chunk(node_id=str(stored.get("id_") or hit["id"]), text=str(entity.get(TEXT_FIELD) or ""), metadata=metadata)


def _keyword_node(hit: KeywordHit) -> Hit:
    meta: dict[str, Any] = {"file_name": hit.file_name, DOC_ID_FIELD: hit.doc_id}
    if hit.page is not None:
        meta["page"] = hit.page
    if hit.chunk is not None:
        meta["chunk"] = hit.chunk
    return Hit(node=Chunk(node_id=hit.chunk_id, text=hit.text, metadata=meta), score=hit.score)


def _hit_doc(hit: Hit) -> str:
    """The document a hit's chunk belongs to."""
    return str(hit.node.metadata.get(DOC_ID_FIELD) or getattr(hit.node, "ref_doc_id", None) or "")


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Scope:
    """Which chunks a search or count may see: one workspace's (None: every one), some documents' of it."""

    workspace: str | None = None
    doc_ids: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()  # documents left out (found uncommitted by an earlier search)

    def expression(self) -> str:
        """The Milvus filter expression ("" keeps all)."""
        parts = []
        if self.workspace is not None:
            parts.append(f'{WORKSPACE_FIELD} == "{_quote(self.workspace)}"')
        if self.doc_ids:
            parts.append(f"{DOC_ID_FIELD} in [{', '.join(chr(34) + _quote(d) + chr(34) for d in self.doc_ids)}]")
        if self.exclude:
            parts.append(f"{DOC_ID_FIELD} not in [{', '.join(chr(34) + _quote(d) + chr(34) for d in self.exclude)}]")
        return " and ".join(parts)

    def excluding(self, doc_ids: set[str]) -> Scope:
        """This scope without those documents."""
        if not doc_ids:
            return self
        return Scope(self.workspace, self.doc_ids, tuple(sorted(set(self.exclude) | doc_ids)))


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def rows_for(vector_store: Any, nodes: Sequence[BaseNode]) -> list[dict[str, Any]]:
    """The rows MilvusVectorStore.add would write (so inserts can be upserts, and batches built directly).

    The embedding is detached while the node is serialized: LlamaIndex would dump it to JSON only to drop it,
    which costs more than the insert itself for large batches.
    """
    from llama_index.core.vector_stores.utils import node_to_metadata_dict

    rows = []
    for node in nodes:
        embedding, node.embedding = node.embedding, None
        try:
            entry = node_to_metadata_dict(node, remove_text=True, text_field=vector_store.text_key)
        finally:
            node.embedding = embedding
        entry[vector_store.text_key] = node.get_content()
        entry["id"] = node.node_id
        entry[vector_store.embedding_field] = embedding
        rows.append(entry)
    return rows
