"""The Milvus side: where to connect, the LlamaIndex MilvusVectorStore on the async client, admin.

`DocumentStore.abuild` runs on the runtime's loop, so the AsyncMilvusClient inside the store is born
on the loop it will always be used from. Milvus and gRPC exceptions are translated to RagErrors in
`map_milvus_errors`, and transient failures are retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.schema import BaseNode, NodeWithScore
from llama_index.core.vector_stores import (
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)
from llama_index.core.vector_stores.types import VectorStoreQueryMode
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential

from rag.coalesce import Coalescer
from rag.config import Settings
from rag.errors import ConfigError, EmbeddingMismatchError, RagError, StoreUnavailableError
from rag.milvus_server import EmbeddedMilvus

log = logging.getLogger(__name__)

TEXT_FIELD = "text"
SPARSE_FIELD = "sparse_embedding"
EMBEDDING_FIELD = "embedding"
DOC_ID_FIELD = "doc_id"
MODEL_KEY = "embed_model"
# Milvus 2.3 leaves dynamic fields out of "*", so name the ones a search must return.
_OUTPUT_FIELDS = ("_node_content", "_node_type", "file_name", "page", "doc_id", "chunk")
_MAX_NQ = 16_384  # Milvus's limit on query vectors per search request
_MAX_REQUEST_BYTES = 32 * 1024 * 1024  # well under gRPC's message limit
_MIN_QUERIES_PER_REQUEST = 32  # fewer gain nothing from a request of their own


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
    """What the connected server and collection can do; the UI shows `reason` when a feature is missing."""

    version: str
    keyword_search: bool
    reason: str | None = None

    @property
    def retrieval_modes(self) -> tuple[str, ...]:
        """The retrieval modes this collection supports."""
        return ("dense", "keyword", "hybrid") if self.keyword_search else ("dense",)


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
    lite = connection.kind == "lite" or version.startswith("milvus_lite")
    server_ok = lite or _version_tuple(version) >= (2, 5)
    if not server_ok:
        return Features(version, False, f"Milvus {version} has no BM25 function; keyword and hybrid search need 2.5+")
    if exists and not any(f["name"] == SPARSE_FIELD for f in fields):
        return Features(version, False, f"collection '{collection}' was created without a BM25 field; re-create it")
    return Features(version, True)


class TransientStoreError(StoreUnavailableError):
    """A failure worth retrying (server restarting, connection reset)."""


class CollectionNotLoadedError(TransientStoreError):
    """The collection is not loaded (e.g. Milvus restarted); load it and retry."""


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
    ) -> None:
        self.vector_store = vector_store
        self.connection = connection
        self.settings = settings
        self.features = features or Features(version="?", keyword_search=False, reason="not probed")
        dim = int(getattr(vector_store, "dim", None) or 0) or 1024
        # Dense searches started together leave as a few multi-vector requests (see rag.coalesce).
        self.searches: Coalescer[tuple[int, str], list[float], list[NodeWithScore]] = Coalescer(
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
        dim: int,
        model_id: str,
        collection: str | None = None,
        overwrite: bool = False,
        consistency_level: str | None = None,
    ) -> DocumentStore:
        """Open (or create) the collection; refuse one built with another embedding model."""
        from llama_index.vector_stores.milvus import MilvusVectorStore

        name = collection or settings.collection
        features = await asyncio.to_thread(probe_features, connection, name, overwrite)
        sparse: dict[str, Any] = {}
        if features.keyword_search:
            from llama_index.vector_stores.milvus.utils import BM25BuiltInFunction

            sparse = {
                "enable_sparse": True,
                "sparse_embedding_field": SPARSE_FIELD,
                "sparse_embedding_function": BM25BuiltInFunction(
                    input_field_names=TEXT_FIELD, output_field_names=SPARSE_FIELD
                ),
                "hybrid_ranker": "RRFRanker",
                "hybrid_ranker_params": {"k": 60},
            }
        with map_milvus_errors("open the collection"):
            store = MilvusVectorStore(
                **collection_schema(connection, name, dim, consistency_level or settings.consistency_level),
                overwrite=overwrite,
                batch_size=settings.insert_batch_size,
                output_fields=list(_OUTPUT_FIELDS),
                use_async_client=True,
                timeout=30,
                **sparse,
            )
        self = cls(store, connection, settings, features)
        await self._check_model(dim, model_id)
        return self

    def _retrying(self) -> AsyncRetrying:
        """Retry transient failures with backoff; a collection found unloaded is loaded before the retry."""

        async def _reload(state: RetryCallState) -> None:
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

    async def _check_model(self, dim: int, model_id: str) -> None:
        with map_milvus_errors("describe the collection"):
            desc = await self.aclient.describe_collection(self.name)
            stored_dim = next(
                (int(f.get("params", {}).get("dim", 0)) for f in desc["fields"] if f["name"] == EMBEDDING_FIELD), 0
            )
            rows = await self.aclient.query(
                self.name, filter=f'{DOC_ID_FIELD} != ""', output_fields=[MODEL_KEY], limit=1
            )
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
        """Insert embedded nodes (upserting by id, so a retried batch never duplicates)."""
        rows = rows_for(self.vector_store, nodes)
        async for attempt in self._retrying():
            with attempt, map_milvus_errors("store chunks"):
                await self.aclient.upsert(self.name, rows)
        return [n.node_id for n in nodes]

    async def adelete_doc(self, doc_id: str) -> None:
        """Remove every chunk of a document."""
        async for attempt in self._retrying():
            with attempt, map_milvus_errors("delete chunks"):
                await self.aclient.delete(self.name, filter=f'{DOC_ID_FIELD} == "{_quote(doc_id)}"')

    async def acount(self, doc_id: str | None = None) -> int:
        """Chunks stored (for one document, or all), read with Strong consistency."""
        flt = f'{DOC_ID_FIELD} == "{_quote(doc_id)}"' if doc_id else f'{DOC_ID_FIELD} != ""'
        async for attempt in self._retrying():
            with attempt, map_milvus_errors("count chunks"):
                rows = await self.aclient.query(
                    self.name, filter=flt, output_fields=["count(*)"], consistency_level="Strong"
                )
        return int(rows[0]["count(*)"]) if rows else 0

    async def asearch(
        self,
        embedding: list[float] | None,
        top_k: int,
        doc_ids: Sequence[str] | None = None,
        retrieval: str = "dense",
        query_text: str | None = None,
    ) -> list[NodeWithScore]:
        """Dense, keyword (BM25) or hybrid (both, fused by RRF) search, optionally limited to some documents."""
        if retrieval != "dense" and not self.features.keyword_search:
            raise ConfigError(f"{retrieval} retrieval is unavailable: {self.features.reason}")
        if retrieval == "keyword":
            return await self._akeyword(query_text or "", top_k, doc_ids)
        if retrieval == "dense":
            if embedding is None:
                raise ValueError("a dense search needs an embedding")
            return await self.searches.submit((top_k, _doc_filter(doc_ids)), embedding)
        filters = None
        if doc_ids:
            filters = MetadataFilters(
                filters=[MetadataFilter(key=DOC_ID_FIELD, value=list(doc_ids), operator=FilterOperator.IN)]
            )
        query = VectorStoreQuery(
            query_embedding=embedding,
            query_str=query_text,
            similarity_top_k=top_k,
            filters=filters,
            mode=VectorStoreQueryMode.HYBRID,
        )
        async for attempt in self._retrying():
            with attempt, map_milvus_errors("search"):
                result = await self.vector_store.aquery(query)
        return [
            NodeWithScore(node=node, score=float(score))
            for node, score in zip(result.nodes or [], result.similarities or [])
        ]

    async def _adense_batch(self, key: tuple[int, str], vectors: list[list[float]]) -> list[list[NodeWithScore]]:
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
                    search_params=self.vector_store.search_config,
                )
        return [self._hits_to_nodes(hits) for hits in res]

    def _hits_to_nodes(self, hits: Any) -> list[NodeWithScore]:
        nodes, scores, _ids = self.vector_store._parse_from_milvus_results([hits])
        return [NodeWithScore(node=n, score=float(s)) for n, s in zip(nodes, scores)]

    async def _akeyword(self, text: str, top_k: int, doc_ids: Sequence[str] | None) -> list[NodeWithScore]:
        """BM25 search; LlamaIndex's sparse path sends a drop ratio that Milvus Lite refuses, so search directly."""
        flt = _doc_filter(doc_ids)
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
        return [NodeWithScore(node=n.node, score=abs(n.score or 0.0)) for n in self._hits_to_nodes(res[0])]

    async def aversion(self) -> str:
        """The server's version string."""
        with map_milvus_errors("report its version"):
            return str(await self.aclient.get_server_version())

    async def adrop(self) -> None:
        """Drop the whole collection (scratch collections, tests)."""
        with map_milvus_errors("drop the collection"):
            await self.aclient.drop_collection(self.name)

    async def aclose(self) -> None:
        """Close both clients."""
        with contextlib.suppress(Exception):
            await self.aclient.close()
        with contextlib.suppress(Exception):
            self.vector_store.client.close()


def _doc_filter(doc_ids: Sequence[str] | None) -> str:
    """A Milvus expression keeping only chunks of these documents ("" keeps all)."""
    if not doc_ids:
        return ""
    return f"{DOC_ID_FIELD} in [{', '.join(chr(34) + _quote(d) + chr(34) for d in doc_ids)}]"


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
