"""Accounts: argon2 hashes, one message for every failed login, backoff per name and per client that
survives a restart, private files, and the `users` commands run as real processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from rag import schema
from rag.accounts import BACKOFF_CAP, Accounts, backoff
from rag.config import Settings, load_settings
from rag.database import FILE_NAME, Database
from rag.errors import AccountError, AccountNotFoundError, LoginError, LoginThrottledError

REPO = Path(__file__).resolve().parents[2]
# Cheap parameters keep the tests fast; the default hasher is exercised by the first test and the CLI tests.
CHEAP = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
PASSWORD = "correct horse battery"


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingHasher(PasswordHasher):
    """A real argon2 hasher that counts the password checks it does."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8192, parallelism=1)
        self.checks = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # noqa: A002 - argon2's own name
        self.checks += 1
        return super().verify(hash, password)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def accounts(db_settings: Settings, clock: Clock) -> Accounts:
    store = Accounts.from_settings(db_settings, clock=clock, hasher=CHEAP)
    store.add("alice", PASSWORD, admin=True)
    store.add("bob", "bob's own password")
    yield store
    store.close()


def _stored_hash(settings: Settings, name: str) -> str:
    with Database.open(settings) as db, db.read() as conn:
        return conn.execute(select(schema.accounts.c.hash).where(schema.accounts.c.name == name)).scalar_one()


def test_hashes_are_argon2id_and_never_the_password(db_settings: Settings) -> None:
    store = Accounts.from_settings(db_settings)  # the default parameters
    store.add("carol", PASSWORD)
    digest = _stored_hash(db_settings, "carol")
    assert digest.startswith("$argon2id$") and PASSWORD not in digest
    assert store.verify("carol", PASSWORD, "10.0.0.1").name == "carol"
    store.close()


def test_verify_accepts_the_password_and_refuses_others(accounts: Accounts, clock: Clock) -> None:
    account = accounts.verify("alice", PASSWORD, "10.0.0.1")
    assert account is not None and account.name == "alice" and account.admin
    assert accounts.verify("alice", "not the password", "10.0.0.1") is None
    clock.advance(1)
    assert accounts.verify("ALICE", PASSWORD, "10.0.0.1").name == "alice"  # names are case-blind
    assert [(a.name, a.admin) for a in accounts.list()] == [("alice", True), ("bob", False)]
    assert accounts.any()


def test_unknown_name_and_wrong_password_look_and_cost_the_same(db_settings: Settings, clock: Clock) -> None:
    hasher = CountingHasher()
    store = Accounts.from_settings(db_settings, clock=clock, hasher=hasher)
    store.add("alice", PASSWORD)
    messages = []
    for name, client in (("alice", "10.0.0.1"), ("nobody", "10.0.0.2"), ("not a valid name!", "10.0.0.3")):
        before = hasher.checks
        with pytest.raises(LoginError) as caught:
            store.login(name, "wrong password", client)
        assert type(caught.value) is LoginError
        assert hasher.checks - before == 1  # one argon2 check, against a dummy hash when the name is unknown
        messages.append(caught.value.user_message)
    assert messages == ["Wrong name or password."] * 3
    store.close()


def test_backoff_grows_per_name_and_refuses_the_right_password_meanwhile(accounts: Accounts, clock: Clock) -> None:
    waits = []
    for attempt in range(5):  # a new client each time: only the name's failures count
        assert accounts.verify("alice", "guess", f"10.0.1.{attempt}") is None
        waits.append(accounts.wait_seconds("alice", "10.9.9.9"))
        with pytest.raises(LoginThrottledError) as caught:  # the right password, during the window
            accounts.login("alice", PASSWORD, "10.9.9.9")
        assert 0 < caught.value.retry_after <= waits[-1]
        assert "try again in" in caught.value.user_message
        clock.advance(waits[-1])
    assert waits == [1, 2, 4, 8, 16]
    assert accounts.failures(name="alice") == 5  # refused attempts were not checked, so not counted
    assert accounts.login("alice", PASSWORD, "10.9.9.9").name == "alice"
    assert accounts.failures(name="alice") == 0 and accounts.failures(client="10.9.9.9") == 0


def test_backoff_grows_per_client_across_names(accounts: Accounts, clock: Clock) -> None:
    waits = []
    for name in ("alice", "bob", "ghost", "alice"):  # one client trying names, known and unknown
        assert accounts.verify(name, "guess", "192.0.2.7") is None
        waits.append(accounts.wait_seconds("someone-else", "192.0.2.7"))
        with pytest.raises(LoginThrottledError):
            accounts.verify("bob", "bob's own password", "192.0.2.7")
        clock.advance(waits[-1])
    assert waits == [1, 2, 4, 8]
    assert accounts.failures(client="192.0.2.7") == 4
    assert accounts.verify("bob", "bob's own password", "192.0.2.8").name == "bob"  # another client may log in


