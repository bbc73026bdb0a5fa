"""Questions → async retrieval → a streamed, cited answer (or, with no LLM, quoted passages).

Follow-up questions are rewritten into standalone ones from the chat history before retrieval.
Every answer carries its sources: file name, page, score and chunk text.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from rag.config import Settings
from rag.embeddings import Embedder
from rag.llms import map_provider_errors
from rag.markdown import escape_markdown
from rag.options import AskOptions
from rag.store import DocumentStore, neighbour_id

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

    @property
    def label(self) -> str:
        """`file, p. N` as people cite it."""
        return f"{self.file_name}, p. {self.page}" if self.page else self.file_name


class ChatTurn(BaseModel, frozen=True):
    """One message of a conversation."""

    role: Literal["user", "assistant"]
    content: str


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


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n{2,}|\n(?=[A-Z•\-*])", text)
    return [" ".join(p.split()) for p in parts if len(p.split()) >= 4]


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


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
            text = hit.node.get_content()
            doc_id, position = meta.get("doc_id"), meta.get("chunk")
            if around and doc_id and position is not None:
                text = _with_context(text, hit.node.node_id, int(position), page, width, around)
            sources.append(
                Source(
                    file_name=str(meta.get("file_name", "?")),
                    page=page,
                    score=round(float(hit.score or 0.0), 4),
                    text=text,
                    doc_id=doc_id,
                    chunk=position,
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
            return f"{previous} {question}" if previous and len(question.split()) < 8 else question
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
        retrieval_seconds = time.perf_counter() - started
        pieces: list[str] = []
        if llm is None:
            text = await self._extractive(standalone, sources)
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

    async def _extractive(self, question: str, sources: Sequence[Source]) -> str:
        """Retrieval-only answer: the sentences of the top passages closest to the question.

        It does not repeat RETRIEVAL_ONLY_NOTE: the chat shows that once per conversation, the CLI once per
        answer, and `mode` says it in JSON."""
        if not sources:
            return "No indexed document matches this question."
        # A sentence shared by overlapping passages is embedded once and cited from the first passage holding it.
        firsts: dict[str, int] = {}
        for i, src in enumerate(sources, start=1):
            for sentence in _sentences(src.text):
                firsts.setdefault(sentence, i)
        candidates = [(i, s) for s, i in firsts.items()][:200]
        lines = []
        if candidates:
            q = await self.embedder.aembed_query(question)
            vectors = await self.embedder.aembed([s for _, s in candidates], interactive=True)
            ranked = sorted(zip(candidates, vectors), key=lambda cv: _cosine(q, cv[1]), reverse=True)
            for (i, sentence), _vec in ranked[:3]:
                lines.append(f"- “{escape_markdown(sentence)}” \\[{i}\\]")
        if not lines:
            lines = [f"- “{escape_markdown(sources[0].text[:300])}” \\[1\\]"]
        return "**Best-matching sentences:**\n" + "\n".join(lines)
