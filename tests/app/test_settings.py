"""The settings page: the effective settings, with secrets masked everywhere in the app."""

from __future__ import annotations

import os

import pytest

from tests.app.support import AppEnv, page_text

pytestmark = pytest.mark.milvus

SECRET = "sk-test-secret"


def test_settings_are_listed_with_secrets_masked(app_env: AppEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    at = app_env.app("pages/settings.py")
    at.run()

    assert not at.exception
    table = at.table[0].value
    values = dict(zip(table["Setting"], table["Value"]))
    assert values["OPENAI_API_KEY"] == "••••••"
    assert values["MILVUS_TOKEN"] == "••••••"
    assert values["RAG_COLLECTION"] == app_env.collection
    assert float(values["RAG_MAX_FILE_MB"]) > 0
    text = page_text(at) + table.to_string()
    assert SECRET not in text
    token = os.environ["MILVUS_TOKEN"]
    assert token.split(":", 1)[1] not in text


def test_no_page_shows_the_api_key(app_env: AppEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    for page in ("pages/home.py", "pages/upload.py", "pages/documents.py", "pages/chat.py", "pages/settings.py"):
        at = app_env.app(page)
        at.run()
        assert not at.exception, page
        assert SECRET not in page_text(at), page


def test_passwords_in_uris_are_hidden(app_env: AppEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "https://bob:pa55word@llm.example/v1")
    at = app_env.app("pages/settings.py")
    at.run()
    values = dict(zip(at.table[0].value["Setting"], at.table[0].value["Value"]))
    assert values["OPENAI_BASE_URL"] == "https://llm.example/v1"
    assert "pa55word" not in page_text(at)


def test_an_invalid_setting_is_explained(app_env: AppEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_CHUNK_SIZE", "64")
    monkeypatch.setenv("RAG_CHUNK_OVERLAP", "100")
    at = app_env.app("pages/settings.py")
    at.run()
    assert not at.exception
    assert "RAG_CHUNK_OVERLAP" in at.error[0].value.replace("\\", "")


def test_streamlit_upload_limit_agrees_with_the_engine() -> None:
    import tomllib

    from rag.config import Settings
    from tests.app.support import REPO

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["maxUploadSize"] == Settings.model_fields["max_file_mb"].default
    assert config["server"]["runOnSave"] is False and config["server"]["headless"] is True
    assert config["browser"]["gatherUsageStats"] is False
