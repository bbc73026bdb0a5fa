"""Searching one collection: dense (coalesced), keyword (BM25) and hybrid, committed chunks only.

`Searcher.asearch` runs each side through `_avisible`, which keeps only hits of committed chunks (see
`rag.chunks.committed_chunk`, checked in the catalogue through `visibility`) and searches again, without the
documents found uncommitted and deeper past other generations, until the top k is full. Dense searches started
together leave as a few multi-vector requests (`rag.coalesce`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rag.chunks import Hit, Visibility, chunk_from_hit, committed_chunk, hit_doc, int_or_none, keyword_hit, neighbour_id
from rag.coalesce import Coalescer
from rag.config import Settings
from rag.connection import (
    DOC_ID_FIELD,
    EMBEDDING_FIELD,
    OUTPUT_FIELDS,
    SPARSE_FIELD,
    TEXT_FIELD,
    WORKSPACE_FIELD,
    Features,
    MilvusCollection,
    map_milvus_errors,
    quote,
)
from rag.errors import ConfigError
from rag.keyword import KeywordIndex, PgKeywordIndex

_MAX_NQ = 16_384  # Milvus's limit on query vectors per search request
_MAX_REQUEST_BYTES = 32 * 1024 * 1024  # well under gRPC's message limit
_MIN_QUERIES_PER_REQUEST = 32  # fewer gain nothing from a request of their own
_DECODE_INLINE = 200  # search hits decoded on the loop; more (coalesced batches) are decoded in a thread
RRF_K = 10  # reciprocal rank fusion's constant: best of 10/20/60 on the labelled sets (BENCHMARKS.md)
_FUSION_DEPTH = 10  # hybrid fuses this many times top_k candidates from each side (at least 50)
_VISIBILITY_ROUNDS = 5  # searches again at most this often when hits of uncommitted chunks left top_k short
_MAX_LIMIT = 16_384  # Milvus's largest limit (topk) of one search


class Searcher:
    """The searches and chunk reads of one collection (`DocumentStore` delegates to it), used only from the
    runtime loop."""

    def __init__(
        self,
        collection: MilvusCollection,
        settings: Settings,
        features: Features,
        keyword: KeywordIndex | PgKeywordIndex | None = None,
        search_requests: int = 4,
    ) -> None:
        self.collection = collection
        self.settings = settings
        self.features = features
        self.keyword = keyword
        # Set by the engine from the catalogue: searches then return committed chunks only. None (scratch
        # benchmark collections, which have no catalogue) returns every chunk.
        self.visibility: Visibility | None = None
        self._recent: dict[str, tuple[int, int] | None] = {}  # the last lookups: doc id -> committed state or None
        self.index_type = ""  # the embedding field's index, read when the collection is opened
        dim = int(getattr(collection.vector_store, "dim", None) or 0) or 1024
        # Dense searches started together leave as a few multi-vector requests (see rag.coalesce).
        self.searches: Coalescer[tuple[int, str], list[float], list[Hit]] = Coalescer(
            self._adense_batch,
            max_batch=max(1, min(_MAX_NQ, _MAX_REQUEST_BYTES // (4 * dim))),
            max_requests=search_requests,
            min_batch=_MIN_QUERIES_PER_REQUEST,
        )

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
        async for attempt in self.collection.retrying():
            with attempt, map_milvus_errors("search"):
                result = await self.collection.vector_store.aquery(query, string_expr=scope.expression())
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
            committed = await self._acommitted({hit_doc(h) for hits in found for h in hits})
            strangers: set[str] = set()
            for i, hits in zip(todo, found):
                shown = [h for h in hits if committed_chunk(h.node.node_id, hit_doc(h), committed)]
                if len(shown) >= top_k or len(hits) < limits[i]:
                    results[i] = shown[:top_k]
                    continue
                results[i] = shown if round_ == _VISIBILITY_ROUNDS - 1 else None  # the last round: what there is
                strangers |= {hit_doc(h) for h in hits} - set(committed)
                stale = sum(1 for h in hits if hit_doc(h) in committed) - len(shown)
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

    async def aneighbours(self, hits: Sequence[Hit], width: int) -> dict[str, tuple[str, int | None]]:
        """Text and page of the chunks up to `width` positions before and after each hit, by chunk id."""
        wanted: dict[str, str] = {}  # chunk id -> its document
        for hit in hits:
            position = int_or_none(hit.node.metadata.get("chunk"))
            if position is not None:
                wanted.update(
                    (neighbour_id(hit.node.node_id, position + d), hit_doc(hit))
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
        ids = ", ".join(f'"{quote(i)}"' for i in chunk_ids)
        async for attempt in self.collection.retrying():
            with attempt, map_milvus_errors("read chunks"):
                rows = await self.collection.aclient.query(
                    self.collection.name, filter=f"id in [{ids}]", output_fields=[TEXT_FIELD, "page"]
                )
        return {str(r["id"]): (str(r.get(TEXT_FIELD) or ""), int_or_none(r.get("page"))) for r in rows}

    async def _adense(self, embedding: list[float] | None, top_k: int, scope: Scope) -> list[Hit]:
        """A dense search that never answers "nothing" for chunks that are stored but not yet visible."""
        if embedding is None:
            raise ValueError("a dense search needs an embedding")
        if not self.collection.synced:
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
        self.collection.synced = True

    async def acount_filtered(self, scope: Scope) -> int:
        """Chunks stored (of a workspace, of some documents, or all), read with Strong consistency."""
        flt = scope.expression() or f'{DOC_ID_FIELD} != ""'
        async for attempt in self.collection.retrying():
            with attempt, map_milvus_errors("count chunks"):
                rows = await self.collection.aclient.query(
                    self.collection.name, filter=flt, output_fields=["count(*)"], consistency_level="Strong"
                )
        return int(rows[0]["count(*)"]) if rows else 0

    async def _adense_batch(self, key: tuple[int, str], vectors: list[list[float]]) -> list[list[Hit]]:
        """One search request for many query vectors; each query's hits become nodes as `aquery` makes them."""
        top_k, flt = key
        async for attempt in self.collection.retrying():
            with attempt, map_milvus_errors("search"):
                res = await self.collection.aclient.search(
                    self.collection.name,
                    data=vectors,
                    anns_field=EMBEDDING_FIELD,
                    limit=top_k,
                    filter=flt,
                    output_fields=[*OUTPUT_FIELDS, TEXT_FIELD],
                    search_params=self.search_params(top_k),
                )
        if len(vectors) * top_k <= _DECODE_INLINE:
            return [self._hits_to_nodes(hits) for hits in res]
        return await asyncio.to_thread(lambda: [self._hits_to_nodes(hits) for hits in res])  # big: off the loop

    def search_params(self, limit: int) -> dict[str, Any]:
        """A dense search's parameters: HNSW's breadth `ef` (RAG_SEARCH_EF, never below the hits asked for);
        other indexes search with their own defaults, or what `vector_store.search_config` says."""
        params = dict(self.collection.vector_store.search_config or {})  # flat, as LlamaIndex keeps it: {"ef": 128}
        if self.index_type == "HNSW":
            params["ef"] = max(int(params.get("ef", self.settings.search_ef)), limit)
        return params

    def _hits_to_nodes(self, hits: Any) -> list[Hit]:
        return [Hit(node=chunk_from_hit(hit), score=float(hit["distance"])) for hit in hits]

    async def _akeyword(self, text: str, top_k: int, scope: Scope) -> list[Hit]:
        """BM25 search; LlamaIndex's sparse path sends a drop ratio that Milvus Lite refuses, so search directly."""
        if self.keyword is not None:
            hits = await asyncio.to_thread(
                self.keyword.search, text, top_k, scope.doc_ids, scope.workspace, scope.exclude
            )
            return [keyword_hit(hit) for hit in hits]
        flt = scope.expression()
        async for attempt in self.collection.retrying():
            with attempt, map_milvus_errors("search"):
                res = await self.collection.aclient.search(
                    self.collection.name,
                    data=[text],
                    anns_field=SPARSE_FIELD,
                    limit=top_k,
                    filter=flt,
                    output_fields=list(OUTPUT_FIELDS) + [TEXT_FIELD],
                    search_params={"metric_type": "BM25"},
                )
        return [Hit(node=n.node, score=abs(n.score or 0.0)) for n in self._hits_to_nodes(res[0])]


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
            parts.append(f'{WORKSPACE_FIELD} == "{quote(self.workspace)}"')
        if self.doc_ids:
            parts.append(f"{DOC_ID_FIELD} in [{', '.join(chr(34) + quote(d) + chr(34) for d in self.doc_ids)}]")
        if self.exclude:
            parts.append(f"{DOC_ID_FIELD} not in [{', '.join(chr(34) + quote(d) + chr(34) for d in self.exclude)}]")
        return " and ".join(parts)

    def excluding(self, doc_ids: set[str]) -> Scope:
        """This scope without those documents."""
        if not doc_ids:
            return self
        return Scope(self.workspace, self.doc_ids, tuple(sorted(set(self.exclude) | doc_ids)))
