"""The document store: one Milvus collection of chunks and its keyword index, opened, written and searched.

`DocumentStore` is the façade the engine uses: it opens (or creates) the collection and writes and deletes
chunks here, and hands searches to its `Searcher` (`rag.search`). Underneath: `rag.connection` (which Milvus,
its features, the collection's fields, errors as RagErrors, retries) and `rag.chunks` (chunk ids and rows).

`DocumentStore.abuild` runs on the runtime's loop: the blocking parts (the sync client's create, index
and load calls inside MilvusVectorStore) run in a worker thread, and the AsyncMilvusClient, which
connects on its first await, binds to the runtime loop it will always be used from.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from rag.chunks import (
    Chunk,
    Hit,
    Visibility,
    chunk_id,
    chunk_stem,
    committed_chunk,
    int_or_none,
    keyword_row,
    neighbour_id,
    rows_for,
)
from rag.coalesce import Coalescer
from rag.config import Settings
from rag.connection import (
    DENSE_INDEX,
    DOC_ID_FIELD,
    EMBEDDING_FIELD,
    MODEL_KEY,
    OUTPUT_FIELDS,
    SPARSE_FIELD,
    TEXT_FIELD,
    WORKSPACE_FIELD,
    Connection,
    Features,
    MilvusCollection,
    SearchCollection,
    StoreInfo,
    collection_schema,
    map_milvus_errors,
    probe_features,
    quote,
    resolve_connection,
    server_features,
)
from rag.errors import CollectionNotFoundError, EmbeddingMismatchError
from rag.keyword import KeywordIndex, KeywordRow, PgKeywordIndex, open_keyword_index
from rag.runtime import background_executor
from rag.search import RRF_K, Scope, Searcher, fuse_rrf

if TYPE_CHECKING:  # LlamaIndex takes 2-3 s to import: searches work without it (see Hit), writes import it
    from llama_index.core.schema import BaseNode

__all__ = [  # importable from here as before the split (rag.chunks, rag.connection, rag.search hold them)
    "DENSE_INDEX",
    "DOC_ID_FIELD",
    "EMBEDDING_FIELD",
    "MODEL_KEY",
    "RRF_K",
    "SPARSE_FIELD",
    "TEXT_FIELD",
    "WORKSPACE_FIELD",
    "Chunk",
    "Connection",
    "DocumentStore",
    "Features",
    "Hit",
    "Scope",
    "StoreInfo",
    "Visibility",
    "chunk_id",
    "chunk_stem",
    "collection_schema",
    "committed_chunk",
    "fuse_rrf",
    "map_milvus_errors",
    "neighbour_id",
    "probe_features",
    "resolve_connection",
    "rows_for",
]

log = logging.getLogger(__name__)

_ROWS_INLINE = 4  # nodes turned into rows on the loop (under a millisecond); more are packed in a worker thread


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
        self.connection = connection
        self.settings = settings
        self.collection = MilvusCollection(vector_store)
        self.searcher = Searcher(
            self.collection,
            settings,
            features or Features(version="?", keyword_search=False, reason="not probed"),
            keyword,
            search_requests,
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
                output_fields=list(OUTPUT_FIELDS),
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
            async for attempt in self.collection.retrying():
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
            features = server_features(connection, name, version, exists, fields)
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
        self = cls(SearchCollection(aclient, connection, name, dim), connection, settings, features, keyword=keyword)
        if model_id is not None:
            await self._check_model(dim, model_id)
        return self

    @property
    def vector_store(self) -> Any:
        """LlamaIndex's MilvusVectorStore, or a `SearchCollection` (`aopen_for_search`)."""
        return self.collection.vector_store

    @property
    def name(self) -> str:
        """The collection name."""
        return self.collection.name

    @property
    def aclient(self) -> Any:
        """The AsyncMilvusClient (bound to the runtime loop)."""
        return self.collection.aclient

    @property
    def features(self) -> Features:
        """What the server and collection can do."""
        return self.searcher.features

    @features.setter
    def features(self, value: Features) -> None:
        self.searcher.features = value

    @property
    def keyword(self) -> KeywordIndex | PgKeywordIndex | None:
        """The local keyword index (None where the server's BM25 serves keyword search)."""
        return self.searcher.keyword

    @keyword.setter
    def keyword(self, value: KeywordIndex | PgKeywordIndex | None) -> None:
        self.searcher.keyword = value

    @property
    def visibility(self) -> Visibility | None:
        """Set by the engine from the catalogue: searches then return committed chunks only (see `Searcher`)."""
        return self.searcher.visibility

    @visibility.setter
    def visibility(self, value: Visibility | None) -> None:
        self.searcher.visibility = value

    @property
    def index_type(self) -> str:
        """The embedding field's index, read when the collection is opened."""
        return self.searcher.index_type

    @index_type.setter
    def index_type(self, value: str) -> None:
        self.searcher.index_type = value

    @property
    def searches(self) -> Coalescer[tuple[int, str], list[float], list[Hit]]:
        """The coalescer dense searches leave through (see rag.coalesce)."""
        return self.searcher.searches

    async def _check_model(self, dim: int | None, model_id: str | None) -> None:
        if model_id is None:  # a store that never embeds (`docs check`)
            return
        async for attempt in self.collection.retrying():  # a collection found unloaded is loaded, then asked again
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
        self.collection.synced = True
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
        async for attempt in self.collection.retrying():
            with attempt, map_milvus_errors("store chunks"):
                await self.aclient.upsert(self.name, rows)
        if self.keyword is not None:
            await asyncio.to_thread(self.keyword.add, [keyword_row(n) for n in nodes])
        return [n.node_id for n in nodes]

    async def adelete_doc(self, doc_id: str) -> None:
        """Remove every chunk of a document, in Milvus and in the keyword index."""
        async for attempt in self.collection.retrying():
            with attempt, map_milvus_errors("delete chunks"):
                await self.aclient.delete(self.name, filter=f'{DOC_ID_FIELD} == "{quote(doc_id)}"')
        if self.keyword is not None:
            await asyncio.to_thread(self.keyword.delete_doc, doc_id)

    async def adelete_workspace(self, workspace: str) -> None:
        """Remove every chunk of a workspace, in Milvus and in the keyword index."""
        async for attempt in self.collection.retrying():
            with attempt, map_milvus_errors("delete chunks"):
                await self.aclient.delete(self.name, filter=Scope(workspace).expression())
        if self.keyword is not None:
            await asyncio.to_thread(self.keyword.delete_workspace, workspace)

    async def adelete_chunks(self, ids: Sequence[str]) -> None:
        """Remove chunks by id, in Milvus and in the keyword index (a generation replaced by a re-index)."""
        for start in range(0, len(ids), 1000):
            batch = list(ids[start : start + 1000])
            async for attempt in self.collection.retrying():
                with attempt, map_milvus_errors("delete chunks"):
                    await self.aclient.delete(self.name, ids=batch)
        if self.keyword is not None and ids:
            await asyncio.to_thread(self.keyword.delete_chunks, list(ids))

    async def achunk_ids(self, doc_id: str | None = None) -> set[str]:
        """Ids of the chunks Milvus holds (of one document, or all), read with Strong consistency."""
        flt = f'{DOC_ID_FIELD} == "{quote(doc_id)}"' if doc_id else f'{DOC_ID_FIELD} != ""'
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
        rows = await self._aread_all(f'{DOC_ID_FIELD} == "{quote(doc_id)}"', fields, "read chunks")
        return [
            KeywordRow(
                chunk_id=str(r["id"]),
                doc_id=doc_id,
                file_name=str(r.get("file_name") or "?"),
                page=int_or_none(r.get("page")),
                chunk=int_or_none(r.get("chunk")),
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
        optionally limited to some of its documents (`Searcher.asearch`)."""
        return await self.searcher.asearch(embedding, top_k, doc_ids, retrieval, query_text, workspace)

    async def aneighbours(self, hits: Sequence[Hit], width: int) -> dict[str, tuple[str, int | None]]:
        """Text and page of the chunks up to `width` positions before and after each hit, by chunk id."""
        return await self.searcher.aneighbours(hits, width)

    async def atexts(self, chunk_ids: Sequence[str]) -> dict[str, tuple[str, int | None]]:
        """Text and page of these chunks (those stored), by chunk id (`Searcher.atexts`)."""
        return await self.searcher.atexts(chunk_ids)

    async def async_visible(self) -> None:
        """Wait until every chunk written before now is visible to searches (one Strong read)."""
        await self.searcher.async_visible()

    async def acount_filtered(self, scope: Scope) -> int:
        """Chunks stored (of a workspace, of some documents, or all), read with Strong consistency."""
        return await self.searcher.acount_filtered(scope)

    def search_params(self, limit: int) -> dict[str, Any]:
        """A dense search's parameters (`Searcher.search_params`)."""
        return self.searcher.search_params(limit)

    async def aload_state(self) -> str:
        """`loaded`, `loading` or `not loaded`: what a restart can leave the collection in for a while."""
        return await self.collection.aload_state()

    async def aversion(self) -> str:
        """The server's version string."""
        return await self.collection.aversion()

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
            if isinstance(self.vector_store, SearchCollection):
                self.vector_store.close()  # without opening the sync client it may never have used
            else:
                self.vector_store.client.close()
        if self.keyword is not None:
            self.keyword.close()
        if "_scanner" in self.__dict__:
            self._scanner.shutdown(wait=False)
