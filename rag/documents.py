"""A document's life in one place: staged bytes, catalogue row, chunks and keyword entries, replace,
re-index, delete and recovery.

Ingestion (`rag.ingest`) reads, chunks and embeds; it writes a document only through the write object this module
hands out (`async with library.write(record) as w: await w.add(nodes)`), which owns the generation, the lease, the
commit and the clean-up. The service asks it to store bytes, list, delete and re-index. The rules it keeps:

- bytes are stored once (`rag.storage`, RAG_STORAGE_URL), under their SHA-256, and removed as soon as no catalogue
  row and no queued or running job refers to them (so rejected, failed, cancelled and duplicate uploads leave
  nothing behind); that check and the removal hold the database's "storage" lock, which enqueueing a job takes
  too, so bytes are never removed under a job being queued;
- a document is listed only once all its chunks are stored; until then its row is `indexing`;
- a writer holds a lease on its row and renews it while it writes; recovery at start removes only rows whose
  lease ran out, so a CLI ingest still writing in another process is left alone;
- a re-index writes the next generation of chunks beside the current one and swaps when it is complete; if it
  fails, the current generation keeps answering;
- one writer per document at a time, in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import func, select

from rag import schema
from rag.access import OPERATOR
from rag.catalog import Catalog, DocumentRecord
from rag.config import Settings
from rag.database import Database
from rag.errors import DocumentBusyError, DocumentNotFoundError, RagError
from rag.storage import Staged, Storage
from rag.store import DocumentStore, chunk_id
from rag.workspaces import DEFAULT_ID, Workspaces

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0
"""How long a writer's claim on a document lasts without renewal (it renews every few batches)."""


@dataclass(frozen=True)
class SourceFile:
    """A file to ingest: where its bytes are, what the user calls it, which workspace it goes into, and
    whether its bytes are staged already (`content_hash`, their SHA-256, is then set). `reindex` asks for a
    new generation of an indexed document's chunks; `owner` is the uploader's account id (None: the operator,
    or no accounts); `key` names the stored bytes in `rag.storage` (`path` is then a local file with them)."""

    path: Path
    name: str
    content_hash: str | None = None
    reindex: bool = False
    workspace: str = DEFAULT_ID
    owner: str | None = None
    key: str | None = None

    @property
    def doc_id(self) -> str | None:
        """The document these bytes make in this workspace (None until staged)."""
        return document_id(self.workspace, self.content_hash) if self.content_hash else None


def document_id(workspace: str, content_hash: str) -> str:
    """A document's id: the SHA-256 of its bytes in `default` (as before workspaces), and of the workspace id
    and that hash elsewhere, so the same file in two workspaces is two documents."""
    if workspace == DEFAULT_ID:
        return content_hash
    return hashlib.sha256(f"{workspace}:{content_hash}".encode()).hexdigest()


def list_documents(settings: Settings) -> list[DocumentRecord]:
    """Indexed documents of the settings' workspace, newest first, read from the catalogue alone (no Milvus,
    no model: `docs list`, run by the operator)."""
    with Database.open(settings) as db:
        workspace = Workspaces(db, settings.collection).get(settings.workspace, OPERATOR)
        return Catalog(db, settings.collection).list("indexed", workspace.id)


