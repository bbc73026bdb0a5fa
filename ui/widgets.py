"""Shared renderers the pages use: errors, sources, the chat sidebar, job progress, small formatters.

Text that comes from documents (passages, file names) is always shown as text: through `st.text`,
or Markdown-escaped with `md()`, never as HTML. Model output goes through `neutralize_markdown`.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import streamlit as st

from rag import (
    AskOptions,
    ConversationStore,
    DocumentRecord,
    JobSnapshot,
    RagError,
    RagService,
    Settings,
    Source,
    escape_markdown,
    escape_math,
    neutralize_markdown,
    redact_url,
)
from ui.resources import get_service

log = logging.getLogger(__name__)

RETRIEVAL_ONLY_HINT = (
    "**Retrieval-only mode**: no language model is connected, so answers quote the best-matching "
    "passages of your documents instead of writing an answer. To connect one, set `OPENAI_API_KEY` "
    "(OpenAI) or `OPENAI_BASE_URL` (any OpenAI-compatible server such as Ollama, vLLM or LM Studio, "
    "e.g. `http://localhost:11434/v1`) and restart the app."
)


def md(text: str) -> str:
    """Untrusted text (a file name, a passage) made safe to place inside Markdown."""
    return escape_markdown(text).replace("$", "\\$")


def code(text: str) -> str:
    """Text as a Markdown code span (rendered literally; backticks dropped so it cannot break out)."""
    return "`" + " ".join(text.replace("`", "'").split()) + "`"


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
        from rag import load_settings

        try:
            settings = load_settings()
        except RagError:
            settings = None
        st.info(milvus_fix(settings), icon=":material/build:")
    except Exception as err:  # noqa: BLE001 - the edge: anything else is a bug, shown generically
        show_error(err)
    st.stop()
    raise AssertionError("unreachable")  # st.stop() raises


# -- answers and sources ---------------------------------------------------------------------------
def render_sources(sources: Sequence[Source], key: str = "") -> None:
    """The sources of an answer: a line naming them, then file, page, score and passage in an expander."""
    if not sources:
        return
    names = " · ".join(f"\\[{i}\\] {md(s.label)}" for i, s in enumerate(sources, start=1))
    st.caption(f"Sources: {names}")
    with st.expander(f"Sources ({len(sources)})", icon=":material/description:"):
        for i, src in enumerate(sources, start=1):
            st.markdown(f"**\\[{i}\\] {md(src.label)}** · score {src.score:.3f}")
            st.text(src.text)


def chat_sidebar(service: RagService) -> AskOptions:
    """Top-k, the LLM model and temperature (and the retrieval mode, when offered), in the sidebar."""
    settings = service.settings
    llm = service.mode == "llm"
    tunable = llm
    # Defaults go into session state, not the widgets, so values kept across pages never clash with them.
    st.session_state.setdefault("chat.top_k", min(settings.top_k, 20))
    st.session_state.setdefault("chat.llm_model", settings.llm_model)
    st.session_state.setdefault("chat.temperature", float(settings.temperature))
    with st.sidebar:
        st.subheader("Answer settings")
        top_k = st.slider(
            "Passages to retrieve (top-k)",
            1,
            20,
            key="chat.top_k",
            help="How many of the most similar passages are retrieved and cited.",
        )
        model = st.text_input(
            "LLM model",
            key="chat.llm_model",
            disabled=not tunable,
            help="The model name the LLM server knows (LLM_MODEL)." if tunable else "Set with LLM_MODEL.",
        )
        temperature = st.slider(
            "Temperature",
            0.0,
            2.0,
            step=0.05,
            key="chat.temperature",
            disabled=not tunable,
            help="Higher is more varied; lower is more literal (RAG_TEMPERATURE).",
        )
        if not llm:
            st.caption("No LLM connected: answers quote passages (retrieval-only).")
        retrieval = _retrieval_choice(service)
    return AskOptions(
        top_k=int(top_k),
        llm_model=(model.strip() or None) if tunable else None,
        temperature=float(temperature) if tunable else None,
        retrieval=retrieval,
    )


_RETRIEVAL_LABELS = {"dense": "Meaning (vectors)", "keyword": "Keywords (BM25)", "hybrid": "Both (hybrid)"}


def _retrieval_choice(service: RagService) -> str | None:
    """How passages are found, when the engine offers a choice; None keeps the configured default."""
    modes = tuple(service.features.retrieval_modes)
    if len(modes) < 2:
        return None
    default = service.settings.retrieval_mode
    if st.session_state.get("chat.retrieval") not in modes:
        st.session_state["chat.retrieval"] = default if default in modes else modes[0]
    return st.radio(
        "Find passages by",
        modes,
        format_func=lambda m: _RETRIEVAL_LABELS.get(m, m),
        key="chat.retrieval",
        help="Meaning finds paraphrases; keywords find exact names and numbers; both combines them.",
    )


# -- formatting ------------------------------------------------------------------------------------
def human_size(size: float) -> str:
    """1536 → '1.5 KB'."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def human_duration(seconds: float | None) -> str:
    """95 → '1 min 35 s'; None → '—'."""
    if seconds is None:
        return "—"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


