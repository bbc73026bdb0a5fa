"""A document's life in one place: staged bytes, catalogue row, chunks and keyword entries, replace,
re-index, delete and recovery.

Ingestion (`rag.ingest`) reads, chunks and embeds; it writes a document only through the write object this module
hands out (`async with library.write(record) as w: await w.add(nodes)`), which owns the generation, the lease, the
commit and the clean-up. The service asks it to store bytes, list, delete and re-index. The rules it keeps:

- bytes are stored once (`rag.storage`, RAG_STORAGE_URL), under their SHA-256, and removed as soon as no catalogue
  row and no queued or running job refers to them (so rejected, failed, cancelled and duplicate uploads leave
  nothing behind); that check and the removal hold the database's "storage" lock, which enqueueing a job takes
  too, so bytes are never removed under a job being queued;
- a document is listed, and its chunks answer, only once all its chunks are stored; until then its row is
  `indexing`, and searches see only the current generation of `indexed` rows (`rag.chunks.committed_chunk`);
- one writer per document, and one commit per (workspace, file name), across processes: a writer holds a claim in
  the catalogue (`claims`), taken only when free, expired or left by a dead process on this machine, and renewed
  in the background until the last write (commit, removing the replaced generation or document) is done;
- a re-index writes the next generation of chunks beside the current one and swaps when it is complete; if it
  fails, the current generation keeps answering; a crash after the swap leaves the row `pending`, and recovery
  removes the old generation;
- recovery (at start, then every minute) finishes or undoes writes whose writer is gone; the reconcile pass
  (`acheck`, `python -m rag docs check`) compares Milvus, the keyword index and the catalogue chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel
from sqlalchemy import func, select

from rag import schema
from rag.access import OPERATOR
from rag.catalog import Catalog, DocumentRecord
from rag.config import Settings
from rag.database import Database
from rag.errors import DocumentBusyError, DocumentNotFoundError, RagError
from rag.processes import machine, started
from rag.storage import Staged, Storage
from rag.store import DocumentStore, Visibility, chunk_stem, committed_chunk, resolve_connection
from rag.workspaces import DEFAULT_ID, Workspaces

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0
"""How long a writer's claim lasts without renewal; it is renewed every quarter of this while held."""
RECOVERY_SECONDS = 60.0
"""How often a running app looks for writes whose writer is gone (besides at start)."""

DOCUMENTS_PAGE = 100
"""Documents a page or `docs list` reads at once, newest first: a larger library is searched, not listed whole."""


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


def list_documents(settings: Settings, limit: int | None = DOCUMENTS_PAGE) -> tuple[list[DocumentRecord], int]:
    """The newest `limit` (None: all) indexed documents of the settings' workspace and how many it holds, read from
    the catalogue alone (no Milvus, no model: `docs list`, run by the operator)."""
    with Database.open(settings) as db:
        workspace = Workspaces(db, settings.collection).get(settings.workspace, OPERATOR)
        catalog = Catalog(db, settings.collection)
        return catalog.list("indexed", workspace.id, limit), catalog.count("indexed", workspace.id)[0]


