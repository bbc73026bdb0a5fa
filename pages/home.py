"""Home: what is connected (Milvus, embedding model, LLM) and how much is indexed."""

import streamlit as st

from rag import RagError, redact_url
from ui.chat import RETRIEVAL_ONLY_HINT
from ui.errors import milvus_fix, service_or_stop, show_error
from ui.format import code, md
from ui.navigation import ensure_routed
from ui.workspaces import current_workspace

ensure_routed()

st.title("Ask your documents")
st.caption("Upload documents, then ask questions about them. Every answer cites the passages it comes from.")

service = service_or_stop()
workspace = current_workspace(service)
try:
    status = service.status(workspace.id)  # counts of this workspace, from the catalogue (no collection scan)
except RagError as err:
    show_error(err)
    st.info(milvus_fix(service.settings), icon=":material/build:")
    st.stop()

kind = {"embedded": "embedded server", "external": "external server", "lite": "Milvus Lite"}.get(
    status.store.kind, status.store.kind
)
st.caption(f"In the workspace **{md(workspace.label)}**:")
docs, chunks, mode = st.columns(3)
docs.metric("Documents", status.documents, border=True, help="Indexed documents of this workspace.")
chunks.metric("Chunks", status.store.chunks, border=True, help="Searchable passages of this workspace's documents.")
mode.metric("Answers", "LLM" if status.mode == "llm" else "Retrieval-only", border=True)

st.subheader("Connected")
st.markdown(
    f"- **Milvus**: {code(redact_url(status.store.uri))} ({kind}), server version {md(status.store.version)}, "
    f"collection {code(status.store.collection)}\n"
    f"- **Embedding model**: {code(status.embed_model)} ({status.embed_dim} dimensions)\n"
    f"- **Language model**: {md(status.llm)}"
)

features = getattr(service, "features", None)
if getattr(features, "reason", None):
    st.caption(md(features.reason))
if status.mode != "llm":
    st.info(RETRIEVAL_ONLY_HINT, icon=":material/info:")
if status.recovered:
    st.warning(
        f"Removed {len(status.recovered)} document(s) of this workspace left half-indexed by an interrupted run: "
        + ", ".join(md(name) for name in status.recovered),
        icon=":material/healing:",
    )
if status.documents == 0:
    st.info(
        f"No documents in {md(workspace.label)} yet. Start by adding some on the Upload page.",
        icon=":material/upload_file:",
    )
    st.page_link("pages/upload.py", label="Upload documents", icon=":material/upload_file:")
else:
    st.page_link("pages/chat.py", label="Ask a question", icon=":material/forum:")
