"""Who is calling, and what their role lets them do: the rules every entry point obeys alike.

The web pages, the CLI and any API or MCP server pass a `Caller` to the service's methods, which check it
(never only the UI). Three kinds:

- `Caller.operator()`: the command line on the machine that holds the data (no accounts involved). All rights
  on shared workspaces and over accounts; a private workspace only by its id, never by its name.
- `Caller.anonymous()`: a web or API user with no account, allowed only while no account exists (with
  APP_PASSWORD, if set, already given). Owner of every shared workspace, as before accounts.
- `Caller.of(account)`: a signed-in account.

Roles in a workspace (`rag.schema.ROLES`), weakest first:

| role   | may                                                                                      |
|--------|------------------------------------------------------------------------------------------|
| viewer | list documents, ask, read sources and download originals, keep chats                     |
| editor | also upload, and re-index or delete the documents they uploaded                          |
| owner  | also re-index or delete anyone's documents there, and rename the workspace                |

An account's role: in its own private workspace, owner; in another's private workspace, none (it does not
exist for it); in a shared workspace, the higher of its membership role and the workspace's default role
(the role every signed-in account has there; NULL: members only, and non-members do not see it); admins are
owners of every shared workspace. Only admins (and the operator) create shared workspaces, delete them,
grant and revoke roles and set the default role; an account deletes its own private workspaces.

    caller = Caller.of(account)                       # or Caller.operator() / Caller.anonymous()
    service.documents(workspace_id, caller=caller)    # AccessDeniedError / WorkspaceNotFoundError if not allowed
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from rag.errors import AccessDeniedError

Role = Literal["viewer", "editor", "owner"]
_RANK = {"viewer": 1, "editor": 2, "owner": 3}


class Caller(BaseModel, frozen=True):
    """Who asks the engine for something: the operator, an anonymous user (no accounts), or an account."""

    kind: Literal["operator", "anonymous", "account"]
    account_id: str | None = None
    name: str | None = None
    admin: bool = False

    @classmethod
    def operator(cls) -> Caller:
        """The command line on the data's own machine."""
        return cls(kind="operator")

    @classmethod
    def anonymous(cls) -> Caller:
        """Anyone, while no account exists (refused everything once one does)."""
        return cls(kind="anonymous")

    @classmethod
    def of(cls, account: object) -> Caller:
        """A signed-in account (anything with `id`, `name` and `admin`: rag.Account)."""
        return cls(
            kind="account",
            account_id=account.id,  # type: ignore[attr-defined]
            name=account.name,  # type: ignore[attr-defined]
            admin=bool(account.admin),  # type: ignore[attr-defined]
        )

    @property
    def is_operator(self) -> bool:
        """The command line on the data's machine."""
        return self.kind == "operator"

    @property
    def manages(self) -> bool:
        """May manage shared workspaces, roles and accounts: the operator, or an admin."""
        return self.is_operator or (self.kind == "account" and self.admin)

    @property
    def conversation_key(self) -> str | None:
        """Whose chats these are when signed in (`account:<id>`); None: a browser session's own id is."""
        return f"account:{self.account_id}" if self.kind == "account" else None

    @property
    def label(self) -> str:
        """How messages name the caller."""
        return self.name or ("the operator" if self.is_operator else "anyone")


OPERATOR = Caller.operator()
ANONYMOUS = Caller.anonymous()


def at_least(role: Role | None, needed: Role) -> bool:
    """Whether `role` includes the rights of `needed`."""
    return role is not None and _RANK[role] >= _RANK[needed]


def stronger(*roles: Role | None) -> Role | None:
    """The highest of some roles (None: no role)."""
    present = [r for r in roles if r is not None]
    return max(present, key=_RANK.__getitem__) if present else None


def require_manager(caller: Caller, what: str) -> None:
    """Refuse unless the caller manages shared workspaces, roles and accounts (an admin or the operator)."""
    if not caller.manages:
        raise AccessDeniedError(f"{caller.label} may not {what}", user_message=f"Only an admin can {what}.")