class DocumentLibrary:
    """The documents of one collection: the only writer of their rows, stored bytes and chunks."""

    def __init__(self, settings: Settings, store: DocumentStore) -> None:
        self.settings = settings
        self.store = store
        self.catalog = Catalog(Database.open(settings), settings.collection)
        self.storage = Storage(settings)
        self.uploads = Path(self.storage.root)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # claim key -> (its lock, holders and waiters here)
        self._upkeep: asyncio.Task[None] | None = None

    # -- reading ------------------------------------------------------------------------------
    def list(
        self, workspace: str | None = DEFAULT_ID, status: str | None = "indexed", limit: int | None = None
    ) -> list[DocumentRecord]:
        """Documents of a workspace (None: of all), newest first (`status=None`: in any state), at most `limit`."""
        return self.catalog.list(status, workspace, limit)

    def find(self, text: str, workspace: str | None = DEFAULT_ID, limit: int = 100) -> list[DocumentRecord]:
        """Indexed documents of a workspace whose name contains `text`, newest first, at most `limit`."""
        return self.catalog.find(text, workspace, limit)

    def count(self, workspace: str | None = DEFAULT_ID) -> tuple[int, int]:
        """Indexed documents of a workspace (None: of all) and the chunks they hold."""
        return self.catalog.count("indexed", workspace)

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

    # -- claims -------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def claim(self, key: str, wait: bool = True) -> AsyncIterator[Claim]:
        """Hold the catalogue's claim `key` (`doc_key`, `name_key`) while the block runs: the one thing that
        serialises writers across processes. Jobs of this process queue on a lock first (no polling among them);
        another process's claim is polled for until it is released, expires, or its holder is found dead. The
        lease is renewed in the background until the block ends. `wait=False` raises DocumentBusyError at once."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        if not wait and lock.locked():
            raise _busy(key)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                held = Claim(key, new_owner())
                delay = 0.05
                while not await self._atry_claim(held):
                    if not wait:
                        raise _busy(key)
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 2.0)
                keeper = asyncio.create_task(self._keep(held), name=f"claim {key}")
                try:
                    yield held
                finally:
                    keeper.cancel()
                    await asyncio.shield(asyncio.to_thread(self.catalog.release_claim, key, held.owner))
        finally:
            lock, users = self._locks[key]
            if users > 1:
                self._locks[key] = (lock, users - 1)
            else:
                del self._locks[key]

    def writer(self, doc_id: str, wait: bool = True) -> contextlib.AbstractAsyncContextManager[Claim]:
        """One writer per document, across processes: jobs with the same bytes take turns (the second finds it
        indexed); deleting, replacing and recovering a document wait for its writer too."""
        return self.claim(doc_key(doc_id), wait)

    async def _atry_claim(self, held: Claim) -> bool:
        """One attempt; a caller cancelled while it runs gives back a claim the attempt took."""
        attempt = asyncio.ensure_future(asyncio.to_thread(self._try_claim, held))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            if await attempt:
                await asyncio.to_thread(self.catalog.release_claim, held.key, held.owner)
            raise

    def _try_claim(self, held: Claim) -> bool:
        now = time.time()
        if self.catalog.claim(held.key, held.owner, now + LEASE_SECONDS, now):
            return True
        holder = self.catalog.claims(held.key).get(held.key)
        if holder is not None and owner_dead(holder[0]):
            log.info("taking over %s from a writer that is gone (%s)", held.key, holder[0])
            return self.catalog.claim(held.key, held.owner, now + LEASE_SECONDS, now, steal_from=holder[0])
        return False

    async def _keep(self, held: Claim) -> None:
        """Renew a held claim every quarter lease, through the final writes; mark it lost if someone took it."""
        while True:
            await asyncio.sleep(LEASE_SECONDS / 4)
            if not await asyncio.to_thread(self.catalog.renew_claim, held.key, held.owner, time.time() + LEASE_SECONDS):
                held.lost = True
                log.warning("lost the claim %s (its lease ran out and another writer took it)", held.key)
                return

    async def aconfirm(self, held: Claim) -> None:
        """Renew a claim now and fail if it was lost: called before a write that must not happen twice (commit)."""
        if held.lost or not await asyncio.to_thread(
            self.catalog.renew_claim, held.key, held.owner, time.time() + LEASE_SECONDS
        ):
            held.lost = True
            raise DocumentBusyError(
                f"lost the claim {held.key}",
                user_message="Another writer took this document over while it was being written (this one was "
                "stalled for more than two minutes); nothing of this attempt was kept.",
            )

    def live_claims(self, prefix: str = "") -> set[str]:
        """Keys whose claim a live writer holds now (not expired, holder not known dead)."""
        now = time.time()
        return {
            key for key, (owner, until) in self.catalog.claims(prefix).items() if until >= now and not owner_dead(owner)
        }

    # -- writing ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def write(self, record: DocumentRecord, reindex: bool = False) -> AsyncIterator[DocumentWrite]:
        """The one way to write a document's chunks: `async with library.write(record) as w: await w.add(nodes)`.

        Inside, this process is the document's only writer (`writer`, a claim across processes, renewed in the
        background through the final writes), and `w.existing` is its row as read under that claim. The first `add`
        begins the row (a new document `indexing`, or a re-index's next generation beside the current one) and
        renews the row's lease in the background; a block that ends normally commits (the document answers,
        replaced versions or the previous generation go), one that raises or is cancelled removes what it stored,
        before the claim passes to the next writer. A block that adds nothing writes nothing (e.g. the bytes turned
        out indexed already)."""
        async with self.writer(record.doc_id) as claim:
            existing = await asyncio.to_thread(self.catalog.get, record.doc_id)
            handle = DocumentWrite(self, record, reindex, existing, claim)
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

    async def acommit(self, record: DocumentRecord, chunks: int, held: Claim) -> list[DocumentRecord]:
        """A new document is complete: in one catalogue transaction it starts answering and the older documents
        with its name in its workspace, uploaded by the same owner, stop (a same-name file of someone else is
        another document), then their chunks, rows and bytes go. Commits of one name are
        serialised across processes (`name_key`), and each replaced document's own writer (a re-index of it,
        say) is waited for, so nothing written for it later can outlive it."""
        await self.aconfirm(held)
        async with self.claim(name_key(record.workspace, record.file_name)), contextlib.AsyncExitStack() as stack:
            olds = await asyncio.to_thread(self.catalog.by_name, record.file_name, record.workspace, record.owner)
            claimed = sorted(o.doc_id for o in olds if o.doc_id != record.doc_id)
            for doc_id in claimed:
                await stack.enter_async_context(self.writer(doc_id))
            replaced = [  # read again under their claims: one may have gone meanwhile
                o
                for o in await asyncio.to_thread(self.catalog.by_name, record.file_name, record.workspace, record.owner)
                if o.doc_id in claimed
            ]
            await self.aconfirm(held)
            await asyncio.to_thread(
                self.catalog.commit,
                record.doc_id,
                chunks,
                record.pages,
                record.generation,
                [o.doc_id for o in replaced],
            )
            for old in replaced:
                try:
                    await self._aremove(old)
                except RagError:
                    log.warning("could not remove %s, replaced by a new version; recovery will", old.file_name)
        return replaced

    async def acommit_generation(self, record: DocumentRecord, chunks: int, held: Claim) -> None:
        """A re-index is complete: its generation becomes current, then the previous chunks go. The row stays
        `pending` until they are gone, so recovery finishes the removal if this process dies first."""
        await self.aconfirm(held)
        await asyncio.to_thread(self.catalog.commit, record.doc_id, chunks, record.pages, record.generation, (), True)
        try:
            await self._adelete_other_generations(record.doc_id, record.generation)
            await asyncio.to_thread(self.catalog.end_generation, record.doc_id)
        except RagError:
            log.warning("could not remove the previous chunks of %s; recovery will", record.file_name)

    async def aabandon(self, record: DocumentRecord, held: Claim | None = None) -> None:
        """Remove what an unfinished write stored: a new document entirely, a re-index's new generation only.
        A write that was committed is left alone (recovery finishes its cleanup), and so is one whose claim
        was lost (its chunks answer nothing; the reconcile pass removes them)."""
        if held is not None and held.lost:
            return
        current = await asyncio.to_thread(self.catalog.get, record.doc_id)
        try:
            if current is not None and current.status == "indexed":
                if current.generation == record.generation:
                    return
                await self._adelete_generation(record.doc_id, record.generation)
                await asyncio.to_thread(self.catalog.end_generation, record.doc_id)
            else:
                await self.store.adelete_doc(record.doc_id)
                await asyncio.to_thread(self.catalog.remove, record.doc_id)
        except RagError:
            log.warning("could not remove chunks of %s; recovery or `docs check --repair` will", record.file_name)

    async def _adelete_generation(self, doc_id: str, generation: int) -> None:
        stem = chunk_stem(doc_id, generation)
        ids = [i for i in await self.store.achunk_ids(doc_id) if i.rsplit("-", 1)[0] == stem]
        await self.store.adelete_chunks(ids)

    async def _adelete_other_generations(self, doc_id: str, generation: int) -> None:
        stem = chunk_stem(doc_id, generation)
        ids = [i for i in await self.store.achunk_ids(doc_id) if i.rsplit("-", 1)[0] != stem]
        await self.store.adelete_chunks(ids)
        if self.store.keyword is not None:  # a crash between the two writes can leave keyword rows alone
            held = await asyncio.to_thread(self.store.keyword.chunk_ids, doc_id)
            await asyncio.to_thread(self.store.keyword.delete_chunks, [i for i in held if i.rsplit("-", 1)[0] != stem])

    # -- deleting and recovering --------------------------------------------------------------
    async def adelete(self, doc_id: str, workspace: str | None = None) -> DocumentRecord:
        """Delete a document: every chunk, its keyword entries, its row and its stored bytes."""
        record = await asyncio.to_thread(self.resolve, doc_id, workspace)
        if (record.status == "indexing" or record.pending is not None) and doc_key(record.doc_id) in (
            await asyncio.to_thread(self.live_claims, doc_key(record.doc_id))
        ):
            raise DocumentBusyError(
                f"{record.doc_id} is being written",
                user_message=f"{record.file_name} is being indexed right now; cancel its upload or wait until it "
                "ends, then delete it.",
            )
        async with self.writer(record.doc_id):
            current = await asyncio.to_thread(self.catalog.get, record.doc_id)
            if current is not None:
                await self._aremove(current)
        return record

    async def _aremove(self, record: DocumentRecord) -> None:
        """Remove a document under its claim: it stops answering first (`deleting`), so a crash half-way leaves
        nothing that answers, and recovery finishes the removal."""
        await asyncio.to_thread(self.catalog.retire, record.doc_id)
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
                await self._aremove(record)
        await self.store.adelete_workspace(workspace)
        return records

    async def arecover(self) -> list[DocumentRecord]:
        """Clean up after writers that died (`arecover_writes`) and bring the keyword index in step with the
        catalogue. Returns the removed half-indexed documents."""
        cleaned = await self.arecover_writes()
        indexed = await asyncio.to_thread(self.catalog.list, "indexed", None)
        await self.store.areconcile_keywords({r.doc_id: r.chunks for r in indexed})
        return cleaned

    async def arecover_writes(self) -> list[DocumentRecord]:
        """Finish or undo every write whose writer is gone (its claim expired, or its process on this machine
        died): a half-indexed document is removed, a re-index's unfinished generation removed, the previous
        generation of a committed re-index removed, an interrupted delete or replace completed. Writes with a
        live writer are left alone. Cheap (one catalogue query) when nothing is unfinished. Returns the removed
        half-indexed documents."""
        cleaned = []
        for record in await asyncio.to_thread(self.catalog.unfinished):
            try:
                async with self.writer(record.doc_id, wait=False):
                    if await self._arecover_one(record.doc_id):
                        cleaned.append(record)
            except DocumentBusyError:
                continue  # its writer is alive
        return cleaned

    async def _arecover_one(self, doc_id: str) -> bool:
        """Recover one document whose claim is held; True when a half-indexed document was removed."""
        current = await asyncio.to_thread(self.catalog.get, doc_id)
        if current is None:
            return False
        if current.status != "indexed":
            await self._aremove(current)
            return current.status == "indexing"
        if current.pending is not None:
            await self._adelete_other_generations(doc_id, current.generation)
            await asyncio.to_thread(self.catalog.end_generation, doc_id)
        return False

    async def astart_upkeep(self) -> None:
        """Start `awatch` on the loop (once)."""
        if self._upkeep is None:
            self._upkeep = asyncio.create_task(self.awatch(), name="document upkeep")

    async def astop_upkeep(self) -> None:
        """Stop `awatch` and wait until it has released any claim it held."""
        if self._upkeep is not None:
            self._upkeep.cancel()
            await asyncio.gather(self._upkeep, return_exceptions=True)
            self._upkeep = None

    async def awatch(self) -> None:
        """The running app's upkeep: a cheap consistency check at start (counts only; a full reconcile pass in the
        background when they disagree), then recovery of dead writers' work every RECOVERY_SECONDS."""
        try:
            if not await self.acounts_agree():
                log.warning("Milvus, the keyword index and the catalogue disagree; reconciling in the background")
                report = await self.acheck(repair=True, remove_empty_rows=False, remove_unknown=False)
                for finding in report.findings:
                    log.warning("docs check: %s", finding.describe())
                if any(f.kind == "unknown-document" for f in report.findings):
                    log.warning(
                        "the collection holds chunks of documents this catalogue does not know: kept, since another "
                        "database may own them (check RAG_DATABASE_URL); `python -m rag docs check --repair` "
                        "removes them"
                    )
        except RagError as exc:
            log.warning("the consistency check at start failed: %s", exc)
        while True:
            await asyncio.sleep(RECOVERY_SECONDS)
            try:
                cleaned = await self.arecover_writes()
            except RagError as exc:
                log.warning("recovery failed (retried in %.0f s): %s", RECOVERY_SECONDS, exc)
                continue
            if cleaned:
                names = ", ".join(r.file_name for r in cleaned)
                log.info("removed half-indexed documents whose writer is gone: %s", names)

    async def acounts_agree(self) -> bool:
        """The start-up check, a few cheap reads: with no write in progress, Milvus and the keyword index hold
        exactly as many chunks as the committed documents have. True also while writes are in progress (the
        counts then prove nothing) or when the counts agree."""

        async def writing() -> bool:
            return bool(
                await asyncio.to_thread(self.catalog.unfinished) or await asyncio.to_thread(self.live_claims, "doc:")
            )

        if await writing():
            return True
        expected = sum(r.chunks for r in await asyncio.to_thread(self.catalog.list, "indexed", None))
        counts = [await self.store.acount()]
        if self.store.keyword is not None:
            counts.append(sum((await asyncio.to_thread(self.store.keyword.counts)).values()))
        return await writing() or all(n == expected for n in counts)  # a write that began meanwhile: no verdict

    async def acheck(
        self, repair: bool = False, remove_empty_rows: bool = True, remove_unknown: bool = True
    ) -> CheckReport:
        """Compare Milvus, the keyword index and the catalogue chunk by chunk; with `repair`, remove what belongs
        to no committed document (and, with `remove_empty_rows`, rows whose chunks are all gone; with
        `remove_unknown`, chunks of documents the catalogue has no row for: the automatic pass at start keeps
        those, since a process started on the wrong database must not empty a shared collection).

        Every chunk id is read once, a batch at a time (`DocumentStore.aiter_chunk_ids`, a low-priority thread),
        and checked against the rows; only counts per document and the ids found wrong are kept. Documents
        being written by a live writer are skipped. Each repair runs under the document's claim after reading
        its row again, so a writer that started meanwhile is never undone.
        """
        started = time.perf_counter()
        scan = _Scan(
            rows={r.doc_id: r for r in await asyncio.to_thread(self.catalog.list, None, None)},
            busy={k.removeprefix("doc:") for k in await asyncio.to_thread(self.live_claims, "doc:")},
            keyword_checked=self.store.keyword is not None,
        )
        async for batch in self.store.aiter_chunk_ids():
            scan.add("milvus", batch)
        if self.store.keyword is not None:
            batches = iter(self.store.keyword.iter_ids())
            while batch := await asyncio.to_thread(next, batches, []):
                scan.add("keyword", batch)
        findings = await self._aconfirm_findings(scan)
        if repair:
            findings = [await self._arepair(f, remove_empty_rows, remove_unknown) for f in findings]
            await asyncio.to_thread(self._forget_stale_claims)
        return CheckReport(
            documents=sum(1 for r in scan.rows.values() if r.status == "indexed"),
            milvus_chunks=scan.total["milvus"],
            keyword_rows=scan.total["keyword"] if self.store.keyword is not None else None,
            in_progress=sorted(scan.skipped),
            findings=findings,
            repaired=repair,
            seconds=round(time.perf_counter() - started, 3),
        )

    def _forget_stale_claims(self) -> None:
        """Delete claims whose lease ran out or whose holder died (harmless, but they pile up after crashes);
        each only if its holder is still the same, so a claim taken over meanwhile stays."""
        now = time.time()
        for key, (owner, until) in self.catalog.claims().items():
            if until < now or owner_dead(owner):
                self.catalog.release_claim(key, owner)

    async def _aconfirm_findings(self, scan: _Scan) -> list[Finding]:
        """The scan's findings, read again from the catalogue: a document whose writer started during the scan,
        or that was committed meanwhile, is not reported."""
        suspects = scan.suspects()
        if not suspects:
            return []
        rows = {doc: await asyncio.to_thread(self.catalog.get, doc) for doc in suspects}
        busy = {k.removeprefix("doc:") for k in await asyncio.to_thread(self.live_claims, "doc:")}
        findings = []
        for doc in sorted(suspects):
            if doc in busy:
                scan.skipped.add(doc)
                continue
            findings += scan.findings(doc, rows[doc])
        return findings

    async def _arepair(self, finding: Finding, remove_empty_rows: bool, remove_unknown: bool = True) -> Finding:
        """Repair one finding under its document's claim (skipped if a writer holds it now)."""
        if (finding.kind == "row-without-chunks" and not remove_empty_rows) or (
            finding.kind == "unknown-document" and not remove_unknown
        ):
            return finding
        try:
            async with self.writer(finding.doc_id, wait=False):
                row = await asyncio.to_thread(self.catalog.get, finding.doc_id)
                if finding.kind in ("unknown-document", "unfinished-write"):
                    if row is None:
                        await self.store.adelete_doc(finding.doc_id)
                    elif row.status != "indexed" or row.pending is not None:
                        await self._arecover_one(finding.doc_id)
                    else:
                        return finding  # committed meanwhile: not ours to remove
                elif row is None or row.status != "indexed":
                    return finding
                elif finding.kind == "row-without-chunks":
                    await self._aremove(row)
                else:  # stale chunks, keyword rows missing or alone: put the document's chunks right
                    await self._arealign(row)
                    if finding.kind == "missing-chunks":
                        return finding  # what Milvus lost only a re-index brings back
        except DocumentBusyError:
            return finding
        return finding.model_copy(update={"repaired": True})

    async def _arealign(self, row: DocumentRecord) -> None:
        """Make a committed document's chunks in Milvus and in the keyword index exactly its current ones: others
        are deleted, and committed chunks the keyword index lacks are copied from Milvus."""
        committed = {row.doc_id: (row.generation, row.chunks)}
        in_milvus = await self.store.achunk_ids(row.doc_id)
        await self.store.adelete_chunks(sorted(i for i in in_milvus if not committed_chunk(i, row.doc_id, committed)))
        if self.store.keyword is None:
            return
        kept = {i for i in in_milvus if committed_chunk(i, row.doc_id, committed)}
        held = await asyncio.to_thread(self.store.keyword.chunk_ids, row.doc_id)
        await asyncio.to_thread(self.store.keyword.delete_chunks, sorted(held - kept))
        if kept - held:
            rows = [r for r in await self.store.aread_keyword_rows(row.doc_id) if r.chunk_id in kept - held]
            await asyncio.to_thread(self.store.keyword.add, rows)

    def close(self) -> None:
        """Close the catalogue."""
        self.catalog.close()