# -- ingestion jobs --------------------------------------------------------------------------------
_STAGE_ICONS = {
    "queued": ":material/schedule:",
    "reading": ":material/menu_book:",
    "chunking": ":material/content_cut:",
    "embedding": ":material/memory:",
    "storing": ":material/database:",
    "done": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
}


def render_running_job(job: JobSnapshot) -> None:
    """Per-file live progress of a running job: stage, chunks, rate and time left."""
    finished = sum(1 for f in job.files if f.status is not None)
    st.progress(
        job.fraction,
        text=f"**Indexing {len(job.files)} file(s)**: {finished} finished · {job.chunks_done} chunks stored",
    )
    for f in job.files:
        if f.status is not None:
            value = 1.0
        elif f.chunks_total:
            value = min(1.0, (f.chunks_embedded + f.chunks_done) / (2 * f.chunks_total))
        else:
            value = 0.0
        parts = [f"{_STAGE_ICONS.get(f.stage, '')} **{md(f.file)}**", str(f.stage)]
        if f.chunks_total:
            parts.append(f"{f.chunks_done}/{f.chunks_total} chunks")
        if f.rate > 0 and f.status is None:
            parts.append(f"{f.rate:.1f} chunks/s")
        if f.eta is not None and f.status is None:
            parts.append(f"{human_duration(f.eta)} left")
        if f.status is not None:
            parts.append(str(f.status))
        st.progress(value, text=" · ".join(parts))


def render_queued_job(job: JobSnapshot, jobs: Sequence[JobSnapshot]) -> None:
    """A job waiting for its turn: what it holds and why it waits (the owner's other job, or a free slot)."""
    names = ", ".join(md(f.file) for f in job.files[:5])
    if len(job.files) > 5:
        names += f" and {len(job.files) - 5} more"
    if any(j.active and j.created_at < job.created_at for j in jobs):
        why = "starts when your upload above has finished"  # one job per person at a time
    else:
        why = "starts as soon as other people's uploads leave a free slot"
    st.progress(0.0, text=f"**Queued: {len(job.files)} file(s)** · {why}")
    st.caption(names)


def render_job_summary(job: JobSnapshot) -> None:
    """How a finished job ended: indexed, already present, replaced, failed (each with its reason)."""
    when = time.strftime("%H:%M:%S", time.localtime(job.created_at))
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
    lines = []
    labels = {
        "indexed": "Indexed",
        "unchanged": "Already present (unchanged)",
        "replaced": "Replaced an older version",
        "cancelled": "Cancelled",
    }
    for status, label in labels.items():
        if groups.get(status):
            lines.append(f"- {label} ({len(groups[status])}): " + ", ".join(md(n) for n in groups[status]))
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


