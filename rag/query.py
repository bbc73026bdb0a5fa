"""Questions → async retrieval → a streamed, cited answer (or, with no LLM, quoted passages).

Follow-up questions are rewritten into standalone ones from the chat history before retrieval.
Every answer carries its sources: file name, page, score and chunk text.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from rag.config import Settings
from rag.embeddings import Embedder
from rag.extract import abest_windows
from rag.llms import map_provider_errors
from rag.markdown import escape_markdown
from rag.options import AskOptions
from rag.store import RRF_K, DocumentStore, neighbour_id

Mode = Literal["llm", "retrieval-only"]

RETRIEVAL_ONLY_NOTE = (
    "Retrieval-only mode: no language model is configured, so this is not a generated answer. "
    "These are the sentences and passages of your documents that best match the question. "
    "Set OPENAI_API_KEY (or OPENAI_BASE_URL for Ollama, vLLM or LM Studio) to get written answers."
)

SYSTEM_PROMPT = (
    "You answer questions about the user's documents using only the numbered sources given. "
    "Cite the sources you use in square brackets, like [1] or [2][3]. "
    "If the sources do not contain the answer, say that the documents do not say. Be concise."
)

CONDENSE_PROMPT = (
    "Rewrite the follow-up question as one standalone question that can be understood without the "
    "conversation. Keep names and specifics. Reply with the question only.\n\n"
    "Conversation:\n{history}\n\nFollow-up question: {question}\n\nStandalone question:"
)


class Source(BaseModel, frozen=True):
    """One retrieved passage; the schema of `ask --json` sources."""

    file_name: str
    page: int | None
    score: float
    text: str
    doc_id: str | None = None
    chunk: int | None = None
    hit_start: int | None = None  # where the chunk that was hit lies in `text` (the rest is its context)
    hit_end: int | None = None

    @property
    def label(self) -> str:
        """`file, p. N` as people cite it."""
        return f"{self.file_name}, p. {self.page}" if self.page else self.file_name


class ChatTurn(BaseModel, frozen=True):
    """One message of a conversation; an answer also names the documents it cited (for follow-ups)."""

    role: Literal["user", "assistant"]
    content: str
    doc_ids: tuple[str, ...] = ()


FOLLOW_UP_WORDS = 8  # without an LLM, a question this short after another is read as a follow-up to it
_CITATION = re.compile(r"\\?\[(\d{1,3})\\?\]")


def cited_documents(answer: str, sources: Sequence[Source]) -> tuple[str, ...]:
    """The documents an answer cites by [n] (its first source's when it cites none), in order, once each."""
    numbers = [int(n) for n in _CITATION.findall(answer)] or [1]
    found = [sources[n - 1].doc_id for n in numbers if 0 < n <= len(sources)]
    return tuple(dict.fromkeys(d for d in found if d))


def _fuse(rankings: Sequence[Sequence[Source]], top_k: int) -> list[Source]:
    """Reciprocal rank fusion of source lists (the passages' k), one entry per chunk."""
    scores: dict[tuple[str | None, int | None, str], float] = {}
    first: dict[tuple[str | None, int | None, str], Source] = {}
    for ranking in rankings:
        for rank, src in enumerate(ranking, start=1):
            key = (src.doc_id, src.chunk, src.text[:80])
            scores[key] = scores.get(key, 0.0) + 1 / (RRF_K + rank)
            first.setdefault(key, src)
    best = sorted(scores, key=lambda key: -scores[key])[:top_k]
    return [first[key].model_copy(update={"score": round(scores[key], 4)}) for key in best]


class Answer(BaseModel, frozen=True):
    """An answer with its sources; the schema of `ask --json`."""

    question: str
    answer: str
    mode: Mode
    sources: list[Source]
    standalone_question: str | None = None
    retrieval_seconds: float | None = None


class AnswerStream:
    """Text pieces for `st.write_stream` or a terminal; `.answer` holds the Answer once exhausted."""

    def __init__(self, items: Iterator[str | Answer]) -> None:
        self._items = items
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        for item in self._items:
            if isinstance(item, Answer):
                self.answer = item
            else:
                yield item


def _with_context(
    text: str, hit_id: str, position: int, page: int | None, width: int, around: dict[str, tuple[str, int | None]]
) -> str:
    """A hit's text with its neighbouring chunks on the same page (so a cited page stays true), overlaps merged.

    A passage often straddles two chunks; showing the neighbours gives the reader (and the LLM) the whole of it.
    """
    for step in range(1, width + 1):
        before = around.get(neighbour_id(hit_id, position - step)) if position - step >= 0 else None
        after = around.get(neighbour_id(hit_id, position + step))
        if before and before[1] == page:
            text = _merge(before[0], text)
        if after and after[1] == page:
            text = _merge(text, after[0])
    return text


def _merge(first: str, second: str, longest: int = 2000) -> str:
    """Join two consecutive chunks, dropping the overlap the splitter repeated at the start of the second."""
    for size in range(min(len(first), len(second), longest), 15, -1):
        if first.endswith(second[:size]):
            return first + second[size:]
    return f"{first}\n{second}"


def _carried_documents(history: Sequence[ChatTurn]) -> tuple[str, ...]:
    """The documents the last answer cited."""
    last = next((t for t in reversed(history) if t.role == "assistant"), None)
    return last.doc_ids if last else ()


def _history_text(history: Sequence[ChatTurn], turns: int = 6) -> str:
    return "\n".join(f"{t.role}: {t.content[:1500]}" for t in history[-turns:])


class QueryEngine:
    """Answers questions against one DocumentStore; lives on the runtime loop."""

    def __init__(self, settings: Settings, embedder: Embedder, store: DocumentStore, llm: Any | None) -> None:
        self.settings = settings
        self.embedder = embedder
        self.store = store
        self.llm = llm

    @property
    def mode(self) -> Mode:
        """`llm` when a language model is configured, else `retrieval-only`."""
        return "llm" if self.llm is not None else "retrieval-only"

    async def aretrieve(self, question: str, options: AskOptions = AskOptions()) -> list[Source]:  # noqa: B008
        """The passages most similar to the question (dense), sharing its words (keyword), or both (hybrid)."""
        retrieval = options.retrieval or self.settings.retrieval_mode
        embedding = None if retrieval == "keyword" else await self.embedder.aembed_query(question)
        top_k = options.top_k or self.settings.top_k
        hits = await self.store.asearch(embedding, top_k, options.doc_ids, retrieval, question, options.workspace)
        width = self.settings.context_chunks
        around = await self.store.aneighbours(hits, width) if width else {}
        sources = []
        for hit in hits:
            meta = hit.node.metadata
            page = meta.get("page")
            page = int(page) if page not in (None, "") else None
            text = hit_text = hit.node.get_content()
            doc_id, position = meta.get("doc_id"), meta.get("chunk")
            if around and doc_id and position is not None:
                text = _with_context(text, hit.node.node_id, int(position), page, width, around)
            hit_start = text.find(hit_text)
            sources.append(
                Source(
                    file_name=str(meta.get("file_name", "?")),
                    page=page,
                    score=round(float(hit.score or 0.0), 4),
                    text=text,
                    doc_id=doc_id,
                    chunk=position,
                    hit_start=hit_start if hit_start >= 0 else None,
                    hit_end=hit_start + len(hit_text) if hit_start >= 0 else None,
                )
            )
        return sources

    async def acondense(self, question: str, history: Sequence[ChatTurn], llm: Any | None = None) -> str:
        """A standalone version of a follow-up question, for retrieval."""
        llm = llm or self.llm
        if not history:
            return question
        if llm is None:
            previous = next((t.content for t in reversed(history) if t.role == "user"), "")
            return f"{previous} {question}" if previous and len(question.split()) < FOLLOW_UP_WORDS else question
        prompt = CONDENSE_PROMPT.format(history=_history_text(history), question=question)
        with map_provider_errors():
            response = await llm.acomplete(prompt)
        return response.text.strip() or question

    async def astream_answer(
        self,
        question: str,
        history: Sequence[ChatTurn] = (),
        options: AskOptions = AskOptions(),  # noqa: B008 - frozen, so one shared default is safe
        llm: Any | None = None,
    ) -> AsyncIterator[str | Answer]:
        """Yield the answer's text pieces as they arrive, then the finished Answer (`llm` overrides the default)."""
        llm = llm or self.llm
        standalone = await self.acondense(question, history, llm)
        started = time.perf_counter()
        sources = await self.aretrieve(standalone, options)
        carried = _carried_documents(history) if llm is None and standalone != question else ()
        if carried and not options.doc_ids:
            # No LLM to resolve "it": the previous answer's documents are searched too, and both lists fused.
            within = await self.aretrieve(standalone, options.model_copy(update={"doc_ids": carried}))
            sources = _fuse([within, sources], options.top_k or self.settings.top_k)
        retrieval_seconds = time.perf_counter() - started
        pieces: list[str] = []
        if llm is None:
            # A follow-up's own words pick the sentences; the previous question only helped find the passages.
            text = await self._extractive(question, sources)
            pieces.append(text)
            yield text
        elif not sources:
            text = "No indexed document matches this question. Upload documents on the Upload page first."
            pieces.append(text)
            yield text
        else:
            from llama_index.core.llms import ChatMessage, MessageRole  # only with an LLM: 2-3 s of imports

            messages = [ChatMessage(role=MessageRole.SYSTEM, content=SYSTEM_PROMPT)]
            for turn in history[-6:]:
                messages.append(ChatMessage(role=MessageRole(turn.role), content=turn.content))
            context = "\n\n".join(f"[{i}] {s.label}:\n{s.text}" for i, s in enumerate(sources, start=1))
            messages.append(ChatMessage(role=MessageRole.USER, content=f"Sources:\n{context}\n\nQuestion: {question}"))
            with map_provider_errors():
                stream = await llm.astream_chat(messages)
                async for chunk in stream:
                    if chunk.delta:
                        pieces.append(chunk.delta)
                        yield chunk.delta
        yield Answer(
            question=question,
            answer="".join(pieces),
            mode=self.mode,
            sources=sources,
            standalone_question=standalone if standalone != question else None,
            retrieval_seconds=round(retrieval_seconds, 4),
        )

    async def aanswer(
        self,
        question: str,
        history: Sequence[ChatTurn] = (),
        options: AskOptions = AskOptions(),  # noqa: B008 - frozen, so one shared default is safe
        llm: Any | None = None,
    ) -> Answer:
        """The whole answer with its sources (the stream read to its end): for callers that do not stream."""
        answer = None
        async for item in self.astream_answer(question, history, options, llm):
            if isinstance(item, Answer):
                answer = item
        assert answer is not None  # astream_answer always ends with the Answer
        return answer

    async def _extractive(self, question: str, sources: Sequence[Source]) -> str:
        """Retrieval-only answer: the one or two short runs of sentences that best answer the question, quoted
        with their [n] citations (rag/extract.py says how they are chosen).

        It does not repeat RETRIEVAL_ONLY_NOTE: the chat shows that once per conversation, the CLI once per
        answer, and `mode` says it in JSON."""
        if not sources:
            return "No indexed document matches this question."
        windows = await abest_windows(question, sources, self.embedder)
        if not windows:
            return f"“{escape_markdown(' '.join(sources[0].text.split())[:300])}” \\[1\\]"
        return "\n\n".join(f"“{escape_markdown(w.text)}” \\[{w.source}\\]" for w in windows)
