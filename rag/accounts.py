"""Optional accounts: names with argon2-hashed passwords, and failed logins that back off, in SQLite.

With no account the app runs as one user (APP_PASSWORD may still guard it); once one exists every page
asks for a login. The file lives in the data dir (`accounts.sqlite3`, 0600 in a 0700 folder), so the CLI
and every app process see the same accounts and the same backoff, and a restart forgets neither.

A failed login makes the next attempt for that name, and from that client address, wait: 1 s, then
2, 4, ... up to 60 s, forgotten an hour after the last failure; a success clears both. An attempt is
recorded as a failure before its password is checked (and cleared if it succeeds), so requests sent in
parallel get one guess, not one each. A wrong password and an unknown name give the same message after
the same work (an unknown name is checked against a dummy hash) and are throttled alike.

    accounts = Accounts.from_settings(settings)
    accounts.add("alice", "correct horse battery", admin=True)
    if accounts.any():                                   # accounts mode: every page needs a login
        account = accounts.login("alice", typed, client=ip_address)   # raises LoginError with the message to show
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel

from rag.config import Settings
from rag.database import open_database
from rag.errors import AccountError, AccountNotFoundError, LoginError, LoginThrottledError

FILE_NAME = "accounts.sqlite3"
MAX_NAME = 64
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # argon2 takes any length; this only stops a megabyte "password" from being hashed
BACKOFF_BASE = 1.0  # seconds after the first failure
BACKOFF_CAP = 60.0  # longest wait between attempts
FORGET_AFTER = 3600.0  # failures older than this (since the last one) no longer count

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # used with fullmatch: "$" would let a final newline in
_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name       TEXT NOT NULL PRIMARY KEY COLLATE NOCASE,
    hash       TEXT NOT NULL,
    admin      INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    key     TEXT NOT NULL PRIMARY KEY,
    count   INTEGER NOT NULL,
    last_at REAL NOT NULL,
    until   REAL NOT NULL
);
"""
_LOGIN_FAILED = "Wrong name or password."


class Account(BaseModel, frozen=True):
    """One account as shown to people: never its hash."""

    name: str
    admin: bool
    created_at: float

    @property
    def created(self) -> str:
        """When it was created, as an ISO timestamp in UTC."""
        return datetime.fromtimestamp(self.created_at, tz=UTC).isoformat(timespec="seconds")


def check_name(name: str) -> str:
    """An account name as stored; refused unless 1-64 letters, digits, dots, underscores or hyphens."""
    if not _NAME.fullmatch(name):
        shown = "".join(c if c.isprintable() else "?" for c in name[:MAX_NAME]) + ("…" if len(name) > MAX_NAME else "")
        what = f"“{shown}” cannot be an account name" if name else "An account needs a name"
        raise AccountError(
            f"bad account name {shown!r}",
            user_message=f"{what}: use 1 to {MAX_NAME} letters, digits, dots, underscores or hyphens (no spaces).",
        )
    return name


def check_password(password: str) -> str:
    """A password fit to be hashed: at least MIN_PASSWORD characters (and not absurdly long)."""
    if len(password) < MIN_PASSWORD:
        raise AccountError("password too short", user_message=f"A password needs at least {MIN_PASSWORD} characters.")
    if len(password) > MAX_PASSWORD:
        raise AccountError("password too long", user_message=f"A password has at most {MAX_PASSWORD} characters.")
    return password


