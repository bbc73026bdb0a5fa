"""Upload: drop files, index them in the background, and watch each file's progress live."""

import streamlit as st

from rag import SUPPORTED_EXTENSIONS, RagError
from ui.auth import owner_id
from ui.errors import service_or_stop, show_error
from ui.format import md
from ui.jobs import jobs_panel, start_upload_job
from ui.navigation import ensure_routed
from ui.workspaces import current_workspace

ensure_routed()

st.title("Upload documents")
service = service_or_stop()
sid = owner_id()
workspace = current_workspace(service)
if workspace.role == "viewer":
    st.info(
        f"You may read and ask in {md(workspace.label)}, not add documents: ask an admin for the editor role, or "
        "choose another workspace in the sidebar.",
        icon=":material/lock:",
    )
    jobs_panel(service, owner=sid)
    st.stop()
limits = service.settings
st.caption(
    f"Supported: {', '.join(SUPPORTED_EXTENSIONS)}; up to {limits.max_files} files per job, "
    f"{limits.max_file_mb:g} MB each (a PDF up to {limits.max_pages} pages), into the workspace "
    f"**{md(workspace.label)}**. Indexing runs in the "
    "background: you can leave this page meanwhile."
)


with st.form("upload.form", clear_on_submit=True, border=False):
    files = st.file_uploader("Drop files here", accept_multiple_files=True, key="upload.files")
    submitted = st.form_submit_button("Index files", type="primary", icon=":material/upload:")
if submitted and not files:
    st.warning("Choose or drop some files first.")
elif submitted and len(files) > limits.max_files:
    st.error(f"{len(files)} files is more than the {limits.max_files} allowed in one job (RAG_MAX_FILES).")
elif submitted:
    try:
        start_upload_job(service, files, owner=sid, workspace=workspace.id)
    except RagError as err:
        show_error(err)

jobs_panel(service, owner=sid, workspace=workspace)
