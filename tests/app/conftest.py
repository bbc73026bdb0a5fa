"""AppTest fixtures: the app reads its service from the environment, pointed at the shared test Milvus.

Each test gets a fresh collection and data dir; the cached RagService is released (closed) and the
collection dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st

from rag.milvus_server import EmbeddedMilvus, ServerState
from tests.app.support import APP, REPO, AppEnv, new_sid, page_text

__all__ = ["APP", "REPO", "AppEnv", "app_env", "new_sid", "page_text"]  # older suites import these from here


@pytest.fixture
def app_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    milvus_server: EmbeddedMilvus,
    milvus_state: ServerState,
    default_database_url: str,
) -> Iterator[AppEnv]:
    """Environment for the app: shared Milvus, temp data dir, fresh collection; cleaned up afterwards."""
    st.cache_resource.clear()
    env = AppEnv(data_dir=tmp_path / "data", collection=f"t_{uuid.uuid4().hex[:12]}", sid=new_sid())
    monkeypatch.setenv("MILVUS_URI", milvus_state.uri)
    monkeypatch.setenv("MILVUS_TOKEN", milvus_server.token)
    monkeypatch.setenv("RAG_DATA_DIR", str(env.data_dir))
    monkeypatch.setenv("RAG_COLLECTION", env.collection)
    monkeypatch.setenv("RAG_CONSISTENCY", "Strong")
    monkeypatch.setenv("RAG_DATABASE_URL", default_database_url)
    yield env
    st.cache_resource.clear()  # on_release closes the service
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_state.uri, token=milvus_server.token)
    try:
        if client.has_collection(env.collection):
            client.drop_collection(env.collection)
    finally:
        client.close()
