"""The source viewer: where a cited passage came from, opened from an answer's sources.

A PDF source shows its page as an image drawn by the engine from the PDF itself (never from document
text), the passage highlighted, with page navigation, zoom and a download of the original file. Other
formats show the document's text around the passage as text (HTML-escaped, in a sandboxed frame), the
passage highlighted and scrolled into view.
"""

from __future__ import annotations

import html

import streamlit as st
import streamlit.components.v1 as components

from rag import RagError, RagService, Source
from ui.auth import current_caller
from ui.errors import show_error
from ui.format import md, short

_ZOOMS = (0.75, 1.0, 1.25, 1.5, 2.0)


_CONTEXT_CHARS = 3000  # of the document's text shown on each side of a passage (formats without pages)


@st.dialog("Source", width="large")
def source_viewer(service: RagService, source: Source, workspace: str, key: str, label: str | None = None) -> None:
    """The cited page (or text) of one source; a dialog, so paging and zoom rerun only the dialog."""
    st.markdown(f"**{md(label or source.label)}** · score {source.score:.3f}")
    if not source.doc_id:
        st.text(source.text)
        return
    try:
        if source.page:
            _pdf_page(service, source, workspace, key)
        else:
            before, passage, after = service.source_context(
                source.doc_id, workspace, source.text, current_caller(), _CONTEXT_CHARS
            )
            st.caption("The passage is highlighted in the document's text.")
            components.html(text_view(before, passage, after), height=420, scrolling=True)
        name, data = service.original(source.doc_id, workspace, current_caller())
    except RagError as err:
        show_error(err)
        return
    st.download_button(
        f"Download {md(short(name))}",
        data,
        file_name=name,
        key=f"{key}.download",
        icon=":material/download:",
        on_click="ignore",
    )


def _pdf_page(service: RagService, source: Source, workspace: str, key: str) -> None:
    page_key, zoom_key = f"{key}.page", f"{key}.zoom"
    st.session_state.setdefault(page_key, source.page)
    left, right = st.columns([1, 2])
    caller = current_caller()
    cited = service.source_page(source.doc_id or "", workspace, source.page or 1, source.text, 1.0, caller)
    page = left.number_input("Page", 1, cited.page_count, key=page_key)
    zoom = right.select_slider("Zoom", _ZOOMS, value=1.0, key=zoom_key, format_func=lambda z: f"{z:.0%}")
    on_cited = page == source.page
    passage = source.text if on_cited else ""
    shown = service.source_page(source.doc_id or "", workspace, int(page), passage, zoom, caller)
    if on_cited:
        if shown.found:
            st.caption(
                "The passage is highlighted on this page." + (" (The page was read by OCR.)" if shown.ocr else "")
            )
        else:
            st.caption("The passage could not be located exactly on this page; it is shown below.")
            st.text(source.text)
    else:
        st.caption(f"Page {int(page)} of {shown.page_count}; the passage is on page {source.page}.")
    st.image(shown.png, caption=f"{md(source.file_name)}, page {int(page)}", width=shown.width)


def text_view(before: str, passage: str, after: str) -> str:
    """A document's text as HTML: every character escaped, the passage in a <mark> scrolled into view."""
    return (
        "<div style='white-space:pre-wrap;font:15px/1.55 sans-serif;color:#31333f;margin:0 4px'>"
        f"{html.escape(before)}<mark id='passage' style='background:#ffe08a;padding:1px 0'>"
        f"{html.escape(passage)}</mark>{html.escape(after)}</div>"
        "<script>document.getElementById('passage').scrollIntoView({block: 'center'});</script>"
    )
