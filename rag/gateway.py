"""What a caller of the HTTP API or the MCP server may do: the engine's own calls, each inside the caller's rights.

The API (`rag/api.py`) and the MCP server (`rag/mcp_server.py`) only translate their input into these calls and
the results back; neither decides anything itself. Who the caller is and which workspace it may use comes from
`RemoteAccess` (`rag/remote.py`), the one adapter between a token and the caller the service expects; the work
and the role checks are RagService's, exactly as the pages call it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import BinaryIO

from rag.catalog import DocumentRecord
from rag.errors import (
    AccessDeniedError,
    AuthenticationError,
    BenchmarkBusyError,
    DocumentBusyError,
    DocumentNotFoundError,
    EvalFileError,
    IngestError,
    JobNotFoundError,
    ModelError,
    OperationTimeoutError,
    RagError,
    RateLimitedError,
    StoreUnavailableError,
    UploadTooLargeError,
    WorkspaceError,
    WorkspaceNotFoundError,
)
from rag.evaluate import EvalReport, QAPair
from rag.jobs import JobSnapshot
from rag.options import AskOptions, Retrieval
from rag.query import Answer, ChatTurn, Source
from rag.remote import RemoteAccess, RemoteCaller
from rag.service import RagService
from rag.sources import Passage
from rag.workspaces import Workspace

DOCUMENT_PRIVATE = frozenset({"stored_path", "lease_until", "pending"})
"""DocumentRecord fields that are the server's bookkeeping (a path on its disk, a writer's lease): never sent."""

# The HTTP status each error answers with (the MCP server names it too); the first match wins, so subclasses first.
_STATUS: tuple[tuple[type[RagError], int], ...] = (
    (AuthenticationError, 401),
    (AccessDeniedError, 403),
    (WorkspaceNotFoundError, 404),
    (DocumentNotFoundError, 404),
    (JobNotFoundError, 404),
    (DocumentBusyError, 409),
    (BenchmarkBusyError, 409),
    (UploadTooLargeError, 413),
    (WorkspaceError, 400),
    (EvalFileError, 400),
    (IngestError, 422),
    (RateLimitedError, 429),
    (ModelError, 502),
    (StoreUnavailableError, 503),
    (OperationTimeoutError, 504),
)


def status_of(error: RagError) -> int:
    """The HTTP status for an engine error (500 for one that names no fault of the caller's)."""
    return next((status for kind, status in _STATUS if isinstance(error, kind)), 500)


class Gateway:
    """The engine as one caller sees it. Every method takes the caller first and refuses what it may not do."""

    def __init__(self, service: RagService, access: RemoteAccess) -> None:
        self.service = service
        self.access = access
        self.settings = service.settings

    def authenticate(self, authorization: str | None, host: str | None = None) -> RemoteCaller:
        """The caller behind an `Authorization` header (of a request to `host`), counted against its token's rate."""
        caller = self.access.authenticate(authorization, host)
        self.access.throttle(caller)
        return caller

    # -- workspaces ---------------------------------------------------------------------------------------
    def workspaces(self, caller: RemoteCaller) -> list[Workspace]:
        """The workspaces the caller may use."""
        return self.access.workspaces(caller)

    def workspace(self, caller: RemoteCaller, name: str | None = None, write: bool = False) -> Workspace:
        """A workspace by name or id that the caller may use (for writing, when `write`)."""
        return self.access.workspace(caller, name, write)

    # -- questions ----------------------------------------------------------------------------------------
    def search(
        self,
        caller: RemoteCaller,
        workspace: str | None,
        query: str,
        options: AskOptions = AskOptions(),  # noqa: B008
    ) -> list[Source]:
        """The passages of a workspace that best match `query`."""
        scoped = options.model_copy(update={"workspace": self.workspace(caller, workspace).id})
        return self.service.retrieve(query, scoped, caller.caller)

    def answer_events(
        self,
        caller: RemoteCaller,
        workspace: str | None,
        question: str,
        history: Sequence[ChatTurn] = (),
        options: AskOptions = AskOptions(),  # noqa: B008 - frozen, so one shared default is safe
    ) -> AsyncIterator[str | Answer]:
        """An answer from a workspace's documents, for a coroutine on the server's own event loop: its pieces as
        they are written, then the Answer with its sources. Rights are checked now (call it from a worker thread:
        it reads the database)."""
        scoped = options.model_copy(update={"workspace": self.workspace(caller, workspace).id})
        return self.service.astream_answer(question, history, scoped, caller.caller)

    def ask(
        self,
        caller: RemoteCaller,
        workspace: str | None,
        question: str,
        history: Sequence[ChatTurn] = (),
        options: AskOptions = AskOptions(),  # noqa: B008
    ) -> Answer:
        """A whole answer with its sources."""
        scoped = options.model_copy(update={"workspace": self.workspace(caller, workspace).id})
        return self.service.ask(question, history, scoped, caller.caller)

    @property
    def mode(self) -> str:
        """`llm` or `retrieval-only`."""
        return self.service.mode

    # -- documents ----------------------------------------------------------------------------------------
    def documents(self, caller: RemoteCaller, workspace: str | None) -> list[DocumentRecord]:
        """A workspace's indexed documents, newest first."""
        return self.service.documents(self.workspace(caller, workspace).id, caller.caller)

    def document(self, caller: RemoteCaller, workspace: str | None, doc_id: str) -> DocumentRecord:
        """One document of a workspace, by id or unique prefix."""
        return self.service.document(doc_id, self.workspace(caller, workspace).id, caller.caller)

    def check_upload(self, files: Sequence[tuple[str, int]]) -> None:
        """Refuse an upload the web UI would refuse: more than RAG_MAX_FILES files, or a file (name, bytes) larger
        than RAG_MAX_FILE_MB."""
        limits = self.settings
        if len(files) > limits.max_files:
            raise UploadTooLargeError(
                f"{len(files)} files",
                user_message=f"{len(files)} files is more than the {limits.max_files} allowed in one job "
                "(RAG_MAX_FILES).",
            )
        for name, size in files:
            if size > limits.max_file_mb * 1024 * 1024:
                raise UploadTooLargeError(
                    f"{name}: {size} bytes",
                    user_message=f"{name} is {size / 1048576:.1f} MB; the limit is {limits.max_file_mb:g} MB "
                    "(RAG_MAX_FILE_MB).",
                )

    def upload(self, caller: RemoteCaller, workspace: str | None, files: Sequence[tuple[str, BinaryIO]]) -> JobSnapshot:
        """Index uploaded files into a workspace in a background job owned by the caller; its first snapshot."""
        target = self.workspace(caller, workspace, write=True)
        return self.service.start_upload_job(files, owner=caller.owner, workspace=target.id, caller=caller.caller)

    def delete(self, caller: RemoteCaller, workspace: str | None, doc_id: str) -> DocumentRecord:
        """Delete a document of a workspace (chunks, keyword entries, row, stored bytes)."""
        target = self.workspace(caller, workspace, write=True)
        return self.service.delete_document(doc_id, target.id, caller.caller)

    def job(self, caller: RemoteCaller, job_id: str) -> JobSnapshot:
        """The latest snapshot of one of the caller's jobs (another caller's job does not exist for it)."""
        snapshot = self.service.job(job_id, caller.owner)
        if snapshot is None or caller.workspace not in (None, snapshot.workspace):
            raise JobNotFoundError(f"no job {job_id} of {caller.owner}", user_message=f"You have no job {job_id}.")
        return snapshot

    def passage(self, caller: RemoteCaller, workspace: str | None, doc_id: str, chunk: int, around: int = 1) -> Passage:
        """A chunk of a document with `around` chunks each side, and its page."""
        return self.service.passage(doc_id, self.workspace(caller, workspace).id, chunk, around, caller.caller)

    def document_text(self, caller: RemoteCaller, workspace: str | None, doc_id: str) -> str:
        """A document's indexed text."""
        return self.service.document_text(doc_id, self.workspace(caller, workspace).id, caller.caller)

    # -- evaluation ---------------------------------------------------------------------------------------
    def evaluate(
        self,
        caller: RemoteCaller,
        workspace: str | None,
        pairs: Sequence[QAPair],
        modes: Sequence[Retrieval],
        top_k: int | None = None,
    ) -> list[EvalReport]:
        """hit@k and MRR of retrieval modes on labelled questions about a workspace's documents; reads only."""
        return self.service.evaluate(pairs, modes, top_k, self.workspace(caller, workspace).id, caller.caller)
