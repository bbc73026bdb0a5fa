"""QuestionService: answering questions and nothing else, so `python -m rag ask` starts in seconds.

RagService opens the whole engine: ingestion, background jobs, the recovery pass over half-indexed
documents and LlamaIndex's vector store (2-3 s of imports alone). A question needs only the embedder, a
search-only store (`DocumentStore.aopen_for_search`) and the query engine. It writes nothing, so it
skips the recovery pass: another process may be indexing those documents right now. Without an LLM,
asking imports neither LlamaIndex nor Streamlit, and no torch on the ONNX backends (tests/rag/test_cli.py
checks the `ask` process's modules).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence

from rag.access import OPERATOR, Caller
from rag.catalog import Catalog
from rag.config import Settings
from rag.database import Database
from rag.documents import visibility
from rag.embeddings import Embedder, load_embedder
from rag.errors import ModelError, WorkspaceNotFoundError
from rag.llms import build_llm
from rag.options import AskOptions
from rag.query import Answer, AnswerStream, ChatTurn, QueryEngine, Source
from rag.runtime import Runtime
from rag.store import DocumentStore, resolve_connection
from rag.workspaces import Workspace, Workspaces


class QuestionService:
    """Questions against the configured collection, as plain sync calls (the CLI's `ask`).

    RagService is a QuestionService over the full store: both answer through these same methods.
    """

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime | None = None,
        embedder: Embedder | None = None,
        store: DocumentStore | None = None,
    ) -> None:
        self.settings = settings
        self._own_runtime = runtime is None
        self.runtime = runtime or Runtime()
        try:
            self.embedder = embedder or load_embedder(settings)
            if store is None:
                connection = resolve_connection(settings)
                store = self.runtime.run(
                    DocumentStore.aopen_for_search(settings, connection, self.embedder.dim, self.embedder.model_id),
                    timeout=120,
                )
            self.store = store
            # Searches see committed chunks only: a document being written, a re-index's next generation and
            # leftovers of a deleted or replaced document never answer (checked in the catalogue per search).
            self.catalog = Catalog(Database.open(settings), settings.collection)
            self.store.visibility = visibility(self.catalog)
            self.engine = QueryEngine(settings, self.embedder, self.store, self.runtime.run(self._abuild_llm(), 30))
            self.workspaces = Workspaces(Database.open(settings), settings.collection)
            self._llms: dict[tuple[str, float], object | None] = {}
            self._llm_lock = threading.Lock()
        except BaseException:
            if self._own_runtime:
                self.runtime.close()
            raise

    async def _abuild_llm(self, settings: Settings | None = None) -> object | None:
        return build_llm(settings or self.settings)  # on the loop: the LLM's async client belongs to it

    def _llm_for(self, options: AskOptions) -> object | None:
        """The LLM for a question's own model or temperature (None: the engine's own), built once per
        (model, temperature) on the runtime loop; a model outside LLM_MODELS is refused (ModelError)."""
        model, temperature = options.llm_model, options.temperature
        if model is not None and model not in self.settings.llm_choices:
            raise ModelError(
                f"model {model!r} not in LLM_MODELS",
                user_message=f"The model {model!r} is not offered here; choose one of "
                f"{', '.join(self.settings.llm_choices)} (LLM_MODELS).",
            )
        if not self.settings.llm_enabled or (model in (None, self.settings.llm_model) and temperature is None):
            return None
        key = (model or self.settings.llm_model, self.settings.temperature if temperature is None else temperature)
        with self._llm_lock:
            if key not in self._llms:
                overrides = self.settings.model_copy(update={"llm_model": key[0], "temperature": key[1]})
                self._llms[key] = self.runtime.run(self._abuild_llm(overrides), timeout=30)
            return self._llms[key]

    @property
    def mode(self) -> str:
        """`llm` or `retrieval-only`."""
        return self.engine.mode

    def workspace(self, name: str, caller: Caller = OPERATOR) -> Workspace:
        """A workspace by id or name that the caller may see, with the caller's role in it."""
        return self.workspaces.get(name, caller)

    def visible_workspace(self, workspace_id: str, caller: Caller) -> Workspace:
        """The workspace with this id if the caller may see it (any role); else WorkspaceNotFoundError, which
        says no more than that it was not found."""
        found = self.workspaces.by_id(workspace_id)
        role = self.workspaces.role(found, caller) if found is not None else None
        if found is None or role is None:
            raise WorkspaceNotFoundError(
                f"{caller.label} cannot see workspace {workspace_id!r}",
                user_message="That workspace does not exist, or you may not see it.",
            )
        return found.model_copy(update={"role": role})

    def retrieve(self, question: str, options: AskOptions = AskOptions(), caller: Caller = OPERATOR) -> list[Source]:  # noqa: B008
        """The passages that best match a question (the caller needs a role in the options' workspace)."""
        self.visible_workspace(options.workspace, caller)
        return self.runtime.run(self.engine.aretrieve(question, options), timeout=120)

    def ask(
        self,
        question: str,
        history: Sequence[ChatTurn] = (),
        options: AskOptions = AskOptions(),  # noqa: B008 - frozen, so one shared default is safe
        caller: Caller = OPERATOR,
    ) -> Answer:
        """A whole answer with its sources: the stream read to its end."""
        stream = self.stream_answer(question, history, options, caller)
        for _piece in stream:
            pass
        assert stream.answer is not None
        return stream.answer

    def stream_answer(
        self,
        question: str,
        history: Sequence[ChatTurn] = (),
        options: AskOptions = AskOptions(),  # noqa: B008 - frozen, so one shared default is safe
        caller: Caller = OPERATOR,
    ) -> AnswerStream:
        """An answer as it is written; read `.answer` after iterating (the caller needs a role in the options'
        workspace)."""
        self.visible_workspace(options.workspace, caller)
        agen = self.engine.astream_answer(question, history, options, self._llm_for(options))
        return AnswerStream(self.runtime.iterate(agen, timeout=self.settings.llm_timeout + 60))

    def astream_answer(
        self,
        question: str,
        history: Sequence[ChatTurn] = (),
        options: AskOptions = AskOptions(),  # noqa: B008 - frozen, so one shared default is safe
        caller: Caller = OPERATOR,
    ) -> AsyncIterator[str | Answer]:
        """`stream_answer` for a coroutine on another event loop (an ASGI server): the answer's pieces, then the
        finished Answer, each step run on the runtime loop and awaited there, no thread between. The rights are
        checked now, in the calling thread (the caller needs a role in the options' workspace)."""
        self.visible_workspace(options.workspace, caller)
        agen = self.engine.astream_answer(question, history, options, self._llm_for(options))
        return self.runtime.aiterate(agen, timeout=self.settings.llm_timeout + 60)

    def close(self) -> None:
        """Close the clients and stop the loop."""
        self.workspaces.close()
        self.catalog.close()
        try:
            self.runtime.run(self.store.aclose(), timeout=10)
        finally:
            if self._own_runtime:
                self.runtime.close()
