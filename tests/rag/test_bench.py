"""rag.bench against the real Milvus: every planned row arrives, the rows agree with each other, the
scratch collections are gone afterwards (also after a cancel), and the user's collection is untouched.

No test asserts a wall-clock threshold: the figures belong in BENCHMARKS.md, not in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.bench import (
    MAX_LOOPS,
    BenchConfig,
    BenchReport,
    BenchRow,
    aiter_bench,
    corpus_files,
    embed_modes,
    loops_for,
    plan,
    rotated,
)
from rag.cli import cli
from rag.config import load_settings
from rag.embeddings import Embedder
from rag.errors import IngestError
from rag.service import RagService
from tests.conftest import MODEL_CACHE

SMALL_FILES = ("pdfplumber_README.md", "unstructured_README.md")


def _scratch(service: RagService) -> set[str]:
    return {name for name in service.store.vector_store.client.list_collections() if name.startswith("bench_")}


def _with_document(service: RagService, tmp_path: Path) -> int:
    source = tmp_path / "src" / "giraffes.txt"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("Giraffes eat acacia leaves on the savanna. " * 60, encoding="utf-8")
    service.ingest([source])
    chunks = service.count_chunks()
    assert chunks > 0
    return chunks


def _run(service: RagService, config: BenchConfig) -> tuple[list[BenchRow], BenchReport]:
    items = list(service.bench(config))
    assert isinstance(items[-1], BenchReport)
    rows = items[:-1]
    assert all(isinstance(r, BenchRow) for r in rows)
    assert items[-1].rows == rows
    return rows, items[-1]


def _check_consistent(rows: list[BenchRow], repeats: int) -> None:
    sync = {(r.experiment, r.n): r for r in rows if r.mode == "sync"}
    for row in rows:
        assert row.seconds > 0
        assert row.repeats == repeats and row.seconds_min <= row.seconds <= row.seconds_max
        assert row.ms_per_item == pytest.approx(row.seconds * 1000 / row.n)
        if row.mode == "sync":
            assert row.speedup is None
        else:
            assert row.speedup == pytest.approx(sync[(row.experiment, row.n)].seconds / row.seconds)


# -- configuration --------------------------------------------------------------------------------
def test_config_normalizes_counts_and_experiments() -> None:
    config = BenchConfig(experiments=["search", "add", "search"], counts=[100, 5, 100])
    assert config.counts == [5, 100]
    assert config.experiments == ["add", "search"]
    for bad in ([], [0], [200_000]):
        with pytest.raises(ValueError):
            BenchConfig(counts=bad)


def test_plan_lists_every_measurement_in_order() -> None:
    steps = plan(BenchConfig(experiments=["add", "ingest"], counts=[5, 20]))
    assert steps == [
        ("add", "sync", 5),
        ("add", "seed-async", 5),
        ("add", "project-async", 5),
        ("add", "sync", 20),
        ("add", "seed-async", 20),
        ("add", "project-async", 20),
        ("ingest", "sync", None),
        ("ingest", "sync-same-embedding", None),
        ("ingest", "project-async", None),
        ("ingest", "raw-embedding", None),
    ]


def test_modes_narrow_the_plan_and_unknown_ones_are_refused() -> None:
    config = BenchConfig(experiments=["search", "ingest"], counts=[3], modes=["project-async", "seed-async"])
    assert config.modes == ["seed-async", "project-async"]  # the page's order
    assert plan(config) == [
        ("search", "seed-async", 3),
        ("search", "project-async", 3),
        ("ingest", "project-async", None),
    ]
    for bad in ([], ["turbo"]):
        with pytest.raises(ValueError):
            BenchConfig(modes=bad)


def test_quick_runs_are_repeated_until_a_round_lasts_min_round() -> None:
    assert loops_for(0.004, 0.2) == 50
    assert loops_for(0.07, 0.2) == 3
    assert loops_for(0.2, 0.2) == loops_for(3.0, 0.2) == 1
    assert loops_for(0.004, 0) == 1  # autorange off: one run per round
    assert loops_for(0.0, 0.2) == MAX_LOOPS  # a run too quick to time is capped, not divided by zero


def test_every_round_starts_with_another_mode() -> None:
    modes = ["sync", "seed-async", "project-async"]
    orders = [rotated(modes, r) for r in range(4)]
    assert orders[0] == modes and orders[3] == modes
    assert [order[0] for order in orders[:3]] == ["sync", "seed-async", "project-async"]
    assert all(sorted(order) == sorted(modes) for order in orders)


def test_corpus_files_skip_the_provenance_table_and_obey_max_files(corpus: Path) -> None:
    every = corpus_files(BenchConfig(corpus_dir=str(corpus)))
    assert "SOURCES.md" not in {p.name for p in every}
    assert len(every) == 14 and every == sorted(every)
    assert corpus_files(BenchConfig(corpus_dir=str(corpus), max_files=2)) == every[:2]


def test_embed_plan_starts_with_the_torch_baseline() -> None:
    modes = embed_modes()
    assert modes[0] == "torch-fp32" and {"onnx", "onnx-int8"} <= set(modes)
    assert plan(BenchConfig(experiments=["embed"])) == [("embed", mode, None) for mode in modes]
    assert BenchConfig().repeat == 3
    with pytest.raises(ValueError):
        BenchConfig(repeat=0)


# -- embedding backends (no Milvus) ---------------------------------------------------------------
def _small_corpus(corpus: Path, folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(corpus / SMALL_FILES[0], folder / SMALL_FILES[0])
    return folder


def test_embed_measures_every_backend_against_torch_fp32(embedder: Embedder, corpus: Path, tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", embed_cache_dir=MODEL_CACHE)
    folder = _small_corpus(corpus, tmp_path / "docs")
    config = BenchConfig(experiments=["embed"], corpus_dir=str(folder), embed_chunks=8, repeat=2)

    async def _collect() -> list[BenchRow | BenchReport]:
        return [item async for item in aiter_bench(settings, None, embedder, config)]

    items = asyncio.run(_collect())
    rows, report = items[:-1], items[-1]
    assert isinstance(report, BenchReport) and report.rows == rows and report.milvus_version == ""
    assert [(r.experiment, r.mode, None) for r in rows] == plan(config)
    base = rows[0]
    assert base.mode == "torch-fp32" and base.speedup is None
    assert base.cosine_mean == pytest.approx(1.0) and base.cosine_min == pytest.approx(1.0)
    for row in rows:
        assert row.chunks == row.n == 8 and row.repeats == 2
        assert row.seconds_min <= row.seconds <= row.seconds_max
        assert row.chunks_per_s == pytest.approx(8 / row.seconds)
        assert row.ms_per_item == pytest.approx(row.seconds * 1000 / 8)
        assert 0.97 <= row.cosine_min <= row.cosine_mean <= 1.0 + 1e-6
        if row is not base:
            assert row.speedup == pytest.approx(base.seconds / row.seconds)
        assert row.note.startswith("8 of ") and "1 files" in row.note
    assert [r.mode for r in rows if r.chosen] == [embedder.backend]
    assert report.machine["cpu"] and report.versions["onnxruntime"]


def test_bench_embed_on_the_command_line_needs_no_milvus(corpus: Path, tmp_path: Path) -> None:
    folder = _small_corpus(corpus, tmp_path / "docs")
    args = ["--data-dir", str(tmp_path / "data"), "bench", "--experiments", "embed", "--corpus", str(folder)]
    args += ["--chunks", "4", "--repeat", "1"]
    table = CliRunner().invoke(cli, args, obj={})
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["experiment", "mode", "chunks"]
    assert [line.split()[1] for line in lines[1:]] == embed_modes()
    assert sum(line.rstrip().endswith("*") for line in lines[1:]) == 1  # the engine's backend, marked

    report = json.loads(CliRunner().invoke(cli, [*args, "--json"], obj={}).stdout)
    row = report["rows"][-1]
    assert {"experiment", "mode", "chunks", "seconds", "chunks_per_s", "speedup", "cosine_mean", "cosine_min"} <= set(
        row
    )
    assert report["config"]["repeat"] == 1 and report["milvus_version"] == ""


# -- against Milvus -------------------------------------------------------------------------------
@pytest.mark.milvus
def test_add_and_search_yield_every_row_and_clean_up(service: RagService, tmp_path: Path) -> None:
    chunks = _with_document(service, tmp_path)
    docs = service.documents()
    before = _scratch(service)
    config = BenchConfig(experiments=["add", "search"], counts=[5, 20], dim=16, consistency_level="Strong", repeat=2)

    rows, report = _run(service, config)

    assert [(r.experiment, r.mode, r.n) for r in rows] == plan(config)
    _check_consistent(rows, 2)
    assert all(r.note for r in rows)
    # Strong searches start 4 runs per round at spread phases of the tick (a sync loop of more than 10 searches
    # meets many phases by itself: one run); adds of 5 rows take milliseconds, so are repeated for 0.2 s a round
    searches = {(r.mode, r.n): r for r in rows if r.experiment == "search"}
    assert searches[("sync", 20)].loops == 1
    assert all(r.loops == 4 and "phases of the time tick" in r.note for k, r in searches.items() if k != ("sync", 20))
    quick = [r for r in rows if r.experiment == "add" and r.n == 5]
    assert all(r.loops > 1 and f"{r.loops} runs per round" in r.note for r in quick), quick
    assert report.milvus_version.startswith("v2")
    assert report.machine["cpus"] and report.versions["pymilvus"]
    assert report.config == config and report.seconds >= sum(r.seconds for r in rows)
    assert not _scratch(service) - before  # none of this run's scratch collections is left (others may run)
    assert service.count_chunks() == chunks
    assert service.documents() == docs


@pytest.mark.milvus
def test_ingest_compares_sync_engine_and_raw_embedding(
    service: RagService, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = _with_document(service, tmp_path)
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in SMALL_FILES:
        shutil.copy(corpus / name, folder / name)
    scratch_tmp = tmp_path / "scratch-tmp"
    scratch_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_tmp))
    before = _scratch(service)
    config = BenchConfig(experiments=["ingest"], corpus_dir=str(folder), consistency_level="Session", repeat=1)

    rows, _ = _run(service, config)

    assert [(r.experiment, r.mode) for r in rows] == [
        ("ingest", "sync"),
        ("ingest", "sync-same-embedding"),
        ("ingest", "project-async"),
        ("ingest", "raw-embedding"),
    ]
    assert len({r.n for r in rows}) == 1 and rows[0].n > 0  # the same chunks in every mode
    _check_consistent(rows, 1)
    same, project = rows[1], rows[2]
    assert service.embedder.backend in same.note  # the sync pipeline ran with the engine's own embedding
    assert f"{same.seconds / project.seconds:.2f}× the sync pipeline with the same embedding" in project.note
    assert rows[0].note.startswith("2 files")
    assert not _scratch(service) - before  # none of this run's scratch collections is left (others may run)
    # The engine's scratch data dir is gone too; torch's own compile cache (made in the temp dir the first time
    # torch._inductor is imported in this process) is not the engine's to remove.
    assert [p for p in scratch_tmp.iterdir() if not p.name.startswith("torchinductor_")] == []
    assert service.count_chunks() == chunks
    assert len(service.documents()) == 1


@pytest.mark.milvus
def test_ingest_of_a_missing_folder_fails_before_creating_anything(service: RagService, tmp_path: Path) -> None:
    before = _scratch(service)
    with pytest.raises(IngestError):
        list(service.bench(BenchConfig(experiments=["ingest"], corpus_dir=str(tmp_path / "missing"))))
    assert not _scratch(service) - before  # none of this run's scratch collections is left (others may run)


@pytest.mark.milvus
def test_stopping_early_drops_the_scratch_collection(service: RagService) -> None:
    before = _scratch(service)
    config = BenchConfig(experiments=["add"], counts=[5, 20], dim=16, consistency_level="Session")
    with contextlib.closing(service.bench(config)) as items:
        first = next(items)
        assert isinstance(first, BenchRow) and first.mode == "sync"
        assert len(_scratch(service) - before) == 3  # one scratch collection per mode, the modes taking turns
    assert not _scratch(service) - before  # none of this run's scratch collections is left (others may run)


@pytest.mark.milvus
def test_cancelling_a_running_sync_loop_drops_the_scratch_collection(service: RagService) -> None:
    before = _scratch(service)
    config = BenchConfig(experiments=["add"], counts=[20_000], dim=16, consistency_level="Session")
    agen = aiter_bench(service.settings, service.connection, service.embedder, config)

    async def first_row() -> object:
        return await agen.__anext__()

    future = service.runtime.submit(first_row())
    deadline = time.monotonic() + 60
    while not (_scratch(service) - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _scratch(service) - before, "the sync loop never started"
    time.sleep(0.5)  # well inside the loop of 20,000 one-node inserts
    future.cancel()
    while _scratch(service) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _scratch(service) - before  # none of this run's scratch collections is left (others may run)
    assert future.cancelled()


# -- timing (pytest -m benchmark) ------------------------------------------------------------------
@pytest.mark.benchmark
@pytest.mark.milvus
@pytest.mark.parametrize("consistency", ["Strong", "Session"])
def test_the_engines_search_is_never_slower_than_the_seeds(service: RagService, consistency: str) -> None:
    """Issue 21: at every N the engine's dispatch (coalesced or not) takes at most the seed's gathered `aquery`
    time, within 10% (medians of 5 interleaved rounds; under Strong every round starts both at one tick phase)."""
    counts = [1, 10, 100, 1000]
    config = BenchConfig(
        experiments=["search"],
        counts=counts,
        dim=768,
        consistency_level=consistency,
        repeat=5,
        modes=["seed-async", "project-async"],
    )
    rows, _ = _run(service, config)
    seconds = {(r.mode, r.n): r.seconds for r in rows}
    ratios = {n: seconds[("seed-async", n)] / seconds[("project-async", n)] for n in counts}
    assert all(ratio >= 0.9 for ratio in ratios.values()), ratios
