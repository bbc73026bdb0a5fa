"""Sign-in that resists guessing, through the real forms (AppTest): APP_PASSWORD and accounts share one
limiter whose waits grow with every failure up to 15 minutes; a right password inside a wait is refused with
the wait shown; signing in to one's own account resets nobody else's wait; a changed password ends live
sessions at their next run; signing out leaves nothing of the session behind. Each test runs on both engines.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from argon2 import PasswordHasher
from streamlit.testing.v1 import AppTest

from rag import signin
from rag.accounts import Accounts
from rag.config import load_settings
from rag.signin import APP, BACKOFF_CAP, backoff

GATE = """
from ui.auth import require_password
import streamlit as st
require_password()
st.write("secret content")
"""
SIGN_IN = """
from ui.auth import require_login
import streamlit as st
require_login()
st.write("secret content")
"""
ATTEMPTS = 20


class Clock:
    """The limiter's wall clock, moved by the test (the waits reach 15 minutes)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(signin, "_now", fake)
    return fake


@pytest.fixture
def app_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str):  # noqa: ANN201
    import streamlit as st

    st.cache_resource.clear()
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAG_DATABASE_URL", database_url)
    yield load_settings()
    st.cache_resource.clear()


@pytest.fixture
def accounts(app_settings) -> Accounts:  # noqa: ANN001
    store = Accounts.from_settings(app_settings, hasher=PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    store.add("alice", "alice-password-1", admin=True)
    store.add("bob", "bob-password-22")
    yield store
    store.close()


def _shown(at: AppTest) -> str:
    return " ".join(str(m.value) for m in at.markdown)


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def _enter(at: AppTest, password: str) -> AppTest:
    at.text_input(key="auth.password").set_value(password)
    return at.button[0].click().run()


def _sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="auth.name").set_value(name)
    at.text_input(key="auth.password").set_value(password)
    return at.button[0].click().run()


def test_app_password_waits_grow_and_refuse_the_right_password(
    monkeypatch: pytest.MonkeyPatch, app_settings, clock: Clock
) -> None:  # noqa: ANN001
    monkeypatch.setenv("APP_PASSWORD", "open sesame")
    limiter = Accounts.from_settings(load_settings()).limiter
    at = AppTest.from_string(GATE).run()
    waits = []
    for _attempt in range(ATTEMPTS):
        _enter(at, "a wrong guess")
        assert _errors(at) == ["Wrong password."] and "secret content" not in _shown(at)
        waits.append(limiter.wait_seconds(APP, None, APP))
        _enter(at, "open sesame")  # right, but inside the wait: refused unchecked, the wait named
        assert "secret content" not in _shown(at)
        (message,) = _errors(at)
        assert message.startswith("Too many failed sign-ins: try again in ")
        clock.now += waits[-1]
    assert waits == [backoff(n) for n in range(1, ATTEMPTS + 1)]
    assert waits[:4] == [1, 2, 4, 8] and max(waits) == BACKOFF_CAP == 900  # grows, then holds at 15 minutes
    assert "15 min" in message
    _enter(at, "open sesame")
    assert "secret content" in _shown(at)


def test_account_waits_grow_and_own_sign_in_resets_no_other_name(accounts: Accounts, clock: Clock) -> None:
    at = AppTest.from_string(SIGN_IN).run()
    waits = []
    for _attempt in range(ATTEMPTS):
        _sign_in(at, "alice", "a wrong guess")
        assert _errors(at) == ["Wrong name or password."]
        waits.append(accounts.wait_seconds("alice", None))
        _sign_in(at, "alice", "alice-password-1")
        assert "secret content" not in _shown(at)
        assert _errors(at)[0].startswith("Too many failed sign-ins: try again in ")
        clock.now += waits[-1]
    assert waits == [backoff(n) for n in range(1, ATTEMPTS + 1)] and max(waits) == BACKOFF_CAP

    # The guesser signs in to their own account between guesses: alice's wait goes on growing.
    _sign_in(at, "bob", "bob-password-22")
    assert "secret content" in _shown(at) and not at.exception
    at.sidebar.button(key="auth.sign_out").click().run()
    _sign_in(at, "alice", "another guess")
    assert accounts.failures(name="alice") == ATTEMPTS + 1
    assert accounts.wait_seconds("alice", "198.51.100.9") == BACKOFF_CAP  # from anywhere new
    assert accounts.failures(client=None) == ATTEMPTS + 1  # bob's success took back only its own reservation


def test_a_lockout_is_never_permanent_for_a_known_client(accounts: Accounts, clock: Clock) -> None:
    assert accounts.login("bob", "bob-password-22", "203.0.113.5").name == "bob"  # bob's own browser
    for attempt in range(30):  # someone else guesses on bob's name, one try each time the wait ends
        with pytest.raises(Exception):  # noqa: B017 - LoginError or LoginThrottledError alike
            accounts.login("bob", "a guess", f"192.0.2.{attempt}")
        clock.now += accounts.wait_seconds("bob", "192.0.2.250")
    assert accounts.wait_seconds("bob", "192.0.2.250") == BACKOFF_CAP or accounts.failures(name="bob") == 30
    assert accounts.wait_seconds("bob", "203.0.113.5") == 0  # his own browser is not kept out
    assert accounts.login("bob", "bob-password-22", "203.0.113.5").name == "bob"


def test_a_password_change_ends_live_sessions(accounts: Accounts, app_settings) -> None:  # noqa: ANN001
    at = AppTest.from_string(SIGN_IN).run()
    _sign_in(at, "bob", "bob-password-22")
    assert "secret content" in _shown(at)
    at.run()
    assert "secret content" in _shown(at)  # still signed in at the next run
    other = Accounts.from_settings(app_settings)  # as `python -m rag users passwd bob` would, in another process
    other.set_password("bob", "a brand new password")
    other.close()
    at.run()
    assert "secret content" not in _shown(at) and at.text_input(key="auth.name") is not None
    _sign_in(at, "bob", "a brand new password")
    assert "secret content" in _shown(at)
    accounts.remove("bob")
    at.run()
    assert "secret content" not in _shown(at)


def test_sign_out_leaves_nothing_of_the_session(accounts: Accounts) -> None:
    at = AppTest.from_string(SIGN_IN)
    at.query_params["sid"] = "a" * 22
    at.run()
    _sign_in(at, "alice", "alice-password-1")
    assert "secret content" in _shown(at)
    at.session_state["evaluate.reports"] = ["passages of alice's private documents"]
    at.session_state["workspace.id"] = "0123456789ab"
    at.session_state["chat.doc_ids"] = ["d1"]
    at.sidebar.button(key="auth.sign_out").click().run()
    assert "secret content" not in _shown(at)
    for key in ("evaluate.reports", "workspace.id", "chat.doc_ids", "auth.user", "auth.account"):
        assert key not in at.session_state, key
    assert at.query_params["sid"] != ["a" * 22]  # a new browser session id: jobs and chats keyed by it stay behind
