"""The scale experiment: synthetic chunks that are a pure function of their place, a quick curve on the real
Milvus through the command line (every measurement present, the collection gone afterwards, the results file
resumed), a stopped build resumed, and the report script's tables and plot.

No figure is asserted: the figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rag.bench import BenchConfig, BenchRow
from rag.cli import cli
from rag.scale import IndexSpec, ScaleRun, SyntheticCorpus, collection_name, percentile
from rag.service import RagService
from rag.store import chunk_id

REPO = Path(__file__).resolve().parents[2]
EVERY_MEASURE = {
    "insert",
    "index",
    "load",
    "open",
    "dense",
    "keyword",
    "hybrid",
    "neighbours",
    "recall",
    "docs-list",
    "home",
    "chat",
    "question",
    "memory",
    "disk",
}


# -- the synthetic corpus -------------------------------------------------------------------------
def test_chunks_are_a_pure_function_of_their_place() -> None:
    corpus, again = SyntheticCorpus(32), SyntheticCorpus(32)
    small, large = corpus.layout(1_000), corpus.layout(5_000)
    assert sum(small) == 1_000 and sum(large) == 5_000 and min(large) >= 1
    assert large[: len(small) - 1] == small[:-1]  # a bigger collection starts with the smaller one's documents
    assert np.array_equal(corpus.vectors(3, 7), again.vectors(3, 7))
    assert corpus.texts(3, 7) == again.texts(3, 7) and corpus.texts(3, 7) != corpus.texts(4, 7)
    vectors = corpus.vectors(5, 40)
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    neighbours = np.sum(vectors[:-1] * vectors[1:], axis=1)
    assert neighbours.mean() > np.mean(vectors[:20] @ vectors[20:].T)  # adjacent chunks are alike
    words = [len(t.split()) for d, n in enumerate(small[:20]) for t in corpus.texts(d, n)]
    assert 120 <= sum(words) / len(words) <= 160  # like the corpus's 256-token chunks


def test_exact_neighbours_are_the_brute_force_ones() -> None:
    corpus = SyntheticCorpus(16)
    layout = corpus.layout(2_500)
    queries, texts = corpus.queries(4, layout)
    vectors = np.concatenate([corpus.vectors(d, n) for d, n in enumerate(layout)])
    ids = [chunk_id(corpus.doc_id(d), p) for d, n in enumerate(layout) for p in range(n)]
    best = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert corpus.exact_top(queries, layout) == [{ids[i] for i in row} for row in best]
    assert all(text.endswith("?") and len(text.split()) == 8 for text in texts)


def test_index_specs_split_build_and_search_parameters() -> None:
    spec = IndexSpec.parse("hnsw:M=16, efConstruction=200, ef=64")
    assert (spec.index_type, spec.build, spec.search) == ("HNSW", {"M": 16, "efConstruction": 200}, {"ef": 64})
    assert str(spec) == "HNSW:M=16,efConstruction=200,ef=64" and str(IndexSpec.parse("FLAT")) == "FLAT"
    for bad in ("HNSW:M=sixteen", ":ef=3"):
        with pytest.raises(ValueError):
            IndexSpec.parse(bad)
    with pytest.raises(ValueError):
        BenchConfig(experiments=["scale"], sizes=[50])
    assert percentile([5, 1, 4, 2, 3], 0.5) == 3 and percentile([5, 1, 4, 2, 3], 0.95) == 5


# -- against Milvus -------------------------------------------------------------------------------
@pytest.fixture
def scale_env(make_settings, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201
    settings = make_settings()
    monkeypatch.setenv("MILVUS_URI", settings.milvus_uri)
    monkeypatch.setenv("MILVUS_TOKEN", settings.milvus_token.get_secret_value())
    monkeypatch.setenv("RAG_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("RAG_COLLECTION", settings.collection)
    yield settings
    svc = RagService(settings)
    svc.runtime.run(svc.store.adrop())
    svc.close()


def _collections(settings) -> set[str]:  # noqa: ANN001
    from pymilvus import MilvusClient

    client = MilvusClient(uri=settings.milvus_uri, token=settings.milvus_token.get_secret_value())
    try:
        return set(client.list_collections())
    finally:
        client.close()


@pytest.mark.milvus
def test_the_quick_curve_measures_everything_and_leaves_nothing(scale_env, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "scale.json"
    args = ["bench", "--experiments", "scale", "--quick", "--out", str(out), "--json"]
    result = CliRunner().invoke(cli, args, obj={})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = [BenchRow(**r) for r in report["rows"]]
    assert {r.mode for r in rows} == EVERY_MEASURE and {r.n for r in rows} == {10_000}
    by = {(r.mode, r.clients): r for r in rows}
    assert by[("insert", None)].chunks == 10_000 and by[("insert", None)].chunks_per_s > 0
    assert by[("recall", None)].recall >= 0.9
    for mode in ("dense", "keyword", "hybrid"):
        for clients in (1, 16):
            row = by[(mode, clients)]
            assert row.repeats == 48 and 0 < row.p50_ms <= row.p95_ms and row.per_s > 0
    assert by[("memory", None)].rss_app_mb > 0 and by[("disk", None)].disk_mb > 0
    assert all(r.details["dim"] == 384 for r in rows)
    name = collection_name(10_000, 384, Path(scale_env.data_dir))
    assert name not in _collections(scale_env)  # measured, then dropped
    assert not (Path(scale_env.data_dir) / "bench-scale" / name).exists()
    assert [r["mode"] for r in json.loads(out.read_text())["rows"]] == [r.mode for r in rows]

    again = CliRunner().invoke(cli, args, obj={})  # the results file holds this size: nothing is measured again
    assert again.exit_code == 0 and json.loads(again.stdout)["rows"] == report["rows"]
    assert name not in _collections(scale_env)

    png = tmp_path / "scale.png"
    printed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "scale_report.py"), str(out), "--png", str(png)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "| 10,000 |" in printed and "p50 / p95" in printed
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.milvus
def test_a_stopped_build_is_resumed_not_redone(service: RagService, tmp_path: Path) -> None:
    config = BenchConfig(
        experiments=["scale"], sizes=[1_500], dim=384, queries=16, recall_queries=4, page_loads=1, clients=[1],
        results_file=str(tmp_path / "scale.json"),
    )  # fmt: skip
    run = ScaleRun(service.settings, service.connection, service.embedder, config)

    async def _stop(*_: object) -> None:
        raise RuntimeError("the machine went down")

    async def _rows(run: ScaleRun) -> list[BenchRow]:
        return [row async for row in run.arun()]

    run._aindex = _stop  # type: ignore[method-assign] - stops right after the build
    with pytest.raises(RuntimeError):
        service.runtime.run(_rows(run), timeout=600)
    name = collection_name(1_500, 384, Path(service.settings.data_dir))
    assert name in _collections(service.settings)  # kept for the next run

    rows = service.runtime.run(_rows(ScaleRun(service.settings, service.connection, service.embedder, config)), 600)
    insert = rows[0]
    assert insert.mode == "insert" and insert.chunks == 0 and "resumed" in insert.note  # every document was there
    assert next(r for r in rows if r.mode == "recall").recall is not None
    assert name not in _collections(service.settings)
    assert not (Path(service.settings.data_dir) / "bench-scale" / name).exists()
