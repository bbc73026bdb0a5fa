"""Documents: what is indexed; delete (after confirming) or re-index."""

import streamlit as st

from rag import RagError
from ui.auth import current_caller, owner_id
from ui.documents import document_picker, documents_table
from ui.errors import service_or_stop, show_error
from ui.format import md
from ui.navigation import ensure_routed
from ui.state import PENDING_DELETE
from ui.workspaces import current_workspace

ensure_routed()

st.title("Documents")
service = service_or_stop()
sid = owner_id()
caller = current_caller()
workspace = current_workspace(service)
if flash := st.session_state.pop("documents.flash", None):
    st.success(flash, icon=":material/check_circle:")

docs = service.documents(workspace.id, caller)
if not docs:
    st.info(f"No documents are indexed in {md(workspace.label)} yet.", icon=":material/info:")
    st.page_link("pages/upload.py", label="Upload documents", icon=":material/upload_file:")
    st.stop()

st.dataframe(documents_table(docs), hide_index=True, width="stretch")
if workspace.role == "owner":
    changeable = docs
elif workspace.role == "editor":
    changeable = [d for d in docs if caller.kind == "account" and d.owner == caller.account_id]
    st.caption(f"As an editor of {md(workspace.label)} you re-index and delete the documents you uploaded.")
else:
    changeable = []
    st.caption(f"You may read the documents of {md(workspace.label)}; changing them needs the editor role.")
if not changeable:
    st.stop()
chosen = document_picker(
    changeable, "Select documents", "documents.selected", placeholder="Choose documents to re-index or delete"
)

reindex_col, delete_col = st.columns(2)
if reindex_col.button("Re-index", key="documents.reindex", disabled=not chosen, icon=":material/refresh:"):
    try:
        for doc_id in chosen:
            service.reindex_document(doc_id, owner=sid, workspace=workspace.id, caller=caller)
        st.session_state["documents.flash"] = f"Re-indexing {len(chosen)} document(s); follow it on the Upload page."
    except RagError as err:
        show_error(err)
    else:
        st.rerun()
if delete_col.button("Delete", key="documents.delete", disabled=not chosen, icon=":material/delete:"):
    st.session_state[PENDING_DELETE] = list(chosen)

names = {d.doc_id: d.file_name for d in docs}
pending = [i for i in st.session_state.get(PENDING_DELETE, []) if i in names]
if pending:
    st.warning(f"Delete {len(pending)} document(s) and all their chunks? This cannot be undone.")
    yes, no = st.columns(2)
    if yes.button("Yes, delete", key="documents.confirm_delete", type="primary"):
        st.session_state.pop(PENDING_DELETE, None)
        try:
            for doc_id in pending:
                service.delete_document(doc_id, workspace.id, caller)
        except RagError as err:
            show_error(err)
        else:
            st.session_state["documents.flash"] = f"Deleted {len(pending)} document(s)."
            st.rerun()
    if no.button("Cancel", key="documents.cancel_delete"):
        st.session_state.pop(PENDING_DELETE, None)
        st.rerun()
