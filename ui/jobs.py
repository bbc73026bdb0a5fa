"""Ingestion jobs on the page: handing uploads to a job, and its live progress, queue place and summary.

The jobs themselves live in the engine (`service.start_job`, `list_jobs`, `cancel_job`), so a refresh or a
second tab shows the same jobs; this module only draws them, polling once a second while one is active.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import streamlit as st

from rag import JobSnapshot, RagService, Workspace
from ui.auth import current_caller
from ui.format import human_duration, md

_STAGE_ICONS = {
    "queued": ":material/schedule:",
    "reading": ":material/menu_book:",
    "ocr": ":material/document_scanner:",
    "chunking": ":material/content_cut:",
    "embedding": ":material/memory:",
    "storing": ":material/database:",
    "done": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
}

_STATUS_LABELS = {
    "indexed": "Indexed",
    "unchanged": "Already present (unchanged)",
    "replaced": "Re-indexed (the older version replaced)",
    "cancelled": "Cancelled",
}


class Upload(Protocol):
    """A file the browser uploaded (Streamlit's UploadedFile): its name and its bytes."""

    name: str

    def read(self, size: int = -1, /) -> bytes: ...


# -- starting a job --------------------------------------------------------------------------------
def start_upload_job(service: RagService, files: Sequence[Upload], owner: str, workspace: str) -> JobSnapshot:
    """Index browser uploads into a workspace in a background job owned by `owner`.

    The engine writes each upload's bytes once, under their hash, and removes those no document keeps
    (failed, cancelled or duplicate files) when the job ends.
    """
    uploads = [(f.name, f) for f in files]
    return service.start_upload_job(uploads, owner=owner, workspace=workspace, caller=current_caller())


# -- watching jobs ---------------------------------------------------------------------------------
def jobs_panel(service: RagService, owner: str, workspace: Workspace | None = None) -> None:
    """`owner`'s active jobs into a workspace (every workspace: None), oldest first, each with a Cancel button,
    then the last three finished ones; each names its workspace.

    A fragment: while a job is active only the panel reruns, once a second; when one ends the whole page
    reruns, so polling stops and the summary shows.
    """

    def owned() -> list[JobSnapshot]:
        jobs = service.list_jobs(owner=owner)
        return [j for j in jobs if workspace is None or j.workspace == workspace.id]

    watching = {job.id for job in owned() if job.active}
    if workspace is None:
        names = {w.id: w.label for w in service.list_workspaces(current_caller())}
    else:
        names = {workspace.id: workspace.label}

    @st.fragment(run_every=1 if watching else None)
    def panel() -> None:
        jobs = owned()
        if workspace is not None and jobs:
            st.caption(f"Your uploads into **{md(workspace.label)}** (those into other workspaces show there):")
        for job in reversed([j for j in jobs if j.active]):  # oldest first: the order they run in
            into = md(names.get(job.workspace or "", job.workspace or "?"))
            with st.container(border=True):
                if job.state == "queued":
                    render_queued_job(job, jobs, into)
                else:
                    render_running_job(job, into)
                if st.button("Cancel", key=f"upload.cancel.{job.id}", icon=":material/cancel:"):
                    service.cancel_job(job.id, owner=owner)
        finished = [j for j in jobs if not j.active]
        if any(job.id in watching for job in finished):
            st.rerun()
        for job in finished[:3]:
            render_job_summary(job, md(names.get(job.workspace or "", job.workspace or "?")))

    panel()


def render_running_job(job: JobSnapshot, into: str = "") -> None:
    """Per-file live progress of a running job: stage, chunks, rate and time left (`into`: its workspace,
    as Markdown)."""
    finished = sum(1 for f in job.files if f.status is not None)
    where = f" into {into}" if into else ""
    st.progress(
        job.fraction,
        text=f"**Indexing {len(job.files)} file(s)**{where}: {finished} finished · {job.chunks_done} chunks stored",
    )
    for f in job.files:
        if f.status is not None:
            value = 1.0
        elif f.chunks_total:
            value = min(1.0, (f.chunks_embedded + f.chunks_done) / (2 * f.chunks_total))
        elif f.pages_total:  # reading scanned pages comes before any chunk
            value = 0.5 * f.pages_done / f.pages_total
        else:
            value = 0.0
        parts = [f"{_STAGE_ICONS.get(f.stage, '')} **{md(f.file)}**", str(f.stage)]
        if f.pages_total and f.stage == "ocr":
            parts.append(f"{f.pages_done}/{f.pages_total} pages read by OCR")
        if f.chunks_total:
            parts.append(f"{f.chunks_done}/{f.chunks_total} chunks")
        if f.rate > 0 and f.status is None:
            parts.append(f"{f.rate:.1f} chunks/s")
        if f.eta is not None and f.status is None:
            parts.append(f"{human_duration(f.eta)} left")
        if f.status is not None:
            parts.append(str(f.status))
        st.progress(value, text=" · ".join(parts))


def render_queued_job(job: JobSnapshot, jobs: Sequence[JobSnapshot], into: str = "") -> None:
    """A job waiting for its turn: what it holds and why it waits (the owner's other job, or a free slot)."""
    names = ", ".join(md(f.file) for f in job.files[:5])
    if len(job.files) > 5:
        names += f" and {len(job.files) - 5} more"
    if any(j.active and j.created_at < job.created_at for j in jobs):
        why = "starts when your upload above has finished"  # one job per person at a time
    else:
        why = "starts as soon as other people's uploads leave a free slot"
    where = f" into {into}" if into else ""
    st.progress(0.0, text=f"**Queued: {len(job.files)} file(s)**{where} · {why}")
    st.caption(names)


def render_job_summary(job: JobSnapshot, into: str = "") -> None:
    """How a finished job ended: indexed, already present, re-indexed, failed (each with its reason); `into`
    names its workspace (Markdown)."""
    when = time.strftime("%H:%M:%S", time.localtime(job.created_at))
    when = f"{when}, into {into}" if into else when
    if job.report is None:
        if job.state == "cancelled":
            st.warning(f"Job {job.id} (started {when}) was cancelled.", icon=":material/cancel:")
        else:
            st.error(
                f"Job {job.id} (started {when}) failed: {md(job.error or 'unknown error')}", icon=":material/error:"
            )
        return
    groups: dict[str, list[str]] = {}
    for result in job.report.files:
        groups.setdefault(str(result.status), []).append(result.file)
    seconds = human_duration(job.report.seconds)
    headline = f"Job {job.id} (started {when}) {job.state} in {seconds}: {job.report.chunks} chunk(s) written."
    lines = [
        f"- {label} ({len(groups[status])}): " + ", ".join(md(n) for n in groups[status])
        for status, label in _STATUS_LABELS.items()
        if groups.get(status)
    ]
    failed = [r for r in job.report.files if r.status == "failed"]
    body = headline + ("\n" + "\n".join(lines) if lines else "")
    if failed or job.state != "done":
        st.warning(body, icon=":material/warning:")
    else:
        st.success(body, icon=":material/check_circle:")
    if failed:
        reasons = "\n".join(f"- **{md(r.file)}**: {md(_reason(r.file, r.error))}" for r in failed)
        st.error(f"Failed ({len(failed)}):\n{reasons}", icon=":material/error:")


def _reason(file: str, error: str | None) -> str:
    """A failure's reason without the file name the engine may have put in front of it."""
    reason = (error or "failed").strip()
    return reason[len(file) + 1 :].strip() if reason.startswith(f"{file}:") else reason
