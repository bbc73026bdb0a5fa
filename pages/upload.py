"""Upload: drop files, index them in the background, and watch each file's progress live."""

import streamlit as st

from rag import SUPPORTED_EXTENSIONS, RagError
from ui.state import JOB_FILES, session_id
from ui.widgets import (
    discard_files,
    render_job_summary,
    render_queued_job,
    render_running_job,
    service_or_stop,
    show_error,
    stash_uploads,
)

st.title("Upload documents")
service = service_or_stop()
sid = session_id()
limits = service.settings
st.caption(
    f"Supported: {', '.join(SUPPORTED_EXTENSIONS)}; up to {limits.max_files} files per job, "
    f"{limits.max_file_mb:g} MB each. Indexing runs in the background: you can leave this page meanwhile."
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
        paths = stash_uploads(files, limits.data_dir)
        job = service.start_job(paths, [f.name for f in files], owner=sid)
        st.session_state.setdefault(JOB_FILES, {})[job.id] = paths
    except RagError as err:
        show_error(err)

watching = {job.id for job in service.list_jobs(owner=sid) if job.active}


@st.fragment(run_every=1 if watching else None)
def jobs_panel() -> None:
    jobs = service.list_jobs(owner=sid)
    for job in reversed([j for j in jobs if j.active]):  # oldest first: the order they run in
        with st.container(border=True):
            if job.state == "queued":
                render_queued_job(job, jobs)
            else:
                render_running_job(job)
            if st.button("Cancel", key=f"upload.cancel.{job.id}", icon=":material/cancel:"):
                service.cancel_job(job.id, owner=sid)
    finished = [j for j in jobs if not j.active]
    for job in finished:
        discard_files(st.session_state.get(JOB_FILES, {}).pop(job.id, []))
    if any(job.id in watching for job in finished):
        st.rerun()  # a job just ended: rerun the page so polling stops and the summary shows
    for job in finished[:3]:
        render_job_summary(job)


jobs_panel()