@dataclass
class Claim:
    """A claim held in the catalogue: `owner` names this writer; `lost` is set if another writer took it over
    (possible only after the lease ran out, i.e. this process stalled for LEASE_SECONDS)."""

    key: str
    owner: str
    lost: bool = False


def doc_key(doc_id: str) -> str:
    """The claim of a document's writer."""
    return f"doc:{doc_id}"


def name_key(workspace: str, file_name: str) -> str:
    """The claim of a commit that replaces the documents of a workspace with one file name."""
    return f"name:{workspace}:{file_name}"


def _busy(key: str) -> DocumentBusyError:
    return DocumentBusyError(f"{key} is claimed by a live writer")


@functools.cache
def _machine() -> str:
    """This host, machine and pid namespace, as claim owners name it (empty where /proc cannot tell)."""
    return f"{socket.gethostname()}/{machine()}" if machine() else ""


def new_owner() -> str:
    """A claim owner naming this process, checkable by others on this machine: machine|pid|start|token."""
    pid = os.getpid()
    return f"{_machine()}|{pid}|{started(pid) or ''}|{uuid.uuid4().hex[:12]}"


def owner_dead(owner: str) -> bool:
    """True only when the owner's process ran on this machine and is gone (or its pid is another process's now);
    a writer elsewhere, or one that cannot be checked, is alive until its lease runs out."""
    parts = owner.split("|")
    if len(parts) != 4 or not parts[0] or parts[0] != _machine() or not parts[1].isdigit():
        return False
    return started(int(parts[1])) != parts[2]


