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

from rag.bench import BenchConfig, BenchReport, BenchRow
from rag.catalog import DocumentRecord
from rag.config import Settings, private_dir
from rag.conversations import ConversationStore
from rag.documents import CheckReport, DocumentLibrary, SourceFile, stage_all
from rag.embeddings import Embedder, load_embedder
from rag.evaluate import EvalReport, QAPair, aevaluate, check_files
from rag.ingest import FileProgress, Ingestor, IngestReport
from rag.jobs import JobManager, JobSnapshot
from rag.llms import describe_llm
from rag.options import Retrieval
from rag.questions import QuestionService
from rag.runtime import Runtime
from rag.sources import RenderedPage, render_page, source_context
from rag.store import DocumentStore, Features, StoreInfo, resolve_connection
from rag.workspaces import DEFAULT_ID, Workspace

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


class RagService(QuestionService):
    """Everything the UI and CLI need, as plain sync calls: questions (from QuestionService, over the full
    store) and documents, workspaces, jobs, evaluation and benchmarks."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None, embedder: Embedder | None = None) -> None:
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
            self.conversations = ConversationStore(Path(settings.data_dir) / "conversations.sqlite3")
            self.ingestor = Ingestor(settings, self.embedder, self.library)
            self.jobs = JobManager(
                self.ingestor,
                self.runtime,
                max_running=settings.max_running_jobs,
                release=lambda source: self.library.release(source.path),
            )
            self.recovered = tuple(self.runtime.run(self.library.arecover(), timeout=120))
            # Upkeep while the app runs: the start-up consistency check, then recovery every minute.
            self.runtime.run(self.library.astart_upkeep(), timeout=10)
        except BaseException:
            if self._own_runtime:
                self.runtime.close()
            raise

    # -- ingestion --------------------------------------------------------------------------
    def ingest(
        self, paths: Sequence[Path | str], names: Sequence[str] | None = None, workspace: str = DEFAULT_ID
    ) -> IngestReport:
        """Index files into a workspace (by id) and wait for the report."""
        return self.runtime.run(self.ingestor.aingest(_sources(paths, names, workspace)))

    def iter_ingest(
        self, paths: Sequence[Path | str], workspace: str = DEFAULT_ID
    ) -> Iterator[FileProgress | IngestReport]:
        """Index files, yielding progress updates as they happen, then the report (for terminals)."""
        import asyncio

        files = _sources(paths, None, workspace)

        async def _gen():  # noqa: ANN202
            queue: asyncio.Queue[FileProgress | IngestReport] = asyncio.Queue()
            task = asyncio.create_task(self.ingestor.aingest(files, lambda _i, p: queue.put_nowait(p)))
            task.add_done_callback(
                lambda t: queue.put_nowait(t.result()) if not t.cancelled() and not t.exception() else None
            )
            try:
                while True:
                    getter = asyncio.create_task(queue.get())
                    done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                    if getter in done:
                        item = getter.result()
                        yield item
                        if isinstance(item, IngestReport):
                            return
                    else:
                        getter.cancel()
                        if task.exception():
                            raise task.exception()  # type: ignore[misc]
            finally:
                if not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

        yield from self.runtime.iterate(_gen())

    def start_job(
        self,
        paths: Sequence[Path | str],
        names: Sequence[str] | None = None,
        owner: str = "cli",
        workspace: str = DEFAULT_ID,
    ) -> JobSnapshot:
        """Start indexing files on disk in the background and return the job's first snapshot."""
        return self.jobs.start(_sources(paths, names, workspace), owner)

    def start_upload_job(
        self, uploads: Sequence[tuple[str, BinaryIO]], owner: str = "cli", workspace: str = DEFAULT_ID
    ) -> JobSnapshot:
        """Stage uploaded bytes (written once, under their hash) and index them into a workspace in the background.

        Bytes a job does not keep (a failed, cancelled or duplicate file) are removed when it ends.
        """
        staged = stage_all(self.library, uploads, workspace)
        try:
            return self.jobs.start(staged, owner)
        except BaseException:
            for source in staged:
                self.library.release(source.path)
            raise

    def job(self, job_id: str, owner: str | None = None) -> JobSnapshot | None:
        """The latest snapshot of a job."""
        return self.jobs.get(job_id, owner)

    def list_jobs(self, owner: str | None = None) -> list[JobSnapshot]:
        """An owner's jobs, newest first."""
        return self.jobs.list(owner)

    def cancel_job(self, job_id: str, owner: str | None = None) -> bool:
        """Stop a queued or running job."""
        return self.jobs.cancel(job_id, owner)

    def wait_job(self, job_id: str, timeout: float | None = None) -> JobSnapshot:
        """Block until a job ends (tests and scripts)."""
        import concurrent.futures

        from rag.errors import OperationTimeoutError

        try:
            snapshot = self.jobs.wait(job_id, timeout)
        except concurrent.futures.TimeoutError as exc:
            raise OperationTimeoutError(f"job {job_id} still running after {timeout} s") from exc
        if snapshot is None:
            raise KeyError(job_id)
        return snapshot

    # -- documents --------------------------------------------------------------------------
    def documents(self, workspace: str = DEFAULT_ID) -> list[DocumentRecord]:
        """Indexed documents of a workspace (by id), newest first."""
        return self.library.list(workspace)

    def delete_document(self, doc_id: str, workspace: str = DEFAULT_ID) -> DocumentRecord:
        """Remove a document of a workspace: every chunk, its keyword entries, its row and its stored bytes."""
        return self.runtime.run(self.library.adelete(doc_id, workspace), timeout=120)

    def document(self, doc_id: str, workspace: str = DEFAULT_ID) -> DocumentRecord:
        """One document of a workspace, by id or unique id prefix."""
        return self.library.resolve(doc_id, workspace)

    def source_page(self, doc_id: str, workspace: str, page: int, passage: str = "", zoom: float = 1.0) -> RenderedPage:
        """A page of a stored PDF drawn with `passage` highlighted (cached; runs in the caller's thread)."""
        record = self.document(doc_id, workspace)
        return render_page(Path(record.stored_path), page, passage, zoom)

    def source_context(self, doc_id: str, workspace: str, passage: str) -> tuple[str, str, str]:
        """The passage in its surrounding text, for formats without pages: (before, passage, after)."""
        record = self.document(doc_id, workspace)
        return source_context(Path(record.stored_path), record.file_name, passage)

    def original(self, doc_id: str, workspace: str) -> tuple[str, bytes]:
        """A document's name and original bytes, for download."""
        record = self.document(doc_id, workspace)
        return record.file_name, Path(record.stored_path).read_bytes()

    def reindex_document(self, doc_id: str, owner: str = "cli", workspace: str = DEFAULT_ID) -> JobSnapshot:
        """Rebuild a document's chunks from its stored upload (e.g. after a splitter change); the current chunks
        keep answering until the new ones are stored."""
        source = self.library.reindex_source(doc_id, workspace)
        try:
            return self.jobs.start([source], owner)
        except BaseException:
            self.library.release(source.path)
            raise

    # -- workspaces -------------------------------------------------------------------------
    def list_workspaces(self, account: str | None = None) -> list[Workspace]:
        """The workspaces an account may see (all of them without accounts), `default` first."""
        return self.workspaces.list(account)

    def create_workspace(self, name: str, owner: str | None = None, shared: bool = True) -> Workspace:
        """A new, empty workspace."""
        return self.workspaces.create(name, owner, shared)

    def private_workspace(self, account: str) -> Workspace:
        """An account's own workspace, created on first use."""
        mine = [w for w in self.workspaces.list(account) if not w.shared and w.owner == account]
        return mine[0] if mine else self.workspaces.create(f"{account}", owner=account, shared=False)

    def rename_workspace(self, name: str, new_name: str, account: str | None = None, admin: bool = False) -> Workspace:
        """Rename a workspace (its owner, or an admin for a shared one); its documents and chats stay."""
        workspace = self._managed(name, account, admin)
        return self.workspaces.rename(workspace, new_name)

    def _managed(self, name: str, account: str | None, admin: bool) -> Workspace:
        from rag.errors import WorkspaceError

        workspace = self.workspaces.get(name, account)
        if not workspace.managed_by(account, admin):
            raise WorkspaceError(
                f"{account} may not manage {workspace.name}",
                user_message=f"Only an admin can rename or delete the shared workspace “{workspace.name}”.",
            )
        return workspace

    def delete_workspace(self, name: str, account: str | None = None, admin: bool = False) -> list[DocumentRecord]:
        """Delete a workspace with its documents (chunks, keyword entries, stored bytes) and chats.

        Jobs writing into it are cancelled first and awaited, so nothing half-written is left behind.
        """
        from rag.errors import WorkspaceError

        workspace = self._managed(name, account, admin)
        if workspace.id == DEFAULT_ID:
            raise WorkspaceError(
                "the default workspace", user_message="The default workspace cannot be deleted; empty it instead."
            )
        for job_id in self.jobs.cancel_workspace(workspace.id):
            self.wait_job(job_id, timeout=120)
        removed = self.runtime.run(self.library.adelete_workspace(workspace.id), timeout=600)
        self.conversations.delete_workspace(workspace.id)
        self.workspaces.remove(workspace)
        return removed

    def collection_state(self) -> str:
        """Whether Milvus has the collection loaded (`loaded`), is loading it after a restart, or not."""
        return self.runtime.run(self.store.aload_state(), timeout=30)

    def check_documents(self, repair: bool = False) -> CheckReport:
        """The reconcile pass (`docs check`): Milvus, the keyword index and the catalogue compared chunk by chunk;
        with `repair`, what belongs to no committed document removed. Reads every chunk id: seconds per 100,000
        chunks."""
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
    ) -> list[EvalReport]:
        """hit@1/3/5 and MRR of each retrieval mode on labelled pairs in a workspace; reads only."""
        check_files(pairs, {r.file_name for r in self.library.list(workspace)})
        k = top_k or self.settings.top_k
        timeout = 60 + 10 * len(pairs)
        return [self.runtime.run(aevaluate(self.engine, pairs, mode, k, workspace), timeout=timeout) for mode in modes]

    # -- benchmarks -------------------------------------------------------------------------
    def bench(self, config: BenchConfig) -> Iterator[BenchRow | BenchReport]:
        """Run the sync-versus-async benchmarks in scratch collections, yielding each row as it lands.

        One benchmark runs at a time per data dir (web sessions and the CLI alike): a second one raises
        BenchmarkBusyError when iteration starts. Close the iterator to stop a run early.
        """
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
    def status(self) -> ServiceStatus:
        """What is connected and how much is indexed."""

        async def _info() -> StoreInfo:
            return StoreInfo(
                uri=self.connection.uri,
                kind=self.connection.kind,
                version=await self.store.aversion(),
                collection=self.store.name,
                chunks=await self.store.acount(),
            )

        return ServiceStatus(
            store=self.runtime.run(_info(), timeout=30),
            embed_model=self.embedder.model_id,
            embed_dim=self.embedder.dim,
            llm=describe_llm(self.settings),
            mode=self.mode,
            documents=len(self.library.list()),
            recovered=self.recovered,
        )

    def close(self) -> None:
        """Close clients and stop the loop (the embedded Milvus keeps running for the next start)."""
        with contextlib.suppress(Exception):
            self.runtime.run(self.library.astop_upkeep(), timeout=30)
        self.jobs.close()  # queued jobs are cancelled; running ones stop with the loop below
        self.conversations.close()
        try:
            super().close()
        except Exception:  # noqa: BLE001 - closing is best effort
            log.debug("closing the store failed", exc_info=True)
        self.library.close()  # after the loop: a cancelled writer still releases its claim in the catalogue


def _sources(
    paths: Sequence[Path | str], names: Sequence[str] | None = None, workspace: str = DEFAULT_ID
) -> list[SourceFile]:
    """Files on disk to ingest, each under the name the user knows it by (default: its file name)."""
    return [SourceFile(Path(p), names[i] if names else Path(p).name, workspace=workspace) for i, p in enumerate(paths)]
