"""A BM25 keyword index beside Milvus, for servers that have no BM25 function (the embedded 2.3.5): SQLite FTS5 in
the data dir for the embedded default, or a table in PostgreSQL (`PgKeywordIndex`) when the database is, so every
app replica and worker shares it.

Small embedding models rank numbers, dates and rare names poorly; BM25 ranks them well, and fusing
both (reciprocal rank fusion) finds passages that either alone misses. Milvus 2.5+ and Milvus Lite
compute BM25 in the server; for older servers this module keeps the same index in SQLite's FTS5
(in the standard library: incremental, transactional, on disk), one row per chunk, written and
deleted by `DocumentStore` in the same calls that write and delete the chunks in Milvus, so both
always hold the same chunk ids.

Calls block (SQLite), so the store runs them in worker threads, never on the event loop. Writes share one
connection behind a lock; searches and neighbour lookups read through a connection of their own thread (WAL
lets readers run beside each other and beside the writer), so concurrent questions do not queue on the lock.

A question's cost is bounded as the index grows: BM25 scores every chunk that holds any of the query's words,
and in a large collection a common word is in hundreds of thousands of chunks. The query keeps the question's
rarest words, rarest first, as long as the chunks holding them stay within `CANDIDATE_BUDGET`; words more
common than that (which weigh little in BM25 anyway) no longer bring in candidates of their own. Below that
many chunks nothing is left out (BENCHMARKS.md, "Scale").
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import delete, func, select
from sqlalchemy import text as sql_text

from rag import schema
from rag.config import Settings
from rag.database import Database, open_database

_chunks = schema.keyword_chunks

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id         INTEGER PRIMARY KEY,
    collection TEXT NOT NULL,
    chunk_id   TEXT NOT NULL,
    doc_id     TEXT NOT NULL,
    file_name  TEXT NOT NULL,
    page       INTEGER,
    chunk      INTEGER,
    text       TEXT NOT NULL,
    workspace  TEXT NOT NULL DEFAULT 'default',
    UNIQUE (collection, chunk_id)
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks (collection, doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, content='chunks', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
"""

# Words too common to tell passages apart; leaving them out of the OR query keeps it fast on big indexes.
_STOPWORD_TEXT = """a about above after again against all am an and any are as at be because been before being
    below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
    off on once only or other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours yourself yourselves"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
STOPWORDS = _STOPWORDS  # also what the retrieval-only answer leaves out of a question (rag/extract.py)
_TERM = re.compile(r"\w+")
_MAX_TERMS = 64
CANDIDATE_BUDGET = 20_000  # chunks a keyword search may score; the rarest words are kept within it


class KeywordHit(BaseModel, frozen=True):
    """One chunk found by keywords, with what a source needs to be shown."""

    chunk_id: str
    doc_id: str
    file_name: str
    page: int | None
    chunk: int | None
    text: str
    score: float


class KeywordRow(BaseModel, frozen=True):
    """One chunk as the index stores it."""

    chunk_id: str
    doc_id: str
    file_name: str
    page: int | None = None
    chunk: int | None = None
    text: str
    workspace: str = "default"


def query_terms(text: str) -> list[str]:
    """The question's distinctive words, in order, each once (all its words if it has only common ones)."""
    terms: list[str] = []
    for term in _TERM.findall(text.lower()):
        if term not in _STOPWORDS and term not in terms:
            terms.append(term)
    if not terms:  # a question made only of common words still deserves an answer
        terms = list(dict.fromkeys(_TERM.findall(text.lower())))
    return terms[:_MAX_TERMS]


def match_query(text: str) -> str | None:
    """An FTS5 query that matches any of the question's distinctive words (None when it has none)."""
    return _or(query_terms(text))


def _or(terms: Sequence[str]) -> str | None:
    return " OR ".join(f'"{t}"' for t in terms) or None


