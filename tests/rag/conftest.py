"""The whole shared corpus, indexed once per session into its own collection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.config import load_settings
from rag.embeddings import Embedder
from rag.ingest import IngestReport
from rag.milvus_server import EmbeddedMilvus
from rag.service import RagService
from tests.conftest import new_collection


@pytest.fixture(scope="session")
def indexed_corpus(
    tmp_path_factory: pytest.TempPathFactory, milvus_server: EmbeddedMilvus, embedder: Embedder, corpus: Path
) -> Iterator[tuple[RagService, IngestReport]]:
    """A service whose collection holds every corpus file, and the report of indexing them."""
    state = milvus_server.start()
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("corpus-data"),
        milvus_uri=state.uri,
        milvus_token=milvus_server.token,
        collection=new_collection(),
        consistency_level="Strong",
    )
    svc = RagService(settings, embedder=embedder)
    files = sorted(p for p in corpus.iterdir() if p.name != "SOURCES.md")
    report = svc.ingest(files)
    yield svc, report
    svc.runtime.run(svc.store.adrop(), timeout=60)
    svc.close()
