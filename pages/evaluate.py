"""Evaluate: how well retrieval finds the evidence of labelled questions, per retrieval mode, side by side."""

import streamlit as st

from rag import RagError, Source, parse_pairs
from ui.auth import current_caller, is_admin
from ui.errors import service_or_stop, show_error
from ui.format import md
from ui.navigation import ensure_routed
from ui.sources import source_viewer
from ui.workspaces import current_workspace

ensure_routed()

_MODES = {"dense": "Meaning (vectors)", "keyword": "Keywords (BM25)", "hybrid": "Both (hybrid)"}


def _rank(rank: int | None) -> str:
    return str(rank) if rank else "—"


st.title("Evaluate retrieval")
st.caption(
    "Give questions with the file that answers each and a verbatim quote of the answer (the evidence), one JSON "
    'object per line: `{"question": …, "file": …, "evidence": …}`. A question hits at rank r when the r-th '
    "passage found comes from that file and holds at least 80% of the evidence's word 3-grams. Nothing is "
    "indexed or changed."
)
service = service_or_stop()
workspace = current_workspace(service)

upload = st.file_uploader("Question file (.jsonl)", type=["jsonl", "json", "txt"], key="evaluate.file")
pasted = st.text_area("…or paste the lines here", key="evaluate.text", height=150)
modes_available = [m for m in _MODES if m in service.features.retrieval_modes]
left, right = st.columns([3, 1])
caller = current_caller()
if caller.kind == "account" and not is_admin():  # several modes at once are an admin's (heavy, revealing)
    modes = [left.selectbox("Retrieval mode", modes_available, format_func=_MODES.get, key="evaluate.mode")]
else:
    modes = left.multiselect(
        "Retrieval modes", modes_available, default=modes_available, format_func=_MODES.get, key="evaluate.modes"
    )
top_k = right.number_input("Passages per question", 1, 50, service.settings.top_k, key="evaluate.top_k")

if st.button("Evaluate", key="evaluate.run", type="primary", disabled=not modes, icon=":material/fact_check:"):
    source = upload.name if upload else "the pasted lines"
    text = upload.getvalue().decode("utf-8", errors="replace") if upload else pasted
    try:
        pairs = parse_pairs(text, source)
        with st.spinner(f"Asking {len(pairs)} questions in {len(modes)} mode(s)…"):
            st.session_state["evaluate.reports"] = service.evaluate(pairs, modes, int(top_k), workspace.id, caller)
    except RagError as err:
        st.session_state.pop("evaluate.reports", None)
        show_error(err)

reports = st.session_state.get("evaluate.reports")
if not reports:
    st.stop()

st.subheader(f"{reports[0].n} questions, top {reports[0].top_k}")
st.dataframe(
    [
        {
            "mode": _MODES[r.mode],
            "hit@1": r.hit_at["1"],
            "hit@3": r.hit_at["3"],
            "hit@5": r.hit_at["5"],
            "MRR": r.mrr,
            "p50 ms": r.p50_ms,
            "misses": len(r.misses),
        }
        for r in reports
    ],
    hide_index=True,
    width="stretch",
    column_config={
        f"hit@{k}": st.column_config.NumberColumn(
            format="percent", help=f"Share of questions whose evidence is in the first {k} passages"
        )
        for k in (1, 3, 5)
    },
)
st.dataframe(
    [
        {"question": row.question, "file": row.file} | {_MODES[r.mode]: _rank(r.rows[i].rank) for r in reports}
        for i, row in enumerate(reports[0].rows)
    ],
    hide_index=True,
    width="stretch",
    column_config={
        _MODES[r.mode]: st.column_config.TextColumn(help="Rank of the first passage holding the evidence; — none")
        for r in reports
    },
)

for report in reports:
    if not report.misses:
        continue
    st.subheader(f"Misses: {_MODES[report.mode]} ({len(report.misses)})")
    for number, row in enumerate(report.misses):
        with st.expander(f"{md(row.question)} — expected in {md(row.file)}"):
            st.markdown("**Returned instead:**")
            for rank, passage in enumerate(row.returned, start=1):
                page = f", p. {passage.page}" if passage.page else ""
                label, opener = st.columns([5, 1], vertical_alignment="center")
                label.markdown(f"{rank}. {md(passage.file_name)}{page}")
                key = f"evaluate.{report.mode}.{number}.{rank}"
                if opener.button("Open", key=f"{key}.open", icon=":material/visibility:", type="tertiary"):
                    source = Source(**passage.model_dump(), score=0.0)
                    source_viewer(service, source, workspace.id, key)
                st.text(passage.text[:600])
