"""API tokens: bearer secrets for the HTTP API and the MCP server, stored hashed, shown once, revocable.

A token acts for one account (when accounts exist) or for everyone (when none do), optionally in one workspace
only and optionally for reading only. Its secret is `rag_<id>_<random>`; the file keeps only the SHA-256 of it:
a 256-bit random secret needs no slow hash, and a copy of the file opens nothing. Every request looks its token
up again, so a revoked token is refused at once, in every process that shares the data dir.

    tokens = Tokens.in_data_dir(settings.data_dir)
    token, secret = tokens.create("alice", account="alice", workspace=None, read_only=True)
    tokens.verify(secret)        # the ApiToken, or None when unknown or revoked
    tokens.revoke(token.id)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from rag.database import open_database

FILE_NAME = "tokens.sqlite3"
PREFIX = "rag_"
_TOUCH_EVERY = 60.0  # seconds between writes of a token's last use (a busy token is not a write per request)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_tokens (
    id           TEXT NOT NULL PRIMARY KEY,
    name         TEXT NOT NULL,
    account      TEXT,
    workspace    TEXT,
    read_only    INTEGER NOT NULL DEFAULT 0,
    digest       TEXT NOT NULL UNIQUE,
    created_at   REAL NOT NULL,
    last_used_at REAL,
    revoked_at   REAL
);
"""
_COLUMNS = "id, name, account, workspace, read_only, created_at, last_used_at, revoked_at"


class ApiToken(BaseModel, frozen=True):
    """A token as shown to people: never its secret or its hash.

    `account` is the account it acts for (None: made while no account existed; it acts for everyone, and stops
    working once accounts exist); `workspace` the id of the only workspace it may use (None: all the account's).
    """

    id: str
    name: str
    account: str | None = None
    workspace: str | None = None
    read_only: bool = False
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        """Not revoked."""
        return self.revoked_at is None

    @property
    def created(self) -> str:
        """When it was made, as an ISO timestamp in UTC."""
        return _iso(self.created_at)

    @property
    def last_used(self) -> str | None:
        """When it was last used (to the minute), as an ISO timestamp in UTC."""
        return _iso(self.last_used_at) if self.last_used_at else None


class Tokens:
    """The API tokens of one data dir, safe to share between threads and processes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_database(self.path, _SCHEMA)  # 0600 in a 0700 folder, like the accounts

    @classmethod
    def in_data_dir(cls, data_dir: Path | str) -> Tokens:
        """The tokens of a data dir."""
        return cls(Path(data_dir) / FILE_NAME)

    def create(
        self, name: str, account: str | None = None, workspace: str | None = None, read_only: bool = False
    ) -> tuple[ApiToken, str]:
        """A new token and its secret; the secret is not kept and cannot be shown again."""
        token = ApiToken(
            id=secrets.token_hex(6),
            name=name,
            account=account,
            workspace=workspace,
            read_only=read_only,
            created_at=time.time(),
        )
        secret = f"{PREFIX}{token.id}_{secrets.token_urlsafe(32)}"
        with self._lock:
            self._db.execute(
                "INSERT INTO api_tokens (id, name, account, workspace, read_only, digest, created_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (token.id, name, account, workspace, int(read_only), _digest(secret), token.created_at),
            )
        return token, secret

    def list(self) -> list[ApiToken]:
        """Every token, revoked ones too, oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY created_at").fetchall()
        return [_token(r) for r in rows]

    def any_active(self) -> bool:
        """Whether any token is still valid (then the API asks every caller for one)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM api_tokens WHERE revoked_at IS NULL LIMIT 1").fetchone() is not None

    def revoke(self, token_id: str) -> ApiToken | None:
        """Revoke a token by its id (as `tokens list` shows it): every later request with it is refused.
        None when no token has that id."""
        with self._lock:
            self._db.execute(
                "UPDATE api_tokens SET revoked_at=? WHERE id=? AND revoked_at IS NULL", (time.time(), token_id)
            )
            row = self._db.execute(f"SELECT {_COLUMNS} FROM api_tokens WHERE id=?", (token_id,)).fetchone()
        return _token(row) if row else None

    def verify(self, secret: str) -> ApiToken | None:
        """The token this secret opens, or None when it is malformed, unknown or revoked."""
        if not secret.startswith(PREFIX) or len(secret) > 128:
            return None
        token_id = secret[len(PREFIX) :].split("_", 1)[0]
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS}, digest FROM api_tokens WHERE id=?", (token_id,)).fetchone()
        if row is None or not hmac.compare_digest(row[-1], _digest(secret)):
            return None
        token = _token(row[:-1])
        if not token.active:
            return None
        now = time.time()
        if token.last_used_at is None or now - token.last_used_at > _TOUCH_EVERY:
            with self._lock:
                self._db.execute("UPDATE api_tokens SET last_used_at=? WHERE id=?", (now, token.id))
        return token

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _token(row: tuple) -> ApiToken:
    return ApiToken(
        id=row[0],
        name=row[1],
        account=row[2],
        workspace=row[3],
        read_only=bool(row[4]),
        created_at=row[5],
        last_used_at=row[6],
        revoked_at=row[7],
    )


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, tz=UTC).isoformat(timespec="seconds")
