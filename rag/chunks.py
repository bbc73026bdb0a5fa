"""What a chunk is called, and what it looks like as a Milvus row, a keyword-index row and a search hit.

A chunk's id names its document, generation and position, so visibility (`committed_chunk`) and neighbours
(`neighbour_id`) are decided from ids alone. Searches return `Hit`s of `Chunk`s, shaped like LlamaIndex's
NodeWithScore and TextNode, so questions are answered without importing LlamaIndex (writes do import it).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rag.connection import DOC_ID_FIELD, OUTPUT_FIELDS, TEXT_FIELD, WORKSPACE_FIELD
from rag.keyword import KeywordHit, KeywordRow

if TYPE_CHECKING:  # LlamaIndex takes 2-3 s to import: searches work without it (see Hit), writes import it
    from llama_index.core.schema import BaseNode

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


def hit_doc(hit: Hit) -> str:
    """The document a hit's chunk belongs to."""
    return str(hit.node.metadata.get(DOC_ID_FIELD) or getattr(hit.node, "ref_doc_id", None) or "")


def int_or_none(value: Any) -> int | None:
    """A stored integer field (page, chunk) as an int, or None where it is missing or malformed."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


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


def keyword_row(node: BaseNode) -> KeywordRow:
    """A node as the keyword index stores it."""
    meta = node.metadata
    return KeywordRow(
        chunk_id=node.node_id,
        doc_id=str(meta.get(DOC_ID_FIELD) or node.ref_doc_id or ""),
        file_name=str(meta.get("file_name") or "?"),
        page=int_or_none(meta.get("page")),
        chunk=int_or_none(meta.get("chunk")),
        text=node.get_content(),
        workspace=str(meta.get(WORKSPACE_FIELD) or "default"),
    )


def chunk_from_hit(hit: Any) -> Chunk:
    """A search hit's chunk as `MilvusVectorStore` would rebuild its node: id and metadata from the stored node
    JSON (`_node_content`), text from the text field."""
    entity = hit["entity"]
    stored = json.loads(entity["_node_content"]) if entity.get("_node_content") else {}
    metadata = stored.get("metadata") if isinstance(stored.get("metadata"), dict) else None
    if metadata is None:
        metadata = {key: entity.get(key) for key in OUTPUT_FIELDS}
    return Chunk(node_id=str(stored.get("id_") or hit["id"]), text=str(entity.get(TEXT_FIELD) or ""), metadata=metadata)


def keyword_hit(hit: KeywordHit) -> Hit:
    """A keyword index hit as a search hit."""
    meta: dict[str, Any] = {"file_name": hit.file_name, DOC_ID_FIELD: hit.doc_id}
    if hit.page is not None:
        meta["page"] = hit.page
    if hit.chunk is not None:
        meta["chunk"] = hit.chunk
    return Hit(node=Chunk(node_id=hit.chunk_id, text=hit.text, metadata=meta), score=hit.score)
