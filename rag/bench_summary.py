"""What a benchmark run's rows say, in words and figures a page or a terminal shows as they are.

The Benchmarks page only draws: the headline speedups, the table rows with their spread, the progress text and
the caption of a run come from here, so the page and any other front end say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rag.bench import BenchReport, BenchRow

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
    return f"median of {row.repeats} round{'s' * (row.repeats != 1)}" if row.repeats else ""


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


def bench_step_text(step: tuple[str, str, int | None]) -> str:
    """What a run is measuring now, for a progress bar."""
    experiment, mode, n = step
    return f"Measuring {BENCH_LABELS[experiment].lower()} · {mode}" + (f" · N={n:,}" if n else "") + "…"


def bench_run_caption(report: BenchReport) -> str:
    """Where and how a finished run measured: server, machine, libraries, options, rounds, duration."""
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
    server = f"Milvus {report.milvus_version} · " if report.milvus_version else ""
    config = report.config
    rounds = f"median of {config.repeat} round{'s' * (config.repeat != 1)} per row, the modes taking turns"
    cpu = f" ({report.machine['cpu']})" if report.machine.get("cpu") else ""
    return (
        f"{server}{report.machine.get('cpus', '?')} CPUs{cpu} · {versions} · {config.consistency_level} consistency, "
        f"dimension {config.dim}, concurrency {config.concurrency} · {rounds} · {report.seconds:.0f} s in all · "
        f"{report.started_at}"
    )
