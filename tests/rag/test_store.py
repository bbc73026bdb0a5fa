"""The store on the embedded server and on Milvus Lite; the embedding-model guard."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.errors import EmbeddingMismatchError, StoreUnavailableError, TransientStoreError
from rag.ingest import FileStatus
from rag.options import AskOptions
from rag.service import RagService
from tests.conftest import write_part_number_docs

pytestmark = pytest.mark.milvus


def test_collection_refuses_another_embedding_model(make_settings, embedder, corpus: Path) -> None:  # noqa: ANN001
    from dataclasses import replace

    settings = make_settings()
    svc = RagService(settings, embedder=embedder)
    svc.ingest([corpus / "unstructured_README.md"])
    svc.close()
    other = replace(embedder, model_id="BAAI/bge-small-en-v1.5")  # same dimension, different model
    with pytest.raises(EmbeddingMismatchError) as err:
        RagService(settings, embedder=other)
    assert "all-MiniLM-L6-v2" in err.value.user_message and "RAG_COLLECTION" in err.value.user_message
    wider = replace(embedder, model_id=embedder.model_id, dim=768)
    with pytest.raises(EmbeddingMismatchError):
        RagService(settings, embedder=wider)
    svc = RagService(settings, embedder=embedder)
    svc.runtime.run(svc.store.adrop())
    svc.close()


def test_server_version_is_reported(service) -> None:  # noqa: ANN001
    status = service.status()
    assert status.store.version.startswith("v2.3") and status.mode == "retrieval-only"
    assert status.embed_dim == 384
    assert service.collection_state() == "loaded"


def test_new_collections_get_hnsw_and_old_ones_keep_their_index(make_settings, embedder, service) -> None:  # noqa: ANN001
    from llama_index.vector_stores.milvus import MilvusVectorStore

    from rag.store import EMBEDDING_FIELD, collection_schema

    assert service.store.index_type == "HNSW"
    info = service.store.vector_store.client.describe_index(service.store.name, EMBEDDING_FIELD)
    assert (info["index_type"], info["M"], info["efConstruction"]) == ("HNSW", "16", "200")
    assert service.store.search_params(5) == {"ef": 128} and service.store.search_params(500) == {"ef": 500}

    settings = make_settings()  # a collection made before this version: LlamaIndex's default, exact FLAT
    old = MilvusVectorStore(**collection_schema(service.connection, settings.collection, 384, "Strong"), overwrite=True)
    old.client.close()
    svc = RagService(settings, embedder=embedder)
    try:
        assert svc.store.index_type == "FLAT" and svc.store.search_params(5) == {}
    finally:
        svc.runtime.run(svc.store.adrop())
        svc.close()


def test_milvus_lite_path(tmp_path: Path, embedder, corpus: Path) -> None:  # noqa: ANN001
    from rag.config import load_settings

    settings = load_settings(data_dir=tmp_path / "d", milvus_uri=str(tmp_path / "lite.db"), consistency_level="Strong")
    svc = RagService(settings, embedder=embedder)
    try:
        assert svc.connection.kind == "lite"
        result = svc.ingest([corpus / "zoo.pdf"]).files[0]
        assert result.status == FileStatus.INDEXED and svc.count_chunks() == result.chunks
        sources = svc.retrieve("Which R package provides an S3 class for discrete irregular time series?")
        assert any(s.page == 1 and "discrete irregular time series" in " ".join(s.text.split()) for s in sources)
    finally:
        svc.close()


def test_hybrid_finds_keyword_only_matches_on_milvus_lite(tmp_path: Path, embedder) -> None:  # noqa: ANN001
    """A part number shares no meaning with its question, only its exact token: BM25 finds it, dense does not."""
    from rag.config import load_settings

    folder = write_part_number_docs(tmp_path / "docs")
    settings = load_settings(
        data_dir=tmp_path / "d", milvus_uri=str(tmp_path / "hybrid.db"), consistency_level="Strong"
    )
    svc = RagService(settings, embedder=embedder)
    try:
        assert svc.features.keyword_search and svc.features.retrieval_modes == ("dense", "keyword", "hybrid")
        svc.ingest(sorted(folder.iterdir()))
        question = "How often should QX7719ZK be lubricated, calibrated and inspected?"
        keyword = svc.retrieve(question, options=AskOptions(top_k=1, retrieval="keyword"))
        hybrid = svc.retrieve(question, options=AskOptions(top_k=2, retrieval="hybrid"))
        dense = svc.retrieve(question, options=AskOptions(top_k=1, retrieval="dense"))
        assert keyword[0].file_name == "parts.txt"
        assert "parts.txt" in {s.file_name for s in hybrid}
        assert dense[0].file_name != "parts.txt"
    finally:
        svc.close()


def test_keyword_and_hybrid_run_locally_on_milvus_2_3(service) -> None:  # noqa: ANN001
    """The embedded 2.3.5 has no BM25 function: keyword search comes from the local index instead."""
    assert service.features.keyword_search and service.features.keyword_backend == "local"
    assert service.features.retrieval_modes == ("dense", "keyword", "hybrid")
    where = "PostgreSQL" if service.settings.database_url.startswith("postgresql") else "SQLite"
    assert "2.3" in service.features.reason and where in service.features.keyword_note


def test_searches_started_together_share_requests_and_match_single_searches(service, corpus: Path) -> None:  # noqa: ANN001
    """A gather of dense searches leaves as a few multi-vector requests, and each caller gets exactly the
    hits it would have got alone (also with a document filter, which is part of the batch key)."""
    import asyncio

    first = service.ingest([corpus / "zoo.pdf"]).files[0]
    service.ingest([corpus / "paul_graham_essay.txt"])
    questions = ["irregular time series", "painting and programming", "Lisp macros", "aggregating data", "Y Combinator"]
    vectors = [service.embedder.embed_query_sync(q) for q in questions]
    store = service.store

    def ids(hits) -> list[str]:  # noqa: ANN001
        return [h.node.node_id for h in hits]

    alone = [ids(service.runtime.run(store.asearch(v, 4))) for v in vectors]
    calls = store.searches.calls

    async def together() -> list[list]:
        return await asyncio.gather(
            *(store.asearch(v, 4) for v in vectors), *(store.asearch(v, 4, doc_ids=[first.doc_id]) for v in vectors)
        )

    results = service.runtime.run(together())
    assert [ids(r) for r in results[: len(vectors)]] == alone
    assert len({tuple(a) for a in alone}) > 1  # different questions really found different passages
    for hits in results[len(vectors) :]:
        assert hits and {h.node.metadata["doc_id"] for h in hits} == {first.doc_id}
        assert all(h.node.metadata["file_name"] == "zoo.pdf" and h.node.get_content() for h in hits)
    sent = store.searches.calls - calls
    assert sent == 2  # one request per filter: five queries are too few to split


def test_a_wrong_token_is_named_as_such_and_not_retried(make_settings, embedder) -> None:  # noqa: ANN001
    # pymilvus reports a refused password as "illegal connection params or server unavailable"
    settings = make_settings(milvus_token="root:not-the-password")
    with pytest.raises(StoreUnavailableError) as caught:
        RagService(settings, embedder=embedder)
    assert not isinstance(caught.value, TransientStoreError)  # retrying cannot help
    assert "refused the credentials" in caught.value.user_message and "MILVUS_TOKEN" in caught.value.user_message
