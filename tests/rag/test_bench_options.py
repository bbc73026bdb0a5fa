"""A benchmark run's choices: what a page offers, when Run can start, and the config a choice makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.bench import BenchConfig, plan
from rag.bench_options import (
    BENCH_COUNTS,
    BENCH_PAGE_EXPERIMENTS,
    CONSISTENCY_LEVELS,
    bench_can_run,
    bench_page_config,
    bench_slow_note,
    bench_uses_documents,
    corpus_is_missing,
)


def test_the_page_offers_what_a_config_accepts() -> None:
    assert "scale" not in BENCH_PAGE_EXPERIMENTS and {"add", "search", "ingest", "embed"} == set(BENCH_PAGE_EXPERIMENTS)
    assert CONSISTENCY_LEVELS == ("Strong", "Session", "Bounded", "Eventually")
    for level in CONSISTENCY_LEVELS:
        assert BenchConfig(consistency_level=level).consistency_level == level  # type: ignore[arg-type]
    assert BenchConfig(counts=list(BENCH_COUNTS)).counts == list(BENCH_COUNTS)


def test_run_needs_an_experiment_n_where_measured_at_n_and_documents() -> None:
    assert not bench_can_run([], [10])
    assert not bench_can_run(["add"], [])
    assert not bench_can_run(["search", "embed"], [])
    assert bench_can_run(["add"], [10])
    assert bench_can_run(["embed"], [])  # embedding and ingest have no N
    assert bench_can_run(["ingest", "embed"], [])
    assert not bench_can_run(["ingest"], [], documents_missing=True)
    assert bench_uses_documents(["add", "embed"]) and not bench_uses_documents(["add", "search"])


def test_a_missing_or_empty_corpus_is_missing(tmp_path: Path, corpus: Path) -> None:
    assert corpus_is_missing(tmp_path / "absent")
    assert corpus_is_missing(tmp_path)
    assert not corpus_is_missing(corpus)


def test_the_slow_note_only_for_strong_search_at_large_n() -> None:
    note = bench_slow_note(["add", "search"], [10, 1000], "Strong", 3)
    assert note == (
        "Under Strong consistency the sync search loop waits for a time tick on every query: N=1000 "
        "alone takes minutes per round (3 rounds)."
    )
    assert bench_slow_note(["search"], [10, 500], "Strong", 3) == ""
    assert bench_slow_note(["search"], [5000], "Session", 3) == ""
    assert bench_slow_note(["add"], [5000], "Strong", 3) == ""
    assert bench_slow_note(["search"], [], "Strong", 3) == ""


def test_a_page_choice_becomes_the_run_it_says(tmp_path: Path) -> None:
    config = bench_page_config(["search", "add"], [100, 10], dim=16, consistency="Eventually", concurrency=4, repeat=2)
    assert config.experiments == ["add", "search"] and config.counts == [10, 100]
    assert (config.dim, config.consistency_level, config.concurrency, config.repeat) == (16, "Eventually", 4, 2)
    assert config.max_files is None and config.embed_chunks is None and config.files is None
    assert len(plan(config)) == 12

    only_embed = bench_page_config(
        ["embed"],
        [],
        dim=768,
        consistency="Strong",
        concurrency=8,
        repeat=1,
        corpus_dir=tmp_path,
        max_files=2,
        embed_chunks=4,
    )
    assert only_embed.counts == [10]  # a placeholder: embed has no N and plans none
    assert all(n is None for _, _, n in plan(only_embed))
    assert (only_embed.corpus_dir, only_embed.max_files, only_embed.embed_chunks) == (str(tmp_path), 2, 4)

    uploads = bench_page_config(
        ["ingest"], [], dim=768, consistency="Strong", concurrency=8, repeat=1, files=["/a.pdf", "/b.txt"]
    )
    assert uploads.files == ["/a.pdf", "/b.txt"] and uploads.corpus_dir is None


def test_an_option_out_of_range_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        bench_page_config(["add"], [10], dim=768, consistency="Strong", concurrency=0, repeat=1)
    with pytest.raises(ValueError, match="counts"):
        bench_page_config(["add"], [0], dim=768, consistency="Strong", concurrency=8, repeat=1)