def test_unknown_names_are_throttled_like_known_ones(accounts: Accounts, clock: Clock) -> None:
    for attempt in range(3):
        with pytest.raises(LoginError):
            accounts.login("ghost", "guess", f"198.51.100.{attempt}")
        assert accounts.wait_seconds("ghost", None) == backoff(attempt + 1)
        with pytest.raises(LoginThrottledError):
            accounts.login("ghost", "guess", "198.51.100.200")
        clock.advance(backoff(attempt + 1))
    assert accounts.failures(name="ghost") == 3


def test_backoff_is_capped_and_forgotten_after_an_hour(accounts: Accounts, clock: Clock) -> None:
    for attempt in range(10):
        accounts.verify("bob", "guess", f"203.0.113.{attempt}")
        clock.advance(accounts.wait_seconds("bob", None))
    accounts.verify("bob", "guess", "203.0.113.99")
    assert accounts.wait_seconds("bob", None) == BACKOFF_CAP
    clock.advance(3601)
    assert accounts.failures(name="bob") == 0
    accounts.verify("bob", "guess", "203.0.113.100")
    assert accounts.wait_seconds("bob", None) == 1  # counting starts again


def test_throttling_survives_reopening_the_database(db_settings: Settings, clock: Clock) -> None:
    first = Accounts.from_settings(db_settings, clock=clock, hasher=CHEAP)
    first.add("alice", PASSWORD)
    assert first.verify("alice", "guess", "10.0.0.1") is None
    clock.advance(1)
    assert first.verify("alice", "guess again", "10.0.0.2") is None
    first.close()
    clock.advance(1)
    reopened = Accounts.from_settings(db_settings, clock=clock, hasher=CHEAP)  # as after a restart
    with pytest.raises(LoginThrottledError) as caught:
        reopened.login("alice", PASSWORD, "10.0.0.3")
    assert caught.value.retry_after == 1
    clock.advance(1)
    assert reopened.login("alice", PASSWORD, "10.0.0.3").name == "alice"
    reopened.close()


def test_parallel_attempts_get_one_guess(db_settings: Settings, clock: Clock) -> None:
    stores = [Accounts.from_settings(db_settings, clock=clock, hasher=CHEAP) for _ in range(2)]  # pooled connections
    stores[0].add("alice", PASSWORD)
    barrier = threading.Barrier(8)

    def attempt(i: int) -> str:
        barrier.wait()
        try:
            return "checked" if stores[i % 2].verify("alice", f"guess {i}", f"10.0.2.{i}") is None else "in"
        except LoginThrottledError:
            return "throttled"

    with ThreadPoolExecutor(8) as pool:
        outcomes = sorted(pool.map(attempt, range(8)))
    assert outcomes == ["checked"] + ["throttled"] * 7
    assert stores[1].failures(name="alice") == 1
    for store in stores:
        store.close()


def test_a_hash_made_with_other_parameters_is_redone_at_login(db_settings: Settings, clock: Clock) -> None:
    old = Accounts.from_settings(db_settings, clock=clock, hasher=CHEAP)
    old.add("alice", PASSWORD)
    old.close()
    assert "m=8192,t=1,p=1" in _stored_hash(db_settings, "alice")
    stronger = PasswordHasher(time_cost=2, memory_cost=16384, parallelism=1)
    new = Accounts.from_settings(db_settings, clock=clock, hasher=stronger)
    assert new.verify("alice", PASSWORD, "10.0.0.1") is not None
    assert "m=16384,t=2,p=1" in _stored_hash(db_settings, "alice")
    assert new.verify("alice", PASSWORD, "10.0.0.1") is not None
    new.close()


def test_files_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    store = Accounts.from_settings(load_settings(data_dir=data), hasher=CHEAP)
    store.add("alice", PASSWORD)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for path in data.iterdir():  # the database and, while it is open, its WAL journal
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    store.close()


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "../etc", "al/ice", "ålice", "bob\n"])
def test_bad_names_are_refused_with_a_message(accounts: Accounts, name: str) -> None:
    with pytest.raises(AccountError) as caught:
        accounts.add(name, PASSWORD)
    assert ("cannot be an account name" if name else "An account needs a name") in caught.value.user_message
    assert "letters, digits, dots, underscores or hyphens" in caught.value.user_message


