"""Who calls the HTTP API or the MCP server: the one place an API token becomes the caller the service expects.

A token acts for its account: `Caller.of(account)` (rag/access.py), the same caller a signed-in page passes, so
the service applies the same roles everywhere (a workspace the account may not see does not exist for it; a
viewer cannot upload). A token can only narrow that, to one workspace or to reading.

When a token is needed:
- an account exists, an API token exists, or APP_PASSWORD is set: on every call (as every page asks for a
  sign-in);
- none of these: calls without a token are served as `Caller.anonymous()`, as the app then serves anyone, but
  only on a loopback address: `serve` refuses any other address until a token exists (`check_bind`).

    access = RemoteAccess.from_settings(settings)
    caller = access.authenticate(request.headers.get("authorization"))   # AuthenticationError: 401
    access.throttle(caller)                                               # RateLimitedError: 429
    workspace = access.workspace(caller, "HR", write=True)                # WorkspaceNotFoundError / AccessDeniedError
    service.documents(workspace.id, caller=caller.caller)                 # the service checks the role
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable

from pydantic import BaseModel

from rag.access import Caller
from rag.accounts import Accounts
from rag.config import Settings
from rag.database import Database
from rag.errors import AccessDeniedError, AccountError, AuthenticationError, ConfigError, RateLimitedError
from rag.tokens import ApiToken, Tokens
from rag.workspaces import Workspace, Workspaces

MAX_LABEL = 64


class RemoteCaller(BaseModel, frozen=True):
    """A call's caller: whom the service checks (`caller`), and what its token narrows.

    `caller` is an account's (`Caller.of`), anyone's while no account exists (`Caller.anonymous()`), or the
    operator's for a stdio MCP server the data's owner started without a token (as the CLI). `workspace` (an
    id) and `read_only` are the token's limits.
    """

    caller: Caller
    token: str | None = None
    workspace: str | None = None
    read_only: bool = False

    @property
    def owner(self) -> str:
        """Whose jobs these are: the account's, as on the pages (so one person uploads one job at a time, however
        they reach the engine), else the token's; `local` for a caller without one."""
        return self.caller.conversation_key or (f"token:{self.token}" if self.token else "local")


class RateLimiter:
    """A token bucket per caller: `per_minute` requests a minute on average, as many in a burst (0: no limit).

    Kept in the process: behind a proxy with several processes each allows the rate.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (requests left, when counted)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Spend one request of `key`'s allowance; RateLimitedError (with the wait) when none is left."""
        if self.per_minute <= 0:
            return
        rate = self.per_minute / 60.0
        with self._lock:
            now = self._clock()
            left, then = self._buckets.get(key, (float(self.per_minute), now))
            left = min(float(self.per_minute), left + (now - then) * rate)
            if left < 1.0:
                self._buckets[key] = (left, now)
                raise RateLimitedError((1.0 - left) / rate, self.per_minute)
            self._buckets[key] = (left - 1.0, now)


