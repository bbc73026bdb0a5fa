"""RagService: the sync facade pages and the CLI call; it hands coroutines to the one Runtime.

Building the service connects to Milvus (starting the embedded server when no MILVUS_URI is set),
loads the embedding model, opens the collection on the runtime loop, and cleans up documents that a
crash left half-indexed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rag.access import OPERATOR, Caller, Role, at_least, require_manager
from rag.accounts import Account, Accounts
from rag.bench import BenchConfig, BenchReport, BenchRow
from rag.catalog import DocumentRecord
from rag.config import Settings, private_dir
from rag.conversations import ConversationStore
from rag.database import Database
from rag.documents import CheckReport, DocumentLibrary, stage_all
from rag.embeddings import Embedder, load_embedder
from rag.errors import AccessDeniedError, IngestError, OperationTimeoutError, RagError, WorkspaceError
from rag.evaluate import AnswerReport, EvalReport, QAPair, aevaluate, aevaluate_answers, check_files
from rag.ingest import FileProgress, FileResult, FileStatus, Ingestor, IngestReport, clean_name
from rag.jobs import JobQueue, JobSnapshot, JobState, NewFile, QueueStatus, Worker
from rag.llms import describe_llm
from rag.options import Retrieval
from rag.questions import QuestionService
from rag.runtime import Runtime
from rag.sources import Passage, RenderedPage, adocument_text, apassage, render_page, source_context
from rag.store import DocumentStore, Features, StoreInfo, resolve_connection
from rag.workspaces import DEFAULT_ID, Member, Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceStatus:
    """What is connected, for the home page and `status` output."""

    store: StoreInfo
    embed_model: str
    embed_dim: int
    llm: str
    mode: str
    documents: int
    recovered: tuple[str, ...]
    queue: QueueStatus | None = None


class RagService(QuestionService):
    """Everything the UI and CLI need, as plain sync calls: questions (from QuestionService, over the full
    store) and documents, workspaces, roles, accounts, jobs, evaluation and benchmarks.

    Every method that reads or changes a workspace takes a `caller` (`rag.access.Caller`) and enforces its
    role there, so the pages, the CLI and any API or MCP server obey the same rules. The default caller is
    the operator (the local command line, all rights): a server answering other people must pass theirs.
    """

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime | None = None,
        embedder: Embedder | None = None,
        worker: str = "app",
        concurrency: int | None = None,
    ) -> None:
        """`worker` says which jobs this process runs: `app` (the web app: every job of the collection when
        RAG_INPROCESS_WORKER allows), `own` (the CLI: only jobs it queued itself, and only when no worker would),
        `worker` (`python -m rag worker`: every job, `concurrency` at once) or `none`."""
        self.settings = settings
        self._own_runtime = runtime is None
        self.runtime = runtime or Runtime()
        try:
            private_dir(Path(settings.data_dir))  # uploads, the catalog and conversations: this user's alone
            self.connection = resolve_connection(settings)
            self.embedder = embedder or load_embedder(settings)
            self.store: DocumentStore = self.runtime.run(
                DocumentStore.abuild(settings, self.connection, self.embedder.dim, self.embedder.model_id), timeout=120
            )
            super().__init__(settings, self.runtime, self.embedder, self.store)
            self._own_runtime = runtime is None  # the runtime handed to the questions part is still ours to close
            self.library = DocumentLibrary(settings, self.store)
            self.conversations = ConversationStore(Database.open(settings))
            self.accounts = Accounts(Database.open(settings))
            self.ingestor = Ingestor(settings, self.embedder, self.library)
            self.jobs = JobQueue(
                Database.open(settings),
                settings.collection,
                max_running=settings.max_running_jobs,
                lease=settings.job_lease,
                release=self.library.release_keys,
            )
            self._mode = worker
            self._recovered = tuple(self.runtime.run(self.library.arecover(), timeout=120))
            self.recovered = tuple(r.file_name for r in self._recovered)
            # Upkeep while the app runs: the start-up consistency check, then recovery every minute.
            self.runtime.run(self.library.astart_upkeep(), timeout=10)
            self.worker: Worker | None = None
            if worker == "worker" or (worker == "app" and settings.inprocess_jobs):
                self.worker = Worker(
                    self.jobs,
                    self.ingestor,
                    self.library,
                    self.runtime,
                    kind=worker,
                    concurrency=concurrency or settings.max_running_jobs,
                ).start()
        except BaseException:
            if self._own_runtime:
                self.runtime.close()
            raise

    # -- access -------------------------------------------------------------------------------
    def _workspace_for(self, workspace_id: str, caller: Caller, need: Role) -> Workspace:
        """The workspace if the caller's role there includes `need`; else a message saying what they may do."""
        workspace = self.visible_workspace(workspace_id, caller)
        if not at_least(workspace.role, need):
            what = {"editor": "add or change documents", "owner": "manage it"}.get(need, "use it")
            raise AccessDeniedError(
                f"{caller.label} is {workspace.role} in {workspace.id}, needs {need}",
                user_message=f"You are a {workspace.role} in “{workspace.name}”: only its {need}s and admins "
                f"can {what}.",
            )
        return workspace

    def _may_change(self, record: DocumentRecord, workspace: Workspace, caller: Caller, verb: str) -> None:
        """Owners of the workspace change any document; editors only those they uploaded."""
        mine = caller.kind == "account" and record.owner == caller.account_id
        if at_least(workspace.role, "owner") or (workspace.role == "editor" and mine):
            return
        raise AccessDeniedError(
            f"{caller.label} may not {verb} {record.doc_id}",
            user_message=f"{record.file_name} was uploaded by someone else: only its uploader and the owners of "
            f"“{workspace.name}” can {verb} it.",
        )

    def _require_admin_when_accounts(self, caller: Caller, what: str) -> None:
        """Heavy or revealing work (benchmarks, every retrieval mode at once) is for admins once accounts exist."""
        if caller.manages or (caller.kind == "anonymous" and not self.accounts.any()):
            return
        raise AccessDeniedError(f"{caller.label} may not {what}", user_message=f"Only an admin can {what}.")

    # -- ingestion --------------------------------------------------------------------------
    # Every way in enqueues a job: the pages, the CLI, the API. Bytes are stored before the job exists (written under
    # a temporary name, moved under their key in the transaction that records the job); a worker reads them from
    # RAG_STORAGE_URL, wherever it runs.
    def _check_count(self, count: int) -> None:
        if count > self.settings.max_files:
            raise RagError(
                f"{count} files > RAG_MAX_FILES={self.settings.max_files}",
                user_message=f"Too many files in one job ({count}); the limit is {self.settings.max_files}.",
            )

    def _owner(self, owner: str | None, caller: Caller) -> str:
        return owner or caller.conversation_key or "cli"

    def start_job(
        self,
        paths: Sequence[Path | str],
        names: Sequence[str] | None = None,
        owner: str | None = None,
        workspace: str = DEFAULT_ID,
        caller: Caller = OPERATOR,
    ) -> JobSnapshot:
        """Queue indexing of files on this machine's disk and return the job's first snapshot. Their bytes are
        stored first (a file too large, empty or unreadable is not: the job reports it failed), so any worker
        can run the job."""
        self._workspace_for(workspace, caller, "editor")
        self._check_count(len(paths))
        staged, files = [], []
        try:
            for i, path in enumerate(paths):
                name = names[i] if names else Path(path).name
                try:
                    size = Path(path).stat().st_size
                    self.ingestor.check_size(clean_name(name), size)
                    with open(path, "rb") as data:
                        staged.append(self.library.stage(data, name))
                except IngestError as exc:
                    files.append(NewFile(name=name, error=exc.user_message))
                    continue
                except OSError as exc:
                    message = IngestError(clean_name(name), f"cannot be opened ({exc.strerror or exc})").user_message
                    files.append(NewFile(name=name, error=message))
                    continue
                files.append(self._new_file(name, staged[-1], caller))
            return self._enqueue(owner, workspace, caller, files, staged)
        except BaseException:
            for done in staged:
                self.library.storage.discard(done)
            raise

    def start_upload_job(
        self,
        uploads: Sequence[tuple[str, BinaryIO]],
        owner: str | None = None,
        workspace: str = DEFAULT_ID,
        caller: Caller = OPERATOR,
    ) -> JobSnapshot:
        """Store uploaded bytes (written once, under their hash) and queue their indexing into a workspace (the
        caller needs the editor role there). Bytes a job does not keep (a failed, cancelled or duplicate file) are
        removed when it ends."""
        self._workspace_for(workspace, caller, "editor")
        self._check_count(len(uploads))
        staged = stage_all(self.library, uploads)
        try:
            files = [self._new_file(name, done, caller) for (name, _data), done in zip(uploads, staged)]
            return self._enqueue(owner, workspace, caller, files, staged)
        except BaseException:
            for done in staged:
                self.library.storage.discard(done)
            raise

    def _new_file(self, name: str, staged: object, caller: Caller) -> NewFile:
        return NewFile(
            name=name,
            stored=staged.key,  # type: ignore[attr-defined]
            content_hash=staged.content_hash,  # type: ignore[attr-defined]
            uploader=caller.account_id,
        )

    def _enqueue(
        self, owner: str | None, workspace: str, caller: Caller, files: list[NewFile], staged: Sequence[object]
    ) -> JobSnapshot:
        def publish() -> None:
            for done in staged:
                self.library.publish(done)  # type: ignore[arg-type]

        try:
            return self.jobs.enqueue(self._owner(owner, caller), workspace, files, publish)
        except BaseException:
            self.library.release_keys([f.stored for f in files if f.stored])  # published, then the insert failed
            raise

    def ingest(
        self,
        paths: Sequence[Path | str],
        names: Sequence[str] | None = None,
        workspace: str = DEFAULT_ID,
        caller: Caller = OPERATOR,
    ) -> IngestReport:
        """Index files into a workspace (by id) through the queue and wait for the report (the caller needs the
        editor role)."""
        report = None
        for item in self.iter_ingest(paths, workspace, caller, names):
            if isinstance(item, IngestReport):
                report = item
        assert report is not None
        return report

    def iter_ingest(
        self,
        paths: Sequence[Path | str],
        workspace: str = DEFAULT_ID,
        caller: Caller = OPERATOR,
        names: Sequence[str] | None = None,
    ) -> Iterator[FileProgress | IngestReport]:
        """Queue files and follow their job: each file's progress as it changes, then the report (for terminals).
        When nothing else would run the job (no in-process worker here, none alive elsewhere), this process runs
        it. Leaving the iteration early (Ctrl-C) cancels the job."""
        import time

        job = self.start_job(paths, names, None, workspace, caller)
        runner = self._runner_for(job.id)
        seen: dict[int, FileProgress] = {}
        ended = False
        try:
            delay = 0.05
            while True:
                snapshot = self.jobs.get(job.id)
                if snapshot is None:
                    raise RagError(f"job {job.id} vanished", user_message="The job was removed before it ended.")
                for i, progress in enumerate(snapshot.files):
                    if seen.get(i) != progress:
                        seen[i] = progress
                        yield progress
                if not snapshot.active:
                    ended = True
                    yield _report_of(snapshot)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
        finally:
            if not ended:  # the caller left early (Ctrl-C): the job stops wherever it runs
                self.jobs.cancel(job.id)
                try:
                    self._wait(job.id, 60)
                except OperationTimeoutError:
                    log.warning("job %s is still stopping; its worker removes what it stored", job.id)
            if runner is not None:
                runner.stop()

    def _runner_for(self, job_id: str) -> Worker | None:
        """A worker for one job this process queued, when no other would run it: no general in-process worker here
        and (with RAG_INPROCESS_WORKER on, or no worker alive) nobody else. None when others will."""
        if self.worker is not None or self._mode == "none":
            return None
        if not self.settings.inprocess_jobs and self.jobs.live_workers() > 0:
            return None
        return Worker(
            self.jobs, self.ingestor, self.library, self.runtime, kind="cli", concurrency=1, only=[job_id]
        ).start()

    def job(self, job_id: str, owner: str | None = None) -> JobSnapshot | None:
        """The latest snapshot of a job (from the database: any process may be running it)."""
        return self.jobs.get(job_id, owner)

    def list_jobs(self, owner: str | None = None) -> list[JobSnapshot]:
        """An owner's jobs, newest first."""
        return self.jobs.list(owner)

    def cancel_job(self, job_id: str, owner: str | None = None) -> bool:
        """Stop a queued or running job (whichever worker runs it)."""
        return self.jobs.cancel(job_id, owner)

    def wait_job(self, job_id: str, timeout: float | None = None) -> JobSnapshot:
        """Block until a job ends (tests and scripts)."""
        snapshot = self._wait(job_id, timeout)
        if snapshot is None:
            raise KeyError(job_id)
        return snapshot

    def _wait(self, job_id: str, timeout: float | None) -> JobSnapshot | None:
        try:
            return self.jobs.wait(job_id, timeout)
        except TimeoutError as exc:
            raise OperationTimeoutError(f"job {job_id} still running after {timeout} s") from exc

    def queue_status(self) -> QueueStatus:
        """Queue depth and the workers known (running, stopped, lost)."""
        return self.jobs.status()

    # -- documents --------------------------------------------------------------------------
    def documents(
        self, workspace: str = DEFAULT_ID, caller: Caller = OPERATOR, limit: int | None = None
    ) -> list[DocumentRecord]:
        """Indexed documents of a workspace (by id), newest first (any role may list them); the newest `limit` only,
        when given (a page of a large library costs the same as of a small one)."""
        self.visible_workspace(workspace, caller)
        return self.library.list(workspace, limit=limit)

    def document_count(self, workspace: str = DEFAULT_ID, caller: Caller = OPERATOR) -> int:
        """How many documents a workspace (by id) holds, counted without reading them."""
        self.visible_workspace(workspace, caller)
        return self.library.count(workspace)[0]

    def find_documents(
        self, text: str, workspace: str = DEFAULT_ID, limit: int = 100, caller: Caller = OPERATOR
    ) -> list[DocumentRecord]:
        """Indexed documents of a workspace whose name contains `text` (any case), newest first."""
        self.visible_workspace(workspace, caller)
        return self.library.find(text, workspace, limit)

    def delete_document(self, doc_id: str, workspace: str = DEFAULT_ID, caller: Caller = OPERATOR) -> DocumentRecord:
        """Remove a document of a workspace: every chunk, its keyword entries, its row and its stored bytes
        (its uploader, if an editor there, or an owner of the workspace)."""
        space = self.visible_workspace(workspace, caller)
        self._may_change(self.library.resolve(doc_id, workspace), space, caller, "delete")
        return self.runtime.run(self.library.adelete(doc_id, workspace), timeout=120)

    def document(self, doc_id: str, workspace: str = DEFAULT_ID, caller: Caller = OPERATOR) -> DocumentRecord:
        """One document of a workspace, by id or unique id prefix."""
        self.visible_workspace(workspace, caller)
        return self.library.resolve(doc_id, workspace)

    def source_page(
        self, doc_id: str, workspace: str, page: int, passage: str = "", zoom: float = 1.0, caller: Caller = OPERATOR
    ) -> RenderedPage:
        """A page of a stored PDF drawn with `passage` highlighted (cached; runs in the caller's thread)."""
        record = self.document(doc_id, workspace, caller)
        return render_page(
            self.library.storage.local_path(record.stored_path), page, passage, zoom, self.settings.max_page_pixels
        )

    def source_context(
        self, doc_id: str, workspace: str, passage: str, caller: Caller = OPERATOR, window: int = 600
    ) -> tuple[str, str, str]:
        """The passage in its surrounding text (`window` characters each side), for formats without pages:
        (before, passage, after)."""
        record = self.document(doc_id, workspace, caller)
        return source_context(self.library.storage.local_path(record.stored_path), record.file_name, passage, window)

    def passage(self, doc_id: str, workspace: str, chunk: int, around: int = 1, caller: Caller = OPERATOR) -> Passage:
        """Chunk `chunk` of a document of a workspace with `around` chunks each side, and its page."""
        record = self.document(doc_id, workspace, caller)
        return self.runtime.run(apassage(self.store, record, chunk, around), timeout=60)

    def document_text(self, doc_id: str, workspace: str, caller: Caller = OPERATOR) -> str:
        """A document's indexed text in order (its chunks, overlaps merged, page marks)."""
        record = self.document(doc_id, workspace, caller)
        return self.runtime.run(adocument_text(self.store, record), timeout=120)

    def stored_files(self, workspace: str = DEFAULT_ID, caller: Caller = OPERATOR) -> list[Path]:
        """Local files with the stored bytes of a workspace's documents (fetched from a remote store), e.g. for the
        benchmark to ingest them again."""
        return [self.library.storage.local_path(r.stored_path) for r in self.documents(workspace, caller)]

    def original(self, doc_id: str, workspace: str, caller: Caller = OPERATOR) -> tuple[str, bytes]:
        """A document's name and original bytes, for download."""
        record = self.document(doc_id, workspace, caller)
        return record.file_name, self.library.storage.read_bytes(record.stored_path)

    def reindex_document(
        self, doc_id: str, owner: str | None = None, workspace: str = DEFAULT_ID, caller: Caller = OPERATOR
    ) -> JobSnapshot:
        """Rebuild a document's chunks from its stored upload (e.g. after a splitter change); the current chunks
        keep answering until the new ones are stored (its uploader, if an editor there, or an owner)."""
        space = self.visible_workspace(workspace, caller)
        self._may_change(self.library.resolve(doc_id, workspace), space, caller, "re-index")
        source = self.library.reindex_source(doc_id, workspace)
        new = NewFile(
            name=source.name, stored=source.key, content_hash=source.content_hash, reindex=True, uploader=source.owner
        )
        return self.jobs.enqueue(self._owner(owner, caller), source.workspace, [new])

    # -- workspaces and roles ---------------------------------------------------------------
    def list_workspaces(self, caller: Caller = OPERATOR) -> list[Workspace]:
        """The workspaces the caller may see, each with the caller's role, `default` first."""
        return self.workspaces.list(caller)

    def create_workspace(self, name: str, caller: Caller = OPERATOR, shared: bool = True) -> Workspace:
        """A new, empty workspace: shared (admins, the operator, or anyone without accounts) or private to the
        calling account."""
        if shared:
            if not (caller.manages or (caller.kind == "anonymous" and not self.accounts.any())):
                raise AccessDeniedError(
                    f"{caller.label} may not create shared workspaces",
                    user_message="Only an admin can create a shared workspace; yours can be private.",
                )
            return self.workspaces.create(name, shared=True).model_copy(update={"role": "owner"})
        if caller.kind != "account":
            raise WorkspaceError("no account", user_message="A private workspace belongs to an account: sign in first.")
        created = self.workspaces.create(name, owner=caller.account_id, shared=False)
        return created.model_copy(update={"role": "owner"})

    def private_workspace(self, caller: Caller) -> Workspace:
        """An account's own workspace, created on first use under its name (nobody else can take it)."""
        return self.workspaces.personal(caller)

    def _managed(self, name: str, caller: Caller, verb: str) -> Workspace:
        """A workspace the caller may rename (`rename`: its owners) or delete and give roles in (`manage`:
        admins for a shared one, its owner for a private one)."""
        workspace = self.workspaces.get(name, caller)
        if verb == "rename" or not workspace.shared:
            allowed = at_least(workspace.role, "owner")  # a private one's owner; anyone while no account exists
        else:
            allowed = caller.manages or (caller.kind == "anonymous" and workspace.role == "owner")
        if not allowed:
            raise AccessDeniedError(
                f"{caller.label} may not {verb} {workspace.id}",
                user_message=f"Only an admin can {verb} the shared workspace “{workspace.name}”."
                if verb != "rename"
                else f"Only the owners of “{workspace.name}” and admins can rename it.",
            )
        return workspace

    def rename_workspace(self, name: str, new_name: str, caller: Caller = OPERATOR) -> Workspace:
        """Rename a workspace (its owners, admins); its documents and chats stay."""
        return self.workspaces.rename(self._managed(name, caller, "rename"), new_name)

    def delete_workspace(self, name: str, caller: Caller = OPERATOR) -> list[DocumentRecord]:
        """Delete a workspace with its documents (chunks, keyword entries, stored bytes) and chats (admins for a
        shared one, its owner for a private one).

        Jobs writing into it are cancelled first and awaited, so nothing half-written is left behind.
        """
        workspace = self._managed(name, caller, "delete")
        if workspace.id == DEFAULT_ID:
            raise WorkspaceError(
                "the default workspace", user_message="The default workspace cannot be deleted; empty it instead."
            )
        return self._delete_workspace(workspace)

    def _delete_workspace(self, workspace: Workspace) -> list[DocumentRecord]:
        for job_id in self.jobs.cancel_workspace(workspace.id):
            self.wait_job(job_id, timeout=120)
        removed = self.runtime.run(self.library.adelete_workspace(workspace.id), timeout=600)
        self.conversations.delete_workspace(workspace.id)
        self.workspaces.remove(workspace)
        return removed

    def members(self, name: str, caller: Caller = OPERATOR) -> tuple[Workspace, list[Member]]:
        """A workspace (as the caller sees it) and the accounts given a role in it: who may do what."""
        workspace = self.workspaces.get(name, caller)
        return workspace, self.workspaces.members(workspace) if workspace.shared else []

    def grant(self, name: str, account: str, role: Role, caller: Caller = OPERATOR) -> Member:
        """Give an account (by name) a role in a shared workspace (admins and the operator)."""
        require_manager(caller, "give roles in shared workspaces")
        workspace = self._managed(name, caller, "manage")
        target = self.accounts.require(account)
        self.workspaces.grant(workspace, target.id, role)
        return Member(account_id=target.id, name=target.name, role=role)

    def revoke(self, name: str, account: str, caller: Caller = OPERATOR) -> bool:
        """Take an account's role in a shared workspace away (it keeps the workspace's default role)."""
        require_manager(caller, "take roles away in shared workspaces")
        workspace = self._managed(name, caller, "manage")
        return self.workspaces.revoke(workspace, self.accounts.require(account).id)

    def set_default_role(self, name: str, role: Role | None, caller: Caller = OPERATOR) -> Workspace:
        """What signed-in accounts that are not members may do in a shared workspace (None: members only)."""
        require_manager(caller, "change who may use a shared workspace")
        return self.workspaces.set_default_role(self._managed(name, caller, "manage"), role)

    # -- accounts ---------------------------------------------------------------------------
    def remove_account(
        self, name: str, documents: str = "refuse", hand_to: str | None = None, caller: Caller = OPERATOR
    ) -> Account:
        """Remove an account (admins and the operator). Its private documents are deleted (`documents="delete"`:
        chunks, keyword entries, bytes and chats), handed with their workspaces to the admin `hand_to`
        (`"hand-over"`), or, with `"refuse"`, their existence stops the removal. Its documents in shared
        workspaces stay (handed over too, or without an uploader). A later account of the same name gets a new
        id and none of this."""
        require_manager(caller, "remove accounts")
        account = self.accounts.require(name)
        if caller.kind == "account" and caller.account_id == account.id:
            raise AccessDeniedError("self-removal", user_message="You cannot remove your own account here.")
        if documents == "delete":
            owned = Caller.of(account)
            for workspace in self.workspaces.list(owned):
                if not workspace.shared and workspace.owner == account.id:
                    self._delete_workspace(workspace)
        return self.accounts.remove(name, hand_to=hand_to if documents == "hand-over" else None)

    def collection_state(self) -> str:
        """Whether Milvus has the collection loaded (`loaded`), is loading it after a restart, or not."""
        return self.runtime.run(self.store.aload_state(), timeout=30)

    def check_documents(self, repair: bool = False, caller: Caller = OPERATOR) -> CheckReport:
        """The reconcile pass (`docs check`) over every workspace: Milvus, the keyword index and the catalogue
        compared chunk by chunk; with `repair`, what belongs to no committed document removed. It reads every
        chunk id (15-90 s per million chunks on 2 cores): for admins once accounts exist."""
        self._require_admin_when_accounts(caller, "check every document of the collection")
        return self.runtime.run(self.library.acheck(repair))

    def count_chunks(self, doc_id: str | None = None) -> int:
        """Chunks in Milvus (for one document or all)."""
        return self.runtime.run(self.store.acount(doc_id), timeout=60)

    @property
    def features(self) -> Features:
        """What the server and collection support (keyword and hybrid retrieval need Milvus 2.5+ or Lite)."""
        return self.store.features

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(
        self,
        pairs: Sequence[QAPair],
        modes: Sequence[Retrieval],
        top_k: int | None = None,
        workspace: str = DEFAULT_ID,
        caller: Caller = OPERATOR,
    ) -> list[EvalReport]:
        """hit@1/3/5 and MRR of each retrieval mode on labelled pairs in a workspace; reads only. Any role may
        measure one mode; several at once are for admins once accounts exist."""
        self.visible_workspace(workspace, caller)
        if len(modes) > 1:
            self._require_admin_when_accounts(caller, "compare several retrieval modes at once")
        check_files(pairs, {r.file_name for r in self.library.list(workspace)})
        k = top_k or self.settings.top_k
        timeout = 60 + 10 * len(pairs)
        return [self.runtime.run(aevaluate(self.engine, pairs, mode, k, workspace), timeout=timeout) for mode in modes]

    def evaluate_answers(
        self,
        pairs: Sequence[QAPair],
        retrieval: Retrieval | None = None,
        top_k: int | None = None,
        workspace: str = DEFAULT_ID,
    ) -> AnswerReport:
        """How often the answer a user reads holds the evidence (and in its first lines); reads only."""
        check_files(pairs, {r.file_name for r in self.library.list(workspace)})
        k = top_k or self.settings.top_k
        mode = retrieval or self.settings.retrieval_mode
        timeout = 60 + 30 * len(pairs)
        return self.runtime.run(aevaluate_answers(self.engine, pairs, mode, k, workspace), timeout=timeout)

    # -- benchmarks -------------------------------------------------------------------------
    def bench(self, config: BenchConfig, caller: Caller = OPERATOR) -> Iterator[BenchRow | BenchReport]:
        """Run the sync-versus-async benchmarks in scratch collections, yielding each row as it lands (admins
        only once accounts exist).

        One benchmark runs at a time per data dir (web sessions and the CLI alike): a second one raises
        BenchmarkBusyError when iteration starts. Close the iterator to stop a run early.
        """
        self._require_admin_when_accounts(caller, "run benchmarks")
        from filelock import FileLock, Timeout

        from rag.bench import aiter_bench
        from rag.errors import BenchmarkBusyError

        # One lock file, a new handle per run: handles conflict with each other across threads and processes.
        lock = FileLock(str(Path(self.settings.data_dir) / "bench.lock"), timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout as exc:
            raise BenchmarkBusyError(
                "the benchmark lock is held",
                user_message="A benchmark is already running (from another session or the command line); "
                "try again when it has finished.",
            ) from exc
        try:
            yield from self.runtime.iterate(aiter_bench(self.settings, self.connection, self.embedder, config))
        finally:
            lock.release()

    # -- status -----------------------------------------------------------------------------
    def recovered_in(self, workspace: str) -> tuple[str, ...]:
        """Names of a workspace's documents that the start-up removed, left half-indexed by an interrupted run."""
        return tuple(r.file_name for r in self._recovered if r.workspace == workspace)

    def status(self, workspace: str | None = None) -> ServiceStatus:
        """What is connected and how much is indexed: in one workspace (by id; its documents and their chunks,
        counted in the catalogue's database, so a page load neither reads every row nor scans the collection),
        or in all (`chunks` counted by Milvus)."""
        documents, chunks = self.library.count(workspace)

        async def _info() -> StoreInfo:
            return StoreInfo(
                uri=self.connection.uri,
                kind=self.connection.kind,
                version=await self.store.aversion(),
                collection=self.store.name,
                chunks=await self.store.acount() if workspace is None else chunks,
            )

        return ServiceStatus(
            store=self.runtime.run(_info(), timeout=30),
            embed_model=self.embedder.model_id,
            embed_dim=self.embedder.dim,
            llm=describe_llm(self.settings),
            mode=self.mode,
            documents=documents,
            recovered=self.recovered if workspace is None else self.recovered_in(workspace),
            queue=self.jobs.status(),
        )

    def close(self) -> None:
        """Close clients and stop the loop (the embedded Milvus keeps running for the next start)."""
        if self.worker is not None:  # running jobs go back to the queue; queued ones stay queued
            self.worker.stop()
        with contextlib.suppress(Exception):
            self.runtime.run(self.library.astop_upkeep(), timeout=30)
        self.jobs.db.close()
        self.conversations.close()
        self.accounts.close()
        try:
            super().close()
        except Exception:  # noqa: BLE001 - closing is best effort
            log.debug("closing the store failed", exc_info=True)
        self.library.close()  # after the loop: a cancelled writer still releases its claim in the catalogue


def _report_of(snapshot: JobSnapshot) -> IngestReport:
    """A finished job's report; one that ended without (cancelled while queued, failed as a whole) is told from
    its files, or raised as the error it ended with."""
    if snapshot.report is not None:
        return snapshot.report
    if snapshot.state == JobState.FAILED:
        raise RagError(f"job {snapshot.id} failed: {snapshot.error}", user_message=snapshot.error or "The job failed.")
    files = [
        FileResult(file=f.file, status=f.status or FileStatus.CANCELLED, doc_id=f.doc_id, error=f.error)
        for f in snapshot.files
    ]
    return IngestReport(files=files, seconds=(snapshot.finished_at or snapshot.created_at) - snapshot.created_at)
