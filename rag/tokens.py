"""API tokens: bearer secrets for the HTTP API and the MCP server, stored hashed, shown once, revocable.

A token acts for one account (when accounts exist) or for everyone (when none do), optionally in one workspace
only and optionally for reading only. Its secret is `rag_<id>_<random>`; the database keeps only the SHA-256 of
it: a 256-bit random secret needs no slow hash, and a copy of the table opens nothing. Every request looks its
token up again, so a revoked token is refused at once, in every process that shares the database; removing an
account removes its tokens.

    tokens = Tokens(Database.open(settings))
    token, secret = tokens.create("alice", account_id=alice.id, read_only=True)
    tokens.verify(secret)        # the ApiToken, or None when unknown or revoked
    tokens.revoke(token.id)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy import insert, select, update

from rag import schema
from rag.database import Database

PREFIX = "rag_"
_TOUCH_EVERY = 60.0  # seconds between writes of a token's last use (a busy token is not a write per request)
_TABLE = schema.api_tokens


class ApiToken(BaseModel, frozen=True):
    """A token as shown to people: never its secret or its hash.

    `account_id` is the account it acts for (None: made while no account existed; it acts for everyone, and stops
    working once accounts exist); `workspace` the id of the only workspace it may use (None: all it may see).
    """

    id: str
    name: str
    account_id: str | None = None
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
    """The API tokens of one database, safe to share between threads and processes."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, name: str, account_id: str | None = None, workspace: str | None = None, read_only: bool = False
    ) -> tuple[ApiToken, str]:
        """A new token and its secret; the secret is not kept and cannot be shown again."""
        token = ApiToken(
            id=secrets.token_hex(6),
            name=name,
            account_id=account_id,
            workspace=workspace,
            read_only=read_only,
            created_at=time.time(),
        )
        secret = f"{PREFIX}{token.id}_{secrets.token_urlsafe(32)}"
        with self.db.write() as conn:
            conn.execute(insert(_TABLE).values(**token.model_dump(), digest=_digest(secret)))
        return token, secret

    def list(self) -> list[ApiToken]:
        """Every token, revoked ones too, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(select(_TABLE).order_by(_TABLE.c.created_at)).all()
        return [_token(r) for r in rows]

    def any_active(self) -> bool:
        """Whether any token is still valid (then the API asks every caller for one)."""
        with self.db.read() as conn:
            return conn.execute(select(_TABLE.c.id).where(_TABLE.c.revoked_at.is_(None)).limit(1)).first() is not None

    def revoke(self, token_id: str) -> ApiToken | None:
        """Revoke a token by its id (as `tokens list` shows it): every later request with it is refused.
        None when no token has that id."""
        with self.db.write() as conn:
            conn.execute(
                update(_TABLE)
                .where(_TABLE.c.id == token_id, _TABLE.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            row = conn.execute(select(_TABLE).where(_TABLE.c.id == token_id)).first()
        return _token(row) if row else None

    def verify(self, secret: str) -> ApiToken | None:
        """The token this secret opens, or None when it is malformed, unknown or revoked."""
        if not secret.startswith(PREFIX) or len(secret) > 128:
            return None
        token_id = secret[len(PREFIX) :].split("_", 1)[0]
        with self.db.read() as conn:
            row = conn.execute(select(_TABLE).where(_TABLE.c.id == token_id)).first()
        if row is None or not hmac.compare_digest(row.digest, _digest(secret)):
            return None
        token = _token(row)
        if not token.active:
            return None
        now = time.time()
        if token.last_used_at is None or now - token.last_used_at > _TOUCH_EVERY:
            with self.db.write() as conn:
                conn.execute(update(_TABLE).where(_TABLE.c.id == token.id).values(last_used_at=now))
        return token

    def close(self) -> None:
        """Give back the database handle."""
        self.db.close()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _token(row: object) -> ApiToken:
    return ApiToken.model_validate(row, from_attributes=True)


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, tz=UTC).isoformat(timespec="seconds")
