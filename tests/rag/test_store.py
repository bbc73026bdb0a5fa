"""The store on the embedded server and on Milvus Lite; the embedding-model guard."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.errors import EmbeddingMismatchError
from rag.ingest import FileStatus
from rag.service import RagService

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