class RemoteAccess:
    """Tokens, and which workspaces their callers may use, over the accounts, tokens and workspaces of one
    database."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.accounts = Accounts(db)
        self.tokens = Tokens(db)
        self.workspaces_db = Workspaces(db, settings.collection)
        self.limiter = RateLimiter(settings.api_rate_limit)
        self.public = False  # listening beyond loopback: a token is needed even after the last one is revoked

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteAccess:
        """Over the settings' database (no Milvus, no model)."""
        return cls(settings, Database.open(settings))

    def close(self) -> None:
        """Give back the database handle."""
        self.db.close()

    # -- tokens (the CLI) ---------------------------------------------------------------------------------
    def issue(self, name: str, workspace: str | None = None, read_only: bool = False) -> tuple[ApiToken, str]:
        """A new token and its secret (shown once). With accounts, `name` is the account it acts for; without,
        a label, and the token acts for everyone until accounts exist. `workspace` (a name or id its caller
        sees) limits it to that workspace."""
        if self.accounts.any():
            account = self.accounts.require(name)
            name, caller, account_id = account.name, Caller.of(account), account.id
        else:
            if not 0 < len(name.strip()) <= MAX_LABEL:
                raise AccountError(
                    f"bad label {name!r}", user_message=f"A token's name has 1 to {MAX_LABEL} characters."
                )
            caller, account_id = Caller.anonymous(), None
        workspace_id = self.workspaces_db.get(workspace, caller).id if workspace else None
        return self.tokens.create(name.strip(), account_id=account_id, workspace=workspace_id, read_only=read_only)

    # -- who calls ----------------------------------------------------------------------------------------
    def tokens_required(self) -> bool:
        """Whether every call needs a token: accounts exist, a token exists, APP_PASSWORD guards the app, or the
        server listens beyond loopback."""
        password = self.settings.app_password
        return (
            self.public
            or self.accounts.any()
            or self.tokens.any_active()
            or bool(password and password.get_secret_value())
        )

    def check_bind(self, host: str) -> None:
        """Refuse to listen beyond this machine while calls without a token would be served; once listening
        there, every call needs a token, even after the last one is revoked."""
        if _loopback(host):
            return
        if self.tokens_required():
            self.public = True
            return
        raise ConfigError(
            f"refusing to listen on {host} without tokens",
            user_message=f"Refusing to listen on {host}: no account and no API token exist, so anyone who reaches "
            "that address could read and change every document. Create a token first "
            "(python -m rag tokens create NAME), or listen on 127.0.0.1.",
        )

    def authenticate(self, authorization: str | None, host: str | None = None) -> RemoteCaller:
        """The caller an `Authorization` header stands for; AuthenticationError when it names no valid token
        and one is needed. `host` is the request's Host header: a call without a token must be addressed to
        this machine by name (127.0.0.1, localhost, ::1), so a web page that rebinds its own domain to 127.0.0.1
        (DNS rebinding) cannot use an open server from the user's browser."""
        scheme, _, secret = (authorization or "").strip().partition(" ")
        secret = secret.strip() if scheme.lower() == "bearer" else ""
        token = self.tokens.verify(secret) if secret else None
        if token is None:
            if not self.tokens_required():
                if host is not None and not _loopback(_hostname(host)):
                    raise AccessDeniedError(
                        f"open call addressed to {host!r}",
                        user_message="Without an API token this server answers only requests addressed to "
                        "127.0.0.1 or localhost.",
                    )
                return RemoteCaller(caller=Caller.anonymous())  # open on loopback: any placeholder key a client sends
            if not secret:
                raise AuthenticationError(
                    "no bearer token",
                    user_message="This server needs an API token: send 'Authorization: Bearer <token>' "
                    "(an admin makes one with python -m rag tokens create NAME).",
                )
            raise AuthenticationError("unknown or revoked token", user_message="This API token is unknown or revoked.")
        if token.account_id is None:
            if self.accounts.any():
                raise AuthenticationError(
                    f"token {token.id} predates accounts",
                    user_message="This API token was made before accounts existed; create one for an account.",
                )
            caller = Caller.anonymous()
        else:
            account = self.accounts.get_by_id(token.account_id)
            if account is None:  # removed meanwhile (its tokens go with it)
                raise AuthenticationError(
                    "unknown or revoked token", user_message="This API token is unknown or revoked."
                )
            caller = Caller.of(account)
        return RemoteCaller(caller=caller, token=token.id, workspace=token.workspace, read_only=token.read_only)

    def local(self) -> RemoteCaller:
        """The user who owns the data, on this machine (a stdio MCP server they started): the operator, as the CLI."""
        return RemoteCaller(caller=Caller.operator())

    def throttle(self, caller: RemoteCaller) -> None:
        """Count a call against its token's rate (RAG_API_RATE_LIMIT); calls without a token are local only."""
        if caller.token is not None:
            self.limiter.take(caller.token)

    # -- which workspaces ---------------------------------------------------------------------------------
    def workspaces(self, caller: RemoteCaller) -> list[Workspace]:
        """The workspaces a caller may use, each with its role: those its account sees, narrowed to the token's."""
        return [w for w in self.workspaces_db.list(caller.caller) if caller.workspace in (None, w.id)]

    def workspace(self, caller: RemoteCaller, name: str | None = None, write: bool = False) -> Workspace:
        """A workspace by name or id for this caller (none given: the token's, else RAG_WORKSPACE).

        WorkspaceNotFoundError when its account may not see it; AccessDeniedError when the token is limited to
        another workspace, or is read-only and `write` is asked. The role a write needs is the service's to check.
        """
        found = self.workspaces_db.get(name or caller.workspace or self.settings.workspace, caller.caller)
        if caller.workspace is not None and found.id != caller.workspace:
            raise AccessDeniedError(
                f"token {caller.token} is limited to workspace {caller.workspace}",
                user_message=f"This API token may only use its own workspace, not “{found.name}”.",
            )
        if write and caller.read_only:
            raise AccessDeniedError(
                f"token {caller.token} is read-only",
                user_message="This API token is read-only: it cannot upload or delete documents.",
            )
        return found


def _hostname(host: str) -> str:
    """The name in a Host header, without its port (`[::1]:8000` is `::1`)."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
