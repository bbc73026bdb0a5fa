"""Optional accounts: names with argon2-hashed passwords and stable ids, in the engine's database.

With no account the app runs as one user (APP_PASSWORD may still guard it); once one exists every page
asks for a sign-in. Accounts live in the database (`rag.database`), so the CLI and every app process see
the same accounts and the same sign-in waits (`rag.signin`), and a restart forgets neither.

An account is known by its id everywhere (workspaces, documents, chats, jobs); its name is for signing in
and for people. Removing an account and adding one with the same name gives a new id, so the new account
inherits nothing. Changing a password bumps the account's `session_epoch`: a page checks it on every run,
so sessions signed in with the old password end at their next run.

A wrong password and an unknown name give the same message after the same work (an unknown name is
checked against a dummy hash) and are throttled alike.

    accounts = Accounts.from_settings(settings)
    accounts.add("alice", "correct horse battery", admin=True)
    if accounts.any():                                   # accounts mode: every page needs a sign-in
        account = accounts.login("alice", typed, client=ip_address)   # raises LoginError with the message to show
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, SecretStr
from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from rag import schema
from rag.config import Settings, load_settings
from rag.database import Database
from rag.errors import AccountError, AccountNotFoundError, LoginError
from rag.signin import APP, BACKOFF_CAP, FORGET_AFTER, SignInLimiter, backoff, client_key, name_key

__all__ = ["BACKOFF_CAP", "FORGET_AFTER", "Account", "Accounts", "backoff", "check_name", "check_password"]

MAX_NAME = 64
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # argon2 takes any length; this only stops a megabyte "password" from being hashed

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # used with fullmatch: "$" would let a final newline in
_LOGIN_FAILED = "Wrong name or password."


class Account(BaseModel, frozen=True):
    """One account as shown to people: never its hash."""

    id: str
    name: str
    admin: bool
    created_at: float
    session_epoch: int = 0

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


class Accounts:
    """The accounts of one database, safe to share between threads and processes.

    `clock` gives the wall-clock time used for the sign-in waits (tests pass their own); `hasher` the argon2
    parameters for new hashes (a hash made with other parameters is redone at its next successful sign-in).
    """

    def __init__(
        self, db: Database, *, clock: Callable[[], float] | None = None, hasher: PasswordHasher | None = None
    ) -> None:
        self.db = db
        self.limiter = SignInLimiter(db, clock)
        self._hasher = hasher or PasswordHasher()
        self._dummy: str | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Callable[[], float] | None = None, hasher: PasswordHasher | None = None
    ) -> Accounts:
        """The accounts of the settings' database (RAG_DATABASE_URL, else the data dir's SQLite file)."""
        return cls(Database.open(settings), clock=clock, hasher=hasher)

    @classmethod
    def in_data_dir(
        cls, data_dir: Path | str, *, clock: Callable[[], float] | None = None, hasher: PasswordHasher | None = None
    ) -> Accounts:
        """The accounts of a data dir (and of RAG_DATABASE_URL when that is set)."""
        return cls.from_settings(load_settings(data_dir=Path(data_dir)), clock=clock, hasher=hasher)

    check_name = staticmethod(check_name)
    check_password = staticmethod(check_password)

    def close(self) -> None:
        """Give back the database handle."""
        self.db.close()

    # -- reading ------------------------------------------------------------------------------------------

    def any(self) -> bool:
        """Whether accounts mode is on: at least one account exists, so every page needs a sign-in."""
        with self.db.read() as conn:
            return conn.execute(select(schema.accounts.c.id).limit(1)).first() is not None

    def list(self) -> list[Account]:
        """Every account, by name."""
        with self.db.read() as conn:
            rows = conn.execute(select(schema.accounts).order_by(schema.accounts.c.name_key)).all()
        return [_account(r) for r in rows]

    def get(self, name: str) -> Account | None:
        """The account with this name (any case), or None."""
        with self.db.read() as conn:
            return _by_name(conn, name)

    def get_by_id(self, account_id: str) -> Account | None:
        """The account with this id, or None (removed): a page re-checks its sign-in with it on every run."""
        with self.db.read() as conn:
            row = conn.execute(select(schema.accounts).where(schema.accounts.c.id == account_id)).first()
        return _account(row) if row else None

    def require(self, name: str) -> Account:
        """The account with this name; AccountNotFoundError if there is none."""
        account = self.get(name)
        if account is None:
            raise _not_found(name)
        return account

    def names(self, ids: set[str]) -> dict[str, str]:
        """Account names by id (removed accounts are absent), to show owners and members."""
        if not ids:
            return {}
        with self.db.read() as conn:
            rows = conn.execute(
                select(schema.accounts.c.id, schema.accounts.c.name).where(schema.accounts.c.id.in_(ids))
            )
            return {r.id: r.name for r in rows}

    def private_documents(self, name: str) -> int:
        """How many documents the account's private workspaces hold (what removing it must decide about)."""
        account = self.require(name)
        ws, docs = schema.workspaces, schema.documents
        with self.db.read() as conn:
            return conn.execute(
                select(func.count())
                .select_from(docs.join(ws, (docs.c.collection == ws.c.collection) & (docs.c.workspace == ws.c.id)))
                .where(ws.c.owner == account.id, ws.c.shared.is_(False))
            ).scalar_one()

    # -- managing accounts (CLI, Accounts page) -------------------------------------------------------------

    def add(self, name: str, password: str, admin: bool = False) -> Account:
        """Create an account with a new id; names are unique regardless of case."""
        check_name(name)
        digest = self._hasher.hash(check_password(password))
        account = Account(id=secrets.token_hex(8), name=name, admin=admin, created_at=time.time())
        try:
            with self.db.write() as conn:
                conn.execute(
                    insert(schema.accounts).values(
                        id=account.id,
                        name=name,
                        name_key=name.lower(),
                        hash=digest,
                        admin=admin,
                        created_at=account.created_at,
                    )
                )
        except IntegrityError as exc:
            raise AccountError(
                f"account {name!r} exists", user_message=f"An account named “{name}” already exists."
            ) from exc
        return account

    def remove(self, name: str, hand_to: str | None = None) -> Account:
        """Delete an account; the last admin stays while other accounts would be left without one.

        Its private workspaces go too, with its chats and its known clients. Private workspaces that still
        hold documents are refused unless `hand_to` names an admin who receives them (with the documents it
        uploaded anywhere); deleting those documents instead is the service's work (`RagService.remove_account`),
        since their chunks live in Milvus. Documents it uploaded to shared workspaces stay, with no uploader.
        """
        ws, docs = schema.workspaces, schema.documents
        with self.db.write("accounts") as conn:
            account = _by_name(conn, name)
            if account is None:
                raise _not_found(name)
            _keep_an_admin(conn, account, "remove")
            heir = None
            if hand_to is not None:
                heir = _by_name(conn, hand_to)
                if heir is None or not heir.admin or heir.id == account.id:
                    raise AccountError(
                        f"{hand_to!r} is not another admin",
                        user_message=f"Documents can be handed only to another admin; “{hand_to}” is not one.",
                    )
            private = conn.execute(select(ws).where(ws.c.owner == account.id, ws.c.shared.is_(False))).all()
            holding = [
                w
                for w in private
                if conn.execute(
                    select(docs.c.doc_id).where(docs.c.collection == w.collection, docs.c.workspace == w.id).limit(1)
                ).first()
            ]
            if holding and heir is None:
                raise AccountError(
                    f"{account.name} has private documents",
                    user_message=f"“{account.name}” has documents in private workspaces: delete them, or hand them "
                    "to an admin, before the account is removed.",
                )
            for workspace in private:
                if workspace in holding:
                    assert heir is not None
                    conn.execute(
                        update(ws)
                        .where(ws.c.collection == workspace.collection, ws.c.id == workspace.id)
                        .values(owner=heir.id, name=_free_name(conn, workspace, heir.id))
                    )
                else:
                    conn.execute(delete(schema.turns).where(schema.turns.c.workspace == workspace.id))
                    conn.execute(delete(ws).where(ws.c.collection == workspace.collection, ws.c.id == workspace.id))
            conn.execute(update(docs).where(docs.c.owner == account.id).values(owner=heir.id if heir else None))
            conn.execute(delete(schema.turns).where(schema.turns.c.sid == f"account:{account.id}"))
            conn.execute(delete(schema.memberships).where(schema.memberships.c.account_id == account.id))
            self.limiter.forget_subject(conn, account.id)
            conn.execute(delete(schema.accounts).where(schema.accounts.c.id == account.id))
        return account

    def set_password(self, name: str, password: str) -> Account:
        """Give an account a new password: its failed sign-ins are forgotten and its live sessions end at
        their next page run (its session epoch moves on)."""
        check_password(password)
        account = self.require(name)
        digest = self._hasher.hash(password)
        with self.db.write("accounts") as conn:
            conn.execute(
                update(schema.accounts)
                .where(schema.accounts.c.id == account.id)
                .values(hash=digest, session_epoch=schema.accounts.c.session_epoch + 1)
            )
            conn.execute(delete(schema.signin_failures).where(schema.signin_failures.c.key == name_key(account.name)))
            fresh = _by_name(conn, account.name)
        assert fresh is not None
        return fresh

    def set_admin(self, name: str, admin: bool) -> Account:
        """Make an account an admin or not; the last admin stays one while other accounts exist."""
        with self.db.write("accounts") as conn:
            account = _by_name(conn, name)
            if account is None:
                raise _not_found(name)
            if not admin:
                _keep_an_admin(conn, account, "demote")
            conn.execute(update(schema.accounts).where(schema.accounts.c.id == account.id).values(admin=admin))
        return account.model_copy(update={"admin": admin})

    # -- signing in (the sign-in page) --------------------------------------------------------------------

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
        """The account if the password is right, else None; LoginThrottledError while a wait runs.

        During a wait the password is not checked at all. An unknown name costs the same hash check as
        a known one and is throttled the same way.
        """
        dummy = self._dummy_hash()  # made before any lookup, so the first unknown name costs no extra hash
        with self.db.read() as conn:
            row = (
                conn.execute(select(schema.accounts).where(schema.accounts.c.name_key == name.lower())).first()
                if _NAME.fullmatch(name)
                else None
            )
        keys = self.limiter.keys(name, client, row.id if row else None)
        self.limiter.reserve(keys)
        try:
            self._hasher.verify(row.hash if row else dummy, password)
            ok = row is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok:
            self.limiter.failed(keys)
            return None
        self.limiter.succeeded(name, row.id, client)
        if self._hasher.check_needs_rehash(row.hash):  # made with older parameters: store it again with today's
            fresh = self._hasher.hash(password)
            with self.db.write() as conn:
                conn.execute(
                    update(schema.accounts)
                    .where(schema.accounts.c.id == row.id, schema.accounts.c.hash == row.hash)
                    .values(hash=fresh)
                )
        return _account(row)

    def enter_app_password(self, given: str, secret: SecretStr, client: str | None) -> None:
        """Check APP_PASSWORD under the same limiter as accounts (it counts as one name); LoginError (or
        LoginThrottledError) carries the message to show."""
        keys = self.limiter.keys(APP, client, APP)
        self.limiter.reserve(keys)
        if not hmac.compare_digest(given.encode(), secret.get_secret_value().encode()):
            self.limiter.failed(keys)
            raise LoginError("wrong app password", user_message="Wrong password.")
        self.limiter.succeeded(APP, APP, client)

    def wait_seconds(self, name: str, client: str | None) -> float:
        """How long a sign-in for this name from this client must still wait (0 when it may try now)."""
        account = self.get(name) if _NAME.fullmatch(name) else None
        return self.limiter.wait_seconds(name, client, account.id if account else None)

    def failures(self, *, name: str | None = None, client: str | None = None) -> int:
        """Consecutive failed sign-ins counted for a name, or else for a client address (what the wait grows on)."""
        return self.limiter.failures(name_key(name) if name is not None else client_key(client))

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy


