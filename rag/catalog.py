"""The document catalog: which documents a collection holds, in SQLite inside the data dir.

Milvus holds the chunks; the catalog holds one row per document (name, type, pages, chunks, size,
when added) and its state. A row stays `indexing` until every chunk is stored, so after a crash the
engine finds half-indexed documents and removes their chunks instead of listing them; a row being
removed is `deleting`. Only an `indexed` row's current generation answers questions (`committed`).

`claims` serialises writers across processes: a writer of a document (or of a file name) holds a row
here, taken only when free, expired or left by a dead process, and renewed while it writes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
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
CREATE TABLE IF NOT EXISTS claims (
    collection  TEXT NOT NULL,
    key         TEXT NOT NULL,
    owner       TEXT NOT NULL,
    lease_until REAL NOT NULL,
    PRIMARY KEY (collection, key)
);
"""
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

    def list(self, status: str | None = "indexed", workspace: str | None = None) -> list[DocumentRecord]:
        """Documents in this collection (of one workspace, or all), newest first; `status=None`: any state."""
        sql, args = "SELECT * FROM documents WHERE collection=?", [self.collection]
        if status is not None:
            sql, args = sql + " AND status=?", [*args, status]
        if workspace is not None:
            sql, args = sql + " AND workspace=?", [*args, workspace]
        return self._rows(sql + " ORDER BY added_at DESC", *args)

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

    def claim(self, key: str, owner: str, lease_until: float, now: float, steal_from: str | None = None) -> bool:
        """Take the claim `key` for `owner` if nobody holds it, its lease ran out before `now`, or its holder is
        `steal_from` (a writer known dead). One conditional statement, so two claimants never both win."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO claims (collection, key, owner, lease_until) VALUES (?,?,?,?) "
                "ON CONFLICT (collection, key) DO UPDATE SET owner=excluded.owner, lease_until=excluded.lease_until "
                "WHERE claims.lease_until < ? OR claims.owner = ?",
                (self.collection, key, owner, lease_until, now, steal_from or owner),
            )
            return cursor.rowcount == 1

    def renew_claim(self, key: str, owner: str, lease_until: float) -> bool:
        """Extend a claim `owner` still holds; False when it was lost (taken over after its lease ran out)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE claims SET lease_until=? WHERE collection=? AND key=? AND owner=?",
                (lease_until, self.collection, key, owner),
            )
            return cursor.rowcount == 1

    def release_claim(self, key: str, owner: str) -> None:
        """Give a claim back (only the holder's own)."""
        with self._lock:
            self._db.execute(
                "DELETE FROM claims WHERE collection=? AND key=? AND owner=?", (self.collection, key, owner)
            )

    def claims(self, prefix: str = "") -> dict[str, tuple[str, float]]:
        """Claims held now (keys starting with `prefix`): key -> (owner, lease_until)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, owner, lease_until FROM claims WHERE collection=? AND substr(key, 1, ?)=?",
                (self.collection, len(prefix), prefix),
            ).fetchall()
        return {row[0]: (row[1], row[2]) for row in rows}

    def committed(self, doc_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """The current generation and chunk count of those documents that are committed (`indexed`)."""
        found: dict[str, tuple[int, int]] = {}
        ids = list(dict.fromkeys(doc_ids))
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            with self._lock:
                rows = self._db.execute(
                    "SELECT doc_id, generation, chunks FROM documents WHERE collection=? AND status='indexed' "
                    f"AND doc_id IN ({','.join('?' * len(part))})",
                    (self.collection, *part),
                ).fetchall()
            found.update({row[0]: (row[1], row[2]) for row in rows})
        return found

    def commit(
        self,
        doc_id: str,
        chunks: int,
        pages: int | None,
        generation: int,
        retire: Sequence[str] = (),
        cleanup_owed: bool = False,
    ) -> None:
        """In one transaction: a document's `generation` becomes the one that answers, and the documents in
        `retire` (older versions it replaces) become `deleting`. With `cleanup_owed` (a re-index) the row keeps
        `pending` until `end_generation`, so a crash before the other generations are removed is finished by
        recovery instead of leaving two generations."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE documents SET status='indexed', chunks=?, pages=?, generation=?, pending=? "
                "WHERE collection=? AND doc_id=?",
                (chunks, pages, generation, generation if cleanup_owed else None, self.collection, doc_id),
            )
            self._db.executemany(
                "UPDATE documents SET status='deleting' WHERE collection=? AND doc_id=?",
                [(self.collection, old) for old in retire],
            )

    def retire(self, doc_id: str) -> None:
        """Mark a document `deleting`: it stops answering at once, and recovery finishes a removal that a crash
        interrupted."""
        self._update(doc_id, status="deleting")

    def unfinished(self) -> list[DocumentRecord]:
        """Rows some writer has not finished: `indexing`, `deleting`, or a generation pending (a re-index, or the
        removal of the generation it replaced)."""
        return self._rows(
            "SELECT * FROM documents WHERE collection=? AND (status!='indexed' OR pending IS NOT NULL)",
            self.collection,
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
