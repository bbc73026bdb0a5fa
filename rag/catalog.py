"""The document catalog: which documents a collection holds, in the engine's database (`rag.database`).

Milvus holds the chunks; the catalog holds one row per document (name, type, pages, chunks, size,
when added, who uploaded it) and its state. A row stays `indexing` until every chunk is stored, so after
a crash the engine finds half-indexed documents and removes their chunks instead of listing them; a row
being removed is `deleting`. Only an `indexed` row's current generation answers questions (`committed`).

`claims` serialises writers across processes: a writer of a document (or of a file name) holds a row
there, taken only when free, expired or left by a dead process, and renewed while it writes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy import bindparam, delete, func, insert, select, update

from rag import schema
from rag.database import Database

_docs = schema.documents
_claims = schema.claims
# Built once: every search runs it (`committed`), and building the statement costs more than running it.
_COMMITTED = select(_docs.c.doc_id, _docs.c.generation, _docs.c.chunks).where(
    _docs.c.collection == bindparam("collection"),
    _docs.c.status == "indexed",
    _docs.c.doc_id.in_(bindparam("ids", expanding=True)),
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
    owner: str | None = None
    """The uploader's account id (None: the operator, or the app without accounts)."""

    @property
    def added(self) -> str:
        """When it was added, as an ISO timestamp in UTC."""
        return datetime.fromtimestamp(self.added_at, tz=UTC).isoformat(timespec="seconds")


