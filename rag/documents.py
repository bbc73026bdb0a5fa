"""A document's life in one place: staged bytes, catalogue row, chunks and keyword entries, replace,
re-index, delete and recovery.

Ingestion (`rag.ingest`) reads, chunks and embeds; it asks this module to stage, begin, renew, commit or
abandon a document. The service asks it to list, delete and re-index. The rules it keeps:

- bytes are staged once, under their SHA-256, and removed as soon as no catalogue row and no job holds them
  (so rejected, failed, cancelled and duplicate uploads leave nothing behind);
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
import os
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rag.access import OPERATOR
from rag.catalog import Catalog, DocumentRecord
from rag.config import Settings
from rag.database import Database
from rag.errors import DocumentBusyError, DocumentNotFoundError, RagError
from rag.store import DocumentStore, chunk_id
from rag.workspaces import DEFAULT_ID, Workspaces

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0
"""How long a writer's claim on a document lasts without renewal (it renews every few batches)."""

DOCUMENTS_PAGE = 100
"""Documents a page or `docs list` reads at once, newest first: a larger library is searched, not listed whole."""


@dataclass(frozen=True)
class SourceFile:
    """A file to ingest: where its bytes are, what the user calls it, which workspace it goes into, and
    whether its bytes are staged already (`content_hash`, their SHA-256, is then set). `reindex` asks for a
    new generation of an indexed document's chunks; `owner` is the uploader's account id (None: the operator,
    or no accounts)."""

    path: Path
    name: str
    content_hash: str | None = None
    reindex: bool = False
    workspace: str = DEFAULT_ID
    owner: str | None = None

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
        self.uploads = Path(settings.data_dir) / "uploads"
        self._holds: Counter[str] = Counter()  # stored path -> jobs still using the bytes
        self._holds_lock = threading.Lock()
        self._writers: dict[str, tuple[asyncio.Lock, int]] = {}  # doc id -> (its lock, writers waiting or writing)

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
    def stage_path(self, path: Path, name: str, workspace: str = DEFAULT_ID) -> SourceFile:
        """Copy a file's bytes into the uploads folder under their hash (once), held until `release`."""
        with open(path, "rb") as fh:
            return self.stage_stream(fh, name, workspace)

    def stage_stream(self, data: BinaryIO, name: str, workspace: str = DEFAULT_ID) -> SourceFile:
        """Write an upload's bytes into the uploads folder under their hash, hashing while writing (one copy),
        held until `release`. Blocking: call it from a worker thread or a page, never on the loop."""
        self.uploads.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        tmp = self.uploads / f".staging.{os.getpid()}.{os.urandom(6).hex()}.tmp"  # one per writer
        try:
            with open(tmp, "wb") as out:
                for block in iter(lambda: data.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
            content_hash = digest.hexdigest()
            # The extension as rag.readers.file_type gives it: importing that module (LlamaIndex, 2-3 s) here
            # would make `docs list` wait for it.
            target = self.uploads / f"{content_hash}{Path(name).suffix.lower()[:16]}"
            with self._holds_lock:
                if target.exists():
                    tmp.unlink()
                else:
                    os.replace(tmp, target)
                self._holds[str(target)] += 1
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return SourceFile(target, name, content_hash=content_hash, workspace=workspace)

    def hold(self, stored: Path) -> None:
        """Keep stored bytes while a job uses them (a re-index of an indexed document)."""
        with self._holds_lock:
            self._holds[str(stored)] += 1

    def release(self, stored: Path) -> None:
        """A job is done with these bytes: remove them (and files derived from them) unless a row or another
        job still uses them."""
        key = str(stored)
        with self._holds_lock:
            self._holds[key] -= 1
            if self._holds[key] > 0:
                return
            del self._holds[key]
            if self.catalog.references(key):
                return
            self._remove_bytes(stored)

    def _remove_bytes(self, stored: Path) -> None:
        stored.unlink(missing_ok=True)
        for derived in stored.parent.glob(f"{stored.name}.*"):  # e.g. OCR boxes kept for the source viewer
            derived.unlink(missing_ok=True)

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
        with self._holds_lock:
            if not self._holds.get(record.stored_path) and not self.catalog.references(record.stored_path):
                self._remove_bytes(Path(record.stored_path))

    def reindex_source(self, doc_id: str, workspace: str | None = None) -> SourceFile:
        """What a re-index job reads: the document's stored bytes, held until the job is done."""
        record = self.resolve(doc_id, workspace)
        if record.status != "indexed":
            raise DocumentBusyError(
                f"{record.doc_id} is {record.status}",
                user_message=f"{record.file_name} is still being indexed; re-index it once that has finished.",
            )
        stored = Path(record.stored_path)
        if not stored.exists():
            raise DocumentNotFoundError(
                f"{stored} is missing",
                user_message=f"The stored copy of {record.file_name} is missing; upload the file again.",
            )
        self.hold(stored)
        return SourceFile(
            stored,
            record.file_name,
            content_hash=stored.name[:64],
            reindex=True,
            workspace=record.workspace,
            owner=record.owner,
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


def _stem(doc_id: str, generation: int) -> str:
    return chunk_id(doc_id, 0, generation).rsplit("-", 1)[0]


def stage_all(
    library: DocumentLibrary, uploads: Sequence[tuple[str, BinaryIO]], workspace: str = DEFAULT_ID
) -> list[SourceFile]:
    """Stage several uploads; on a failure, release the ones already staged."""
    staged: list[SourceFile] = []
    try:
        for name, data in uploads:
            staged.append(library.stage_stream(data, name, workspace))
    except BaseException:
        for source in staged:
            library.release(source.path)
        raise
    return staged
