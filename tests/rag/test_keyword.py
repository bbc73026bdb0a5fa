"""The local BM25 index: in step with Milvus through every change to a document, and fused with dense hits."""

from __future__ import annotations

import concurrent.futures
import sqlite3
from pathlib import Path

import pytest
from llama_index.core.schema import NodeWithScore, TextNode

from rag.config import Settings
from rag.keyword import KeywordIndex, KeywordRow, PgKeywordIndex, match_query, open_keyword_index
from rag.options import AskOptions
from rag.service import RagService
from rag.store import RRF_K, fuse_rrf
from tests.conftest import CORPUS, write_part_number_docs

pytestmark = pytest.mark.milvus
CORPUS_TEXT = CORPUS / "paul_graham_essay.txt"


def _in_step(svc: RagService) -> set[str]:
    """Both indexes hold exactly the same chunk ids; returns them."""
    milvus = svc.runtime.run(svc.store.achunk_ids())
    keyword = svc.store.keyword.chunk_ids()
    assert milvus == keyword
    return milvus


def test_keyword_index_follows_ingest_replace_delete_and_reindex(service, corpus: Path, tmp_path: Path) -> None:  # noqa: ANN001
    essay = service.ingest([corpus / "paul_graham_essay.txt"]).files[0]
    ids = _in_step(service)
    assert len(ids) == essay.chunks > 0
    doc = tmp_path / "notes.txt"
    doc.write_text("The warehouse stocks part QX7719ZK. " * 40)
    first = service.ingest([doc]).files[0]
    _in_step(service)
    doc.write_text("The warehouse now stocks part ZB4410QA instead. " * 40)
    second = service.ingest([doc]).files[0]
    assert second.status == "replaced"
    ids = _in_step(service)
    assert not any(i.startswith(first.doc_id[:40]) for i in ids)
    assert service.retrieve("ZB4410QA", options=AskOptions(retrieval="keyword"))[0].file_name == "notes.txt"
    assert not any("QX7719ZK" in s.text for s in service.retrieve("QX7719ZK", options=AskOptions(retrieval="keyword")))
    snapshot = service.reindex_document(essay.doc_id)
    service.wait_job(snapshot.id, timeout=300)
    assert len(_in_step(service)) == essay.chunks + second.chunks
    service.delete_document(essay.doc_id)
    ids = _in_step(service)
    assert len(ids) == second.chunks


def test_recovery_brings_the_keyword_index_in_step(make_settings, embedder, corpus: Path) -> None:  # noqa: ANN001
    """A crash between the two writes, and a collection indexed before the keyword index existed, both heal
    at the next start."""
    settings = make_settings()
    svc = RagService(settings, embedder=embedder)
    try:
        result = svc.ingest([corpus / "pdfplumber_README.md"]).files[0]
        index = svc.store.keyword
        index.delete_doc(result.doc_id)  # as if the index was created after the document
        index.add([KeywordRow(chunk_id="stray-1", doc_id="gone", file_name="gone.txt", text="left by a crash")])
    finally:
        svc.close()
    svc = RagService(settings, embedder=embedder)
    try:
        assert len(_in_step(svc)) == result.chunks
        assert (
            svc.retrieve("extract tables from PDF pages", options=AskOptions(retrieval="keyword"))[0].file_name
            == "pdfplumber_README.md"
        )
    finally:
        svc.runtime.run(svc.store.adrop())
        svc.close()


def test_hybrid_finds_keyword_only_matches_on_the_embedded_server(service, tmp_path: Path) -> None:  # noqa: ANN001
    folder = write_part_number_docs(tmp_path / "docs")
    service.ingest(sorted(folder.iterdir()))
    question = "How often should QX7719ZK be lubricated, calibrated and inspected?"
    assert service.retrieve(question, options=AskOptions(top_k=1, retrieval="keyword"))[0].file_name == "parts.txt"
    assert "parts.txt" in {
        s.file_name for s in service.retrieve(question, options=AskOptions(top_k=3, retrieval="hybrid"))
    }
    assert "parts.txt" not in {
        s.file_name for s in service.retrieve(question, options=AskOptions(top_k=3, retrieval="dense"))
    }
    only = service.documents()[-1].doc_id
    hits = service.retrieve(question, options=AskOptions(top_k=5, doc_ids=(only,), retrieval="hybrid"))
    assert hits and {s.doc_id for s in hits} == {only}


