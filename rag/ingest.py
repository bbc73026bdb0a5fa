"""Files → text → chunks sized to the embedding model → embeddings in batches → async inserts.

The pipeline overlaps its stages: while one file's chunks are embedded (CPU, in a worker thread),
the next file is read and chunked, and finished batches are written to Milvus with bounded
concurrency. A document's id is the SHA-256 of its bytes; a file that fails leaves no chunk behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import BaseNode, Document, MetadataMode, NodeRelationship, RelatedNodeInfo
from pydantic import BaseModel

from rag.catalog import Catalog, DocumentRecord
from rag.config import Settings
from rag.embeddings import Embedder
from rag.errors import IngestError, RagError
from rag.readers import file_type, read_file
from rag.store import MODEL_KEY, DocumentStore, chunk_id

log = logging.getLogger(__name__)

_SPECIAL_TOKEN_MARGIN = 16  # [CLS]/[SEP] plus slack for how joined text re-tokenizes


class Stage(StrEnum):
    """Where a file is in the pipeline."""

    QUEUED = "queued"
    READING = "reading"
    CHUNKING = "chunking"
    EMBEDDING = "embedding"
    STORING = "storing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FileStatus(StrEnum):
    """How a file ended; the values are the `status` of `ingest --json`."""

    INDEXED = "indexed"
    UNCHANGED = "unchanged"
    REPLACED = "replaced"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FileProgress(BaseModel):
    """Live state of one file in a job; copied out to readers, never shared."""

    file: str
    stage: Stage = Stage.QUEUED
    chunks_total: int = 0
    chunks_embedded: int = 0
    chunks_done: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    status: FileStatus | None = None
    doc_id: str | None = None
    error: str | None = None

    @property
    def elapsed(self) -> float:
        """Seconds spent on this file so far."""
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.time()) - self.started_at

    @property
    def rate(self) -> float:
        """Chunks stored per second."""
        return self.chunks_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, when known."""
        if not self.chunks_total or self.rate <= 0 or self.stage in (Stage.DONE, Stage.FAILED, Stage.CANCELLED):
            return None
        return (self.chunks_total - self.chunks_done) / self.rate


class FileResult(BaseModel, frozen=True):
    """How one file ended; the schema of `ingest --json`."""

    file: str
    status: FileStatus
    doc_id: str | None = None
    chunks: int = 0
    error: str | None = None
    seconds: float = 0.0


class IngestReport(BaseModel, frozen=True):
    """The outcome of one ingestion job."""

    files: list[FileResult]
    seconds: float

    def count(self, status: FileStatus) -> int:
        """How many files ended with this status."""
        return sum(1 for f in self.files if f.status == status)

    @property
    def chunks(self) -> int:
        """Chunks written by this job."""
        return sum(f.chunks for f in self.files if f.status in (FileStatus.INDEXED, FileStatus.REPLACED))


@dataclass(frozen=True)
class SourceFile:
    """A file to ingest: where its bytes are, and what the user calls it."""

    path: Path
    name: str


ProgressCallback = Callable[[FileProgress], None]


def clean_name(name: str, limit: int = 200) -> str:
    """A display name safe anywhere: no directories, no control characters, bounded length."""
    base = re.split(r"[\\/]", name)[-1]
    base = "".join(ch for ch in unicodedata.normalize("NFC", base) if unicodedata.category(ch)[0] != "C").strip()
    base = base.lstrip(".") or "unnamed"
    if len(base) > limit:
        stem, ext = os.path.splitext(base)
        ext = ext[:16]
        base = stem[: limit - len(ext) - 1] + "…" + ext
    return base