def backoff(failures: int) -> float:
    """Seconds to wait after `failures` consecutive failed logins: 1, 2, 4, ... capped at BACKOFF_CAP."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures - 1, 32))


class Accounts:
    """The accounts of one data dir, safe to share between threads and processes.

    `clock` gives the wall-clock time used for the backoff (tests pass their own); `hasher` the argon2
    parameters for new hashes (a hash made with other parameters is redone at its next successful login).
    """

    def __init__(
        self, path: Path | str, *, clock: Callable[[], float] = time.time, hasher: PasswordHasher | None = None
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._hasher = hasher or PasswordHasher()
        self._dummy: str | None = None
        self._lock = threading.Lock()
        self._db = open_database(self.path, _SCHEMA)  # 0700 folder, 0600 database and journal

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Callable[[], float] = time.time, hasher: PasswordHasher | None = None
    ) -> Accounts:
        """The accounts of `settings.data_dir`."""
        return cls.in_data_dir(settings.data_dir, clock=clock, hasher=hasher)

    @classmethod
    def in_data_dir(
        cls, data_dir: Path | str, *, clock: Callable[[], float] = time.time, hasher: PasswordHasher | None = None
    ) -> Accounts:
        """The accounts of a data dir."""
        return cls(Path(data_dir) / FILE_NAME, clock=clock, hasher=hasher)

    check_name = staticmethod(check_name)
    check_password = staticmethod(check_password)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    # -- managing accounts (CLI, admin page) --------------------------------------------------------------

    def any(self) -> bool:
        """Whether accounts mode is on: at least one account exists, so every page needs a login."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM accounts LIMIT 1").fetchone() is not None

    def list(self) -> list[Account]:
        """Every account, by name."""
        with self._lock:
            rows = self._db.execute("SELECT name, admin, created_at FROM accounts ORDER BY name").fetchall()
        return [Account(name=r[0], admin=bool(r[1]), created_at=r[2]) for r in rows]

    def get(self, name: str) -> Account | None:
        """The account with this name (any case), or None; a page re-checks its login with it."""
        with self._lock:
            row = self._db.execute("SELECT name, admin, created_at FROM accounts WHERE name=?", (name,)).fetchone()
        return Account(name=row[0], admin=bool(row[1]), created_at=row[2]) if row else None

    def require(self, name: str) -> Account:
        """The account with this name; AccountNotFoundError if there is none."""
        account = self.get(name)
        if account is None:
            raise _not_found(name)
        return account

    def add(self, name: str, password: str, admin: bool = False) -> Account:
        """Create an account; names are unique regardless of case."""
        check_name(name)
        digest = self._hasher.hash(check_password(password))
        account = Account(name=name, admin=admin, created_at=time.time())
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO accounts (name, hash, admin, created_at) VALUES (?,?,?,?)",
                    (name, digest, int(admin), account.created_at),
                )
        except sqlite3.IntegrityError as exc:
            raise AccountError(
                f"account {name!r} exists", user_message=f"An account named “{name}” already exists."
            ) from exc
        return account

    def remove(self, name: str) -> Account:
        """Delete an account; the last admin stays while other accounts would be left without one."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                account = self._get_locked(name)
                self._keep_an_admin(account, "remove")
                self._db.execute("DELETE FROM accounts WHERE name=?", (account.name,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return account

    def set_password(self, name: str, password: str) -> Account:
        """Give an account a new password; its failed logins are forgotten."""
        check_password(password)
        account = self.require(name)
        digest = self._hasher.hash(password)
        with self._lock:
            self._db.execute("UPDATE accounts SET hash=? WHERE name=?", (digest, account.name))
            self._db.execute("DELETE FROM failures WHERE key=?", (_name_key(account.name),))
        return account

    def set_admin(self, name: str, admin: bool) -> Account:
        """Make an account an admin or not; the last admin stays one while other accounts exist."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                account = self._get_locked(name)
                if not admin:
                    self._keep_an_admin(account, "demote")
                self._db.execute("UPDATE accounts SET admin=? WHERE name=?", (int(admin), account.name))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return account.model_copy(update={"admin": admin})

    def _get_locked(self, name: str) -> Account:
        row = self._db.execute("SELECT name, admin, created_at FROM accounts WHERE name=?", (name,)).fetchone()
        if row is None:
            raise _not_found(name)
        return Account(name=row[0], admin=bool(row[1]), created_at=row[2])

    def _keep_an_admin(self, account: Account, verb: str) -> None:
        if not account.admin:
            return
        admins, total = self._db.execute("SELECT SUM(admin), COUNT(*) FROM accounts").fetchone()
        if admins == 1 and total > 1:
            raise AccountError(
                f"cannot {verb} the last admin {account.name!r}",
                user_message=f"“{account.name}” is the last admin: make another account an admin first "
                "(python -m rag users add NAME --admin), so someone can still manage accounts.",
            )

    # -- logging in (the login page) ----------------------------------------------------------------------

    def login(self, name: str, password: str, client: str | None) -> Account:
        """The account these credentials open; LoginError (or LoginThrottledError) carries the message to show.

        `client` is the address the attempt comes from (Streamlit: `st.context.ip_address`); None counts
        as one unknown client.
        """
        account = self.verify(name, password, client)
        if account is None:
            raise LoginError("login failed", user_message=_LOGIN_FAILED)
        return account

    def verify(self, name: str, password: str, client: str | None) -> Account | None:
        """The account if the password is right, else None; LoginThrottledError while a backoff runs.

        During a backoff the password is not checked at all. An unknown name costs the same hash check as
        a known one and is throttled the same way.
        """
        dummy = self._dummy_hash()  # made before any lookup, so the first unknown name costs no extra hash
        keys = (_name_key(name), _client_key(client))
        self._reserve(keys)
        with self._lock:
            row = (
                self._db.execute("SELECT name, hash, admin, created_at FROM accounts WHERE name=?", (name,)).fetchone()
                if _NAME.fullmatch(name)
                else None
            )
        try:
            self._hasher.verify(row[1] if row else dummy, password)
            ok = row is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok:
            self._fail(keys)
            return None
        fresh = self._hasher.hash(password) if self._hasher.check_needs_rehash(row[1]) else None
        with self._lock:
            self._db.execute("DELETE FROM failures WHERE key IN (?,?)", keys)
            if fresh is not None:  # made with older parameters: store it again with today's
                self._db.execute("UPDATE accounts SET hash=? WHERE name=? AND hash=?", (fresh, row[0], row[1]))
        return Account(name=row[0], admin=bool(row[2]), created_at=row[3])

    def wait_seconds(self, name: str, client: str | None) -> float:
        """How long a login for this name from this client must still wait (0 when it may try now)."""
        now = self._clock()
        with self._lock:
            rows = self._db.execute(
                "SELECT until FROM failures WHERE key IN (?,?)", (_name_key(name), _client_key(client))
            ).fetchall()
        return max([0.0, *(r[0] - now for r in rows)])

    def failures(self, *, name: str | None = None, client: str | None = None) -> int:
        """Consecutive failed logins counted for a name, or else for a client address (what the wait grows on)."""
        key = _name_key(name) if name is not None else _client_key(client)
        with self._lock:
            row = self._db.execute("SELECT count, last_at FROM failures WHERE key=?", (key,)).fetchone()
        if row is None or self._clock() - row[1] > FORGET_AFTER:
            return 0
        return row[0]

    def _reserve(self, keys: tuple[str, str]) -> None:
        """Refuse while either key waits; otherwise count this attempt as failed until it proves otherwise.

        Done in one write transaction, so parallel attempts (threads or processes) cannot all slip through
        the same open window.
        """
        now = self._clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # Forgotten failures go, so names made up by a guesser do not pile up in the file.
                self._db.execute("DELETE FROM failures WHERE last_at < ?", (now - FORGET_AFTER,))
                rows = self._db.execute(
                    "SELECT key, count, last_at, until FROM failures WHERE key IN (?,?)", keys
                ).fetchall()
                wait = max([0.0, *(r[3] - now for r in rows)])
                if wait > 0:
                    self._db.execute("COMMIT")
                    raise LoginThrottledError(wait)
                counts = {r[0]: (r[1] if now - r[2] <= FORGET_AFTER else 0) for r in rows}
                for key in keys:
                    count = counts.get(key, 0) + 1
                    self._db.execute(
                        "INSERT OR REPLACE INTO failures (key, count, last_at, until) VALUES (?,?,?,?)",
                        (key, count, now, now + backoff(count)),
                    )
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise

    def _fail(self, keys: tuple[str, str]) -> None:
        """The reserved failure stands; its wait runs from the end of the check, not from its start."""
        now = self._clock()
        with self._lock:
            rows = self._db.execute("SELECT key, count FROM failures WHERE key IN (?,?)", keys).fetchall()
            for key, count in rows:
                self._db.execute("UPDATE failures SET last_at=?, until=? WHERE key=?", (now, now + backoff(count), key))

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy


def _name_key(name: str) -> str:
    return "name:" + name.casefold()[: MAX_NAME + 1]


def _client_key(client: str | None) -> str:
    return "client:" + (client or "unknown")[:256]


def _not_found(name: str) -> AccountNotFoundError:
    return AccountNotFoundError(f"no account {name!r}", user_message=f"No account is named “{name}”.")
