"""Turn the scale experiment's JSON into BENCHMARKS.md tables and a log-log plot.

    python -m rag bench --experiments scale --sizes 10000,100000,1000000 --dim 384 --out scale.json
    python scripts/scale_report.py scale.json --png docs/scale.png   # prints the Markdown tables

Several files may be given (e.g. a 10k-100k run and a later 1M run); for a size measured more than once the
last file wins. The plot needs matplotlib (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def load(paths: Iterable[Path]) -> tuple[list[Row], dict[str, Any]]:
    """The scale rows of every file (a later file's size replaces an earlier one's) and the last file's facts."""
    by_size: dict[int, list[Row]] = {}
    facts: dict[str, Any] = {}
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = [r for r in data.get("rows", []) if r.get("experiment") == "scale"]
        for size in {r["n"] for r in rows}:
            by_size[size] = [r for r in rows if r["n"] == size]
        facts = {k: v for k, v in data.items() if k != "rows"}
    return [r for size in sorted(by_size) for r in by_size[size]], facts


def _find(rows: list[Row], size: int, mode: str, clients: int | None = None) -> Row | None:
    return next(
        (r for r in rows if r["n"] == size and r["mode"] == mode and (clients is None or r.get("clients") == clients)),
        None,
    )


def _ms(row: Row | None) -> str:
    if row is None or row.get("p50_ms") is None:
        return "–"
    return (
        f"{row['p50_ms']:.0f} / {row['p95_ms']:.0f}"
        if row["p50_ms"] >= 10
        else f"{row['p50_ms']:.1f} / {row['p95_ms']:.1f}"
    )


def _num(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _held(*rows: Row | None) -> float | None:
    """How much the server's RSS grew when the collection was loaded (the load row's details)."""
    return next((r["details"]["collection_mb"] for r in rows if r and "collection_mb" in r.get("details", {})), None)


def tables(rows: list[Row]) -> str:
    """The Markdown tables: growth and resources, latencies (p50 / p95 ms), and the index sweep."""
    sizes = sorted({r["n"] for r in rows})
    out = [
        "| chunks | documents | insert (chunks/s) | index build (s) | reload (s) | app open (s) | Milvus RSS, whole "
        "server (MB) | RSS growth on load (MB) | app RSS (MB) | disk (MB) | recall@10 | load avg |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        insert, index, load = _find(rows, size, "insert"), _find(rows, size, "index"), _find(rows, size, "load")
        opened, memory, disk = _find(rows, size, "open"), _find(rows, size, "memory"), _find(rows, size, "disk")
        recall = _find(rows, size, "recall")
        documents = insert["note"].split(" documents", 1)[0] if insert else "–"
        loads = [r["details"].get("load_1m") for r in rows if r["n"] == size and r.get("details", {}).get("load_1m")]
        out.append(
            f"| {size:,} | {documents} | {_num(insert and insert.get('chunks_per_s'))} "
            f"| {_num(index and index['seconds'], 1)} "
            f"| {_num(load and load['seconds'], 1)} | {_num(opened and opened['seconds'], 2)} "
            f"| {_num(memory and memory.get('rss_milvus_mb'))} | {_num(_held(load))} "
            f"| {_num(memory and memory.get('rss_app_mb'))} | {_num(disk and disk.get('disk_mb'))} "
            f"| {_num(recall and recall.get('recall'), 3)} | {min(loads):.1f}–{max(loads):.1f} |"
            if loads
            else f"| {size:,} | {documents} | … |"
        )
    out += [
        "",
        "Latency in ms, p50 / p95 (1 or 16 concurrent clients):",
        "",
        "| chunks | dense 1 | dense 16 | keyword 1 | keyword 16 | hybrid 1 | hybrid 16 | neighbours | question "
        "| `docs list` | Home | Chat |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        cells = [_ms(_find(rows, size, m, c)) for m in ("dense", "keyword", "hybrid") for c in (1, 16)]
        cells += [_ms(_find(rows, size, m)) for m in ("neighbours", "question", "docs-list", "home", "chat")]
        out.append(f"| {size:,} | " + " | ".join(cells) + " |")
    sweep = [r for r in rows if r["mode"] == "index-sweep"]
    if sweep:
        out += [
            "",
            "| chunks | index (build params, search param) | build (s) | recall@10 | dense p50 / p95 (ms) "
            "| Milvus RSS (MB) |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for r in sweep:
            built = f"{r['seconds']:.1f}" if r["seconds"] else "as above"  # the same build, another search setting
            out.append(
                f"| {r['n']:,} | `{r['details'].get('index', '?')}` | {built} | {r['recall']:.3f} "
                f"| {_ms(r)} | {_num(r.get('rss_milvus_mb'))} |"
            )
    return "\n".join(out)


def plot(rows: list[Row], png: Path, title: str) -> None:
    """Two log-log panels against collection size: request latencies (p50; the tables have p95 too), and build
    costs and disk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n"] for r in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [1.35, 1]})
    series = [
        ("dense", 1, "dense, 1 client"),
        ("dense", 16, "dense, 16 clients"),
        ("keyword", 1, "keyword, 1 client"),
        ("keyword", 16, "keyword, 16 clients"),
        ("hybrid", 1, "hybrid, 1 client"),
        ("hybrid", 16, "hybrid, 16 clients"),
        ("question", None, "question (embed + hybrid + context)"),
        ("home", None, "Home page call"),
        ("chat", None, "Chat page calls"),
        ("docs-list", None, "docs list"),
    ]
    for mode, clients, label in series:
        points = [(s, r["p50_ms"]) for s in sizes if (r := _find(rows, s, mode, clients)) and r.get("p50_ms")]
        if points:
            left.plot(*zip(*points), marker="o", label=label, linestyle="--" if clients == 16 else "-")
    left.set(xscale="log", yscale="log", xlabel="chunks in the collection", ylabel="median latency (ms)")
    left.set_title("Requests")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    resources = [
        ("insert", "seconds", "insert time (s)"),
        ("index", "seconds", "index build (s)"),
        ("load", "seconds", "reload until searchable (s)"),
        ("disk", "disk_mb", "disk: collection and side files (MB)"),
    ]
    for mode, key, label in resources:
        points = [(s, r[key]) for s in sizes if (r := _find(rows, s, mode)) and r.get(key)]
        if points:
            right.plot(*zip(*points), marker="o", label=label)
    if len(sizes) > 1:  # a line of slope 1 through the first insert time: what linear growth looks like
        first = _find(rows, sizes[0], "insert")
        if first:
            right.plot(sizes, [first["seconds"] * s / sizes[0] for s in sizes], color="grey", alpha=0.4, label="linear")
    right.set(xscale="log", yscale="log", xlabel="chunks in the collection")
    right.set_title("Building and resources")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="JSON files written by bench --experiments scale --out")
    parser.add_argument("--png", type=Path, help="write the log-log plot here")
    args = parser.parse_args()
    rows, facts = load(args.results)
    print(tables(rows))
    if args.png:
        machine = facts.get("machine", {})
        title = f"Scale curve: {machine.get('cpus', '?')} CPUs ({machine.get('cpu', '')}), {facts.get('saved_at', '')}"
        plot(rows, args.png, title)
        print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