class Catalog:
    """Access to the catalog rows of one collection, safe to share between threads and processes."""

    def __init__(self, db: Database, collection: str) -> None:
        self.db = db
        self.collection = collection

    def _rows(self, *where: object, order: bool = False, limit: int | None = None) -> list[DocumentRecord]:
        query = select(_docs).where(_docs.c.collection == self.collection, *where)
        if order:
            query = query.order_by(_docs.c.added_at.desc())
        if limit is not None:
            query = query.limit(limit)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [DocumentRecord(**{k: getattr(row, k) for k in DocumentRecord.model_fields}) for row in rows]

    def get(self, doc_id: str) -> DocumentRecord | None:
        """The record for a document id, in any state."""
        rows = self._rows(_docs.c.doc_id == doc_id)
        return rows[0] if rows else None

    def by_name(self, file_name: str, workspace: str, owner: str | None = None) -> list[DocumentRecord]:
        """Indexed documents of a workspace with this file name uploaded by `owner` (older versions of an
        upload: a same-name file of someone else is another document, never replaced)."""
        return self._rows(
            _docs.c.file_name == file_name,
            _docs.c.workspace == workspace,
            _docs.c.status == "indexed",
            _docs.c.owner.is_(None) if owner is None else _docs.c.owner == owner,
        )

    def list(
        self, status: str | None = "indexed", workspace: str | None = None, limit: int | None = None
    ) -> list[DocumentRecord]:
        """Documents in this collection (of one workspace, or all), newest first; `status=None`: any state; at most
        `limit` (the newest are read straight from an index, ix_documents_by_added, however many there are)."""
        return self._rows(*_where(status, workspace), order=True, limit=limit)

    def find(self, text: str, workspace: str | None, limit: int) -> list[DocumentRecord]:
        """Indexed documents whose name contains `text` (any case), newest first, at most `limit`."""
        pattern = "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        name = func.lower(_docs.c.file_name).like(pattern, escape="\\")
        return self._rows(*_where("indexed", workspace), name, order=True, limit=limit)

    def count(self, status: str | None = "indexed", workspace: str | None = None) -> tuple[int, int]:
        """How many documents (of one workspace, or all) and how many chunks they hold, counted in the database."""
        query = select(func.count(), func.coalesce(func.sum(_docs.c.chunks), 0)).where(
            _docs.c.collection == self.collection, *_where(status, workspace)
        )
        with self.db.read() as conn:
            documents, chunks = conn.execute(query).one()
        return int(documents), int(chunks)

    def begin(self, record: DocumentRecord, lease_until: float) -> None:
        """Record a document whose chunks are being written, leased to its writer until `lease_until`."""
        values = record.model_dump()
        values.update(
            collection=self.collection,
            status="indexing",
            added_at=record.added_at or time.time(),
            pending=None,
            lease_until=lease_until,
        )
        key = (_docs.c.collection == self.collection) & (_docs.c.doc_id == record.doc_id)
        with self.db.write() as conn:
            conn.execute(delete(_docs).where(key))
            conn.execute(insert(_docs).values(**values))

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
            (_docs.c.status == "indexing") | _docs.c.pending.is_not(None),
            _docs.c.lease_until.is_(None) | (_docs.c.lease_until < now),
        )

    def claim(self, key: str, owner: str, lease_until: float, now: float, steal_from: str | None = None) -> bool:
        """Take the claim `key` for `owner` if nobody holds it, its lease ran out before `now`, or its holder is
        `steal_from` (a writer known dead). One conditional statement, so two claimants never both win."""
        if self.db.sqlite:
            from sqlalchemy.dialects.sqlite import insert as upsert
        else:
            from sqlalchemy.dialects.postgresql import insert as upsert
        stmt = upsert(_claims).values(collection=self.collection, key=key, owner=owner, lease_until=lease_until)
        stmt = stmt.on_conflict_do_update(
            index_elements=[_claims.c.collection, _claims.c.key],
            set_={"owner": stmt.excluded.owner, "lease_until": stmt.excluded.lease_until},
            where=(_claims.c.lease_until < now) | (_claims.c.owner == (steal_from or owner)),
        )
        with self.db.write() as conn:  # a row comes back when it was inserted or taken over (psycopg gives no rowcount)
            return conn.execute(stmt.returning(_claims.c.key)).first() is not None

    def renew_claim(self, key: str, owner: str, lease_until: float) -> bool:
        """Extend a claim `owner` still holds; False when it was lost (taken over after its lease ran out)."""
        with self.db.write() as conn:
            done = conn.execute(
                update(_claims)
                .where(_claims.c.collection == self.collection, _claims.c.key == key, _claims.c.owner == owner)
                .values(lease_until=lease_until)
            )
            return done.rowcount == 1

    def release_claim(self, key: str, owner: str) -> None:
        """Give a claim back (only the holder's own)."""
        with self.db.write() as conn:
            conn.execute(
                delete(_claims).where(
                    _claims.c.collection == self.collection, _claims.c.key == key, _claims.c.owner == owner
                )
            )

    def claims(self, prefix: str = "") -> dict[str, tuple[str, float]]:
        """Claims held now (keys starting with `prefix`): key -> (owner, lease_until)."""
        query = select(_claims.c.key, _claims.c.owner, _claims.c.lease_until).where(
            _claims.c.collection == self.collection, _claims.c.key.startswith(prefix, autoescape=True)
        )
        with self.db.read() as conn:
            return {row.key: (row.owner, row.lease_until) for row in conn.execute(query)}

    def committed(self, doc_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """The current generation and chunk count of those documents that are committed (`indexed`)."""
        ids = list(dict.fromkeys(doc_ids))
        found: dict[str, tuple[int, int]] = {}
        with self.db.read() as conn:
            for start in range(0, len(ids), 500):
                rows = conn.execute(_COMMITTED, {"collection": self.collection, "ids": ids[start : start + 500]})
                found.update({row.doc_id: (row.generation, row.chunks) for row in rows})
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
        mine = (_docs.c.collection == self.collection) & (_docs.c.doc_id == doc_id)
        with self.db.write() as conn:
            conn.execute(
                update(_docs)
                .where(mine)
                .values(
                    status="indexed",
                    chunks=chunks,
                    pages=pages,
                    generation=generation,
                    pending=generation if cleanup_owed else None,
                )
            )
            if retire:
                conn.execute(
                    update(_docs)
                    .where(_docs.c.collection == self.collection, _docs.c.doc_id.in_(list(retire)))
                    .values(status="deleting")
                )

    def retire(self, doc_id: str) -> None:
        """Mark a document `deleting`: it stops answering at once, and recovery finishes a removal that a crash
        interrupted."""
        self._update(doc_id, status="deleting")

    def unfinished(self) -> list[DocumentRecord]:
        """Rows some writer has not finished: `indexing`, `deleting`, or a generation pending (a re-index, or the
        removal of the generation it replaced)."""
        return self._rows((_docs.c.status != "indexed") | _docs.c.pending.is_not(None))

    def references(self, stored_path: str) -> int:
        """How many rows (of any collection of this database) keep these stored bytes."""
        with self.db.read() as conn:
            return conn.execute(select(func.count()).where(_docs.c.stored_path == stored_path)).scalar_one()

    def _update(self, doc_id: str, **values: object) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(_docs).where(_docs.c.collection == self.collection, _docs.c.doc_id == doc_id).values(**values)
            )

    def remove(self, doc_id: str) -> None:
        """Forget a document."""
        with self.db.write() as conn:
            conn.execute(delete(_docs).where(_docs.c.collection == self.collection, _docs.c.doc_id == doc_id))

    def clear(self) -> None:
        """Forget every document of this collection."""
        with self.db.write() as conn:
            conn.execute(delete(_docs).where(_docs.c.collection == self.collection))

    def close(self) -> None:
        """Give back the database handle."""
        self.db.close()


def _where(status: str | None, workspace: str | None) -> list[object]:
    where: list[object] = []
    if status is not None:
        where.append(_docs.c.status == status)
    if workspace is not None:
        where.append(_docs.c.workspace == workspace)
    return where
