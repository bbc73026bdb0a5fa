"""Documents in widgets: the documents table and the picker that chooses some by name."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import streamlit as st

from rag import DocumentRecord
from ui.format import human_size


def documents_table(docs: Sequence[DocumentRecord]) -> list[dict[str, object]]:
    """Rows for the documents table."""
    return [
        {
            "Name": d.file_name,
            "Type": d.file_type,
            "Pages": str(d.pages) if d.pages else "—",  # formats without pages: a dash, never "None"
            "Chunks": d.chunks,
            "Size": human_size(d.size),
            "Added": datetime.fromtimestamp(d.added_at).replace(microsecond=0),
        }
        for d in docs
    ]


def document_picker(docs: Sequence[DocumentRecord], label: str, key: str, **options: Any) -> list[str]:
    """A multiselect of documents by name returning their ids; ids of documents deleted meanwhile are
    dropped from the widget's state first (Streamlit refuses a default that is not an option)."""
    names = {d.doc_id: d.file_name for d in docs}
    st.session_state[key] = [i for i in st.session_state.get(key, []) if i in names]
    return list(st.multiselect(label, list(names), format_func=names.get, key=key, **options))