def visibility(catalog: Catalog) -> Visibility:
    """What searches may see, from the catalogue: the committed generation and chunk count of documents.

    On the embedded SQLite database the lookup runs on the loop, not in a worker thread: it reads a few dozen rows
    by primary key in WAL mode (readers never wait for writers), less than a thread hop costs, and a hop on a busy
    machine waits for a scheduler slice (BENCHMARKS.md, "Only committed documents answer"). PostgreSQL is a
    network round trip: it runs in a thread.
    """
    on_loop = catalog.db.sqlite

    async def committed(doc_ids: Sequence[str]) -> Mapping[str, tuple[int, int]]:
        if not doc_ids:
            return {}
        return catalog.committed(doc_ids) if on_loop else await asyncio.to_thread(catalog.committed, doc_ids)

    return committed


class Finding(BaseModel, frozen=True):
    """One thing the reconcile pass found; the schema of `docs check --json`'s `findings`."""

    kind: str  # unknown-document, unfinished-write, stale-chunks, keyword-missing, keyword-only, missing-chunks,
    # row-without-chunks
    doc_id: str
    file_name: str | None
    milvus: int  # chunks in Milvus concerned
    keyword: int  # keyword index rows concerned
    repaired: bool = False

    def describe(self) -> str:
        """One line for people."""
        name = self.file_name or "no catalogue row"
        what = {
            "unknown-document": "chunks of a document the catalogue does not know",
            "unfinished-write": "chunks of a write whose writer is gone",
            "stale-chunks": "chunks that are not of the document's current generation",
            "keyword-missing": "committed chunks missing from the keyword index",
            "keyword-only": "keyword index rows without their chunk in Milvus",
            "missing-chunks": "chunks missing from Milvus (re-index the document)",
            "row-without-chunks": "a listed document with no chunk in Milvus",
        }[self.kind]
        done = " (repaired)" if self.repaired else ""
        return f"{self.kind}: {self.doc_id[:12]} ({name}): {what}; Milvus {self.milvus}, keyword {self.keyword}{done}"