class DocumentLibrary:
    """The documents of one collection: the only writer of their rows, stored bytes and chunks."""

    def __init__(self, settings: Settings, store: DocumentStore) -> None:
        self.settings = settings
        self.store = store
        self.catalog = Catalog(Database.open(settings), settings.collection)
        self.storage = Storage(settings)
        self.uploads = Path(self.storage.root)
        self._writers: dict[str, tuple[asyncio.Lock, int]] = {}  # doc id -> (its lock, writers waiting or writing)

    # -- reading ------------------------------------------------------------------------------
    def list(self, workspace: str | None = DEFAULT_ID, status: str | None = "indexed") -> list[DocumentRecord]:
        """Documents of a workspace (None: of all), newest first (`status=None`: in any state)."""
        return self.catalog.list(status, workspace)

    def get(self, doc_id: str) -> DocumentRecord | None:
        """The row of a document, in any state."""
        return self.catalog.get(doc_id)

    def resolve(self, doc_id: str, workspace: str | None = None) -> DocumentRecord:
        """A document by id, or by a unique id prefix of 8+ characters (as `docs list` shows them), within a
        workspace when one is given (a document of another workspace is not found)."""
        record = self.catalog.get(doc_id)
        if record is not None and workspace is not None and record.workspace != workspace:
            record = None
        if record is None and len(doc_id) >= 8:
            matches = [r for r in self.catalog.list(None, workspace) if r.doc_id.startswith(doc_id)]
            record = matches[0] if len(matches) == 1 else None
        if record is None:
            raise DocumentNotFoundError(f"no document {doc_id}", user_message=f"No document has the id {doc_id}.")
        return record

    # -- bytes --------------------------------------------------------------------------------
    def stage(self, data: BinaryIO, name: str) -> Staged:
        """Write an upload's bytes under a temporary name, hashing while writing (one copy); `publish` puts them
        under their key (inside the transaction that queues their job). Blocking: never on the loop."""
        return self.storage.stage(data, name)

    def publish(self, staged: Staged) -> None:
        """Move staged bytes under their key (the caller holds the storage lock: `JobQueue.enqueue`)."""
        self.storage.publish(staged)

    def stage_path(self, path: Path, name: str, workspace: str = DEFAULT_ID) -> SourceFile:
        """Store a file's bytes under their hash at once, for a caller that ingests without a job (the benchmark's
        own ingestor); `release` them when done."""
        with open(path, "rb") as fh:
            return self.stage_stream(fh, name, workspace)

    def stage_stream(self, data: BinaryIO, name: str, workspace: str = DEFAULT_ID) -> SourceFile:
        """Store a stream's bytes under their hash at once (see `stage_path`)."""
        staged = self.storage.stage(data, name)
        with self.catalog.db.write(serialize="storage"):
            self.storage.publish(staged)
        return self.source(staged, name, workspace)

    def source(self, staged: Staged, name: str, workspace: str = DEFAULT_ID) -> SourceFile:
        """What an ingestor reads for stored bytes."""
        return SourceFile(
            self.storage.local_path(staged.key),
            name,
            content_hash=staged.content_hash,
            workspace=workspace,
            key=staged.key,
        )

    def release(self, stored: str | Path) -> None:
        """Bytes no longer needed by whoever staged them: removed unless a row or an active job refers to them."""
        self.release_keys([stored.name if isinstance(stored, Path) and stored.parent == self.uploads else str(stored)])

    def release_keys(self, keys: Sequence[str]) -> None:
        """Remove stored bytes (and the files derived from them) that no catalogue row and no queued or running job
        refers to, under the storage lock."""
        docs, files, jobs = schema.documents, schema.job_files, schema.jobs
        with self.catalog.db.write(serialize="storage") as conn:
            for key in sorted(set(keys)):
                rows = conn.execute(select(func.count()).where(docs.c.stored_path == key)).scalar_one()
                active = conn.execute(
                    select(func.count())
                    .select_from(files.join(jobs, jobs.c.id == files.c.job_id))
                    .where(files.c.stored == key, jobs.c.state.in_(("queued", "running")))
                ).scalar_one()
                if not rows and not active:
                    try:
                        self.storage.remove(key)
                    except OSError:
                        log.warning("could not remove the stored copy %s", key, exc_info=True)

    # -- writing ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def writer(self, doc_id: str) -> AsyncIterator[None]:
        """One writer per document: jobs with the same bytes take turns (the second finds it indexed)."""
        lock, users = self._writers.get(doc_id, (asyncio.Lock(), 0))
        self._writers[doc_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._writers[doc_id]
            if users > 1:
                self._writers[doc_id] = (lock, users - 1)
            else:
                del self._writers[doc_id]

    @contextlib.asynccontextmanager
    async def write(self, record: DocumentRecord, reindex: bool = False) -> AsyncIterator[DocumentWrite]:
        """The one way to write a document's chunks: `async with library.write(record) as w: await w.add(nodes)`.

        Inside, this process is the document's only writer (`writer`), and `w.existing` is its row as read under
        that. The first `add` claims the row (a new document `indexing`, or a re-index's next generation beside the
        current one) and starts renewing the lease in the background, through the final writes; a block that ends
        normally commits (the document answers, replaced versions or the previous generation go), one that raises or
        is cancelled removes what it stored. A block that adds nothing writes nothing (e.g. the bytes turned out
        indexed already)."""
        async with self.writer(record.doc_id):
            existing = await asyncio.to_thread(self.catalog.get, record.doc_id)
            handle = DocumentWrite(self, record, reindex, existing)
            try:
                yield handle
                if handle.begun:
                    await handle._commit()
            except BaseException:
                await asyncio.shield(handle._abandon())
                raise
            finally:
                handle._stop_renewing()

    async def abegin(self, record: DocumentRecord) -> None:
        """Claim a new document's row (`indexing`, leased), removing chunks an earlier failed attempt left."""
        leftover = await asyncio.to_thread(self.catalog.get, record.doc_id)
        await asyncio.to_thread(self.catalog.begin, record, time.time() + LEASE_SECONDS)
        if leftover is not None:
            # Only an attempt that could not clean up keeps its row, so only then can chunks be left over.
            # A new document skips the delete: in Milvus 2.3 it is a query plus a delete, ~0.3 s.
            await self.store.adelete_doc(record.doc_id)

    async def abegin_generation(self, doc_id: str, generation: int) -> None:
        """Claim an indexed document for a re-index writing `generation` beside the current chunks."""
        await asyncio.to_thread(self.catalog.begin_generation, doc_id, generation, time.time() + LEASE_SECONDS)

    async def arenew(self, doc_id: str) -> None:
        """Extend the writer's lease (called while chunks are written)."""
        await asyncio.to_thread(self.catalog.renew, doc_id, time.time() + LEASE_SECONDS)

    async def acommit(self, record: DocumentRecord, chunks: int) -> list[DocumentRecord]:
        """A new document is complete: list it, then remove older documents with its name (replaced)."""
        await asyncio.to_thread(self.catalog.finish, record.doc_id, chunks, record.pages, record.generation)
        replaced = [
            old
            for old in await asyncio.to_thread(self.catalog.by_name, record.file_name, record.workspace, record.owner)
            if old.doc_id != record.doc_id
        ]
        for old in replaced:
            await self._adelete(old)
        return replaced

    async def acommit_generation(self, record: DocumentRecord, chunks: int) -> None:
        """A re-index is complete: its generation becomes current, then the previous chunks go."""
        await asyncio.to_thread(self.catalog.finish, record.doc_id, chunks, record.pages, record.generation)
        await self._adelete_other_generations(record.doc_id, record.generation)

    async def aabandon(self, record: DocumentRecord) -> None:
        """Remove what an unfinished write stored: a new document entirely, a re-index's new generation only."""
        current = await asyncio.to_thread(self.catalog.get, record.doc_id)
        try:
            if current is not None and current.status == "indexed":
                await self._adelete_generation(record.doc_id, record.generation)
                await asyncio.to_thread(self.catalog.end_generation, record.doc_id)
            else:
                await self.store.adelete_doc(record.doc_id)
                await asyncio.to_thread(self.catalog.remove, record.doc_id)
        except RagError:
            log.warning("could not remove chunks of %s; they are removed at next start", record.file_name)

    async def _adelete_generation(self, doc_id: str, generation: int) -> None:
        stem = _stem(doc_id, generation)
        ids = [i for i in await self.store.achunk_ids(doc_id) if i.rsplit("-", 1)[0] == stem]
        await self.store.adelete_chunks(ids)

    async def _adelete_other_generations(self, doc_id: str, generation: int) -> None:
        stem = _stem(doc_id, generation)
        ids = [i for i in await self.store.achunk_ids(doc_id) if i.rsplit("-", 1)[0] != stem]
        await self.store.adelete_chunks(ids)

    # -- deleting and recovering --------------------------------------------------------------
    async def adelete(self, doc_id: str, workspace: str | None = None) -> DocumentRecord:
        """Delete a document: every chunk, its keyword entries, its row and its stored bytes."""
        record = await asyncio.to_thread(self.resolve, doc_id, workspace)
        if (record.status == "indexing" or record.pending is not None) and (record.lease_until or 0) > time.time():
            raise DocumentBusyError(
                f"{record.doc_id} is being written",
                user_message=f"{record.file_name} is being indexed right now; cancel its upload or wait until it "
                "ends, then delete it.",
            )
        async with self.writer(record.doc_id):
            await self._adelete(record)
        return record

    async def _adelete(self, record: DocumentRecord) -> None:
        await self.store.adelete_doc(record.doc_id)
        await asyncio.to_thread(self.catalog.remove, record.doc_id)
        await asyncio.to_thread(self.release_keys, [record.stored_path])

    def reindex_source(self, doc_id: str, workspace: str | None = None) -> SourceFile:
        """What a re-index job reads: the document's stored bytes (its job's row refers to them while it runs)."""
        record = self.resolve(doc_id, workspace)
        if record.status != "indexed":
            raise DocumentBusyError(
                f"{record.doc_id} is {record.status}",
                user_message=f"{record.file_name} is still being indexed; re-index it once that has finished.",
            )
        if not self.storage.exists(record.stored_path):
            raise DocumentNotFoundError(
                f"{record.stored_path} is missing",
                user_message=f"The stored copy of {record.file_name} is missing; upload the file again.",
            )
        return SourceFile(
            self.storage.local_path(record.stored_path) if not self.storage.remote else Path(record.stored_path),
            record.file_name,
            content_hash=Path(record.stored_path).name[:64],
            reindex=True,
            workspace=record.workspace,
            owner=record.owner,
            key=record.stored_path,
        )

    async def adelete_workspace(self, workspace: str) -> list[DocumentRecord]:
        """Delete every document of a workspace (chunks, keyword entries, rows, bytes); the caller has stopped
        its jobs first. Chunks are removed by the workspace filter, so none a crash left behind survives."""
        records = await asyncio.to_thread(self.catalog.list, None, workspace)
        for record in records:
            async with self.writer(record.doc_id):
                await self._adelete(record)
        await self.store.adelete_workspace(workspace)
        return records

    async def arecover(self) -> list[DocumentRecord]:
        """Clean up after writers that died: remove half-indexed documents and unfinished re-indexes whose lease
        ran out, and bring the keyword index in step with the catalogue. Returns the removed documents."""
        cleaned = []
        for record in await asyncio.to_thread(self.catalog.expired, time.time()):
            async with self.writer(record.doc_id):
                if record.status == "indexing":
                    await self._adelete(record)
                    cleaned.append(record)
                else:
                    await self._adelete_other_generations(record.doc_id, record.generation)
                    await asyncio.to_thread(self.catalog.end_generation, record.doc_id)
        indexed = await asyncio.to_thread(self.catalog.list, "indexed", None)
        await self.store.areconcile_keywords({r.doc_id: r.chunks for r in indexed})
        return cleaned

    def close(self) -> None:
        """Close the catalogue."""
        self.catalog.close()


class DocumentWrite:
    """A document's write in progress, handed out by `DocumentLibrary.write`: it owns the generation, the lease
    (renewed in the background), the commit and the clean-up; callers only `add` chunks."""

    def __init__(
        self, library: DocumentLibrary, record: DocumentRecord, reindex: bool, existing: DocumentRecord | None
    ) -> None:
        self.library = library
        self.record = record
        self.reindex = reindex
        self.existing = existing
        """The document's row when this write started (under the writer's lock); None for a new document."""
        self.begun = False
        self.added = 0
        self.replaced: list[DocumentRecord] = []
        """Older documents of the same name this write replaced (set by the commit)."""
        self._begin_lock = asyncio.Lock()
        self._renewing: asyncio.Task[None] | None = None

    async def add(self, nodes: Sequence[object]) -> None:
        """Store embedded chunks (in Milvus and the keyword index); the first call claims the row. Safe to call
        from several tasks at once (bounded concurrent inserts)."""
        if not self.begun:
            async with self._begin_lock:
                if not self.begun:
                    await self._begin()
        await self.library.store.aadd(nodes)  # type: ignore[arg-type]
        self.added += len(nodes)

    async def _begin(self) -> None:
        if self.reindex:
            await self.library.abegin_generation(self.record.doc_id, self.record.generation)
        else:
            await self.library.abegin(self.record)
        self.begun = True
        self._renewing = asyncio.create_task(self._renew(), name=f"lease {self.record.doc_id[:12]}")

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 4)
            try:
                await self.library.arenew(self.record.doc_id)
            except RagError:
                log.warning("could not renew the lease on %s (retrying)", self.record.file_name, exc_info=True)

    async def _commit(self) -> None:
        if self.reindex:
            await self.library.acommit_generation(self.record, self.record.chunks)
        else:
            self.replaced = await self.library.acommit(self.record, self.record.chunks)
        self.begun = False  # committed: nothing to clean up any more

    async def _abandon(self) -> None:
        self._stop_renewing()
        if self.begun:
            self.begun = False  # once: a second clean-up must not remove what a later writer stored
            await self.library.aabandon(self.record)

    def _stop_renewing(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            self._renewing = None


def _stem(doc_id: str, generation: int) -> str:
    return chunk_id(doc_id, 0, generation).rsplit("-", 1)[0]


def stage_all(library: DocumentLibrary, uploads: Sequence[tuple[str, BinaryIO]]) -> list[Staged]:
    """Write several uploads under temporary names; on a failure, discard the ones already written."""
    staged: list[Staged] = []
    try:
        for name, data in uploads:
            staged.append(library.stage(data, name))
    except BaseException:
        for done in staged:
            library.storage.discard(done)
        raise
    return staged
