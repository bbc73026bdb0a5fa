"""The catalogue's rows: states, leases, shared stored bytes, owners; on both database engines."""

from __future__ import annotations

import time

from rag.catalog import Catalog, DocumentRecord
from rag.database import Database


def _record(doc_id: str, name: str = "a.txt", stored: str = "/x/a.txt", owner: str | None = None) -> DocumentRecord:
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
        owner=owner,
    )


def test_rows_move_from_indexing_to_indexed_and_leases_expire(db: Database) -> None:
    catalog = Catalog(db, "c1")
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


def test_stored_bytes_are_counted_across_collections(db: Database) -> None:
    one, two = Catalog(db, "c1"), Catalog(db, "c2")
    one.begin(_record("d1", stored="/x/same.txt"), lease_until=time.time())
    two.begin(_record("d1", stored="/x/same.txt"), lease_until=time.time())
    assert one.references("/x/same.txt") == 2
    one.remove("d1")
    assert two.references("/x/same.txt") == 1 and one.get("d1") is None and two.get("d1") is not None


def test_older_versions_of_an_upload_are_the_same_uploaders_only(db: Database) -> None:
    from sqlalchemy import insert

    from rag import schema

    with db.write() as conn:  # two accounts (the documents' owners refer to them)
        for account in ("a1", "b2"):
            conn.execute(
                insert(schema.accounts).values(id=account, name=account, name_key=account, hash="x", created_at=0.0)
            )
    catalog = Catalog(db, "c1")
    for doc_id, owner in (("mine", "a1"), ("theirs", "b2"), ("operator", None)):
        catalog.begin(_record(doc_id, name="plan.txt", owner=owner), lease_until=time.time() + 60)
        catalog.finish(doc_id, chunks=1, pages=None)
    assert [r.doc_id for r in catalog.by_name("plan.txt", "default", "a1")] == ["mine"]
    assert [r.doc_id for r in catalog.by_name("plan.txt", "default", None)] == ["operator"]
    assert catalog.get("theirs").owner == "b2"


def test_the_newest_page_counts_and_name_search_read_only_what_they_return(db: Database) -> None:
    from sqlalchemy import inspect, text

    catalog = Catalog(db, "c1")
    for i, name in enumerate(["alpha.txt", "Beta_1.txt", "beta%2.txt", "gamma.txt"]):
        catalog.begin(_record(f"d{i}", name).model_copy(update={"added_at": 1000.0 + i}), lease_until=0)
        catalog.finish(f"d{i}", chunks=10 * (i + 1), pages=None)
    catalog.begin(_record("d9", "pending.txt"), lease_until=time.time() + 60)  # being written: not counted
    assert [r.doc_id for r in catalog.list(limit=2)] == ["d3", "d2"]
    assert catalog.count() == (4, 100) and catalog.count(workspace="other") == (0, 0)
    assert [r.file_name for r in catalog.find("BETA", "default", 10)] == ["beta%2.txt", "Beta_1.txt"]
    assert [r.file_name for r in catalog.find("_", "default", 10)] == ["Beta_1.txt"]  # no LIKE wildcards
    assert [r.file_name for r in catalog.find("%", "default", 10)] == ["beta%2.txt"]
    assert len(catalog.find(".txt", "default", 3)) == 3 and catalog.find("beta", "other", 10) == []
    with db.read() as conn:
        indexes = {ix["name"]: ix["column_names"] for ix in inspect(conn).get_indexes("documents")}
        assert indexes["ix_documents_by_added"] == ["collection", "status", "workspace", "added_at", "chunks"]
        if conn.dialect.name == "sqlite":  # the newest page is read from that index, nothing is sorted
            plan = " ".join(
                str(tuple(row))
                for row in conn.execute(
                    text(
                        "EXPLAIN QUERY PLAN SELECT * FROM documents WHERE collection='c1' AND status='indexed' "
                        "AND workspace='default' ORDER BY added_at DESC LIMIT 2"
                    )
                )
            )
            assert "ix_documents_by_added" in plan and "TEMP B-TREE" not in plan
            counted = " ".join(
                str(tuple(row))
                for row in conn.execute(
                    text(
                        "EXPLAIN QUERY PLAN SELECT count(*), sum(chunks) FROM documents WHERE collection='c1' "
                        "AND status='indexed' AND workspace='default'"
                    )
                )
            )
            assert "COVERING INDEX ix_documents_by_added" in counted  # counted without reading a row


def test_claims_are_exclusive_expire_and_can_be_taken_from_a_dead_writer(db: Database) -> None:
    one, two = Catalog(db, "c1"), Catalog(db, "c1")
    now = time.time()
    assert one.claim("doc:d1", "a", now + 60, now)
    assert not two.claim("doc:d1", "b", now + 60, now)  # held
    assert Catalog(db, "c2").claim("doc:d1", "b", now + 60, now)  # another collection's claim is another claim
    assert one.renew_claim("doc:d1", "a", now + 120) and not two.renew_claim("doc:d1", "b", now + 120)
    assert not two.claim("doc:d1", "b", now + 60, now + 100)  # renewed: not expired yet
    assert two.claim("doc:d1", "b", now + 60, now, steal_from="a")  # "a" is known dead
    assert not one.renew_claim("doc:d1", "a", now + 120)  # "a" lost it
    one.release_claim("doc:d1", "a")  # not its own any more: nothing happens
    assert two.claims("doc:") == {"doc:d1": ("b", now + 60)}
    assert two.claim("name:w:a_b%.txt", "b", now + 60, now) and set(two.claims("name:w:a_b%")) == {"name:w:a_b%.txt"}
    assert two.claims("name:w:aXb") == {}  # LIKE's wildcards in a prefix are literal
    two.release_claim("doc:d1", "b")
    assert one.claim("doc:d1", "a", now + 60, now)


def test_commit_makes_one_generation_answer_and_retires_replaced_rows_at_once(db: Database) -> None:
    catalog = Catalog(db, "c1")
    for doc_id in ("old", "new"):
        catalog.begin(_record(doc_id), lease_until=time.time() + 60)
    catalog.finish("old", chunks=4, pages=None)
    assert catalog.committed(["old", "new", "gone"]) == {"old": (0, 4)}  # `new` is still being written
    catalog.commit("new", chunks=7, pages=None, generation=0, retire=["old"])
    assert catalog.committed(["old", "new"]) == {"new": (0, 7)}
    assert [(r.doc_id, r.status) for r in catalog.unfinished()] == [("old", "deleting")]
    catalog.remove("old")

    catalog.begin_generation("new", 1, lease_until=time.time() + 60)  # a re-index: the current one still answers
    assert catalog.committed(["new"]) == {"new": (0, 7)} and [r.doc_id for r in catalog.unfinished()] == ["new"]
    catalog.commit("new", chunks=8, pages=None, generation=1, cleanup_owed=True)
    row = catalog.get("new")
    assert row is not None and (row.status, row.generation, row.pending) == ("indexed", 1, 1)
    assert catalog.committed(["new"]) == {"new": (1, 8)} and [r.doc_id for r in catalog.unfinished()] == ["new"]
    catalog.end_generation("new")  # the previous generation's chunks are gone
    assert catalog.unfinished() == []
    catalog.retire("new")
    assert catalog.committed(["new"]) == {} and [r.status for r in catalog.unfinished()] == ["deleting"]
