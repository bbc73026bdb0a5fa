"""Who may call the API: tokens become callers with the pages' own workspace rules, tokens only narrow them,
the API is open only on loopback with nothing to guard it, and each token has its rate."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner

from rag.access import Caller
from rag.accounts import Accounts
from rag.cli import cli
from rag.config import Settings, load_settings
from rag.database import Database
from rag.errors import (
    AccessDeniedError,
    AccountNotFoundError,
    AuthenticationError,
    ConfigError,
    RagError,
    RateLimitedError,
    WorkspaceNotFoundError,
)
from rag.remote import RateLimiter, RemoteAccess, RemoteCaller

CHEAP = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


@contextlib.contextmanager
def refused(kind: type[RagError], words: str) -> Iterator[None]:
    """The block raises `kind` with `words` in the message people see."""
    with pytest.raises(kind) as caught:
        yield
    assert words in caught.value.user_message, caught.value.user_message


@pytest.fixture
def access(db_settings: Settings) -> Iterator[RemoteAccess]:
    """Over each database engine in turn (cheap argon2 parameters for the accounts made here)."""
    made = RemoteAccess(db_settings, Database.open(db_settings))
    made.accounts = Accounts(made.db, hasher=CHEAP)
    yield made
    made.close()


def _accounts(access: RemoteAccess) -> tuple[str, str]:
    alice = access.accounts.add("alice", "correct horse battery")
    bob = access.accounts.add("bob", "correct horse battery")
    mine = access.workspaces_db.create("alice-notes", owner=alice.id, shared=False)
    theirs = access.workspaces_db.create("bob-notes", owner=bob.id, shared=False)
    return mine.id, theirs.id


def test_open_on_loopback_only_while_nothing_guards_it(access: RemoteAccess) -> None:
    assert not access.tokens_required()
    anyone = RemoteCaller(caller=Caller.anonymous())
    assert access.authenticate(None) == anyone
    assert access.authenticate("Bearer sk-placeholder") == anyone  # an OpenAI client insists on some key
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
        assert access.authenticate(None, host) == anyone
    with refused(AccessDeniedError, "addressed to 127.0.0.1 or localhost"):
        access.authenticate(None, "docs.evil.example:8000")  # a web page's domain rebound to 127.0.0.1
    access.check_bind("127.0.0.1")
    access.check_bind("::1")
    with refused(ConfigError, "Refusing to listen on 0.0.0.0"):
        access.check_bind("0.0.0.0")
    _token, secret = access.issue("scripts")
    access.check_bind("0.0.0.0")  # a token exists: it may listen, and now every call needs one
    with refused(AuthenticationError, "needs an API token"):
        access.authenticate(None)
    with refused(AuthenticationError, "unknown or revoked"):
        access.authenticate("Bearer sk-placeholder")
    assert access.authenticate(f"Bearer {secret}", "docs.example.org").token is not None  # behind a proxy
    # Revoking the last token does not open a server that listens beyond loopback.
    access.tokens.revoke(_token.id)
    with pytest.raises(AuthenticationError):
        access.authenticate(None)


def test_app_password_guards_the_api_too(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", app_password="s3cret-word")  # SQLite: no state to speak of
    guarded = RemoteAccess.from_settings(settings)
    try:
        assert guarded.tokens_required()
        with pytest.raises(AuthenticationError):
            guarded.authenticate(None)
    finally:
        guarded.close()


def test_serve_refuses_another_address_before_starting_anything(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MILVUS_URI", "http://127.0.0.1:9")  # nothing listens: reaching it would fail otherwise
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "8999"], obj={})
    assert result.exit_code == 1
    assert "Refusing to listen on 0.0.0.0" in result.output and "tokens create" in result.output


def test_a_token_acts_for_its_account_with_the_pages_rules(access: RemoteAccess) -> None:
    mine, theirs = _accounts(access)
    _, secret = access.issue("alice")
    caller = access.authenticate(f"bearer {secret}")
    alice = access.accounts.require("alice")
    assert caller.caller == Caller.of(alice) and caller.owner == f"account:{alice.id}"  # the pages' own
    assert {(w.name, w.role) for w in access.workspaces(caller)} == {("default", "editor"), ("alice-notes", "owner")}
    assert access.workspace(caller, "alice-notes").id == mine
    assert access.workspace(caller).id == "default"
    for name in ("bob-notes", theirs):  # bob's private workspace does not exist for alice, by name or id
        with pytest.raises(WorkspaceNotFoundError):
            access.workspace(caller, name)
    with pytest.raises(AccountNotFoundError):
        access.issue("carol")  # with accounts, a token is for an existing account
    with pytest.raises(WorkspaceNotFoundError):
        access.issue("alice", workspace="bob-notes")


def test_a_token_narrows_its_account_to_a_workspace_or_to_reading(access: RemoteAccess) -> None:
    mine, _ = _accounts(access)
    _, narrow = access.issue("alice", workspace="alice-notes")
    caller = access.authenticate(f"Bearer {narrow}")
    assert caller.workspace == mine
    assert [w.id for w in access.workspaces(caller)] == [mine]
    assert access.workspace(caller).id == mine  # its own workspace is the default
    with refused(AccessDeniedError, "only use its own workspace"):
        access.workspace(caller, "default")
    _, reader = access.issue("alice", read_only=True)
    caller = access.authenticate(f"Bearer {reader}")
    assert access.workspace(caller, "alice-notes").id == mine
    with refused(AccessDeniedError, "read-only"):
        access.workspace(caller, "alice-notes", write=True)


def test_a_removed_account_or_a_token_from_before_accounts_is_refused(access: RemoteAccess) -> None:
    _, before = access.issue("scripts")  # no accounts yet: acts for everyone
    assert access.authenticate(f"Bearer {before}").caller == Caller.anonymous()
    _accounts(access)
    access.accounts.set_admin("alice", True)
    with refused(AuthenticationError, "made before accounts"):
        access.authenticate(f"Bearer {before}")
    _, bobs = access.issue("bob")
    assert access.authenticate(f"Bearer {bobs}").caller.name == "bob"
    access.accounts.remove("bob")
    with refused(AuthenticationError, "unknown or revoked"):
        access.authenticate(f"Bearer {bobs}")


def test_an_admin_flag_is_read_at_each_call(access: RemoteAccess) -> None:
    _accounts(access)
    _, secret = access.issue("alice")
    assert not access.authenticate(f"Bearer {secret}").caller.admin
    access.accounts.set_admin("alice", True)
    assert access.authenticate(f"Bearer {secret}").caller.admin


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_limit_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(60, clock=clock)
    for _ in range(60):
        limiter.take("t1")
    with pytest.raises(RateLimitedError) as refused:
        limiter.take("t1")
    assert 0.9 < refused.value.retry_after <= 1.0 and "60 a minute" in refused.value.user_message
    limiter.take("t2")  # another token has its own allowance
    clock.now += 1.0  # one request a second comes back
    limiter.take("t1")
    with pytest.raises(RateLimitedError):
        limiter.take("t1")
    RateLimiter(0).take("t1")  # 0: no limit
