"""The chat's pieces: answer settings and document filter (sidebar), streamed answers, sources, and the
conversation's download and clear buttons.

Model output is made inert with `rag`'s `neutralize_markdown` as it streams; a retrieval-only answer is
already escaped by the engine and only has its `$` escaped (`escape_math`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence

import streamlit as st

from rag import (
    AskOptions,
    Caller,
    ConversationStore,
    DocumentRecord,
    RagError,
    RagService,
    Source,
    StoredTurn,
    escape_math,
    neutralize_markdown,
)
from ui.documents import document_picker
from ui.format import md
from ui.sources import source_viewer

RETRIEVAL_ONLY_HINT = (
    "**Retrieval-only mode**: no language model is connected, so answers quote the best-matching "
    "passages of your documents instead of writing an answer. To connect one, set `OPENAI_API_KEY` "
    "(OpenAI) or `OPENAI_BASE_URL` (any OpenAI-compatible server such as Ollama, vLLM or LM Studio, "
    "e.g. `http://localhost:11434/v1`) and restart the app."
)

_RETRIEVAL_LABELS = {"dense": "Meaning (vectors)", "keyword": "Keywords (BM25)", "hybrid": "Both (hybrid)"}


def chat_sidebar(service: RagService) -> AskOptions:
    """Top-k, the LLM model and temperature (and the retrieval mode, when offered), in the sidebar."""
    settings = service.settings
    tunable = service.mode == "llm"
    # Defaults go into session state, not the widgets, so values kept across pages never clash with them.
    st.session_state.setdefault("chat.top_k", min(settings.top_k, 20))
    if st.session_state.get("chat.llm_model") not in settings.llm_choices:
        st.session_state["chat.llm_model"] = settings.llm_model
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
        model = st.selectbox(
            "LLM model",
            settings.llm_choices,
            key="chat.llm_model",
            disabled=not tunable or len(settings.llm_choices) < 2,
            help="The models offered here (LLM_MODELS)." if tunable else "Set with LLM_MODEL.",
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
        if not tunable:
            st.caption("No LLM connected: answers quote passages (retrieval-only).")
        retrieval = _retrieval_choice(service)
    return AskOptions(
        top_k=int(top_k),
        llm_model=model if tunable else None,
        temperature=float(temperature) if tunable else None,
        retrieval=retrieval,
    )


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


def document_filter(
    service: RagService, workspace: str, newest: Sequence[DocumentRecord], page: int, caller: Caller
) -> tuple[str, ...] | None:
    """A sidebar selector limiting questions to chosen documents; None means all of them.

    `newest` is the workspace's newest `page` documents. A larger library is not listed whole: a search box finds
    documents by name, so the page costs the same for ten documents or ten thousand.
    """
    docs = list(newest)
    with st.sidebar:
        if len(newest) >= page and (total := service.document_count(workspace, caller)) > len(newest):
            text = st.text_input(
                "Find documents by name",
                key="chat.doc_search",
                help=f"{total:,} documents: the {len(newest)} newest are listed; type part of a name to find others.",
            ).strip()
            if text:
                docs = service.find_documents(text, workspace, page, caller)
            listed = {d.doc_id for d in docs}
            for doc_id in st.session_state.get("chat.doc_ids", []):  # keep the chosen ones choosable
                if doc_id not in listed:
                    try:
                        docs.insert(0, service.document(doc_id, workspace, caller))
                    except RagError:
                        pass  # deleted meanwhile: the picker drops it
        chosen = document_picker(
            docs,
            "Only search these documents",
            "chat.doc_ids",
            placeholder="All documents",
            help="Leave empty to search every indexed document.",
        )
    return tuple(chosen) or None


def safe_stream(pieces: Iterable[str], mode: str) -> Iterator[str]:
    """An answer's text pieces for st.write_stream; model output is made inert (retrieval-only is pre-escaped)."""
    for piece in pieces:
        yield escape_math(piece) if mode == "retrieval-only" else neutralize_markdown(piece)


REGENERATE = "chat.regenerate"
"""Session-state key of a question to ask again (the Regenerate button took its old answer back)."""


def answer_actions(conversations: ConversationStore, sid: str, workspace: str, turn: StoredTurn, last: bool) -> None:
    """Under an answer: thumbs up or down (kept with it), a copy of its text, and Regenerate for the last one."""
    key = f"chat.feedback.{turn.id}"
    if key not in st.session_state:
        st.session_state[key] = {1: 1, -1: 0}.get(turn.feedback or 0)
    thumbs, copy, again = st.columns([1, 1, 4], vertical_alignment="center")
    with thumbs:
        st.feedback("thumbs", key=key, on_change=_store_feedback, args=(conversations, sid, turn.id or 0, key))
    with copy, st.popover("Copy", icon=":material/content_copy:"):
        st.code(turn.content, language=None, wrap_lines=True)  # the code block has its own copy button
    if last and again.button("Regenerate", key=f"chat.regenerate.{turn.id}", icon=":material/refresh:"):
        question = conversations.pop_answer(sid, workspace)
        if question is not None:
            st.session_state[REGENERATE] = question.content
            st.rerun()


