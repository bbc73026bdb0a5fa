"""The process-wide objects every session shares, each built once with st.cache_resource.

The RagService owns the runtime loop and, on it, the async Milvus client; only the sync service is
cached here, never the client itself. Errors are raised as RagError for the pages' edge to show.
"""

from __future__ import annotations

import streamlit as st

from rag import RagService, load_settings


@st.cache_resource(
    show_spinner=False,
    validate=lambda service: not service.runtime.closed,
    on_release=lambda service: service.close(),
)
def get_service() -> RagService:
    """The one RagService of this process, built from the environment on first use."""
    with st.spinner("Connecting to Milvus and loading the embedding model…"):
        return RagService(load_settings())
