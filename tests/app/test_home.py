"""The home page (and the app router): what is connected, counts, and what to do when Milvus is down."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.support import AppEnv, page_text, write_doc

pytestmark = pytest.mark.milvus


def test_home_shows_what_is_connected(app_env: AppEnv) -> None:
    at = app_env.app()
    at.run()

    assert not at.exception
    assert at.title[0].value == "Ask your documents"
    connected = at.markdown[0].value
    assert "http://127.0.0.1:" in connected and "external server" in connected and "server version v2" in connected
    assert app_env.collection in connected
    assert "all-MiniLM-L6-v2" in connected and "384 dimensions" in connected
    assert "retrieval-only" in connected
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Documents": "0", "Chunks": "0", "Answers": "Retrieval-only"}
    assert any("OPENAI_API_KEY" in i.value for i in at.info)
    assert any("No documents in default yet" in i.value for i in at.info)


def test_home_counts_documents_and_chunks(app_env: AppEnv, tmp_path: Path) -> None:
    service = app_env.service()
    report = service.ingest([write_doc(tmp_path / "src", "notes.txt", "Giraffes eat acacia leaves. " * 40)])
    at = app_env.app()
    at.run()

    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Documents"] == "1"
    assert metrics["Chunks"] == str(report.chunks) != "0"


def test_home_counts_only_the_current_workspace(app_env: AppEnv, tmp_path: Path) -> None:
    service = app_env.service()
    research = service.create_workspace("Research")
    src = tmp_path / "src"
    mine = service.ingest([write_doc(src, "notes.txt", "Giraffes eat acacia leaves. " * 40)])
    theirs = service.ingest(
        [write_doc(src, f"paper{i}.txt", f"Paper {i} studies zebras and their stripes. " * 90) for i in range(2)],
        None,
        research.id,
    )
    assert mine.chunks != theirs.chunks

    at = app_env.app()
    at.run()
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Documents"], metrics["Chunks"]) == ("1", str(mine.chunks))
    assert any("In the workspace **default**" in c.value for c in at.caption)

    at.selectbox(key="workspace.id").set_value(research.id).run()
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Documents"], metrics["Chunks"]) == ("2", str(theirs.chunks))
    assert any("In the workspace **Research**" in c.value for c in at.caption)


def test_home_names_only_the_current_workspaces_recovered_files(app_env: AppEnv, tmp_path: Path) -> None:
    service = app_env.service()
    other = service.create_workspace("Other")
    src = tmp_path / "src"
    service.ingest([write_doc(src, "kept.txt", "Kept text. " * 30)])
    service.ingest([write_doc(src, "elsewhere.txt", "Other text. " * 30)], None, other.id)
    # As the start-up's recovery pass reports them: one half-indexed file in each workspace.
    service._recovered = tuple(service.documents()) + tuple(service.documents(other.id))
    at = app_env.app()
    at.run()
    warning = " ".join(w.value for w in at.warning)
    assert "kept.txt" in warning and "elsewhere.txt" not in warning


def test_a_session_id_is_created_and_kept_in_the_url(app_env: AppEnv) -> None:
    from streamlit.testing.v1 import AppTest

    from tests.app.support import APP

    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    sid = at.query_params.get("sid")
    assert isinstance(sid, str) and len(sid) >= 16

    at.switch_page("pages/settings.py").run()
    assert at.query_params.get("sid") == sid


def test_a_malformed_session_id_is_replaced(app_env: AppEnv) -> None:
    at = app_env.app(sid="<script>")
    at.run()
    assert at.query_params["sid"] != "<script>"
    assert len(at.query_params["sid"]) >= 16


def test_unreachable_milvus_says_so_with_the_fix(app_env: AppEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MILVUS_URI", "http://admin:hunter2pass@127.0.0.1:9")
    at = app_env.app()
    at.run()

    assert not at.exception
    assert at.error and "Milvus" in at.error[0].value
    fix = " ".join(i.value for i in at.info)
    assert "MILVUS_URI" in fix and "http://127.0.0.1:9" in fix
    assert "hunter2pass" not in page_text(at)


def test_no_milvus_uri_points_at_the_embedded_server_command() -> None:
    from rag.config import load_settings
    from ui.errors import milvus_fix

    assert "python -m rag milvus start" in milvus_fix(load_settings(data_dir=Path("/tmp/x")))


def test_llm_mode_is_shown(app_env: AppEnv, monkeypatch: pytest.MonkeyPatch, fake_openai) -> None:  # noqa: ANN001
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("LLM_MODEL", "fake-model")
    at = app_env.app()
    at.run()

    assert {m.label: m.value for m in at.metric}["Answers"] == "LLM"
    assert "fake-model via" in at.markdown[0].value
    assert not any("OPENAI_API_KEY" in i.value for i in at.info)
