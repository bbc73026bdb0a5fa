"""ui/navigation: every page runs under app.py's router, even when Streamlit runs the page file alone.

AppTest runs a page the way a fresh server runs a deep link (Streamlit's `pages/` folder mode, before any
session has called st.navigation), so these runs cover the first request after a start; tests/browser
checks the same in a real server and browser.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.app.support import APP, REPO, new_sid
from ui.navigation import PAGES


def test_every_page_file_is_routed_under_its_file_name() -> None:
    files = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "pages").glob("*.py"))
    assert sorted(spec.file for spec in PAGES) == files
    assert all(spec.url_path == Path(spec.file).stem for spec in PAGES)  # what the folder mode calls them


@pytest.mark.parametrize("spec", PAGES, ids=lambda spec: spec.url_path)
def test_every_page_asks_for_the_router_before_drawing_anything(spec) -> None:  # noqa: ANN001
    tree = ast.parse((REPO / spec.file).read_text(encoding="utf-8"))
    statements = [n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom))]
    first = next(n for n in statements if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)))
    assert ast.unparse(first) == "ensure_routed()", spec.file


def test_a_deep_link_asks_for_the_password_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_PASSWORD", "open sesame")
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["sid"] = new_sid()
    at.run()
    at.switch_page("pages/settings.py").run()  # run on its own, as a fresh server runs /settings

    assert not at.exception
    assert [t.value for t in at.title] == ["Ask your documents"]  # the password form, not the settings
    at.text_input(key="auth.password").set_value("open sesame")
    at.button[0].click().run()
    assert [t.value for t in at.title] == ["Settings"] and at.table


def test_a_page_run_alone_gets_the_apps_session_id() -> None:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    at.query_params.clear()
    at.switch_page("pages/settings.py").run()

    assert not at.exception
    assert [t.value for t in at.title] == ["Settings"]
    assert len(at.query_params["sid"]) >= 16
