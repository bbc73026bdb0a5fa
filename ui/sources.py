"""The source viewer: where a cited passage came from, opened from an answer's sources.

A PDF source shows its page as an image drawn by the engine from the PDF itself (never from document
text), the passage highlighted, with page navigation, zoom and a download of the original file. Other
formats show the passage in its surrounding text, marked, as escaped Markdown.
"""

from __future__ import annotations

import streamlit as st

from rag import RagError, RagService, Source
from ui.auth import current_caller
from ui.errors import show_error
from ui.format import md

_ZOOMS = (0.75, 1.0, 1.25, 1.5, 2.0)


@st.dialog("Source", width="large")
def source_viewer(service: RagService, source: Source, workspace: str, key: str) -> None:
    """The cited page (or text) of one source; a dialog, so paging and zoom rerun only the dialog."""
    st.markdown(f"**{md(source.label)}** · score {source.score:.3f}")
    if not source.doc_id:
        st.text(source.text)
        return
    try:
        if source.page:
            _pdf_page(service, source, workspace, key)
        else:
            before, passage, after = service.source_context(source.doc_id, workspace, source.text, current_caller())
            st.markdown(f"{md(before)}**:orange-background[{md(passage)}]**{md(after)}")
        name, data = service.original(source.doc_id, workspace, current_caller())
    except RagError as err:
        show_error(err)
        return
    st.download_button(
        f"Download {name}", data, file_name=name, key=f"{key}.download", icon=":material/download:", on_click="ignore"
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
    st.image(shown.png, caption=f"{source.file_name}, page {int(page)}", width=shown.width)
