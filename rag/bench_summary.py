"""What a benchmark run's rows say, in words and figures a page or a terminal shows as they are.

The Benchmarks page only draws: the headline speedups, each chart's records, the table rows with their spread, the
records a download holds, the progress text and the caption of a run come from here, so the page and any other
front end say the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from rag.bench import EXPERIMENTS, BenchReport, BenchRow, Experiment

BENCH_LABELS = {
    "add": "Add nodes",
    "search": "Search",
    "ingest": "Ingest documents",
    "embed": "Embedding backends",
    "scale": "Scale",
}


@dataclass(frozen=True)
class Headline:
    """One headline figure: what was compared, the figure, a second figure beside it, and what it means."""

    label: str
    value: str
    delta: str | None = None
    help: str = ""


def find(rows: list[BenchRow], experiment: str, mode: str, n: int | None = None) -> BenchRow | None:
    """The first row of an experiment and mode (at N, when given)."""
    return next((r for r in rows if r.experiment == experiment and r.mode == mode and (n is None or r.n == n)), None)


def _rounds(row: BenchRow) -> str:
    if not row.repeats:
        return ""
    runs = f" of {row.loops} runs" if row.loops and row.loops > 1 else ""
    return f"median of {row.repeats} round{'s' * (row.repeats != 1)}{runs}"


def bench_headlines(rows: list[BenchRow]) -> list[Headline]:
    """The speedups at the largest N measured so far (against sync and the seed's async), the engine's embedding
    backend, and ingestion against sync and against its own embedding."""
    cards: list[Headline] = []
    for experiment in ("add", "search"):
        done = [r.n for r in rows if r.experiment == experiment and r.mode == "project-async"]
        if not done:
            continue
        n = max(done)
        seed, project = find(rows, experiment, "seed-async", n), find(rows, experiment, "project-async", n)
        if seed and seed.speedup:
            cards.append(Headline(f"{BENCH_LABELS[experiment]}, N={n}: seed-async", f"{seed.speedup:.1f}× sync", None))
        if project and seed:
            value = f"{project.speedup:.1f}× sync" if project.speedup else f"{project.seconds:.3f} s"
            cards.append(
                Headline(
                    f"{BENCH_LABELS[experiment]}, N={n}: project-async",
                    value,
                    f"{seed.seconds / project.seconds:.1f}× seed-async",
                    f"Medians ({_rounds(project)} each mode), the modes taking turns.",
                )
            )
    chosen = next((r for r in rows if r.experiment == "embed" and r.chosen), None)
    if chosen is not None:
        speed = f"{chosen.speedup:.2f}× torch fp32" if chosen.speedup else "the baseline"
        cosine = f"cosine {chosen.cosine_mean:.4f} mean, {chosen.cosine_min:.4f} min"
        cards.append(Headline(f"Embedding: {chosen.mode} (the engine's)", speed, cosine, "median chunks per second"))
    project, raw = find(rows, "ingest", "project-async"), find(rows, "ingest", "raw-embedding")
    same = find(rows, "ingest", "sync-same-embedding")
    if project and project.speedup:
        share = f"{raw.seconds / project.seconds:.0%} of raw embedding" if raw else None
        cards.append(Headline("Ingest: project-async", f"{project.speedup:.2f}× sync", share, "chunks per second"))
    if project and same and project.seconds > 0:
        cards.append(
            Headline(
                "Ingest: the async gain alone",
                f"{same.seconds / project.seconds:.2f}× sync",
                "same embedding on both sides",
                "The engine's ingestion against the sync pipeline using the engine's own embedding: what async adds, "
                "without the embedding backend's gain.",
            )
        )
    return cards


def bench_records(rows: list[BenchRow]) -> list[dict[str, Any]]:
    """The rows as flat records for tables and charts, with items per second and the slowest-fastest spread."""
    out = []
    for row in rows:
        record = row.model_dump()
        record["items_per_second"] = row.n / row.seconds if row.seconds else None
        low, high = row.seconds_min, row.seconds_max
        record["spread"] = f"{low:.3f}–{high:.3f}" if low is not None and high is not None else ""
        if row.experiment == "embed" and low and high:
            record["spread"] = f"{row.n / high:.1f}–{row.n / low:.1f}"
        out.append(record)
    return out


def bench_experiments_shown(rows: list[BenchRow]) -> list[Experiment]:
    """The experiments with rows so far, in the fixed order of `EXPERIMENTS`: one chart each."""
    measured = {row.experiment for row in rows}
    return [e for e in EXPERIMENTS if e in measured]


def bench_chart_records(rows: list[BenchRow], experiment: Experiment) -> list[dict[str, Any]]:
    """One experiment's records for its chart. Embedding rows also carry their fastest and slowest round in
    chunks per second (the whisker) and their role, so the engine's own backend stands out."""
    records = [r for r in bench_records(rows) if r["experiment"] == experiment]
    if experiment == "embed":
        for record in records:
            low, high = record["seconds_min"], record["seconds_max"]
            record["fastest"] = record["n"] / low if low else None
            record["slowest"] = record["n"] / high if high else None
            record["role"] = "the engine's backend" if record["chosen"] else "measured"
    return records


def _speedup_text(value: float | None) -> str:
    """A speedup for a table cell; the baseline has none, shown as a dash rather than "None"."""
    return "—" if value is None or math.isnan(value) else f"{value:.2f}×"


_EMBED_COLUMNS = ("mode", "n", "seconds", "chunks_per_s", "spread", "speedup", "cosine_mean", "cosine_min", "chosen")
_TIMING_COLUMNS = ("experiment", "mode", "n", "seconds", "spread", "repeats", "ms_per_item", "speedup", "note")


class BenchTables(NamedTuple):
    """The rows of a run's two tables: embedding backends (chunks per second, cosines) and every timed mode."""

    embed: list[dict[str, Any]]
    timings: list[dict[str, Any]]


def bench_tables(rows: list[BenchRow]) -> BenchTables:
    """The table rows, each with only its table's columns (in order) and the speedup as text."""
    embed: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []
    for record in bench_records(rows):
        record["speedup"] = _speedup_text(record["speedup"])
        is_embed = record["experiment"] == "embed"
        columns = _EMBED_COLUMNS if is_embed else _TIMING_COLUMNS
        (embed if is_embed else timings).append({c: record[c] for c in columns})
    return BenchTables(embed, timings)


def bench_export_records(rows: list[BenchRow]) -> list[dict[str, Any]]:
    """The rows as a download holds them: every measured field, none of the display-only ones (spread, rate)."""
    return [row.model_dump() for row in rows]


def bench_step_text(step: tuple[str, str, int | None]) -> str:
    """What a run is measuring now, for a progress bar."""
    experiment, mode, n = step
    return f"Measuring {BENCH_LABELS[experiment].lower()} · {mode}" + (f" · N={n:,}" if n else "") + "…"


def bench_progress(measured: int, steps: Sequence[tuple[str, str, int | None]]) -> tuple[float, str]:
    """A progress bar's fraction and text after `measured` rows of a run's planned `steps`: what is measured now,
    and once every step is measured, the scratch collections being dropped."""
    if not measured:
        return 0.0, bench_step_text(steps[0])
    done = min(measured, len(steps))
    upcoming = bench_step_text(steps[done]) if done < len(steps) else "Cleaning up…"
    return done / len(steps), f"{done} of {len(steps)} measured. {upcoming}"


def bench_run_caption(report: BenchReport) -> str:
    """Where and how a finished run measured: server, machine, libraries, options, rounds, duration."""
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
    server = f"Milvus {report.milvus_version} · " if report.milvus_version else ""
    config = report.config
    rounds = f"median of {config.repeat} round{'s' * (config.repeat != 1)} per row, the modes taking turns"
    if config.min_round > 0 and any(e in ("add", "search") for e in config.experiments):
        rounds += f"; runs quicker than {config.min_round:g} s repeated within their round"
    cpu = f" ({report.machine['cpu']})" if report.machine.get("cpu") else ""
    return (
        f"{server}{report.machine.get('cpus', '?')} CPUs{cpu} · {versions} · {config.consistency_level} consistency, "
        f"dimension {config.dim}, concurrency {config.concurrency} · {rounds} · {report.seconds:.0f} s in all · "
        f"{report.started_at}"
    )
