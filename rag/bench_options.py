"""The choices a front end offers for a benchmark run, when a run can start, and the `BenchConfig` they make.

The Benchmarks page only lays out widgets: which experiments and counts it offers, which options an experiment
needs, whether Run is possible and the config a choice becomes are decided here, next to `rag.bench` which
measures, so a page and any other front end agree with what a run will really do.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import get_args

from rag.bench import EXPERIMENTS, BenchConfig, Experiment

BENCH_COUNTS: tuple[int, ...] = (1, 10, 50, 100, 500, 1000, 2000, 5000)
# The experiments a page runs; the scale curve builds collections for an hour and runs from the command line.
BENCH_PAGE_EXPERIMENTS: tuple[Experiment, ...] = tuple(e for e in EXPERIMENTS if e != "scale")
CONSISTENCY_LEVELS: tuple[str, ...] = get_args(BenchConfig.model_fields["consistency_level"].annotation)

_COUNTED: frozenset[str] = frozenset({"add", "search"})  # measured at each N
_READS_DOCUMENTS: frozenset[str] = frozenset({"ingest", "embed"})  # read the corpus or a workspace's uploads
_SLOW_STRONG_N = 1000  # from here a sync search loop under Strong takes minutes per round


def bench_uses_counts(experiments: Collection[str]) -> bool:
    """Whether the chosen experiments are measured at each N, so N must be chosen."""
    return bool(_COUNTED & set(experiments))


def bench_uses_documents(experiments: Collection[str]) -> bool:
    """Whether the chosen experiments read documents, so a source of documents must be chosen."""
    return bool(_READS_DOCUMENTS & set(experiments))


def corpus_is_missing(folder: Path) -> bool:
    """Whether a corpus folder is absent or empty, so a run over it would have nothing to read."""
    return not folder.is_dir() or not any(folder.iterdir())


def bench_can_run(experiments: Collection[str], counts: Collection[int], documents_missing: bool = False) -> bool:
    """Whether Run would measure something: an experiment, N for those measured at each N, and documents for
    those that read them (`documents_missing` is only true when such an experiment is chosen)."""
    if not experiments or documents_missing:
        return False
    return bool(counts) or not bench_uses_counts(experiments)


def bench_slow_note(experiments: Collection[str], counts: Collection[int], consistency: str, repeat: int) -> str:
    """A warning before a run whose sync search loop waits for a time tick per query at a large N; "" if none."""
    if "search" not in experiments or consistency != "Strong" or not counts or max(counts) < _SLOW_STRONG_N:
        return ""
    return (
        f"Under Strong consistency the sync search loop waits for a time tick on every query: N={max(counts)} "
        f"alone takes minutes per round ({int(repeat)} rounds)."
    )


def bench_page_config(
    experiments: Sequence[str],
    counts: Sequence[int],
    *,
    dim: int,
    consistency: str,
    concurrency: int,
    repeat: int,
    corpus_dir: Path | None = None,
    files: list[str] | None = None,
    max_files: int = 0,
    embed_chunks: int = 0,
) -> BenchConfig:
    """The run a page's choices make. 0 (max files, chunks to embed) means all; with no N chosen (only ingest or
    embed, which have none) a placeholder N keeps the config valid. Raises ValueError (pydantic's) naming the
    option that is out of range."""
    return BenchConfig(
        experiments=list(experiments),  # type: ignore[arg-type]
        counts=list(counts) or [10],
        dim=int(dim),
        consistency_level=consistency,  # type: ignore[arg-type]
        concurrency=int(concurrency),
        corpus_dir=str(corpus_dir) if corpus_dir else None,
        files=files,
        max_files=int(max_files) or None,
        embed_chunks=int(embed_chunks) or None,
        repeat=int(repeat),
    )