class KeywordIndex:
    """BM25 over chunk text for one collection, in an SQLite file shared by all collections of a data dir."""

    def __init__(self, path: Path, collection: str, candidate_budget: int = CANDIDATE_BUDGET) -> None:
        self.path = path
        self.collection = collection
        self.candidate_budget = candidate_budget
        self._lock = threading.Lock()
        # An index from before workspaces gains the column: all of it is the default workspace's.
        self._db = open_database(path, _SCHEMA, {"chunks": (("workspace", "TEXT NOT NULL DEFAULT 'default'"),)})
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._closed = False

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (opened on first use, closed with the index)."""
        db = getattr(self._local, "db", None)
        if db is None:
            with self._lock:
                if self._closed:
                    raise sqlite3.ProgrammingError("the keyword index is closed")
                db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
                self._readers.append(db)
            self._local.db = db
        return db

    def describe(self) -> str:
        """Where the index lives, for people."""
        return "a local SQLite FTS5 index beside Milvus"

    def add(self, rows: Sequence[KeywordRow]) -> None:
        """Insert chunks, replacing any with the same id (writes are upserts, like Milvus's)."""
        if not rows:
            return
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "DELETE FROM chunks WHERE collection=? AND chunk_id=?", [(self.collection, r.chunk_id) for r in rows]
            )
            self._db.executemany(
                "INSERT INTO chunks (collection, chunk_id, doc_id, file_name, page, chunk, text, workspace)"
                " VALUES (?,?,?,?,?,?,?,?)",
                [
                    (self.collection, r.chunk_id, r.doc_id, r.file_name, r.page, r.chunk, r.text, r.workspace)
                    for r in rows
                ],
            )

    def delete_doc(self, doc_id: str) -> int:
        """Remove every chunk of a document; returns how many were removed."""
        with self._lock, self._db:
            cursor = self._db.execute("DELETE FROM chunks WHERE collection=? AND doc_id=?", (self.collection, doc_id))
            return cursor.rowcount

    def delete_workspace(self, workspace: str) -> None:
        """Remove every chunk of a workspace."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM chunks WHERE collection=? AND workspace=?", (self.collection, workspace))

    def delete_chunks(self, chunk_ids: Sequence[str]) -> None:
        """Remove chunks by id."""
        with self._lock, self._db:
            self._db.executemany(
                "DELETE FROM chunks WHERE collection=? AND chunk_id=?", [(self.collection, c) for c in chunk_ids]
            )

    def delete_docs_except(self, keep: Iterable[str]) -> list[str]:
        """Remove chunks of every document not in `keep` (left by a crash); returns the removed doc ids."""
        stray = sorted(set(self.counts()) - set(keep))
        for doc_id in stray:
            self.delete_doc(doc_id)
        return stray

    def counts(self) -> dict[str, int]:
        """Chunks held per document."""
        with self._lock:
            rows = self._db.execute(
                "SELECT doc_id, count(*) FROM chunks WHERE collection=? GROUP BY doc_id", (self.collection,)
            ).fetchall()
        return {doc_id: n for doc_id, n in rows}

    def chunk_ids(self, doc_id: str | None = None) -> set[str]:
        """The chunk ids held (of one document, or all)."""
        sql, args = "SELECT chunk_id FROM chunks WHERE collection=?", [self.collection]
        if doc_id:
            sql, args = sql + " AND doc_id=?", [*args, doc_id]
        with self._lock:
            return {row[0] for row in self._db.execute(sql, args)}

    def iter_ids(self, batch: int = 10_000) -> Iterator[list[tuple[str, str]]]:
        """Every (chunk id, document id) held, in batches by row order (the reconcile pass; the lock is held one
        batch at a time, so writers are not kept out for the whole scan)."""
        last = 0
        while True:
            with self._lock:
                rows = self._db.execute(
                    # `+collection`: walk the rowid range, not the by-document index (which sorts every batch)
                    "SELECT id, chunk_id, doc_id FROM chunks WHERE +collection=? AND id>? ORDER BY id LIMIT ?",
                    (self.collection, last, batch),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [(row[1], row[2]) for row in rows]

    def texts(self, chunk_ids: Sequence[str]) -> dict[str, tuple[str, int | None]]:
        """Text and page of these chunks (those held), by chunk id."""
        if not chunk_ids:
            return {}
        marks = ",".join("?" * len(chunk_ids))
        rows = (
            self._reader()
            .execute(
                f"SELECT chunk_id, text, page FROM chunks WHERE collection=? AND chunk_id IN ({marks})",
                [self.collection, *chunk_ids],
            )
            .fetchall()
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    def _within_budget(self, db: sqlite3.Connection, terms: list[str]) -> list[str]:
        """The rarest of `terms`, rarest first, while the chunks holding them stay within the candidate budget (at
        least one term). Each term's count stops at the budget, so judging costs no more than the budget."""
        budget = self.candidate_budget
        if len(terms) < 2 or (db.execute("SELECT max(id) FROM chunks").fetchone()[0] or 0) <= budget:
            return terms  # a small index: every chunk may be scored
        counts = {
            term: db.execute(
                "SELECT count(*) FROM (SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? LIMIT ?)",
                (_or([term]), budget + 1),
            ).fetchone()[0]
            for term in terms
        }
        kept: list[str] = []
        total = 0
        for term in sorted((t for t in terms if counts[t]), key=counts.__getitem__):
            if kept and total + counts[term] > budget:
                break
            kept.append(term)
            total += counts[term]
        return kept or terms[:1]

    def search(
        self,
        text: str,
        top_k: int,
        doc_ids: Sequence[str] | None = None,
        workspace: str | None = None,
        exclude: Sequence[str] = (),
    ) -> list[KeywordHit]:
        """The chunks with the best BM25 score for the question's words (of a workspace, of some documents, not
        of the `exclude`d ones); in a large index, for its rarest words (see CANDIDATE_BUDGET)."""
        terms = query_terms(text)
        if not terms:
            return []
        db = self._reader()
        query = _or(self._within_budget(db, terms))
        sql = (
            "SELECT c.chunk_id, c.doc_id, c.file_name, c.page, c.chunk, c.text, bm25(chunks_fts) AS rank"
            " FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid"
            " WHERE chunks_fts MATCH ? AND c.collection = ?"
        )
        args: list[object] = [query, self.collection]
        if workspace is not None:
            sql += " AND c.workspace = ?"
            args.append(workspace)
        if doc_ids:
            sql += f" AND c.doc_id IN ({','.join('?' * len(doc_ids))})"
            args += list(doc_ids)
        if exclude:
            sql += f" AND c.doc_id NOT IN ({','.join('?' * len(exclude))})"
            args += list(exclude)
        sql += " ORDER BY rank LIMIT ?"
        args.append(top_k)
        rows = db.execute(sql, args).fetchall()
        return [
            KeywordHit(chunk_id=r[0], doc_id=r[1], file_name=r[2], page=r[3], chunk=r[4], text=r[5], score=-r[6])
            for r in rows
        ]

    def clear(self) -> None:
        """Forget every chunk of this collection (the collection was dropped)."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM chunks WHERE collection=?", (self.collection,))

    def close(self) -> None:
        """Close the database file (the writer's connection and every reader's)."""
        with self._lock:
            self._closed = True
            for reader in self._readers:
                reader.close()
            self._readers.clear()
            self._db.close()


_BM25_K1, _BM25_B = 1.2, 0.75  # FTS5's bm25() defaults, so both engines rank alike

_INSERT = """
INSERT INTO keyword_chunks (collection, chunk_id, doc_id, file_name, page, chunk, text, workspace, tsv, doc_len)
SELECT :collection, :chunk_id, :doc_id, :file_name, :page, :chunk, :text, :workspace, v.tsv,
       coalesce((SELECT max(p) FROM unnest(v.tsv) AS u, unnest(u.positions) AS p), 0)