class CheckReport(BaseModel, frozen=True):
    """The outcome of a reconcile pass; the schema of `docs check --json`."""

    documents: int  # committed documents
    milvus_chunks: int
    keyword_rows: int | None  # None: keyword search runs in Milvus itself
    in_progress: list[str]  # documents being written by a live writer, not checked
    findings: list[Finding]
    repaired: bool
    seconds: float

    @property
    def clean(self) -> bool:
        """Nothing found, or everything found repaired."""
        return all(f.repaired for f in self.findings)


@dataclass
class _Scan:
    """Chunk ids from Milvus and the keyword index checked against the catalogue rows, counted per document."""

    rows: dict[str, DocumentRecord]
    busy: set[str]
    keyword_checked: bool  # a local keyword index exists (else the server computes BM25 from the chunks)

    def __post_init__(self) -> None:
        self.committed = {d: (r.generation, r.chunks) for d, r in self.rows.items() if r.status == "indexed"}
        self.total: Counter[str] = Counter()
        self.good: dict[str, Counter[str]] = {"milvus": Counter(), "keyword": Counter()}  # committed chunks
        self.bad: dict[str, Counter[str]] = {"milvus": Counter(), "keyword": Counter()}  # anything else
        self.skipped: set[str] = set()

    def add(self, side: str, batch: Sequence[tuple[str, str]]) -> None:
        """Count one batch of (chunk id, document id) of `milvus` or `keyword`."""
        self.total[side] += len(batch)
        for chunk, doc in batch:
            if doc in self.busy:
                self.skipped.add(doc)
            elif committed_chunk(chunk, doc, self.committed):
                self.good[side][doc] += 1
            else:
                self.bad[side][doc] += 1

    def suspects(self) -> set[str]:
        """Documents with anything wrong on either side, or committed with a count that does not match."""
        wrong = set(self.bad["milvus"]) | set(self.bad["keyword"])
        for doc, (_, chunks) in self.committed.items():
            counts = [self.good["milvus"][doc], *([self.good["keyword"][doc]] if self.keyword_checked else [])]
            if doc not in self.busy and any(n != chunks for n in counts):
                wrong.add(doc)
        return wrong

    def findings(self, doc: str, row: DocumentRecord | None) -> list[Finding]:
        """What is wrong with one document, given its row as read again now."""
        name = row.file_name if row else None
        out: list[Finding] = []
        bad_m, bad_k = self.bad["milvus"][doc], self.bad["keyword"][doc]
        good_m, good_k = self.good["milvus"][doc], self.good["keyword"][doc]
        if row is None or row.status != "indexed" or row.pending is not None:
            kind = "unknown-document" if row is None else "unfinished-write"
            if bad_m + bad_k + good_m + good_k or row is not None:
                out.append(
                    Finding(kind=kind, doc_id=doc, file_name=name, milvus=bad_m + good_m, keyword=bad_k + good_k)
                )
            return out
        if bad_m or bad_k:
            out.append(Finding(kind="stale-chunks", doc_id=doc, file_name=name, milvus=bad_m, keyword=bad_k))
        if good_m == 0 and row.chunks:
            out.append(Finding(kind="row-without-chunks", doc_id=doc, file_name=name, milvus=0, keyword=good_k))
        elif good_m < row.chunks:
            out.append(
                Finding(kind="missing-chunks", doc_id=doc, file_name=name, milvus=row.chunks - good_m, keyword=0)
            )
        if self.keyword_checked and good_m and good_k < good_m:
            out.append(Finding(kind="keyword-missing", doc_id=doc, file_name=name, milvus=0, keyword=good_m - good_k))
        if self.keyword_checked and good_k > good_m:
            out.append(Finding(kind="keyword-only", doc_id=doc, file_name=name, milvus=0, keyword=good_k - good_m))
        return out


