"""No page shows a credential: URLs appear without their user:password, keys never appear at all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rag.markdown import JOINER
from tests.app.support import AppEnv, page_text, write_doc

pytestmark = pytest.mark.milvus

SECRET = "s3cret"
PAGES = (
    "pages/home.py",
    "pages/upload.py",
    "pages/documents.py",
    "pages/chat.py",
    "pages/benchmarks.py",
    "pages/settings.py",
)


@pytest.fixture
def leaky_env(app_env: AppEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AppEnv:
    """The app configured with credentials in the LLM URL and an API key, and one document indexed."""
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://user:{SECRET}@127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", f"sk-{SECRET}-key")
    report = app_env.service().ingest([write_doc(tmp_path / "src", "giraffes.txt", "Giraffes eat acacia. " * 40)])
    assert report.files[0].status == "indexed"
    return app_env


def test_no_page_shows_a_credential(leaky_env: AppEnv) -> None:
    for page in PAGES:
        at = leaky_env.app(page)
        at.run()
        assert not at.exception, page
        assert SECRET not in page_text(at), page

    home = leaky_env.app()
    home.run()
    shown = re.sub(r"\\(.)", r"\1", home.markdown[0].value).replace(JOINER, "")  # as the page displays it
    assert "http://127.0.0.1:9/v1" in shown  # where the LLM is, without who logs in
    settings = leaky_env.app("pages/settings.py")
    settings.run()
    values = dict(zip(settings.table[0].value["Setting"], settings.table[0].value["Value"]))
    assert values["OPENAI_BASE_URL"] == "http://127.0.0.1:9/v1" and values["OPENAI_API_KEY"] == "••••••"


def test_a_failing_llm_is_reported_without_its_credentials(leaky_env: AppEnv) -> None:
    at = leaky_env.app("pages/chat.py")
    at.run()
    at.chat_input(key="chat.question").set_value("What do giraffes eat?").run()

    assert not at.exception
    assert any("unreachable" in e.value for e in at.error)  # nothing listens on port 9
    assert SECRET not in page_text(at)
