"""Errors at the UI's edge: what people see when something fails, and how to fix Milvus.

A RagError carries a message written for people; anything else is a bug, logged with its traceback and
shown as one generic line (STYLE.md, "Errors").
"""

from __future__ import annotations

import logging

import streamlit as st

from rag import RagError, RagService, Settings, load_settings, redact_url
from ui.format import code, md
from ui.resources import get_service

log = logging.getLogger(__name__)


def show_error(err: BaseException) -> None:
    """Show an error to people: a RagError's user message, or a generic line for a bug (logged)."""
    if isinstance(err, RagError):
        st.error(md(err.user_message), icon=":material/error:")
    else:
        log.exception("unexpected error in the UI", exc_info=err)
        st.error("Something unexpected went wrong; the details are in the server log.", icon=":material/error:")


def milvus_fix(settings: Settings | None) -> str:
    """How to get Milvus back, for the kind of Milvus configured."""
    if settings is None or settings.embedded_milvus:
        return (
            "The embedded Milvus server is not running. Start it with `python -m rag milvus start` "
            "(it keeps its files under `RAG_DATA_DIR`), then reload this page."
        )
    if settings.milvus_lite:
        return f"Check that the Milvus Lite file {code(settings.milvus_uri)} (`MILVUS_URI`) can be opened."
    return (
        f"Check that Milvus is running at {code(redact_url(settings.milvus_uri))} (`MILVUS_URI`) and that "
        "`MILVUS_TOKEN` is right, or unset `MILVUS_URI` to use the embedded server; then reload this page."
    )


def service_or_stop() -> RagService:
    """The shared RagService; when it cannot start, say why and how to fix it, then stop the page."""
    try:
        return get_service()
    except RagError as err:
        show_error(err)
        try:
            settings = load_settings()
        except RagError:
            settings = None
        st.info(milvus_fix(settings), icon=":material/build:")
    except Exception as err:  # noqa: BLE001 - the edge: anything else is a bug, shown generically
        show_error(err)
    st.stop()
    raise AssertionError("unreachable")  # st.stop() raises
