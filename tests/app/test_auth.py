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
    at.text_input(key="auth.password").set_value("open sesame")
    at.button[0].click().run()
    assert "secret content" in _texts(at)


def test_no_password_no_gate() -> None:
    at = AppTest.from_string(SCRIPT).run()
    assert "secret content" in _texts(at)
