"""The workspace a page works in: chosen in the sidebar, kept while the user moves between pages."""

from __future__ import annotations

import streamlit as st

from rag import RagError, RagService, Workspace
from ui.auth import current_caller

KEY = "workspace.id"
"""Session-state key of the chosen workspace's id."""
_NEXT = "workspace.next"


def choose(workspace_id: str | None) -> None:
    """Make a workspace the chosen one from the next run on (None: back to the default choice); the
    chooser is already drawn in this run, so its state cannot change now."""
    st.session_state[_NEXT] = workspace_id


def current_workspace(service: RagService) -> Workspace:
    """The workspace chosen in the sidebar among those this user may see (RAG_WORKSPACE first time), with
    this user's role in it."""
    caller = current_caller()
    if caller.kind == "account":
        service.private_workspace(caller)  # every account has one of its own
    choices = service.list_workspaces(caller)
    by_id = {w.id: w for w in choices}
    if _NEXT in st.session_state:
        st.session_state[KEY] = st.session_state.pop(_NEXT)
    if st.session_state.get(KEY) not in by_id:
        try:
            st.session_state[KEY] = service.workspace(service.settings.workspace, caller).id
        except RagError:
            st.session_state[KEY] = choices[0].id
    with st.sidebar:
        chosen = st.selectbox(
            "Workspace",
            list(by_id),
            format_func=lambda i: by_id[i].label,
            key=KEY,
            help="Documents, questions and chats stay inside one workspace. Manage them on the Workspaces page.",
        )
    return by_id[chosen]