def check_documents(settings: Settings, repair: bool = False) -> CheckReport:
    """`python -m rag docs check`: the reconcile pass over the settings' collection (every workspace), without the
    embedding model and without recovery (a check alone changes nothing; `repair` does)."""
    from rag.runtime import Runtime

    runtime = Runtime("rag-check")
    try:
        return runtime.run(_acheck_documents(settings, repair))
    finally:
        runtime.close()


async def _acheck_documents(settings: Settings, repair: bool) -> CheckReport:
    connection = await asyncio.to_thread(resolve_connection, settings)
    store = await DocumentStore.aopen_for_search(settings, connection)
    library = DocumentLibrary(settings, store)
    try:
        return await library.acheck(repair)
    finally:
        library.close()
        await store.aclose()


class DocumentWrite:
    """A document's write in progress, handed out by `DocumentLibrary.write`: it owns the generation, the lease
    (renewed in the background), the commit and the clean-up; callers only `add` chunks."""

    def __init__(
        self,
        library: DocumentLibrary,
        record: DocumentRecord,
        reindex: bool,
        existing: DocumentRecord | None,
        claim: Claim,
    ) -> None:
        self.library = library
        self.claim = claim
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
            await self.library.acommit_generation(self.record, self.record.chunks, self.claim)
        else:
            self.replaced = await self.library.acommit(self.record, self.record.chunks, self.claim)
        self.begun = False  # committed: nothing to clean up any more

    async def _abandon(self) -> None:
        self._stop_renewing()
        if self.begun:
            self.begun = False  # once: a second clean-up must not remove what a later writer stored
            await self.library.aabandon(self.record, self.claim)

    def _stop_renewing(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            self._renewing = None


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