FROM (SELECT to_tsvector('english', :text) AS tsv) AS v
"""

# Okapi BM25 as FTS5 computes it (idf = ln((N - n + 0.5) / (n + 0.5)), floored just above zero), over the chunks that
# hold any query term (the GIN index finds them); term frequencies come from each chunk's tsvector positions.
_SEARCH = """
WITH q AS (SELECT unnest(CAST(:terms AS text[])) AS lexeme),
stats AS (
    SELECT count(*)::float AS n, greatest(avg(doc_len), 1)::float AS avgdl
    FROM keyword_chunks WHERE collection = :collection
),
df AS (
    SELECT q.lexeme, (
        SELECT count(*) FROM keyword_chunks k
        WHERE k.collection = :collection AND k.tsv @@ CAST(quote_literal(q.lexeme) AS tsquery)
    )::float AS n
    FROM q
),
hits AS (
    SELECT k.chunk_id, k.doc_len, u.lexeme, coalesce(array_length(u.positions, 1), 1) AS tf
    FROM keyword_chunks k, unnest(k.tsv) AS u
    WHERE k.collection = :collection AND k.tsv @@ CAST(:tsquery AS tsquery)
      AND u.lexeme = ANY(CAST(:terms AS text[])) {filters}
),
scored AS (
    SELECT h.chunk_id, sum(
        greatest(ln((s.n - d.n + 0.5) / (d.n + 0.5)), 1e-6)
        * h.tf * ({k1} + 1) / (h.tf + {k1} * (1 - {b} + {b} * h.doc_len / s.avgdl))
    ) AS score
    FROM hits h JOIN df d ON d.lexeme = h.lexeme CROSS JOIN stats s
    GROUP BY h.chunk_id
    ORDER BY score DESC, h.chunk_id
    LIMIT :top_k
)
SELECT k.chunk_id, k.doc_id, k.file_name, k.page, k.chunk, k.text, scored.score
FROM scored JOIN keyword_chunks k ON k.collection = :collection AND k.chunk_id = scored.chunk_id
ORDER BY scored.score DESC, k.chunk_id
"""


class PgKeywordIndex:
    """The same BM25 index in PostgreSQL (`keyword_chunks`), shared by every app replica and worker that uses the
    database: a chunk a worker wrote is found by keywords from any replica. Terms are PostgreSQL's English
    stemming (Snowball) with its stop words; the ranking is FTS5's BM25, computed in SQL from each chunk's
    tsvector. Same methods as `KeywordIndex`; blocking calls (the store runs them in threads)."""

    def __init__(self, db: Database, collection: str) -> None:
        self.db = db
        self.collection = collection

    def describe(self) -> str:
        """Where the index lives, for people."""
        return "a BM25 index in PostgreSQL"

    def add(self, rows: Sequence[KeywordRow]) -> None:
        """Insert chunks, replacing any with the same id (writes are upserts, like Milvus's)."""
        if not rows:
            return
        with self.db.write() as conn:
            conn.execute(
                delete(_chunks).where(
                    _chunks.c.collection == self.collection, _chunks.c.chunk_id.in_([r.chunk_id for r in rows])
                )
            )
            conn.execute(sql_text(_INSERT), [{**r.model_dump(), "collection": self.collection} for r in rows])

    def _delete(self, *where: object) -> int:
        with self.db.write() as conn:
            return conn.execute(delete(_chunks).where(_chunks.c.collection == self.collection, *where)).rowcount

    def delete_doc(self, doc_id: str) -> int:
        """Remove every chunk of a document; returns how many were removed."""
        return self._delete(_chunks.c.doc_id == doc_id)

    def delete_workspace(self, workspace: str) -> None:
        """Remove every chunk of a workspace."""
        self._delete(_chunks.c.workspace == workspace)

    def delete_chunks(self, chunk_ids: Sequence[str]) -> None:
        """Remove chunks by id."""
        if chunk_ids:
            self._delete(_chunks.c.chunk_id.in_(list(chunk_ids)))

    def delete_docs_except(self, keep: Iterable[str]) -> list[str]:
        """Remove chunks of every document not in `keep` (left by a crash); returns the removed doc ids."""
        stray = sorted(set(self.counts()) - set(keep))
        for doc_id in stray:
            self.delete_doc(doc_id)
        return stray

    def counts(self) -> dict[str, int]:
        """Chunks held per document."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(_chunks.c.doc_id, func.count())
                .where(_chunks.c.collection == self.collection)
                .group_by(_chunks.c.doc_id)
            ).all()
        return {doc_id: n for doc_id, n in rows}

    def chunk_ids(self, doc_id: str | None = None) -> set[str]:
        """The chunk ids held (of one document, or all)."""
        query = select(_chunks.c.chunk_id).where(_chunks.c.collection == self.collection)
        if doc_id:
            query = query.where(_chunks.c.doc_id == doc_id)
        with self.db.read() as conn:
            return set(conn.execute(query).scalars())

    def iter_ids(self, batch: int = 10_000) -> Iterator[list[tuple[str, str]]]:
        """Every (chunk id, document id) held, in batches by chunk id (the reconcile pass)."""
        last = ""
        while True:
            with self.db.read() as conn:
                rows = conn.execute(
                    select(_chunks.c.chunk_id, _chunks.c.doc_id)
                    .where(_chunks.c.collection == self.collection, _chunks.c.chunk_id > last)
                    .order_by(_chunks.c.chunk_id)
                    .limit(batch)
                ).all()
            if not rows:
                return
            last = rows[-1][0]
            yield [(row[0], row[1]) for row in rows]

    def texts(self, chunk_ids: Sequence[str]) -> dict[str, tuple[str, int | None]]:
        """Text and page of these chunks (those held), by chunk id."""
        if not chunk_ids:
            return {}
        with self.db.read() as conn:
            rows = conn.execute(
                select(_chunks.c.chunk_id, _chunks.c.text, _chunks.c.page).where(
                    _chunks.c.collection == self.collection, _chunks.c.chunk_id.in_(list(chunk_ids))
                )
            ).all()
        return {r[0]: (r[1], r[2]) for r in rows}

    def _terms(self, conn: object, text: str) -> list[str]:
        """The question's stemmed terms (stop words dropped; a question made only of them keeps them all)."""
        for config in ("english", "simple"):
            found = conn.execute(  # type: ignore[attr-defined]
                sql_text("SELECT lexeme FROM unnest(to_tsvector(CAST(:config AS regconfig), :text)) ORDER BY lexeme"),
                {"config": config, "text": text},
            ).scalars()
            terms = list(found)[:_MAX_TERMS]
            if terms:
                return terms
        return []

    def search(
        self,
        text: str,
        top_k: int,
        doc_ids: Sequence[str] | None = None,
        workspace: str | None = None,
        exclude: Sequence[str] = (),
    ) -> list[KeywordHit]:
        """The chunks with the best BM25 score for the question's words (of a workspace, of some documents, not
        of the `exclude`d ones)."""
        filters, args = "", {"collection": self.collection, "top_k": top_k}
        if workspace is not None:
            filters += " AND k.workspace = :workspace"
            args["workspace"] = workspace
        if doc_ids:
            filters += " AND k.doc_id = ANY(CAST(:doc_ids AS text[]))"
            args["doc_ids"] = list(doc_ids)
        if exclude:
            filters += " AND NOT (k.doc_id = ANY(CAST(:exclude AS text[])))"
            args["exclude"] = list(exclude)
        with self.db.read() as conn:
            terms = self._terms(conn, text)
            if not terms:
                return []
            args.update(terms=terms, tsquery=" | ".join("'" + t.replace("'", "''") + "'" for t in terms))
            rows = conn.execute(sql_text(_SEARCH.format(filters=filters, k1=_BM25_K1, b=_BM25_B)), args).all()
        return [
            KeywordHit(chunk_id=r[0], doc_id=r[1], file_name=r[2], page=r[3], chunk=r[4], text=r[5], score=r[6])
            for r in rows
        ]

    def clear(self) -> None:
        """Forget every chunk of this collection (the collection was dropped)."""
        self._delete()

    def close(self) -> None:
        """Give back the database handle."""
        self.db.close()


def open_keyword_index(settings: Settings, collection: str) -> KeywordIndex | PgKeywordIndex:
    """The keyword index of a collection whose server has no BM25 function: in PostgreSQL when the database is
    (shared by every process), else the SQLite FTS5 file in the data dir."""
    db = Database.open(settings)
    if not db.sqlite:
        return PgKeywordIndex(db, collection)
    db.close()
    return KeywordIndex(Path(settings.data_dir) / "keyword.sqlite3", collection)
