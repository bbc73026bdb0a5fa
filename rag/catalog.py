"""The document catalog: which documents a collection holds, in SQLite inside the data dir.

Milvus holds the chunks; the catalog holds one row per document (name, type, pages, chunks, size,
when added) and its state. A row stays `indexing` until every chunk is stored, so after a crash the
engine finds half-indexed documents and removes their chunks instead of listing them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from rag.database import open_database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    doc_id     TEXT NOT NULL,
    file_name  TEXT NOT NULL,
    file_type  TEXT NOT NULL,
    size       INTEGER NOT NULL,
    pages      INTEGER,
    chunks     INTEGER NOT NULL DEFAULT 0,
    status     TEXT NOT NULL,
    stored_path TEXT NOT NULL,
    added_at   REAL NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    pending    INTEGER,
    lease_until REAL,
    workspace  TEXT NOT NULL DEFAULT 'default',
    PRIMARY KEY (collection, doc_id)
);
CREATE INDEX IF NOT EXISTS documents_by_name ON documents (collection, file_name);
"""
# Made after the added columns exist (a catalogue from before workspaces gains `workspace` at open): the newest
# documents of a workspace are read straight from it, however many there are.
_INDEXES = "CREATE INDEX IF NOT EXISTS documents_by_added ON documents (collection, status, workspace, added_at);"
# Columns added after the first release: (name, declaration), added to older catalog files at open.
_ADDED_COLUMNS = (
    ("generation", "INTEGER NOT NULL DEFAULT 0"),
    ("pending", "INTEGER"),
    ("lease_until", "REAL"),
    ("workspace", "TEXT NOT NULL DEFAULT 'default'"),
)


class DocumentRecord(BaseModel, frozen=True):
    """One indexed (or being indexed) document."""

    doc_id: str
    file_name: str
    file_type: str
    size: int
    pages: int | None
    chunks: int
    status: str
    stored_path: str
    added_at: float
    generation: int = 0
    pending: int | None = None
    lease_until: float | None = None
    workspace: str = "default"

    @property
    def added(self) -> str:
        """When it was added, as an ISO timestamp in UTC."""
        return datetime.fromtimestamp(self.added_at, tz=UTC).isoformat(timespec="seconds")