# -- documents and uploads -------------------------------------------------------------------------
def documents_table(docs: Sequence[DocumentRecord]) -> list[dict[str, object]]:
    """Rows for the documents table."""
    return [
        {
            "Name": d.file_name,
            "Type": d.file_type,
            "Pages": d.pages,
            "Chunks": d.chunks,
            "Size": human_size(d.size),
            "Added": datetime.fromtimestamp(d.added_at).replace(microsecond=0),
        }
        for d in docs
    ]


def stash_uploads(files: Sequence[BinaryIO], data_dir: Path) -> list[Path]:
    """Write browser uploads to private temporary files inside the data dir; the engine copies them."""
    incoming = Path(data_dir) / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    stale = time.time() - 24 * 3600
    for old in incoming.glob("*.upload"):  # left behind by a closed tab
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < stale:
                old.unlink()
    paths = []
    for upload in files:
        path = incoming / f"{uuid.uuid4().hex}.upload"
        with open(path, "wb") as out:
            shutil.copyfileobj(upload, out, 1 << 20)
        paths.append(path)
    return paths


def discard_files(paths: Sequence[Path]) -> None:
    """Remove temporary upload files once their job ended."""
    for path in paths:
        Path(path).unlink(missing_ok=True)


def settings_table(settings: Settings) -> list[dict[str, str]]:
    """Rows for the settings page: environment name, value (secrets masked, URLs without credentials)."""
    shown = settings.public_dict()
    rows = []
    for name, field in type(settings).model_fields.items():
        alias = field.validation_alias
        env = str(alias.choices[0]) if alias is not None and hasattr(alias, "choices") else name.upper()
        value = shown.get(name)
        rows.append(
            {
                "Setting": env,
                "Value": "" if value is None else str(value),
                "Description": field.description or "",
            }
        )
    return rows


# -- chat ------------------------------------------------------------------------------------------
def safe_stream(pieces: Iterable[str], mode: str) -> Iterator[str]:
    """An answer's text pieces for st.write_stream; model output is made inert (retrieval-only is pre-escaped)."""
    for piece in pieces:
        yield escape_math(piece) if mode == "retrieval-only" else neutralize_markdown(piece)


def document_picker(docs: Sequence[DocumentRecord], label: str, key: str, **options: Any) -> list[str]:
    """A multiselect of documents by name returning their ids; ids of documents deleted meanwhile are
    dropped from the widget's state first (Streamlit refuses a default that is not an option)."""
    names = {d.doc_id: d.file_name for d in docs}
    st.session_state[key] = [i for i in st.session_state.get(key, []) if i in names]
    return list(st.multiselect(label, list(names), format_func=names.get, key=key, **options))


def document_filter(docs: Sequence[DocumentRecord]) -> tuple[str, ...] | None:
    """A sidebar selector limiting questions to chosen documents; None means all of them."""
    with st.sidebar:
        chosen = document_picker(
            docs,
            "Only search these documents",
            "chat.doc_ids",
            placeholder="All documents",
            help="Leave empty to search every indexed document.",
        )
    return tuple(chosen) or None


def conversation_actions(conversations: ConversationStore, sid: str) -> None:
    """Clear the conversation, or download it as Markdown (sidebar)."""
    with st.sidebar:
        st.subheader("Conversation")
        empty = not conversations.history(sid)
        st.download_button(
            "Download as Markdown",
            conversations.to_markdown(sid),
            file_name="conversation.md",
            mime="text/markdown",
            key="chat.download",
            icon=":material/download:",
            disabled=empty,
            on_click="ignore",
            width="stretch",
        )
        st.button(
            "Clear conversation",
            key="chat.clear",
            icon=":material/delete_sweep:",
            on_click=conversations.clear,
            args=(sid,),
            disabled=empty,
            width="stretch",
        )