def test_names_and_passwords_at_the_limits(accounts: Accounts) -> None:
    assert accounts.add("x" * 64, "12345678").name == "x" * 64
    assert accounts.add("A.b_c-1", PASSWORD).name == "A.b_c-1"
    with pytest.raises(AccountError) as caught:
        accounts.add("carol", "1234567")
    assert caught.value.user_message == "A password needs at least 8 characters."
    with pytest.raises(AccountError) as caught:
        accounts.add("Alice", PASSWORD)  # taken, whatever the case
    assert "already exists" in caught.value.user_message


def test_change_password_remove_and_the_last_admin(accounts: Accounts, clock: Clock) -> None:
    accounts.set_password("bob", "a brand new password")
    assert accounts.verify("bob", "bob's own password", "10.0.0.1") is None
    clock.advance(1)
    assert accounts.verify("bob", "a brand new password", "10.0.0.2") is not None
    with pytest.raises(AccountError) as caught:
        accounts.remove("alice")
    assert "last admin" in caught.value.user_message
    with pytest.raises(AccountError):
        accounts.set_admin("alice", False)
    assert accounts.set_admin("bob", True).admin
    assert accounts.remove("alice").name == "alice"
    with pytest.raises(AccountNotFoundError) as caught:
        accounts.set_password("alice", PASSWORD)
    assert caught.value.user_message == "No account is named “alice”."
    accounts.remove("bob")  # the last account may go: the app runs without logins again
    assert not accounts.any()


# -- the CLI, as real processes ---------------------------------------------------------------------------


def _rag(data: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAG_DATA_DIR": str(data)}
    return subprocess.run(
        [sys.executable, "-m", "rag", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        cwd=data.parent,
        env=env,
        timeout=120,
    )


def test_help_lists_the_users_commands() -> None:
    from click.testing import CliRunner

    from rag.cli import cli

    assert "users" in CliRunner().invoke(cli, ["--help"], obj={}).output
    out = CliRunner().invoke(cli, ["users", "--help"], obj={}).output
    for command in ("add", "list", "passwd", "remove"):
        assert command in out


def test_cli_add_list_passwd_remove(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = _rag(data, "users", "add", "alice", "--admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert "Added admin alice" in added.stdout
    assert _rag(data, "users", "add", "bob", "--password-stdin", stdin="bob's password\n").returncode == 0

    listed = _rag(data, "users", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["admin"]) for r in rows] == [("alice", True), ("bob", False)]
    assert all(set(r) == {"name", "admin", "created"} for r in rows)

    changed = _rag(data, "users", "passwd", "bob", "--password-stdin", stdin="bob's new password\r\n")
    assert changed.returncode == 0, changed.stderr
    store = Accounts.from_settings(load_settings(data_dir=data))
    assert store.verify("bob", "bob's new password", "127.0.0.1") is not None
    assert PASSWORD not in (data / FILE_NAME).read_bytes().decode("latin-1")
    store.close()

    removed = _rag(data, "users", "remove", "bob")
    assert removed.returncode == 0 and "Removed bob" in removed.stdout
    assert [r["name"] for r in json.loads(_rag(data, "users", "list", "--json").stdout)] == ["alice"]
    assert stat.S_IMODE((data / FILE_NAME).stat().st_mode) == 0o600


def test_cli_refuses_bad_input_with_a_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cases = [
        (("users", "add", "alice", "--password-stdin"), "short\n", "A password needs at least 8 characters."),
        (("users", "add", "al ice", "--password-stdin"), PASSWORD + "\n", "cannot be an account name"),
        (("users", "add", "alice", "--password-stdin"), "", "No password on stdin."),
        (("users", "add", "alice", "--password-stdin"), "two\nlines\n", "must be one line"),
        (("users", "add", "alice"), PASSWORD + "\n", "--password-stdin"),  # stdin is not a terminal
        (("users", "remove", "ghost"), None, "No account is named “ghost”."),
        (("users", "passwd", "ghost", "--password-stdin"), PASSWORD + "\n", "No account is named “ghost”."),
    ]
    for args, stdin, message in cases:
        result = _rag(data, *args, stdin=stdin)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
    as_argument = _rag(data, "users", "add", "alice", PASSWORD)  # a password is never an argument
    assert as_argument.returncode == 2 and "unexpected extra argument" in as_argument.stderr.lower()
    assert json.loads(_rag(data, "users", "list", "--json").stdout) == []
