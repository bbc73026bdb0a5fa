"""What a run's rows say: headlines, chart and table rows, the download's records and the progress text.

Rows are built the way `rag.bench` emits them (`_row` for add, search and ingest; the embed experiment's fields
by hand, as its loop fills them), so these need no Milvus and no model.
"""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from rag.bench import BenchConfig, BenchRow, _row, plan
from rag.bench_summary import (
    bench_chart_records,
    bench_experiments_shown,
    bench_export_records,
    bench_headlines,
    bench_progress,
    bench_records,
    bench_tables,
)


def _embed(mode: str, times: list[float], base: float | None, chosen: bool, cosine: float) -> BenchRow:
    """An embed row of 64 chunks as `rag.bench`'s embed loop yields it."""
    median = sorted(times)[len(times) // 2]
    return BenchRow(
        experiment="embed",
        mode=mode,  # type: ignore[arg-type]
        n=64,
        seconds=median,
        ms_per_item=median * 1000 / 64,
        speedup=base / median if base is not None else None,
        chunks=64,
        chunks_per_s=64 / median,
        cosine_mean=cosine,
        cosine_min=cosine - 0.001,
        seconds_min=min(times),
        seconds_max=max(times),
        repeats=len(times),
        chosen=chosen,
    )


@pytest.fixture
def rows() -> list[BenchRow]:
    """A run of search at two N, ingest and embed, in the order a run yields them."""
    out = []
    for n, sync in ((10, 2.0), (100, 20.0)):
        out += [
            _row("search", "sync", n, [sync, sync * 1.1, sync * 0.9], None),
            _row("search", "seed-async", n, [sync / 4, sync / 5, sync / 3], sync),
            _row("search", "project-async", n, [sync / 40, sync / 50, sync / 30], sync),
        ]
    out += [
        _row("ingest", "sync", 500, [50.0], None, "4 files"),
        _row("ingest", "sync-same-embedding", 500, [40.0], 50.0, "4 files"),
        _row("ingest", "project-async", 500, [20.0], 50.0, "4 files"),
        _row("ingest", "raw-embedding", 500, [16.0], 50.0, "4 files"),
        _embed("torch-fp32", [2.0, 1.6, 2.4], None, False, 1.0),
        _embed("onnx", [1.0, 0.8, 1.6], 2.0, True, 0.9995),
    ]
    return out


def test_headlines_compare_the_largest_n_and_the_engines_choices(rows: list[BenchRow]) -> None:
    cards = {card.label: card for card in bench_headlines(rows)}
    assert cards["Search, N=100: seed-async"].value == "4.0× sync"  # the median round: sync / 4
    project = cards["Search, N=100: project-async"]
    assert (project.value, project.delta) == ("40.0× sync", "10.0× seed-async")
    assert "median of 3 rounds" in project.help
    assert not any("N=10:" in label for label in cards)  # only the largest N measured
    embed = cards["Embedding: onnx (the engine's)"]
    assert embed.value == "2.00× torch fp32" and embed.delta == "cosine 0.9995 mean, 0.9985 min"
    assert cards["Ingest: project-async"].value == "2.50× sync"
    assert cards["Ingest: project-async"].delta == "80% of raw embedding"
    assert cards["Ingest: the async gain alone"].value == "2.00× sync"


def test_records_add_the_rate_and_the_spread(rows: list[BenchRow]) -> None:
    records = bench_records(rows)
    search = records[0]
    assert search["items_per_second"] == pytest.approx(10 / 2.0)
    assert search["spread"] == "1.800–2.200"  # seconds, fastest to slowest round
    onnx = records[-1]
    assert onnx["spread"] == "40.0–80.0"  # embedding: chunks per second, slowest to fastest round


def test_charts_show_the_measured_experiments_in_a_fixed_order(rows: list[BenchRow]) -> None:
    assert bench_experiments_shown(rows) == ["search", "ingest", "embed"]
    assert bench_experiments_shown(list(reversed(rows))) == ["search", "ingest", "embed"]
    assert bench_experiments_shown([]) == []

    search = bench_chart_records(rows, "search")
    assert len(search) == 6 and {r["experiment"] for r in search} == {"search"}
    assert "role" not in search[0]
    embed = bench_chart_records(rows, "embed")
    assert [r["mode"] for r in embed] == ["torch-fp32", "onnx"]
    onnx = embed[1]
    assert (onnx["slowest"], onnx["fastest"]) == (pytest.approx(40.0), pytest.approx(80.0))  # the whisker
    assert onnx["slowest"] <= onnx["chunks_per_s"] <= onnx["fastest"]
    assert [r["role"] for r in embed] == ["measured", "the engine's backend"]


def test_tables_split_embedding_from_timings_with_the_speedup_as_text(rows: list[BenchRow]) -> None:
    embed, timings = bench_tables(rows)
    assert [r["mode"] for r in embed] == ["torch-fp32", "onnx"]
    assert list(embed[0]) == [
        "mode",
        "n",
        "seconds",
        "chunks_per_s",
        "spread",
        "speedup",
        "cosine_mean",
        "cosine_min",
        "chosen",
    ]
    assert [r["speedup"] for r in embed] == ["—", "2.00×"]  # the baseline has a dash, never "None"
    assert len(timings) == 10 and not any(r["experiment"] == "embed" for r in timings)
    assert list(timings[0]) == [
        "experiment",
        "mode",
        "n",
        "seconds",
        "spread",
        "repeats",
        "ms_per_item",
        "speedup",
        "note",
    ]
    speedups = {(r["experiment"], r["mode"], r["n"]): r["speedup"] for r in timings}
    assert speedups[("search", "sync", 100)] == "—"
    assert speedups[("search", "project-async", 100)] == "40.00×"
    assert speedups[("ingest", "raw-embedding", 500)] == "3.12×"
    assert bench_tables([]) == ([], [])


def test_the_download_holds_every_measured_field_and_no_display_one(rows: list[BenchRow]) -> None:
    text = pd.DataFrame(bench_export_records(rows)).to_csv(index=False)
    read = list(csv.DictReader(io.StringIO(text)))
    assert len(read) == len(rows)
    assert list(read[0]) == list(BenchRow.model_fields)
    assert "spread" not in read[0] and "items_per_second" not in read[0]
    assert float(read[1]["speedup"]) == pytest.approx(4.0) and read[0]["speedup"] == ""


def test_progress_names_the_next_step_then_the_clean_up() -> None:
    steps = plan(BenchConfig(experiments=["add", "ingest"], counts=[1000]))
    assert len(steps) == 7
    assert bench_progress(0, steps) == (0.0, "Measuring add nodes · sync · N=1,000…")
    fraction, text = bench_progress(3, steps)
    assert fraction == pytest.approx(3 / 7)
    assert text == "3 of 7 measured. Measuring ingest documents · sync…"
    assert bench_progress(7, steps) == (1.0, "7 of 7 measured. Cleaning up…")
    assert bench_progress(9, steps) == (1.0, "7 of 7 measured. Cleaning up…")  # rows beyond the plan (scale)
