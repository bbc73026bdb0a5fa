"""Who calls the HTTP API or the MCP server, and what they may touch: the one place a token becomes a caller.

The rules are the pages' own. A caller sees the workspaces `Workspaces.list(account)` gives its account and finds
one with `Workspaces.get(name, account)` (a workspace it may not see does not exist for it): the functions the
sidebar and every page call. A token can only narrow them, to one workspace or to reading.

When a token is needed:
- accounts exist, an API token exists, or APP_PASSWORD is set: on every call (as every page asks for a login);
- none of these: calls without a token are served, as the app serves everyone then, but only on a loopback
  address: `serve` refuses any other address until a token exists (`check_bind`).

    access = RemoteAccess.from_settings(settings)
    caller = access.authenticate(request.headers.get("authorization"))   # AuthenticationError: 401
    access.throttle(caller)                                               # RateLimitedError: 429
    workspace = access.workspace(caller, "HR", write=True)                # WorkspaceNotFoundError / AccessDeniedError
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable

from pydantic import BaseModel

from rag.accounts import Accounts
from rag.config import Settings
from rag.documents import catalog_path
from rag.errors import AccessDeniedError, AuthenticationError, ConfigError, RateLimitedError
from rag.tokens import ApiToken, Tokens
from rag.workspaces import Workspace, Workspaces


class RemoteCaller(BaseModel, frozen=True):
    """Who a call comes from, as the engine's rules need it.

    `account` is None when accounts are off (everyone is alike, as on the pages) or for the local operator (a
    stdio MCP server started by the user who owns the data dir, like the CLI). `workspace` (an id) and
    `read_only` are what the token narrows.
    """

    account: str | None = None
    admin: bool = False
    token: str | None = None
    workspace: str | None = None
    read_only: bool = False

    @property
    def owner(self) -> str:
        """Whose jobs these are: the account's, as on the pages (so one person uploads one job at a time, however
        they reach the engine), else the token's; `local` for the operator."""
        if self.account:
            return f"user:{self.account}"
        return f"token:{self.token}" if self.token else "local"


class RateLimiter:
    """A token bucket per caller: `per_minute` requests a minute on average, as many in a burst (0: no limit).

    Kept in the process: behind a proxy with several processes each allows the rate.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens left, when counted)
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
    """Tokens, and what their callers may see and do, over the accounts, tokens and workspaces of a data dir."""

    def __init__(self, settings: Settings, accounts: Accounts, tokens: Tokens, workspaces: Workspaces) -> None:
        self.settings = settings
        self.accounts = accounts
        self.tokens = tokens
        self.workspaces_db = workspaces
        self.limiter = RateLimiter(settings.api_rate_limit)
        self.public = False  # listening beyond loopback: a token is needed even if the last one is revoked

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteAccess:
        """The accounts, tokens and workspaces of `settings.data_dir` (no Milvus, no model)."""
        return cls(
            settings,
            Accounts.from_settings(settings),
            Tokens.in_data_dir(settings.data_dir),
            Workspaces(catalog_path(settings), settings.collection),
        )

    def close(self) -> None:
        """Close the database files."""
        self.accounts.close()
        self.tokens.close()
        self.workspaces_db.close()

    # -- tokens (the CLI) ---------------------------------------------------------------------------------
    def issue(self, name: str, workspace: str | None = None, read_only: bool = False) -> tuple[ApiToken, str]:
        """A new token and its secret (shown once). With accounts, `name` is the account it acts for; without,
        a label, and the token acts for everyone until accounts exist. `workspace` (a name the account sees)
        limits it to that workspace."""
        account = self.accounts.require(name).name if self.accounts.any() else None
        workspace_id = self.workspaces_db.get(workspace, account).id if workspace else None
        return self.tokens.create(name, account=account, workspace=workspace_id, read_only=read_only)

    # -- who calls ----------------------------------------------------------------------------------------
    def tokens_required(self) -> bool:
        """Whether every call needs a token: accounts exist, a token exists, or APP_PASSWORD guards the app."""
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

    def authenticate(self, authorization: str | None) -> RemoteCaller:
        """The caller an `Authorization` header stands for; AuthenticationError when it names no valid token
        and one is needed."""
        scheme, _, secret = (authorization or "").strip().partition(" ")
        secret = secret.strip() if scheme.lower() == "bearer" else ""
        token = self.tokens.verify(secret) if secret else None
        if token is None:
            if not self.tokens_required():
                return RemoteCaller()  # open on loopback: anyone, whatever placeholder key their client insists on
            if not secret:
                raise AuthenticationError(
                    "no bearer token",
                    user_message="This server needs an API token: send 'Authorization: Bearer <token>' "
                    "(an admin makes one with python -m rag tokens create NAME).",
                )
            raise AuthenticationError("unknown or revoked token", user_message="This API token is unknown or revoked.")
        if not self.accounts.any():
            return RemoteCaller(token=token.id, workspace=token.workspace, read_only=token.read_only)
        account = self.accounts.get(token.account) if token.account else None
        if account is None:
            raise AuthenticationError(
                f"token {token.id} has no account",
                user_message="This API token's account no longer exists, or the token was made before accounts "
                "existed; create a new one for an account.",
            )
        return RemoteCaller(
            account=account.name,
            admin=account.admin,
            token=token.id,
            workspace=token.workspace,
            read_only=token.read_only,
        )

    def local(self) -> RemoteCaller:
        """The user who owns the data dir, on this machine (a stdio MCP server they started): as the CLI, every
        workspace."""
        return RemoteCaller()

    def throttle(self, caller: RemoteCaller) -> None:
        """Count a call against its token's rate (RAG_API_RATE_LIMIT); calls without a token are local only."""
        if caller.token is not None:
            self.limiter.take(caller.token)

    # -- what they may touch ------------------------------------------------------------------------------
    def workspaces(self, caller: RemoteCaller) -> list[Workspace]:
        """The workspaces a caller may use: those its account sees, narrowed to the token's one."""
        return [w for w in self.workspaces_db.list(caller.account) if caller.workspace in (None, w.id)]

    def workspace(self, caller: RemoteCaller, name: str | None = None, write: bool = False) -> Workspace:
        """A workspace by name or id for this caller (none given: the token's, else RAG_WORKSPACE).

        WorkspaceNotFoundError when its account may not see it; AccessDeniedError when the token is limited to
        another workspace, or is read-only and `write` is asked.
        """
        found = self.workspaces_db.get(name or caller.workspace or self.settings.workspace, caller.account)
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


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