def test_index_is_per_collection_and_upserts(db_settings: Settings) -> None:
    """On each engine: FTS5 in the data dir with SQLite, the keyword_chunks table with PostgreSQL."""
    a, b = open_keyword_index(db_settings, "a"), open_keyword_index(db_settings, "b")
    assert isinstance(a, KeywordIndex if not db_settings.database_url else PgKeywordIndex)
    row = KeywordRow(chunk_id="c1", doc_id="d1", file_name="f.txt", page=2, chunk=0, text="zebra crossing rules")
    a.add([row])
    a.add([row.model_copy(update={"text": "giraffe crossing rules"})])
    assert [h.text for h in a.search("giraffe", 5)] == ["giraffe crossing rules"]
    assert a.search("zebra", 5) == [] and b.search("giraffe", 5) == []
    hit = a.search("What are the giraffe rules?", 5)[0]
    assert (hit.page, hit.doc_id, hit.file_name) == (2, "d1", "f.txt") and hit.score > 0
    assert a.search("giraffe", 5, doc_ids=["other"]) == []
    assert a.search("giraffe", 5, workspace="default") and not a.search("giraffe", 5, workspace="hr")
    assert a.delete_doc("d1") == 1 and a.chunk_ids() == set()
    a.close()
    b.close()


def test_postgresql_ranks_as_fts5_does(tmp_path: Path, postgres) -> None:  # noqa: ANN001
    """The same chunks in both indexes: PostgreSQL's BM25 (computed in SQL from tsvectors) orders the hits of
    distinctive questions as FTS5's bm25() does."""
    from rag.config import load_settings

    rows = []
    for i, paragraph in enumerate(p for p in (CORPUS_TEXT.read_text().split("\n\n")) if len(p) > 200):
        rows.append(KeywordRow(chunk_id=f"c{i}", doc_id=f"d{i % 7}", file_name="essay.txt", chunk=i, text=paragraph))
    fts = KeywordIndex(tmp_path / "k.sqlite3", "c")
    with postgres.database() as url:
        pg = open_keyword_index(load_settings(data_dir=tmp_path / "pg", database_url=url), "c")
        try:
            fts.add(rows)
            pg.add(rows)
            assert pg.counts() == fts.counts() and len(rows) > 50
            for question in ("Viaweb Yahoo acquisition", "painting classes at RISD", "Lisp interpreter Arc",
                             "IBM 1401 punch cards", "Y Combinator summer founders program"):  # fmt: skip
                mine, theirs = pg.search(question, 5), fts.search(question, 5)
                assert mine[0].chunk_id == theirs[0].chunk_id, question
                assert len({h.chunk_id for h in mine} & {h.chunk_id for h in theirs}) >= 3, question
        finally:
            pg.clear()
            pg.close()
            fts.close()


def test_a_large_index_scores_only_the_rarest_words_within_the_budget(tmp_path: Path) -> None:
    """Issue 21: a keyword search's cost stops growing with the index: words held by more chunks than the
    budget no longer bring in candidates; the rarest words still do, and a small index loses nothing."""

    def rows(words: str, count: int, start: int) -> list[KeywordRow]:
        return [
            KeywordRow(chunk_id=f"c{i}", doc_id=f"d{i}", file_name="f.txt", text=f"{words} filler text {i}")
            for i in range(start, start + count)
        ]

    index = KeywordIndex(tmp_path / "k.sqlite3", "a", candidate_budget=30)
    index.add(rows("pump valve", 2, 0) + rows("pump", 40, 2) + rows("valve", 5, 42))
    both = index.search("pump valve", 50)
    assert {h.chunk_id for h in both} == {"c0", "c1", "c42", "c43", "c44", "c45", "c46"}  # valve's chunks only
    assert len(index.search("pump", 50)) == 42  # a single word is always searched, however common
    roomy = KeywordIndex(tmp_path / "k.sqlite3", "a", candidate_budget=1_000)
    assert len(roomy.search("pump valve", 50)) == 47  # under the budget every chunk with either word is scored
    roomy.close()
    index.close()


def test_searches_from_many_threads_read_beside_a_writer(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "k.sqlite3", "a")
    index.add([KeywordRow(chunk_id=f"c{i}", doc_id="d", file_name="f.txt", text=f"giraffe {i}") for i in range(50)])

    def search(_: int) -> int:
        return len(index.search("giraffe", 100))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        writes = pool.submit(
            index.add, [KeywordRow(chunk_id=f"n{i}", doc_id="e", file_name="g.txt", text="zebra") for i in range(50)]
        )
        found = list(pool.map(search, range(32)))
        writes.result()
    assert set(found) == {50} and len(index.search("zebra", 100)) == 50
    index.close()
    with pytest.raises(sqlite3.ProgrammingError):
        index.search("giraffe", 5)


def test_queries_keep_distinctive_words_and_quote_them() -> None:
    assert match_query('What is "QX7719ZK" in the manual?') == '"qx7719zk" OR "manual"'
    assert match_query("what is it") == '"what" OR "is" OR "it"'  # only common words: keep them
    assert match_query("?!") is None


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    def hits(*ids: str) -> list[NodeWithScore]:
        return [NodeWithScore(node=TextNode(id_=i, text=i), score=1.0) for i in ids]

    fused = fuse_rrf([hits("a", "b", "c"), hits("d", "c", "a")], top_k=3)
    assert [n.node.node_id for n in fused] == ["a", "c", "d"]  # found by both lists beats found by one
    assert fused[0].score == pytest.approx(1 / (RRF_K + 1) + 1 / (RRF_K + 3))
    assert fused[1].score == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 2))
