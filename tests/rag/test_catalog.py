"""The catalogue's rows: states, leases, shared stored bytes, and catalogue files written by older versions."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from rag.catalog import Catalog, DocumentRecord


def _record(doc_id: str, name: str = "a.txt", stored: str = "/x/a.txt") -> DocumentRecord:
    return DocumentRecord(
        doc_id=doc_id,
        file_name=name,
        file_type="txt",
        size=10,
        pages=None,
        chunks=3,
        status="indexing",
        stored_path=stored,
        added_at=time.time(),
    )


def test_rows_move_from_indexing_to_indexed_and_leases_expire(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite3", "c1")
    now = time.time()
    catalog.begin(_record("d1"), lease_until=now + 60)
    catalog.begin(_record("d2", "b.txt", "/x/b.txt"), lease_until=now - 1)
    assert catalog.list() == [] and {r.doc_id for r in catalog.list(status=None)} == {"d1", "d2"}
    assert [r.doc_id for r in catalog.expired(now)] == ["d2"]

    catalog.finish("d1", chunks=5, pages=2)
    (d1,) = catalog.list()
    assert (d1.chunks, d1.pages, d1.status, d1.lease_until, d1.generation) == (5, 2, "indexed", None, 0)

    catalog.begin_generation("d1", 1, lease_until=now - 1)  # a re-index whose writer died
    assert {r.doc_id for r in catalog.expired(now)} == {"d1", "d2"}
    catalog.renew("d1", now + 60)
    assert [r.doc_id for r in catalog.expired(now)] == ["d2"]
    catalog.finish("d1", chunks=6, pages=2, generation=1)
    d1 = catalog.get("d1")
    assert d1 is not None and (d1.generation, d1.pending, d1.chunks) == (1, None, 6)
    catalog.close()


def test_stored_bytes_are_counted_across_collections(tmp_path: Path) -> None:
    one, two = Catalog(tmp_path / "catalog.sqlite3", "c1"), Catalog(tmp_path / "catalog.sqlite3", "c2")
    one.begin(_record("d1", stored="/x/same.txt"), lease_until=time.time())
    two.begin(_record("d1", stored="/x/same.txt"), lease_until=time.time())
    assert one.references("/x/same.txt") == 2
    one.remove("d1")
    assert two.references("/x/same.txt") == 1 and one.get("d1") is None and two.get("d1") is not None
    one.close()
    two.close()


def test_a_catalogue_from_an_older_version_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE documents (collection TEXT NOT NULL, doc_id TEXT NOT NULL, file_name TEXT NOT NULL,
            file_type TEXT NOT NULL, size INTEGER NOT NULL, pages INTEGER, chunks INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL, stored_path TEXT NOT NULL, added_at REAL NOT NULL,
            PRIMARY KEY (collection, doc_id));
        INSERT INTO documents VALUES ('c1', 'old', 'old.pdf', 'pdf', 99, 4, 12, 'indexed', '/x/old.pdf', 1.0);
        INSERT INTO documents VALUES ('c1', 'cut', 'cut.pdf', 'pdf', 99, 4, 12, 'indexing', '/x/cut.pdf', 2.0);
        """
    )
    db.commit()
    db.close()

    catalog = Catalog(path, "c1")
    (old,) = catalog.list()
    assert (old.doc_id, old.generation, old.pending, old.chunks) == ("old", 0, None, 12)
    assert [r.doc_id for r in catalog.expired(time.time())] == ["cut"]  # no lease: a writer from before leases
    catalog.close()


def test_the_newest_page_counts_and_name_search_read_only_what_they_return(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite3", "c1")
    for i, name in enumerate(["alpha.txt", "beta_1.txt", "beta%2.txt", "gamma.txt"]):
        catalog.begin(_record(f"d{i}", name).model_copy(update={"added_at": 1000.0 + i}), lease_until=0)
        catalog.finish(f"d{i}", chunks=10 * (i + 1), pages=None)
    catalog.begin(_record("d9", "pending.txt"), lease_until=time.time() + 60)  # being written: not counted
    assert [r.doc_id for r in catalog.list(limit=2)] == ["d3", "d2"]
    assert catalog.count() == (4, 100) and catalog.count(workspace="other") == (0, 0)
    assert [r.file_name for r in catalog.find("BETA", "default", 10)] == ["beta%2.txt", "beta_1.txt"]
    assert [r.file_name for r in catalog.find("_", "default", 10)] == ["beta_1.txt"]  # no LIKE wildcards
    assert [r.file_name for r in catalog.find("%", "default", 10)] == ["beta%2.txt"]
    assert len(catalog.find(".txt", "default", 3)) == 3 and catalog.find("beta", "other", 10) == []
    plan = " ".join(
        str(tuple(row))
        for row in catalog._db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM documents WHERE collection=? AND status=? AND workspace=? "
            "ORDER BY added_at DESC LIMIT 2",
            ("c1", "indexed", "default"),
        )
    )
    assert "documents_by_added" in plan and "TEMP B-TREE" not in plan  # read from the index, nothing sorted
