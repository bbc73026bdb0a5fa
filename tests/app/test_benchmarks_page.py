"""The Benchmarks page: options by widget key, Run fills the chart, metrics and table, nothing is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.conftest import AppEnv, page_text

pytestmark = pytest.mark.milvus

PAGE = "pages/benchmarks.py"


def _scratch(app_env: AppEnv) -> set[str]:
    client = app_env.service().store.vector_store.client
    return {name for name in client.list_collections() if name.startswith("bench_")}


def test_the_page_explains_before_anything_runs(app_env: AppEnv) -> None:
    at = app_env.app(PAGE)
    at.run()

    assert not at.exception
    assert at.title[0].value == "Benchmarks"
    assert at.multiselect(key="bench.counts").value == [10, 100, 1000]
    assert at.radio(key="bench.consistency").value == "Strong"
    assert any("press Run" in i.value for i in at.info)
    assert "time tick" in page_text(at)
    assert not at.dataframe


def test_run_fills_table_metrics_and_chart(app_env: AppEnv) -> None:
    before = _scratch(app_env)
    at = app_env.app(PAGE)
    at.run()
    at.multiselect(key="bench.experiments").set_value(["add", "search"])
    at.multiselect(key="bench.counts").set_value([1, 10])
    at.number_input(key="bench.dim").set_value(16)
    at.radio(key="bench.consistency").set_value("Eventually")
    at.slider(key="bench.concurrency").set_value(4)
    at.number_input(key="bench.repeat").set_value(2)
    at.button(key="bench.run").click().run(timeout=300)

    assert not at.exception
    assert not at.error
    table = at.dataframe[0].value
    assert len(table) == 12  # 2 experiments x 3 modes x 2 counts
    assert set(table["mode"]) == {"sync", "seed-async", "project-async"}
    assert (table[table["mode"] == "sync"]["speedup"] == "—").all()  # the baseline: a dash, never "None"
    assert table[table["mode"] != "sync"]["speedup"].str.endswith("×").all()
    assert (table["repeats"] == 2).all() and table["spread"].str.contains("–").all()
    labels = [m.label for m in at.metric]
    assert "Add nodes, N=10: project-async" in labels and "Search, N=10: seed-async" in labels
    text = page_text(at)
    assert "vega" in text.lower() and "Download CSV" in text and "Eventually consistency" in text
    assert "median of 2 rounds per row" in text
    assert any("12 measurements" in s.value for s in at.success)
    assert not _scratch(app_env) - before  # none of this run's scratch collections is left

    at.run()  # a rerun (e.g. the download) still shows the last results
    assert len(at.dataframe[0].value) == 12


def test_the_ingest_options_appear_only_for_ingest(app_env: AppEnv) -> None:
    at = app_env.app(PAGE)
    at.run()
    assert not [r for r in at.radio if r.key == "bench.source"]
    at.multiselect(key="bench.experiments").set_value(["ingest"]).run()
    assert at.radio(key="bench.source").value == "Shared corpus"
    assert at.number_input(key="bench.max_files").value == 0


def test_my_uploaded_documents_are_the_current_workspaces(app_env: AppEnv, tmp_path: Path) -> None:
    from tests.app.support import write_doc

    service = app_env.service()
    research, empty = service.create_workspace("Research"), service.create_workspace("Empty")
    src = tmp_path / "src"
    service.ingest([write_doc(src, "a.txt", "Alpha text here. " * 30)])
    service.ingest([write_doc(src, f"b{i}.txt", f"Beta text {i}. " * 30) for i in range(2)], None, research.id)
    at = app_env.app(PAGE)
    at.run()
    at.multiselect(key="bench.experiments").set_value(["ingest"]).run()
    at.radio(key="bench.source").set_value("My uploaded documents").run()
    assert "1 document(s) uploaded to the workspace **default**." in [c.value for c in at.caption]
    at.selectbox(key="workspace.id").set_value(research.id).run()
    assert "2 document(s) uploaded to the workspace **Research**." in [c.value for c in at.caption]
    at.selectbox(key="workspace.id").set_value(empty.id).run()
    assert any("No documents have been uploaded to Empty yet." in w.value for w in at.warning)
    assert at.button(key="bench.run").disabled


def test_a_second_run_is_refused_while_one_runs(app_env: AppEnv) -> None:
    from rag.bench import BenchConfig

    running = app_env.service().bench(BenchConfig(experiments=["add"], counts=[2], dim=8, consistency_level="Session"))
    next(running)  # another session's run, in the middle of measuring
    try:
        at = app_env.app(PAGE)
        at.run()
        at.multiselect(key="bench.counts").set_value([1])
        at.number_input(key="bench.dim").set_value(8)
        at.button(key="bench.run").click().run(timeout=300)

        assert not at.exception
        assert any("A benchmark is already running" in e.value for e in at.error)
        assert not at.dataframe
    finally:
        running.close()


def test_the_embedding_experiment_compares_backends(app_env: AppEnv) -> None:
    at = app_env.app(PAGE)
    at.run()
    at.multiselect(key="bench.experiments").set_value(["embed"]).run()
    assert at.radio(key="bench.source").value == "Shared corpus"
    at.number_input(key="bench.embed_chunks").set_value(4)
    at.number_input(key="bench.repeat").set_value(1)
    at.number_input(key="bench.max_files").set_value(1)
    assert not at.button(key="bench.run").disabled  # no N is needed for embedding
    at.button(key="bench.run").click().run(timeout=300)

    assert not at.exception
    assert not at.error
    table = at.dataframe[0].value
    assert list(table["mode"])[0] == "torch-fp32" and {"onnx", "onnx-int8"} <= set(table["mode"])
    assert table["chosen"].sum() == 1 and set(table["n"]) == {4}
    assert table["cosine_min"].min() >= 0.97
    assert any(m.label.startswith("Embedding: ") and "(the engine's)" in m.label for m in at.metric)
    assert "vega" in page_text(at).lower() and "median of 1 round per row" in page_text(at)
