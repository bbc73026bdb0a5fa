"""QuestionService: the search-only store finds exactly what the full engine finds, as LlamaIndex would parse it."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.options import AskOptions
from rag.questions import QuestionService
from rag.store import DocumentStore
from tests.conftest import write_part_number_docs

pytestmark = pytest.mark.milvus


def test_answers_match_the_full_engine(service, tmp_path: Path) -> None:  # noqa: ANN001
    service.ingest(sorted(write_part_number_docs(tmp_path / "docs").iterdir()))
    questions = QuestionService(service.settings, embedder=service.embedder)
    try:
        assert not type(questions.store.vector_store).__module__.startswith("llama_index")  # the search-only one
        assert questions.store.features == service.store.features
        for retrieval in ("dense", "keyword", "hybrid"):
            for question in ("Which spare item should be ordered?", "How often are the bearings lubricated?"):
                options = AskOptions(retrieval=retrieval, top_k=4)
                assert questions.retrieve(question, options) == service.retrieve(question, options)
        answer = questions.ask("Order spare item QX7719ZK")
        assert answer.mode == "retrieval-only" and answer.sources[0].file_name == "parts.txt"
    finally:
        questions.close()


def test_search_hits_carry_what_llamaindex_would_parse(service, tmp_path: Path) -> None:  # noqa: ANN001
    """Ids, scores, metadata and text of the search-only store's hits equal MilvusVectorStore.aquery's nodes."""
    from llama_index.core.vector_stores import VectorStoreQuery

    service.ingest(sorted(write_part_number_docs(tmp_path / "docs").iterdir()))
    vector = service.embedder.embed_query_sync("conveyor belt inspection")
    store = service.runtime.run(
        DocumentStore.aopen_for_search(
            service.settings, service.connection, service.embedder.dim, service.embedder.model_id
        )
    )
    try:
        hits = service.runtime.run(store.asearch(vector, 5))
        result = service.runtime.run(
            service.store.vector_store.aquery(VectorStoreQuery(query_embedding=vector, similarity_top_k=5))
        )
    finally:
        service.runtime.run(store.aclose())
    assert [h.node.node_id for h in hits] == [n.node_id for n in result.nodes]
    assert [h.score for h in hits] == pytest.approx(result.similarities)
    assert [h.node.metadata for h in hits] == [n.metadata for n in result.nodes]
    assert [h.node.get_content() for h in hits] == [n.get_content() for n in result.nodes]
