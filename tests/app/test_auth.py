"""APP_PASSWORD: nothing is shown until the password is given."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

SCRIPT = """
from ui.auth import require_password
import streamlit as st
require_password()
st.write("secret content")
"""


def _texts(at: AppTest) -> str:
    return " ".join(str(m.value) for m in at.markdown)


def test_password_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_PASSWORD", "open sesame")
    at = AppTest.from_string(SCRIPT).run()
    assert "secret content" not in _texts(at)
    at.text_input(key="auth.password").set_value("wrong")
    at.button[0].click().run()
    assert "secret content" not in _texts(at) and "Wrong password." in [e.value for e in at.error]
    import time

    from rag import signin

    monkeypatch.setattr(signin, "_now", lambda: time.time() + 2)  # past the second the failure earned
    at.text_input(key="auth.password").set_value("open sesame")
    at.button[0].click().run()
    assert "secret content" in _texts(at)


def test_no_password_no_gate() -> None:
    at = AppTest.from_string(SCRIPT).run()
    assert "secret content" in _texts(at)


def test_with_accounts_every_page_asks_for_a_sign_in(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    from argon2 import PasswordHasher

    from rag.accounts import Accounts
    from tests.app.support import APP, new_sid

    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("APP_PASSWORD", "ignored once accounts exist")
    from rag.config import load_settings

    accounts = Accounts.from_settings(
        load_settings(), hasher=PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    )
    accounts.add("carol", "carol-password")
    accounts.close()
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["sid"] = new_sid()
    at.run()
    at.switch_page("pages/chat.py").run()  # a deep link, run on its own

    assert not at.exception and [t.value for t in at.title] == ["Ask your documents"]
    at.text_input(key="auth.name").set_value("carol")
    at.text_input(key="auth.password").set_value("wrong-password")
    at.button[0].click().run()
    assert [e.value for e in at.error] == ["Wrong name or password."]
    assert [t.value for t in at.title] == ["Ask your documents"]
