"""Benchmarks: the seed tutorial's sync-versus-async experiment rebuilt live, beside this project's path.

The page only collects options and draws rows; `rag.bench` measures (in scratch collections that it
drops), and the rows arrive one at a time through `service.bench`, so the chart grows as they land.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from rag import (
    BENCH_COUNTS,
    BENCH_LABELS,
    BENCH_MODES,
    BENCH_PAGE_EXPERIMENTS,
    CONSISTENCY_LEVELS,
    BenchReport,
    BenchRow,
    bench_can_run,
    bench_chart_records,
    bench_experiments_shown,
    bench_export_records,
    bench_headlines,
    bench_page_config,
    bench_progress,
    bench_run_caption,
    bench_slow_note,
    bench_tables,
    bench_uses_documents,
    corpus_is_missing,
    default_corpus_dir,
    plan,
)
from ui.auth import current_caller
from ui.errors import service_or_stop, show_error
from ui.format import md
from ui.navigation import ensure_routed, require_admin_when_accounts
from ui.workspaces import current_workspace

ensure_routed()
require_admin_when_accounts()

RESULT = "bench.result"
# Session key: the rows and report of this session's last run.

MODE_ORDER = list(BENCH_MODES)
CORPUS, UPLOADS = "Shared corpus", "My uploaded documents"

EXPLANATION = """
**Sync** sends one request and waits for its whole round trip before sending the next: the client
serializes it, gRPC carries it, the server schedules and runs it, and the reply comes back. N calls
pay N of these in a row. Under **Strong** consistency each search also waits until the query node
has seen a time tick newer than the request (Milvus ticks a few times a second), so a sync search
loop is mostly waiting, not computing.

**Seed-async** (the tutorial's `asyncio.gather` of `async_add` / `aquery`) sends the same N small
requests but keeps them all in flight at once, so their waits, the time-tick wait included, overlap.
What remains is the per-request cost on client and server, paid N times.

**Project-async** is how this app writes and searches: a few large requests instead of N small ones
(hundreds of rows per insert, many query vectors per search), with a bounded number in flight. Its
searches are N ordinary calls to the engine's own search, started together: the engine's store
coalesces the calls made in one event-loop turn into a few multi-vector requests. The per-request cost
is paid a few times instead of N times, and under Strong consistency all the searches share one
time-tick wait.

Switch the consistency level to **Session**, **Bounded** or **Eventually** and run the search again:
searches no longer wait for a fresh time tick, the sync loop speeds up many times over, and most of
the gain of the seed's async path goes with it. Batching still wins, because it removes requests
rather than overlapping them.

Every figure is the **median of several rounds** (the *Timed rounds* option), the modes taking turns within
each round so that a busy machine slows them alike; the whiskers and the spread column show the slowest and
fastest round. A run of a few milliseconds is mostly noise, so an add or search quicker than a fifth of a
second is repeated within its round and the time of one run shown (the table's note says how many runs). Under
Strong a round starts four runs of every mode at evenly spaced points of the server's time tick (searches of up to
10 queries are sent side by side), so every mode meets the same tick waits (one or two ticks, drawn by chance).

**Ingest** is bound by the embedding model, which runs on this machine's CPU. *Sync* is a plain
LlamaIndex pipeline: each file read, chunked, embedded with LlamaIndex's default settings (fp32,
batches of 10) and added, one step after another. *Project-async* is the engine: reading the next file,
embedding and Milvus writes overlap, and the model runs in bfloat16 where the CPU has AMX (see the
note on the raw-embedding row). *Raw embedding* is the same chunks embedded the engine's way with no
reading and no Milvus at all: the ceiling for the engine here.

