"""Files → text → chunks sized to the embedding model → embeddings in batches → async inserts.

The pipeline overlaps its stages: while one file's chunks are embedded (CPU, in a worker thread),
the next file is read and chunked, and finished batches are written to Milvus with bounded
concurrency. A document's id is the SHA-256 of its bytes; a file that fails leaves no chunk behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import BaseNode, Document, MetadataMode, NodeRelationship, RelatedNodeInfo
from pydantic import BaseModel

from rag.catalog import DocumentRecord
from rag.config import Settings
from rag.documents import DocumentLibrary, DocumentWrite, SourceFile
from rag.embeddings import Embedder
from rag.errors import IngestError, RagError
from rag.ocr import write_sidecar
from rag.readers import ReadLimits, file_type, read_document
from rag.runtime import background_executor
from rag.store import MODEL_KEY, WORKSPACE_FIELD, chunk_id
from rag.workspaces import DEFAULT_ID

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_SPECIAL_TOKEN_MARGIN = 16  # [CLS]/[SEP] plus slack for how joined text re-tokenizes


class Stage(StrEnum):
    """Where a file is in the pipeline."""

    QUEUED = "queued"
    READING = "reading"
    OCR = "ocr"  # pages without a text layer are being recognised; pages_done/pages_total count them
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
    pages_total: int = 0  # pages read by OCR in this file (0: none)
    pages_done: int = 0
    notes: list[str] = []  # what the user should know about an indexed file (e.g. a page skipped)

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
    notes: list[str] = []  # e.g. "page 3 could not be read: ..."; the rest of the file is indexed


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


ProgressCallback = Callable[[int, FileProgress], None]
"""Told `(index of the file in the job, a copy of its progress)` at every step; the copy is never changed."""


MAX_NAME_BYTES = 255
"""The longest file name a file system holds (ext4, XFS, APFS: 255 bytes of UTF-8)."""


def clean_name(name: str, limit: int = MAX_NAME_BYTES) -> str:
    """The file's own name, safe anywhere: no directories, no control characters, no leading dots.

    Kept whole up to `limit` bytes of UTF-8, so the catalogue and `docs list` name exactly the file that was
    indexed; only a longer name (which no file system holds) is cut, keeping its extension. Pages shorten
    names for display themselves.
    """
    base = re.split(r"[\\/]", name)[-1]
    base = "".join(ch for ch in unicodedata.normalize("NFC", base) if unicodedata.category(ch)[0] != "C").strip()
    base = base.lstrip(".") or "unnamed"
    if len(base.encode()) > limit:
        stem, ext = os.path.splitext(base)
        ext = ext if len(ext.encode()) <= 16 else ""
        room = limit - len(ext.encode()) - len("…".encode())
        base = stem.encode()[:room].decode("utf-8", "ignore") + "…" + ext
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
    docs: Sequence[Document],
    splitter: SentenceSplitter,
    doc_id: str,
    model_id: str,
    kind: str,
    generation: int = 0,
    workspace: str = DEFAULT_ID,
) -> list[BaseNode]:
    """Split page Documents into nodes carrying file, page, doc id and position; ids are stable."""
    for part, doc in enumerate(docs):
        doc.id_ = f"{doc_id}:{part}"  # unique per page: the splitter maps nodes back to their page by id
        doc.excluded_embed_metadata_keys = list(doc.metadata)  # metadata is not embedded, so it costs no tokens
        doc.excluded_llm_metadata_keys = list(doc.metadata)
    nodes = splitter.get_nodes_from_documents(list(docs))
    nodes = [n for n in nodes if n.get_content().strip()]
    for position, node in enumerate(nodes):
        node.id_ = chunk_id(doc_id, position, generation)
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=doc_id)  # Milvus's doc_id field
        node.metadata.update(
            {
                "doc_id": doc_id,
                "chunk": position,
                "generation": generation,  # also in the id; only the catalogue's current generation answers
                "file_type": kind,
                MODEL_KEY: model_id,
                WORKSPACE_FIELD: workspace,
            }
        )
        node.excluded_embed_metadata_keys = list(node.metadata)
        node.excluded_llm_metadata_keys = list(node.metadata)
    return nodes


class _PageHook:
    """The reader's `on_page(done, total)` for OCR progress. It is called from the reading thread, so the
    numbers are set (and published) on the event loop's thread; once the job is cancelled it stops the
    reader at the next page instead of letting OCR run on for minutes."""

    def __init__(self, index: int, prog: FileProgress, publish: ProgressCallback) -> None:
        self.loop, self.index, self.prog, self.publish = asyncio.get_running_loop(), index, prog, publish
        self.cancelled = False

    def __call__(self, done: int, total: int) -> None:
        if self.cancelled:
            raise IngestError(self.prog.file, "was cancelled")
        self.loop.call_soon_threadsafe(self._update, done, total)

    def _update(self, done: int, total: int) -> None:
        self.prog.stage, self.prog.pages_done, self.prog.pages_total = Stage.OCR, done, total
        self.publish(self.index, self.prog.model_copy())


@dataclass
class _Prepared:
    index: int
    progress: FileProgress
    record: DocumentRecord | None = None
    nodes: list[BaseNode] | None = None
    result: FileResult | None = None
    reindex: bool = False
    staged: str | None = None  # key of bytes this ingestor stored itself, released when the file is done


class Ingestor:
    """Runs ingestion jobs for one collection on the runtime loop."""

    def __init__(self, settings: Settings, embedder: Embedder, library: DocumentLibrary) -> None:
        self.settings = settings
        self.embedder = embedder
        self.library = library
        self.store = library.store
        self.splitter = make_splitter(settings, embedder)
        # Reading (OCR above all) and chunking at low priority, like the embedding: questions come first.
        self._cpu = background_executor(settings.ingest_nice, 2, "rag-ingest-read")

    async def _in_background(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run `func(*args)` in a low-priority reader thread (RAG_INGEST_NICE)."""
        return await asyncio.get_running_loop().run_in_executor(self._cpu, func, *args)

    async def aingest(self, files: Sequence[SourceFile], on_progress: ProgressCallback | None = None) -> IngestReport:
        """Ingest files in order; one file failing never stops the others. Cancellation cleans up.

        Progress is published as copies through `on_progress`; the job's own state is never shared.
        """
        started = time.time()
        publish = on_progress or (lambda _i, _p: None)
        progress = [FileProgress(file=clean_name(f.name)) for f in files]
        if len(files) > self.settings.max_files:
            raise RagError(
                f"{len(files)} files > RAG_MAX_FILES={self.settings.max_files}",
                user_message=f"Too many files in one job ({len(files)}); the limit is {self.settings.max_files}.",
            )
        queue: asyncio.Queue[_Prepared | None] = asyncio.Queue(maxsize=1)

        async def produce() -> None:
            for index, (src, prog) in enumerate(zip(files, progress)):
                await queue.put(await self._prepare(index, src, prog, publish))
            await queue.put(None)

        producer = asyncio.create_task(produce(), name="ingest-reader")
        results: list[FileResult] = []
        current: _Prepared | None = None
        try:
            while (current := await queue.get()) is not None:
                results.append(await self._store_alone(current, publish))
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
            for index, prog in enumerate(progress):
                if prog.file not in done and prog.status is None:
                    prog.stage, prog.status, prog.finished_at = Stage.CANCELLED, FileStatus.CANCELLED, time.time()
                    publish(index, prog.model_copy())
            results += [
                FileResult(file=p.file, status=FileStatus.CANCELLED, doc_id=p.doc_id)
                for p in progress
                if p.status == FileStatus.CANCELLED
            ]
            return IngestReport(files=results, seconds=time.time() - started)
        return IngestReport(files=results, seconds=time.time() - started)

    async def _prepare(self, index: int, src: SourceFile, prog: FileProgress, publish: ProgressCallback) -> _Prepared:
        """Read, hash, stage and chunk a file; failures become a failed result, and bytes nobody keeps go."""
        prog.started_at, prog.stage = time.time(), Stage.READING
        publish(index, prog.model_copy())
        staged: str | None = None
        try:
            if src.doc_id is None:  # a path not stored yet (the benchmark's own ingestor): store its bytes first
                staged_file = await self._stage(src, prog)
                staged = staged_file.key
                src = staged_file
            item = await self._prepare_file(index, src, prog, publish)
        except RagError as exc:
            item = _Prepared(index, prog, result=self._fail(index, prog, exc.user_message, publish))
        except Exception as exc:  # noqa: BLE001 - a reader bug must not stop the batch
            log.exception("unexpected failure reading %s", src.name)
            message = f"{prog.file}: could not be read ({type(exc).__name__})"
            item = _Prepared(index, prog, result=self._fail(index, prog, message, publish))
        item.staged = staged
        if item.result is not None and staged is not None:
            await asyncio.to_thread(self.library.release, staged)  # failed or unchanged: nothing keeps this copy
            item.staged = None
        return item

    async def _stage(self, src: SourceFile, prog: FileProgress) -> SourceFile:
        name = prog.file
        try:
            size = src.path.stat().st_size
        except OSError as exc:
            raise IngestError(name, f"cannot be opened ({exc.strerror})") from exc
        self.check_size(name, size)
        try:
            staged = await asyncio.to_thread(self.library.stage_path, src.path, name, src.workspace)
            return dataclasses.replace(staged, owner=src.owner)
        except OSError as exc:
            raise IngestError(name, f"cannot be read ({exc.strerror})") from exc

    def check_size(self, name: str, size: int) -> None:
        limit = self.settings.max_file_mb * 1024 * 1024
        if size > limit:
            raise IngestError(
                name, f"is {size / 1048576:.1f} MB; the limit is {self.settings.max_file_mb:g} MB (RAG_MAX_FILE_MB)"
            )
        if size == 0:
            raise IngestError(name, "is empty")

    async def _prepare_file(
        self, index: int, src: SourceFile, prog: FileProgress, publish: ProgressCallback
    ) -> _Prepared:
        name, stored, doc_id = prog.file, src.path, src.doc_id
        assert doc_id is not None
        size = stored.stat().st_size
        self.check_size(name, size)
        prog.doc_id = doc_id
        existing = await asyncio.to_thread(self.library.get, doc_id)
        generation = 0
        if src.reindex:
            if existing is None or existing.status != "indexed":
                raise IngestError(name, "was deleted before it could be re-indexed")
            generation = existing.generation + 1
        elif existing and existing.status == "indexed":
            prog.stage, prog.status, prog.finished_at = Stage.DONE, FileStatus.UNCHANGED, time.time()
            prog.chunks_total = prog.chunks_done = existing.chunks
            publish(index, prog.model_copy())
            note = f"already indexed as {existing.file_name}" if existing.file_name != name else "already indexed"
            result = FileResult(
                file=name, status=FileStatus.UNCHANGED, doc_id=doc_id, chunks=existing.chunks, error=note
            )
            return _Prepared(index, prog, result=result)
        hook = _PageHook(index, prog, publish)
        try:
            read = await self._in_background(
                read_document, stored, name, self.settings.ocr, hook, ReadLimits.from_settings(self.settings)
            )
        except asyncio.CancelledError:
            hook.cancelled = True
            raise
        docs, prog.notes = read.documents, list(read.notes)
        if read.ocr_pages:
            sidecar = await asyncio.to_thread(write_sidecar, stored, read.ocr_pages)
            if src.key is not None:
                await asyncio.to_thread(self.library.storage.save_derived, src.key, sidecar)
        estimate = sum(len(d.text) for d in docs) // (4 * self.splitter.chunk_size)  # ~4 characters per token
        if estimate > self.settings.max_chunks_per_file:
            raise IngestError(
                name,
                f"holds too much text (about {estimate} chunks; the limit is {self.settings.max_chunks_per_file}, "
                "RAG_MAX_CHUNKS_PER_FILE)",
            )
        prog.stage = Stage.CHUNKING
        publish(index, prog.model_copy())
        kind = file_type(name).lstrip(".")
        nodes = await self._in_background(
            chunk_documents, docs, self.splitter, doc_id, self.embedder.model_id, kind, generation, src.workspace
        )
        if not nodes:
            raise IngestError(name, "contains no text")
        pages = max((d.metadata.get("page", 0) for d in docs), default=0) or None
        record = DocumentRecord(
            doc_id=doc_id,
            file_name=existing.file_name if src.reindex and existing else name,
            file_type=kind,
            size=size,
            pages=pages,
            chunks=len(nodes),
            status="indexing",
            stored_path=src.key or str(stored),
            added_at=existing.added_at if src.reindex and existing else time.time(),
            generation=generation,
            workspace=src.workspace,
            owner=existing.owner if src.reindex and existing else src.owner,
        )
        prog.chunks_total = len(nodes)
        publish(index, prog.model_copy())
        return _Prepared(index, prog, record=record, nodes=nodes, reindex=src.reindex)

    async def _store_alone(self, item: _Prepared, publish: ProgressCallback) -> FileResult:
        """`_store`, then let go of bytes this ingestor stored itself for the file."""
        try:
            return await self._store(item, publish)
        finally:
            if item.staged is not None:
                await asyncio.shield(asyncio.to_thread(self.library.release, item.staged))
                item.staged = None

    async def _store(self, item: _Prepared, publish: ProgressCallback) -> FileResult:
        """Embed and write one prepared file through the library's write object (`DocumentLibrary.write`): one
        writer per document, so jobs with the same bytes take turns (the second finds it indexed); a failure or a
        cancel removes what was written before the next writer of the document starts."""
        if item.result is not None:
            return item.result
        assert item.record is not None and item.nodes is not None
        index, prog, record, nodes = item.index, item.progress, item.record, item.nodes
        try:
            async with self.library.write(record, item.reindex) as writing:
                twin = writing.existing
                if item.reindex and (
                    twin is None or twin.status != "indexed" or twin.generation != record.generation - 1
                ):  # read under the claim: deleted, replaced or re-indexed by another writer since this job read it
                    verb = "deleted" if twin is None or twin.status != "indexed" else "re-indexed by another job"
                    message = f"{record.file_name}: was {verb} while this re-index waited"
                    return self._fail(index, prog, message, publish)
                if not item.reindex and twin and twin.status == "indexed":  # the same bytes appeared twice
                    prog.stage, prog.status, prog.finished_at = Stage.DONE, FileStatus.UNCHANGED, time.time()
                    publish(index, prog.model_copy())
                    return FileResult(
                        file=record.file_name,
                        status=FileStatus.UNCHANGED,
                        doc_id=record.doc_id,
                        chunks=twin.chunks,
                        error=f"already indexed as {twin.file_name}",
                    )
                await self._embed_and_insert(item, writing, publish)
        except asyncio.CancelledError:
            raise
        except RagError as exc:
            return self._fail(index, prog, f"{record.file_name}: {exc.user_message}", publish)
        except Exception as exc:  # noqa: BLE001
            log.exception("unexpected failure storing %s", record.file_name)
            return self._fail(index, prog, f"{record.file_name}: could not be stored ({type(exc).__name__})", publish)
        status = FileStatus.REPLACED if writing.replaced or item.reindex else FileStatus.INDEXED
        prog.stage, prog.status, prog.finished_at = Stage.DONE, status, time.time()
        publish(index, prog.model_copy())
        return FileResult(
            file=record.file_name,
            status=status,
            doc_id=record.doc_id,
            chunks=len(nodes),
            seconds=prog.elapsed,
            notes=list(prog.notes),
        )

    async def _embed_and_insert(self, item: _Prepared, writing: DocumentWrite, publish: ProgressCallback) -> None:
        assert item.record is not None and item.nodes is not None
        index, prog, nodes = item.index, item.progress, item.nodes
        limit = asyncio.Semaphore(self.settings.insert_concurrency)
        inserts: list[asyncio.Task[None]] = []

        async def insert(batch: list[BaseNode]) -> None:
            try:
                await writing.add(batch)
                prog.chunks_done += len(batch)
                publish(index, prog.model_copy())
            finally:
                limit.release()

        prog.stage = Stage.EMBEDDING
        publish(index, prog.model_copy())
        size, write_size = self.embedder.document_group, self.settings.insert_batch_size
        written = 0  # nodes[:written] are handed to inserts
        try:
            for start in range(0, len(nodes), size):
                batch = nodes[start : start + size]
                vectors = await self.embedder.aembed(embed_texts(batch))
                for node, vector in zip(batch, vectors):
                    node.embedding = vector
                embedded = start + len(batch)  # nodes[:embedded] have vectors
                prog.chunks_embedded += len(batch)
                publish(index, prog.model_copy())
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
            publish(index, prog.model_copy())
            await asyncio.gather(*inserts)
        except BaseException:
            for task in inserts:
                task.cancel()
            await asyncio.gather(*inserts, return_exceptions=True)
            raise

    async def _discard(self, item: _Prepared) -> None:
        """Let go of bytes this ingestor stored itself for a file it will not write (what a write stored is
        removed by the write object itself)."""
        if item.staged is not None:
            await asyncio.to_thread(self.library.release, item.staged)
            item.staged = None

    @staticmethod
    def _fail(index: int, prog: FileProgress, message: str, publish: ProgressCallback) -> FileResult:
        prog.stage, prog.status, prog.error, prog.finished_at = Stage.FAILED, FileStatus.FAILED, message, time.time()
        prog.chunks_done = 0
        publish(index, prog.model_copy())
        return FileResult(
            file=prog.file, status=FileStatus.FAILED, doc_id=prog.doc_id, error=message, seconds=prog.elapsed
        )
