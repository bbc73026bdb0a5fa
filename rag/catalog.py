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

from rag.config import private_dir, private_file

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
    PRIMARY KEY (collection, doc_id)
);
CREATE INDEX IF NOT EXISTS documents_by_name ON documents (collection, file_name);
"""


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

    @property
    def added(self) -> str:
        """When it was added, as an ISO timestamp in UTC."""
        return datetime.fromtimestamp(self.added_at, tz=UTC).isoformat(timespec="seconds")


class Catalog:
    """Thread-safe access to the catalog file of one collection."""

    def __init__(self, path: Path, collection: str) -> None:
        private_file(private_dir(path.parent) / path.name)  # 0700 folder, 0600 database (its -wal and -shm follow)
        self.collection = collection
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def _rows(self, sql: str, *args: object) -> list[DocumentRecord]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [DocumentRecord(**{k: row[k] for k in DocumentRecord.model_fields}) for row in rows]

    def get(self, doc_id: str) -> DocumentRecord | None:
        """The record for a document id, in any state."""
        rows = self._rows("SELECT * FROM documents WHERE collection=? AND doc_id=?", self.collection, doc_id)
        return rows[0] if rows else None

    def by_name(self, file_name: str) -> list[DocumentRecord]:
        """Indexed documents with this file name (older versions of an upload)."""
        return self._rows(
            "SELECT * FROM documents WHERE collection=? AND file_name=? AND status='indexed'",
            self.collection,
            file_name,
        )

    def list(self, status: str | None = "indexed") -> list[DocumentRecord]:
        """Documents in this collection, newest first."""
        if status is None:
            return self._rows("SELECT * FROM documents WHERE collection=? ORDER BY added_at DESC", self.collection)
        return self._rows(
            "SELECT * FROM documents WHERE collection=? AND status=? ORDER BY added_at DESC", self.collection, status
        )

    def begin(self, record: DocumentRecord) -> None:
        """Record a document whose chunks are being written."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO documents VALUES (?,?,?,?,?,?,?,?,?,?)",
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
                ),
            )

    def finish(self, doc_id: str, chunks: int, pages: int | None) -> None:
        """Mark a document indexed once every chunk is stored."""
        with self._lock:
            self._db.execute(
                "UPDATE documents SET status='indexed', chunks=?, pages=? WHERE collection=? AND doc_id=?",
                (chunks, pages, self.collection, doc_id),
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