def make_splitter(settings: Settings, embedder: Embedder) -> SentenceSplitter:
    """A sentence splitter that counts in the embedding model's own tokens and fits its window."""
    size = min(settings.chunk_size, embedder.max_tokens - _SPECIAL_TOKEN_MARGIN)
    overlap = min(settings.chunk_overlap, size // 4)
    return SentenceSplitter(
        chunk_size=size, chunk_overlap=overlap, tokenizer=_token_ids(embedder.tokenizer), include_prev_next_rel=False
    )


def _token_ids(tokenizer: Any) -> Callable[[str], list[int]]:
    """The model's tokenization without special tokens or truncation, for counting chunk sizes.

    The splitter counts tens of thousands of fragments per corpus; the Rust tokenizer underneath a fast
    transformers tokenizer gives the same ids with a fifth less CPU, which the embedding needs on few cores.
    Its copy is untruncated (the model's own caps at its window) so long fragments are counted in full.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return lambda text: tokenizer.encode(text, add_special_tokens=False)
    from tokenizers import Tokenizer

    counter = Tokenizer.from_str(backend.to_str())
    counter.no_truncation()
    counter.no_padding()
    return lambda text: counter.encode(text, add_special_tokens=False).ids


def embed_texts(nodes: Sequence[BaseNode]) -> list[str]:
    """What the model embeds for each node: its text without metadata (metadata is excluded per node)."""
    return [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]


def chunk_documents(
    docs: Sequence[Document], splitter: SentenceSplitter, doc_id: str, model_id: str, kind: str
) -> list[BaseNode]:
    """Split page Documents into nodes carrying file, page, doc id and position; ids are stable."""
    for part, doc in enumerate(docs):
        doc.id_ = f"{doc_id}:{part}"  # unique per page: the splitter maps nodes back to their page by id
        doc.excluded_embed_metadata_keys = list(doc.metadata)  # metadata is not embedded, so it costs no tokens
        doc.excluded_llm_metadata_keys = list(doc.metadata)
    nodes = splitter.get_nodes_from_documents(list(docs))
    nodes = [n for n in nodes if n.get_content().strip()]
    for position, node in enumerate(nodes):
        node.id_ = chunk_id(doc_id, position)
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=doc_id)  # Milvus's doc_id field
        node.metadata.update({"doc_id": doc_id, "chunk": position, "file_type": kind, MODEL_KEY: model_id})
        node.excluded_embed_metadata_keys = list(node.metadata)
        node.excluded_llm_metadata_keys = list(node.metadata)
    return nodes


@dataclass
class _Prepared:
    progress: FileProgress
    record: DocumentRecord | None = None
    nodes: list[BaseNode] | None = None
    result: FileResult | None = None
    begun: bool = False  # this job wrote the catalog row, so what is stored under the doc id is its own


class Ingestor:
    """Runs ingestion jobs for one collection on the runtime loop."""

    def __init__(self, settings: Settings, embedder: Embedder, store: DocumentStore, catalog: Catalog) -> None:
        self.settings = settings
        self.embedder = embedder
        self.store = store
        self.catalog = catalog
        self.splitter = make_splitter(settings, embedder)
        self.uploads = Path(settings.data_dir) / "uploads"
        self._writers: dict[str, tuple[asyncio.Lock, int]] = {}  # doc id -> (its lock, jobs using it)

    async def aingest(
        self,
        files: Sequence[SourceFile],
        on_progress: ProgressCallback | None = None,
        progress: list[FileProgress] | None = None,
    ) -> IngestReport:
        """Ingest files in order; one file failing never stops the others. Cancellation cleans up."""
        started = time.time()
        notify = on_progress or (lambda _p: None)
        progress = progress or [FileProgress(file=clean_name(f.name)) for f in files]
        if len(files) > self.settings.max_files:
            raise RagError(
                f"{len(files)} files > RAG_MAX_FILES={self.settings.max_files}",
                user_message=f"Too many files in one job ({len(files)}); the limit is {self.settings.max_files}.",
            )
        queue: asyncio.Queue[_Prepared | None] = asyncio.Queue(maxsize=1)

        async def produce() -> None:
            for src, prog in zip(files, progress):
                await queue.put(await self._prepare(src, prog, notify))
            await queue.put(None)

        producer = asyncio.create_task(produce(), name="ingest-reader")
        results: list[FileResult] = []
        current: _Prepared | None = None
        try:
            while (current := await queue.get()) is not None:
                results.append(await self._store_alone(current, notify))
                current = None
            await producer
        except asyncio.CancelledError:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
            pending = [current] if current else []
            while not queue.empty():
                item = queue.get_nowait()
                if item:
                    pending.append(item)
            for item in pending:
                await asyncio.shield(self._discard(item))
            done = {r.file for r in results}
            for prog in progress:
                if prog.file not in done and prog.status is None:
                    prog.stage, prog.status, prog.finished_at = Stage.CANCELLED, FileStatus.CANCELLED, time.time()
                    notify(prog)
            results += [
                FileResult(file=p.file, status=FileStatus.CANCELLED, doc_id=p.doc_id)
                for p in progress
                if p.status == FileStatus.CANCELLED
            ]
            return IngestReport(files=results, seconds=time.time() - started)
        return IngestReport(files=results, seconds=time.time() - started)

    async def _prepare(self, src: SourceFile, prog: FileProgress, notify: ProgressCallback) -> _Prepared:
        """Read, hash, store the upload and chunk it; failures become a failed result."""
        prog.started_at, prog.stage = time.time(), Stage.READING
        notify(prog)
        try:
            return await self._prepare_file(src, prog, notify)
        except RagError as exc:
            return _Prepared(prog, result=self._fail(prog, exc.user_message, notify))
        except Exception as exc:  # noqa: BLE001 - a reader bug must not stop the batch
            log.exception("unexpected failure reading %s", src.name)
            return _Prepared(
                prog, result=self._fail(prog, f"{prog.file}: could not be read ({type(exc).__name__})", notify)
            )

    async def _prepare_file(self, src: SourceFile, prog: FileProgress, notify: ProgressCallback) -> _Prepared:
        name = prog.file
        try:
            size = src.path.stat().st_size
        except OSError as exc:
            raise IngestError(name, f"cannot be opened ({exc.strerror})") from exc
        limit = self.settings.max_file_mb * 1024 * 1024
        if size > limit:
            raise IngestError(
                name, f"is {size / 1048576:.1f} MB; the limit is {self.settings.max_file_mb:g} MB (RAG_MAX_FILE_MB)"
            )
        if size == 0:
            raise IngestError(name, "is empty")
        stored, doc_id = await asyncio.to_thread(self._store_upload, src.path, name)
        prog.doc_id = doc_id
        existing = self.catalog.get(doc_id)
        if existing and existing.status == "indexed":
            prog.stage, prog.status, prog.finished_at = Stage.DONE, FileStatus.UNCHANGED, time.time()
            prog.chunks_total = prog.chunks_done = existing.chunks
            notify(prog)
            return _Prepared(
                prog,
                result=FileResult(
                    file=name,
                    status=FileStatus.UNCHANGED,
                    doc_id=doc_id,
                    chunks=existing.chunks,
                    error=f"already indexed as {existing.file_name}"
                    if existing.file_name != name
                    else "already indexed",
                ),
            )
        docs = await asyncio.to_thread(read_file, stored, name)
        estimate = sum(len(d.text) for d in docs) // (4 * self.splitter.chunk_size)  # ~4 characters per token
        if estimate > self.settings.max_chunks_per_file:
            raise IngestError(
                name,
                f"holds too much text (about {estimate} chunks; the limit is {self.settings.max_chunks_per_file}, "
                "RAG_MAX_CHUNKS_PER_FILE)",
            )
        prog.stage = Stage.CHUNKING
        notify(prog)
        kind = file_type(name).lstrip(".")
        nodes = await asyncio.to_thread(chunk_documents, docs, self.splitter, doc_id, self.embedder.model_id, kind)
        if not nodes:
            raise IngestError(name, "contains no text")
        pages = max((d.metadata.get("page", 0) for d in docs), default=0) or None
        record = DocumentRecord(
            doc_id=doc_id,
            file_name=name,
            file_type=kind,
            size=size,
            pages=pages,
            chunks=len(nodes),
            status="indexing",
            stored_path=str(stored),
            added_at=time.time(),
        )
        prog.chunks_total = len(nodes)
        notify(prog)
        return _Prepared(prog, record=record, nodes=nodes)

    def _store_upload(self, path: Path, name: str) -> tuple[Path, str]:
        """Copy the bytes into the data dir under their content hash (atomically) and return the hash."""
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        doc_id = digest.hexdigest()
        self.uploads.mkdir(parents=True, exist_ok=True)
        target = self.uploads / f"{doc_id}{file_type(name)[:16]}"
        if not target.exists():
            tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")  # one per writer
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
            os.replace(tmp, target)
        return target, doc_id

    async def _store_alone(self, item: _Prepared, notify: ProgressCallback) -> FileResult:
        """`_store` with one writer per document: jobs running side by side with the same bytes take turns
        (the second finds it indexed), and a cancelled writer removes its chunks before the next one starts."""
        if item.record is None:
            return await self._store(item, notify)
        doc_id = item.record.doc_id
        lock, users = self._writers.get(doc_id, (asyncio.Lock(), 0))
        self._writers[doc_id] = (lock, users + 1)
        try:
            async with lock:
                try:
                    return await self._store(item, notify)
                except asyncio.CancelledError:
                    await asyncio.shield(self._discard(item))  # before the next writer of this document starts
                    raise
        finally:
            lock, users = self._writers[doc_id]
            if users > 1:
                self._writers[doc_id] = (lock, users - 1)
            else:
                del self._writers[doc_id]

    async def _store(self, item: _Prepared, notify: ProgressCallback) -> FileResult:
        """Embed and write one prepared file; on any failure remove what was written."""
        if item.result is not None:
            return item.result
        assert item.record is not None and item.nodes is not None
        prog, record, nodes = item.progress, item.record, item.nodes
        twin = self.catalog.get(record.doc_id)
        if twin and twin.status == "indexed":  # the same bytes appeared twice in one job
            prog.stage, prog.status, prog.finished_at = Stage.DONE, FileStatus.UNCHANGED, time.time()
            notify(prog)
            return FileResult(
                file=record.file_name,
                status=FileStatus.UNCHANGED,
                doc_id=record.doc_id,
                chunks=twin.chunks,
                error=f"already indexed as {twin.file_name}",
            )
        self.catalog.begin(record)
        item.begun = True
        try:
            if twin is not None:
                # An earlier attempt that could not clean up kept its row, so only then can chunks be left
                # over. A new document skips the delete: in Milvus 2.3 it is a query plus a delete, ~0.3 s.
                await self.store.adelete_doc(record.doc_id)
            await self._embed_and_insert(nodes, prog, notify)
            replaced = [old for old in self.catalog.by_name(record.file_name) if old.doc_id != record.doc_id]
            self.catalog.finish(record.doc_id, len(nodes), record.pages)
            for old in replaced:
                await self.store.adelete_doc(old.doc_id)
                self.catalog.remove(old.doc_id)
        except asyncio.CancelledError:
            raise
        except RagError as exc:
            await self._discard(item)
            return self._fail(prog, f"{record.file_name}: {exc.user_message}", notify)
        except Exception as exc:  # noqa: BLE001
            log.exception("unexpected failure storing %s", record.file_name)
            await self._discard(item)
            return self._fail(prog, f"{record.file_name}: could not be stored ({type(exc).__name__})", notify)
        status = FileStatus.REPLACED if replaced else FileStatus.INDEXED
        prog.stage, prog.status, prog.finished_at = Stage.DONE, status, time.time()
        notify(prog)
        return FileResult(
            file=record.file_name, status=status, doc_id=record.doc_id, chunks=len(nodes), seconds=prog.elapsed
        )

    async def _embed_and_insert(self, nodes: list[BaseNode], prog: FileProgress, notify: ProgressCallback) -> None:
        limit = asyncio.Semaphore(self.settings.insert_concurrency)
        inserts: list[asyncio.Task[None]] = []

        async def insert(batch: list[BaseNode]) -> None:
            try:
                await self.store.aadd(batch)
                prog.chunks_done += len(batch)
                notify(prog)
            finally:
                limit.release()

        prog.stage = Stage.EMBEDDING
        notify(prog)
        size, write_size = self.settings.embed_batch_size, self.settings.insert_batch_size
        written = 0  # nodes[:written] are handed to inserts
        try:
            for start in range(0, len(nodes), size):
                batch = nodes[start : start + size]
                vectors = await self.embedder.aembed(embed_texts(batch))
                for node, vector in zip(batch, vectors):
                    node.embedding = vector
                embedded = start + len(batch)  # nodes[:embedded] have vectors
                prog.chunks_embedded += len(batch)
                notify(prog)
                # Writes go out in insert-sized batches, not per embedding batch: every upsert costs CPU
                # on both sides (and is a delete plus an insert inside Milvus) that the embedding needs.
                while embedded - written >= write_size or (embedded == len(nodes) and written < embedded):
                    chunk = nodes[written : min(written + write_size, embedded)]
                    written += len(chunk)
                    await limit.acquire()
                    inserts.append(asyncio.create_task(insert(chunk)))
                failed = [t for t in inserts if t.done() and t.exception()]
                if failed:
                    raise failed[0].exception()  # type: ignore[misc]
            prog.stage = Stage.STORING
            notify(prog)
            await asyncio.gather(*inserts)
        except BaseException:
            for task in inserts:
                task.cancel()
            await asyncio.gather(*inserts, return_exceptions=True)
            raise

    async def _discard(self, item: _Prepared) -> None:
        """Remove every chunk and the catalog row of a file this job began writing but did not finish."""
        if item.record is None or not item.begun:
            return
        item.begun = False  # once: a second cleanup must not remove what a later writer of the document stored
        try:
            await self.store.adelete_doc(item.record.doc_id)
        except RagError:
            log.warning("could not remove chunks of %s; they are removed at next start", item.record.file_name)
            return
        self.catalog.remove(item.record.doc_id)

    @staticmethod
    def _fail(prog: FileProgress, message: str, notify: ProgressCallback) -> FileResult:
        prog.stage, prog.status, prog.error, prog.finished_at = Stage.FAILED, FileStatus.FAILED, message, time.time()
        prog.chunks_done = 0
        notify(prog)
        return FileResult(
            file=prog.file, status=FileStatus.FAILED, doc_id=prog.doc_id, error=message, seconds=prog.elapsed
        )

    async def arecover(self) -> list[str]:
        """Remove chunks of documents a crash left half-indexed, and bring the keyword index in step with
        the catalog; return the names of the removed documents."""
        cleaned = []
        for record in await asyncio.to_thread(self.catalog.list, "indexing"):
            await self.store.adelete_doc(record.doc_id)
            await asyncio.to_thread(self.catalog.remove, record.doc_id)
            cleaned.append(record.file_name)
        indexed = await asyncio.to_thread(self.catalog.list)
        await self.store.areconcile_keywords({r.doc_id: r.chunks for r in indexed})
        return cleaned

    async def adelete(self, doc_id: str) -> DocumentRecord:
        """Delete a document: every chunk, its catalog row and its stored upload."""
        from rag.errors import DocumentNotFoundError

        record = self.catalog.get(doc_id)
        if record is None:
            matches = (
                [r for r in self.catalog.list(status=None) if r.doc_id.startswith(doc_id)] if len(doc_id) >= 8 else []
            )
            if len(matches) != 1:
                raise DocumentNotFoundError(f"no document {doc_id}", user_message=f"No document has the id {doc_id}.")
            record = matches[0]
        await self.store.adelete_doc(record.doc_id)
        self.catalog.remove(record.doc_id)
        Path(record.stored_path).unlink(missing_ok=True)
        return record