class Catalog:
    """Thread-safe access to the catalog file of one collection."""

    def __init__(self, path: Path, collection: str) -> None:
        self.collection = collection
        self._lock = threading.Lock()
        self._db = open_database(path, _SCHEMA, {"documents": _ADDED_COLUMNS})
        self._db.executescript(_INDEXES)
        self._db.row_factory = sqlite3.Row

    def _rows(self, sql: str, *args: object) -> list[DocumentRecord]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [DocumentRecord(**{k: row[k] for k in DocumentRecord.model_fields}) for row in rows]

    def get(self, doc_id: str) -> DocumentRecord | None:
        """The record for a document id, in any state."""
        rows = self._rows("SELECT * FROM documents WHERE collection=? AND doc_id=?", self.collection, doc_id)
        return rows[0] if rows else None

    def by_name(self, file_name: str, workspace: str) -> list[DocumentRecord]:
        """Indexed documents of a workspace with this file name (older versions of an upload)."""
        return self._rows(
            "SELECT * FROM documents WHERE collection=? AND file_name=? AND workspace=? AND status='indexed'",
            self.collection,
            file_name,
            workspace,
        )

    def list(
        self, status: str | None = "indexed", workspace: str | None = None, limit: int | None = None
    ) -> list[DocumentRecord]:
        """Documents in this collection (of one workspace, or all), newest first; `status=None`: any state; at most
        `limit` (the newest are read straight from an index, however many there are)."""
        where, args = self._where(status, workspace)
        sql = f"SELECT * FROM documents WHERE {where} ORDER BY added_at DESC"
        if limit is not None:
            sql, args = sql + " LIMIT ?", [*args, limit]
        return self._rows(sql, *args)

    def find(self, text: str, workspace: str | None, limit: int) -> list[DocumentRecord]:
        """Indexed documents whose name contains `text` (any case), newest first, at most `limit`."""
        where, args = self._where("indexed", workspace)
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        sql = f"SELECT * FROM documents WHERE {where} AND file_name LIKE ? ESCAPE '\\' ORDER BY added_at DESC LIMIT ?"
        return self._rows(sql, *args, pattern, limit)

    def count(self, status: str | None = "indexed", workspace: str | None = None) -> tuple[int, int]:
        """How many documents (of one workspace, or all) and how many chunks they hold, counted in SQL."""
        where, args = self._where(status, workspace)
        with self._lock:
            documents, chunks = self._db.execute(
                f"SELECT count(*), coalesce(sum(chunks), 0) FROM documents WHERE {where}", args
            ).fetchone()
        return int(documents), int(chunks)

    def _where(self, status: str | None, workspace: str | None) -> tuple[str, list[object]]:
        where, args = "collection=?", [self.collection]
        if status is not None:
            where, args = where + " AND status=?", [*args, status]
        if workspace is not None:
            where, args = where + " AND workspace=?", [*args, workspace]
        return where, args

    def begin(self, record: DocumentRecord, lease_until: float) -> None:
        """Record a document whose chunks are being written, leased to its writer until `lease_until`."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO documents (collection, doc_id, file_name, file_type, size, pages, chunks, "
                "status, stored_path, added_at, generation, pending, lease_until, workspace) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    self.collection,
                    record.doc_id,
                    record.file_name,
                    record.file_type,
                    record.size,
                    record.pages,
                    record.chunks,
                    "indexing",
                    record.stored_path,
                    record.added_at or time.time(),
                    record.generation,
                    None,
                    lease_until,
                    record.workspace,
                ),
            )

    def begin_generation(self, doc_id: str, generation: int, lease_until: float) -> None:
        """Record that a re-index is writing `generation` of an indexed document beside the current one."""
        self._update(doc_id, pending=generation, lease_until=lease_until)

    def renew(self, doc_id: str, lease_until: float) -> None:
        """Extend a writer's lease on a document (an indexing row, or a re-index in progress)."""
        self._update(doc_id, lease_until=lease_until)

    def finish(self, doc_id: str, chunks: int, pages: int | None, generation: int = 0) -> None:
        """Mark a document indexed once every chunk of `generation` is stored."""
        self._update(
            doc_id, status="indexed", chunks=chunks, pages=pages, generation=generation, pending=None, lease_until=None
        )

    def end_generation(self, doc_id: str) -> None:
        """Forget a re-index that did not finish; the current generation stays."""
        self._update(doc_id, pending=None, lease_until=None)

    def expired(self, now: float) -> list[DocumentRecord]:
        """Rows whose writer's lease ran out: half-indexed documents, or re-indexes, nobody is writing now."""
        return self._rows(
            "SELECT * FROM documents WHERE collection=? AND (status='indexing' OR pending IS NOT NULL) "
            "AND (lease_until IS NULL OR lease_until < ?)",
            self.collection,
            now,
        )

    def references(self, stored_path: str) -> int:
        """How many rows (of any collection of this data dir) keep these stored bytes."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM documents WHERE stored_path=?", (stored_path,)).fetchone()[0]

    def _update(self, doc_id: str, **values: object) -> None:
        columns = ", ".join(f"{name}=?" for name in values)
        with self._lock:
            self._db.execute(
                f"UPDATE documents SET {columns} WHERE collection=? AND doc_id=?",
                (*values.values(), self.collection, doc_id),
            )

    def remove(self, doc_id: str) -> None:
        """Forget a document."""
        with self._lock:
            self._db.execute("DELETE FROM documents WHERE collection=? AND doc_id=?", (self.collection, doc_id))

    def clear(self) -> None:
        """Forget every document of this collection."""
        with self._lock:
            self._db.execute("DELETE FROM documents WHERE collection=?", (self.collection,))

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._db.close()
