"""Session-state keys and the per-browser-session id.

The session id ("sid") keeps one browser's conversation and ingestion jobs apart from another's.
It lives in the page URL as `?sid=<random token>`: when the URL has none (or a malformed one) a new
random token is generated and written into the URL, so a browser refresh keeps the same session
while a new browser, or the bare URL, starts a fresh one. Two tabs opened on the same URL share
the session (and see the same running job). Anyone holding a URL with a sid can read that
session's conversation, so do not share such links.
"""

from __future__ import annotations

import re
import secrets

import streamlit as st

SID = "sid"
"""Query parameter and session-state key holding the session id."""

PENDING_DELETE = "documents.pending_delete"
"""Document ids waiting for the user to confirm their deletion."""

PERSISTENT_WIDGETS = (
    "chat.top_k",
    "chat.llm_model",
    "chat.temperature",
    "chat.retrieval",
    "chat.doc_ids",
    "workspace.id",
)
"""Widget values kept while the user visits other pages."""

_SID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def _valid(sid: object) -> bool:
    return isinstance(sid, str) and bool(_SID_PATTERN.match(sid))


def session_id() -> str:
    """This browser session's id: from the URL, else this session's state, else a new random token."""
    sid = st.query_params.get(SID)
    if not _valid(sid):
        sid = st.session_state.get(SID)
    if not _valid(sid):
        sid = secrets.token_urlsafe(16)
    st.session_state[SID] = sid
    if st.query_params.get(SID) != sid:
        st.query_params[SID] = sid  # page switches drop query params; put it back for the next refresh
    return sid


def keep_widget_values() -> None:
    """Stop Streamlit from forgetting sidebar choices while another page is shown (call before pages run)."""
    for key in PERSISTENT_WIDGETS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