def _account(row) -> Account:  # noqa: ANN001 - a Row of accounts
    return Account(
        id=row.id, name=row.name, admin=bool(row.admin), created_at=row.created_at, session_epoch=row.session_epoch
    )


def _by_name(conn: Connection, name: str) -> Account | None:
    row = conn.execute(select(schema.accounts).where(schema.accounts.c.name_key == name.lower())).first()
    return _account(row) if row else None


def _keep_an_admin(conn: Connection, account: Account, verb: str) -> None:
    if not account.admin:
        return
    admins = conn.execute(select(func.count()).where(schema.accounts.c.admin.is_(True))).scalar_one()
    total = conn.execute(select(func.count()).select_from(schema.accounts)).scalar_one()
    if admins == 1 and total > 1:
        raise AccountError(
            f"cannot {verb} the last admin {account.name!r}",
            user_message=f"“{account.name}” is the last admin: make another account an admin first "
            "(python -m rag users add NAME --admin), so someone can still manage accounts.",
        )


def _free_name(conn: Connection, workspace, owner: str) -> str:  # noqa: ANN001 - a Row of workspaces
    """The workspace's name, or the first of "NAME (2)", "NAME (3)", ... that `owner` has no private one by."""
    ws = schema.workspaces
    taken = set(
        conn.execute(
            select(ws.c.name).where(
                ws.c.collection == workspace.collection, ws.c.owner == owner, ws.c.shared.is_(False)
            )
        ).scalars()
    )
    candidate, number = workspace.name, 1
    while candidate in taken:
        number += 1
        suffix = f" ({number})"
        candidate = workspace.name[: 64 - len(suffix)] + suffix
    return candidate


def _not_found(name: str) -> AccountNotFoundError:
    return AccountNotFoundError(f"no account {name!r}", user_message=f"No account is named “{name}”.")