def _store_feedback(conversations: ConversationStore, sid: str, turn_id: int, key: str) -> None:
    value = st.session_state.get(key)
    conversations.set_feedback(sid, turn_id, None if value is None else (1 if value == 1 else -1))


SCORE_HELP = (
    "How well the passage matches the question; higher is better, and only scores of one answer compare. "
    "Hybrid retrieval (the default) sums 1/(10 + rank) over the keyword (BM25) and vector rankings, so 0.18 "
    "means first in both; vector retrieval gives the cosine similarity, keyword retrieval the BM25 score."
)


def where_in_document(source: Source, parts: int | None = None) -> str:
    """Where a passage is: `p. 5` in a paged format, else `part 3 of 12` (its chunk among the document's)."""
    if source.page:
        return f"p. {source.page}"
    if source.chunk is None:
        return ""
    return f"part {source.chunk + 1} of {parts}" if parts else f"part {source.chunk + 1}"


def source_label(number: int, source: Source, parts: int | None = None, width: int | None = 40) -> str:
    """`[n] file-name…, p. 5` as plain text: the file name is shortened to fit `width`, the place never is."""
    head, where = f"[{number}] ", where_in_document(source, parts)
    tail = f", {where}" if where else ""
    name = source.file_name
    room = max(10, width - len(head) - len(tail)) if width else len(name)
    if len(name) > room:
        stem, dot, ext = name.rpartition(".")
        ext = f".{ext}" if dot and 0 < len(ext) <= 5 and stem else ""
        name = name[: room - 1 - len(ext)].rstrip(" ._-") + "…" + ext
    return head + name + tail


def render_sources(
    sources: Sequence[Source],
    service: RagService | None = None,
    workspace: str = "default",
    key: str = "new",
    parts: Mapping[str, int] | None = None,
) -> None:
    """The sources of an answer: a line naming them, a button per source opening where it came from (the
    source viewer), then file, place, score and passage in an expander. `parts` is each document's chunk
    count (by doc id), for the place of a passage in a format without pages."""
    if not sources:
        return
    parts = parts or {}
    labels = [source_label(i, s, parts.get(s.doc_id or ""), None) for i, s in enumerate(sources, start=1)]
    st.caption("Sources: " + " · ".join(md(label) for label in labels))
    if service is not None:
        columns = st.columns(min(len(sources), 6))
        for i, src in enumerate(sources, start=1):
            opened = columns[(i - 1) % len(columns)].button(
                md(source_label(i, src, parts.get(src.doc_id or ""))),
                key=f"chat.open.{key}.{i}",
                icon=":material/visibility:",
                type="tertiary",
                help=f"Open where it came from. Score {src.score:.3f}: {SCORE_HELP}",
            )
            if opened:
                source_viewer(service, src, workspace, f"viewer.{key}.{i}", labels[i - 1])
    with st.expander(f"Sources ({len(sources)})", icon=":material/description:"):
        for label, src in zip(labels, sources):
            st.markdown(f"**{md(label)}** · score {src.score:.3f}", help=SCORE_HELP)
            st.text(src.text)


def conversation_actions(conversations: ConversationStore, sid: str, workspace: str) -> None:
    """Clear the conversation, or download it as Markdown (sidebar)."""
    with st.sidebar:
        st.subheader("Conversation")
        empty = not conversations.history(sid, workspace)
        st.download_button(
            "Download as Markdown",
            conversations.to_markdown(sid, workspace=workspace),
            file_name="conversation.md",
            mime="text/markdown",
            key="chat.download",
            icon=":material/download:",
            disabled=empty,
            on_click="ignore",
            width="stretch",
        )
        pairs = conversations.feedback_pairs(workspace, sid)
        st.download_button(
            f"Helpful answers as evaluation pairs ({len(pairs)})",
            "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs),
            file_name="helpful-answers.jsonl",
            mime="application/jsonl",
            key="chat.download_pairs",
            icon=":material/fact_check:",
            disabled=not pairs,
            on_click="ignore",
            width="stretch",
            help="Answers you marked 👍, as lines for `python -m rag eval` or the Evaluate page: the question, "
            "the file of the answer's first source and a quote from it.",
        )
        st.button(
            "Clear conversation",
            key="chat.clear",
            icon=":material/delete_sweep:",
            on_click=conversations.clear,
            args=(sid, workspace),
            disabled=empty,
            width="stretch",
        )