**Embedding backends** embeds the same corpus chunks with every backend this machine has: *torch-fp32*
(sentence-transformers, the baseline), *torch-bf16* (only on CPUs with AMX), *onnx* (ONNX Runtime with
the model's attention and layer-norm subgraphs fused) and *onnx-int8* (the same with dynamic int8 matrix
products). Each is warmed by one batch, the timed rounds are interleaved so a busy machine slows all of
them alike, and each bar is the median of the rounds, its whisker the slowest and fastest round. The
cosine columns say how close each backend's vectors stay to torch fp32's; the engine's own backend
(`RAG_EMBED_BACKEND`, `auto` by default) is marked *chosen*.
"""


def _speed_chart(rows: list[BenchRow], experiment: str) -> alt.Chart:
    data = pd.DataFrame(bench_chart_records(rows, experiment))
    title = f"{BENCH_LABELS[experiment]}: seconds per N (log-log; median, whiskers: slowest–fastest round)"
    base = alt.Chart(data, title=title)
    x = alt.X("n:Q", scale=alt.Scale(type="log"), title="N")
    color = alt.Color("mode:N", sort=MODE_ORDER, title="mode")
    lines = base.mark_line(point=True).encode(
        x=x,
        y=alt.Y("seconds:Q", scale=alt.Scale(type="log"), title="seconds"),
        color=color,
        tooltip=[
            "mode",
            "n",
            alt.Tooltip("seconds:Q", format=".3f"),
            "spread",
            "repeats",
            alt.Tooltip("speedup:Q", format=".1f"),
        ],
    )
    whiskers = base.mark_rule().encode(x=x, y="seconds_min:Q", y2="seconds_max:Q", color=color)
    return (lines + whiskers).properties(height=320)


def _ingest_chart(rows: list[BenchRow]) -> alt.Chart:
    return (
        alt.Chart(pd.DataFrame(bench_chart_records(rows, "ingest")), title="Ingest: chunks per second")
        .mark_bar()
        .encode(
            x=alt.X("mode:N", sort=MODE_ORDER, title=None),
            y=alt.Y("items_per_second:Q", title="chunks per second"),
            color=alt.Color("mode:N", sort=MODE_ORDER, legend=None),
            tooltip=["mode", "n", alt.Tooltip("seconds:Q", format=".1f")],
        )
        .properties(height=320)
    )


def _embed_chart(rows: list[BenchRow]) -> alt.Chart:
    title = "Embedding: chunks per second (median, whiskers: slowest–fastest round)"
    base = alt.Chart(pd.DataFrame(bench_chart_records(rows, "embed")), title=title)
    bars = base.mark_bar().encode(
        x=alt.X("mode:N", sort=MODE_ORDER, title=None),
        y=alt.Y("chunks_per_s:Q", title="chunks per second"),
        color=alt.Color("role:N", title=None, legend=alt.Legend(orient="bottom")),
        tooltip=[
            "mode",
            "n",
            alt.Tooltip("chunks_per_s:Q", format=".1f"),
            alt.Tooltip("speedup:Q", format=".2f"),
            alt.Tooltip("cosine_mean:Q", format=".5f"),
            alt.Tooltip("cosine_min:Q", format=".5f"),
        ],
    )
    whiskers = base.mark_rule().encode(x=alt.X("mode:N", sort=MODE_ORDER), y="slowest:Q", y2="fastest:Q")
    return (bars + whiskers).properties(height=320)


def _metrics(rows: list[BenchRow]) -> None:
    cards = bench_headlines(rows)
    for column, card in zip(st.columns(max(len(cards), 1)), cards):
        column.metric(card.label, card.value, card.delta, delta_color="off", delta_arrow="off", help=card.help or None)


def _table(rows: list[BenchRow]) -> None:
    embed, timings = bench_tables(rows)
    if embed:
        st.dataframe(
            pd.DataFrame(embed),
            hide_index=True,
            key="bench.embed_table",
            column_config={
                "n": st.column_config.NumberColumn("chunks"),
                "seconds": st.column_config.NumberColumn("seconds (median)", format="%.2f"),
                "chunks_per_s": st.column_config.NumberColumn("chunks per second", format="%.1f"),
                "spread": st.column_config.TextColumn("slowest–fastest round"),
                "speedup": st.column_config.TextColumn("speedup vs torch fp32"),
                "cosine_mean": st.column_config.NumberColumn("cosine mean", format="%.5f"),
                "cosine_min": st.column_config.NumberColumn("cosine min", format="%.5f"),
                "chosen": st.column_config.CheckboxColumn("the engine's"),
            },
        )
    if not timings:
        return
    st.dataframe(
        pd.DataFrame(timings),
        hide_index=True,
        height="content",
        column_config={
            "n": st.column_config.NumberColumn("N"),
            "seconds": st.column_config.NumberColumn("seconds (median)", format="%.3f"),
            "spread": st.column_config.TextColumn("slowest–fastest round"),
            "repeats": st.column_config.NumberColumn("rounds"),
            "ms_per_item": st.column_config.NumberColumn("ms per item", format="%.3f"),
            "speedup": st.column_config.TextColumn("speedup vs sync"),
        },
    )


def _render(rows: list[BenchRow], report: BenchReport | None = None) -> None:
    """Metrics, charts and table for the rows so far; the download and run facts once finished."""
    if not rows:
        return
    _metrics(rows)
    shown = bench_experiments_shown(rows)
    for column, experiment in zip(st.columns(len(shown)), shown):
        if experiment == "embed":
            chart = _embed_chart(rows)
        else:
            chart = _ingest_chart(rows) if experiment == "ingest" else _speed_chart(rows, experiment)
        column.altair_chart(chart, width="stretch")
    _table(rows)
    if report is not None:
        st.caption(bench_run_caption(report))
        st.download_button(
            "Download CSV",
            pd.DataFrame(bench_export_records(rows)).to_csv(index=False),
            file_name="benchmarks.csv",
            mime="text/csv",
            key="bench.download",
            icon=":material/download:",
        )


st.title("Benchmarks")
st.caption(
    "The seed tutorial's experiment (one node per call, one query per call; sync against `asyncio.gather`) "
    "rebuilt on the connected Milvus, next to the batched path this app really uses. Everything runs in "
    "scratch collections that are dropped afterwards; your documents are never touched."
)
service = service_or_stop()
workspace = current_workspace(service)

left, right = st.columns(2)
experiments = left.multiselect(
    "Experiments",
    BENCH_PAGE_EXPERIMENTS,
    default=["add", "search"],
    format_func=BENCH_LABELS.get,
    key="bench.experiments",
    help="The scale curve (collections of 10,000 to 1,000,000 chunks) runs from the command line: "
    "python -m rag bench --experiments scale",
)
counts = left.multiselect(
    "N (nodes added, queries searched)", BENCH_COUNTS, default=[10, 100, 1000], key="bench.counts"
)
dim = left.number_input("Vector dimension", min_value=2, max_value=4096, value=768, step=1, key="bench.dim")
consistency = right.radio(
    "Consistency level",
    CONSISTENCY_LEVELS,
    horizontal=True,
    key="bench.consistency",
    help="The seed uses Strong: every search waits for the server's next time tick.",
)
concurrency = right.slider(
    "Requests in flight (project path)", min_value=1, max_value=64, value=8, key="bench.concurrency"
)
corpus_dir: Path | None = None
uploaded: list[str] | None = None
max_files = 0
missing_documents = False
embed_chunks = 256
repeat = right.number_input(
    "Timed rounds (each row: the median)",
    min_value=1,
    max_value=20,
    value=3,
    key="bench.repeat",
    help="Every measurement runs this many times, the modes taking turns; the spread shows the slowest and fastest.",
)
if "embed" in experiments:
    embed_chunks = left.number_input(
        "Chunks to embed (spread over the documents; 0 = all)",
        min_value=0,
        max_value=100_000,
        value=256,
        key="bench.embed_chunks",
    )
if bench_uses_documents(experiments):
    source = right.radio("Documents to ingest", [CORPUS, UPLOADS], horizontal=True, key="bench.source")
    if source == UPLOADS:  # this workspace's uploads only, never another workspace's files
        uploaded = [str(p) for p in service.stored_files(workspace.id, current_caller())]
        missing_documents = not uploaded
        right.caption(f"{len(uploaded)} document(s) uploaded to the workspace **{md(workspace.label)}**.")
    else:
        corpus_dir = default_corpus_dir()
        missing_documents = corpus_is_missing(corpus_dir)
    if missing_documents:
        right.warning(
            f"No documents have been uploaded to {md(workspace.label)} yet."
            if source == UPLOADS
            else "The shared corpus is not installed here.",
            icon=":material/warning:",
        )
    max_files = right.number_input(
        "At most this many files (by name; 0 = all)", min_value=0, max_value=500, value=0, key="bench.max_files"
    )
    right.caption(
        "The whole shared corpus (about 2,500 chunks) takes over a minute per mode on 2 CPU cores; "
        "the embedding experiment takes `Chunks to embed` from it."
    )
if slow := bench_slow_note(experiments, counts, consistency, int(repeat)):
    st.caption(slow)

run = st.button(
    "Run",
    key="bench.run",
    type="primary",
    icon=":material/speed:",
    disabled=not bench_can_run(experiments, counts, missing_documents),
)

progress_slot = st.empty()
results_slot = st.empty()

if run:
    try:
        config = bench_page_config(
            experiments,
            counts,
            dim=dim,
            consistency=consistency,
            concurrency=concurrency,
            repeat=repeat,
            corpus_dir=corpus_dir,
            files=uploaded,
            max_files=max_files,
            embed_chunks=embed_chunks,
        )
    except ValueError as err:
        st.error(f"Invalid options: {md(str(err))}")
        st.stop()
    steps = plan(config)
    rows: list[BenchRow] = []
    report: BenchReport | None = None
    st.session_state.pop(RESULT, None)
    progress_slot.progress(*bench_progress(0, steps))
    try:
        with contextlib.closing(
            service.bench(config, current_caller())
        ) as items:  # closing drops the scratch collections now
            for item in items:
                if isinstance(item, BenchReport):
                    report = item
                    continue
                rows.append(item)
                progress_slot.progress(*bench_progress(len(rows), steps))
                with results_slot.container():
                    _render(rows)
    except Exception as err:  # noqa: BLE001 - the edge: RagErrors say why, anything else is logged as a bug
        progress_slot.empty()
        show_error(err)
    else:
        progress_slot.success(f"Done: {len(rows)} measurements.", icon=":material/check_circle:")
    st.session_state[RESULT] = (rows, report)
    with results_slot.container():
        _render(rows, report)
elif RESULT in st.session_state:
    last_rows, last_report = st.session_state[RESULT]
    with results_slot.container():
        _render(last_rows, last_report)
else:
    results_slot.info("Choose what to measure and press Run; rows appear here as they are measured.")

with st.expander("Where the speedup comes from", expanded=True):
    st.markdown(EXPLANATION)
