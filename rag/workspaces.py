"""Workspaces: named sets of documents, kept apart in every search, list and delete; and who may do what in them.

A workspace has a stable id (what chunks, catalogue rows, keyword entries and chats carry) and a name
people choose and may change. `default` (id `default`) always exists: a data dir from before workspaces is
its content. A workspace is shared (among accounts, by role: `rag.access`) or private to the account that
owns it. Names are unique among shared workspaces and among one account's private ones, never across
accounts, so nobody can take the name another account's workspace needs or learn it from an error.

Looking a workspace up by name sees only what the caller may see: first a workspace with that id, then the
caller's own private workspace by that name, then a shared one. The operator (the CLI) never reaches a
private workspace by name, and the name `default` is kept for the default workspace, so
`RAG_WORKSPACE=default` always means it, whatever it has been renamed to.
"""

from __future__ import annotations

import re
import secrets
import time
import unicodedata

from pydantic import BaseModel
from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from rag import schema
from rag.access import Caller, Role, stronger
from rag.database import Database
from rag.errors import AccessDeniedError, WorkspaceError, WorkspaceNotFoundError

DEFAULT_ID = "default"
MAX_NAME = 64
DEFAULT_ROLE: Role = "editor"
"""What a signed-in account that is not a member may do in a new shared workspace (as before roles)."""

_FORBIDDEN = re.compile(r"[\\/:*?\"<>|]")


class Workspace(BaseModel, frozen=True):
    """One workspace: its stable id, its name, who owns it, and the role of the caller who looked it up."""

    id: str
    name: str
    owner: str | None = None
    """The account id of a private workspace's owner (None: shared)."""
    shared: bool = True
    default_role: Role | None = DEFAULT_ROLE
    created_at: float = 0.0
    role: Role | None = None
    """The role of the caller it was listed or found for (None when read without a caller)."""

    @property
    def label(self) -> str:
        """The name as the sidebar shows it."""
        return self.name if self.shared else f"{self.name} (private)"


class Member(BaseModel, frozen=True):
    """An account's role in a shared workspace."""

    account_id: str
    name: str
    role: Role


def check_name(name: str) -> str:
    """A workspace name as stored: trimmed, NFC; refused when empty, too long or shaped like a path."""
    clean = unicodedata.normalize("NFC", name).strip()
    if not clean:
        raise WorkspaceError("empty workspace name", user_message="A workspace needs a name.")
    if len(clean) > MAX_NAME:
        raise WorkspaceError(
            "workspace name too long", user_message=f"A workspace name has at most {MAX_NAME} characters."
        )
    if _FORBIDDEN.search(clean) or clean in {".", ".."} or any(unicodedata.category(c)[0] == "C" for c in clean):
        raise WorkspaceError(
            f"bad workspace name {clean!r}",
            user_message=f"“{clean}” cannot be a workspace name: use letters, digits, spaces and . _ - "
            '(no / \\ : * ? " < > | or control characters).',
        )
    return clean


class Workspaces:
    """The workspaces of one collection, and the memberships of its shared ones."""

    def __init__(self, db: Database, collection: str) -> None:
        self.db = db
        self.collection = collection
        ws = schema.workspaces
        with db.write("workspaces") as conn:
            found = conn.execute(select(ws.c.id).where(ws.c.collection == collection, ws.c.id == DEFAULT_ID)).first()
            if found is None:
                conn.execute(
                    insert(ws).values(
                        collection=collection,
                        id=DEFAULT_ID,
                        name=DEFAULT_ID,
                        owner=None,
                        shared=True,
                        default_role=DEFAULT_ROLE,
                        created_at=time.time(),
                    )
                )

    # -- reading ------------------------------------------------------------------------------------------

    def _all(self, conn: Connection) -> list[Workspace]:
        ws = schema.workspaces
        rows = conn.execute(select(ws).where(ws.c.collection == self.collection)).all()
        return [_workspace(r) for r in rows]

    def role(self, workspace: Workspace, caller: Caller) -> Role | None:
        """The caller's role in a workspace (None: it does not exist for them)."""
        with self.db.read() as conn:
            return self._role(conn, workspace, caller, self._memberships(conn, caller))

    def _memberships(self, conn: Connection, caller: Caller) -> dict[str, Role]:
        if caller.kind != "account":
            return {}
        m = schema.memberships
        rows = conn.execute(
            select(m.c.workspace_id, m.c.role).where(
                m.c.collection == self.collection, m.c.account_id == caller.account_id
            )
        )
        return {r.workspace_id: r.role for r in rows}

    def _role(self, conn: Connection, workspace: Workspace, caller: Caller, members: dict[str, Role]) -> Role | None:
        if caller.is_operator:
            return "owner"
        if caller.kind == "anonymous":
            if not workspace.shared or conn.execute(select(schema.accounts.c.id).limit(1)).first() is not None:
                return None
            return "owner"
        if not workspace.shared:
            return "owner" if workspace.owner == caller.account_id else None
        if caller.admin:
            return "owner"
        return stronger(members.get(workspace.id), workspace.default_role)

    def list(self, caller: Caller) -> list[Workspace]:
        """The workspaces the caller may see, each with their role, `default` first, then by name."""
        with self.db.read() as conn:
            members = self._memberships(conn, caller)
            rows = [w.model_copy(update={"role": self._role(conn, w, caller, members)}) for w in self._all(conn)]
        visible = [w for w in rows if w.role is not None]
        return sorted(visible, key=lambda w: (w.id != DEFAULT_ID, w.name.casefold(), w.shared))

    def all(self) -> list[Workspace]:
        """Every workspace of the collection, whoever owns it (the operator's listing; no role)."""
        with self.db.read() as conn:
            return sorted(self._all(conn), key=lambda w: (w.id != DEFAULT_ID, w.name.casefold(), w.shared))

    def by_id(self, workspace_id: str) -> Workspace | None:
        """A workspace by id, whoever may see it (internal: the service checks roles)."""
        ws = schema.workspaces
        with self.db.read() as conn:
            row = conn.execute(select(ws).where(ws.c.collection == self.collection, ws.c.id == workspace_id)).first()
        return _workspace(row) if row else None

    def get(self, name: str, caller: Caller) -> Workspace:
        """A workspace by id or name that the caller may see, with their role; one they may not see does not
        exist for them, and the message names only what they typed."""
        wanted = name.strip()
        for workspace in self._candidates(wanted, caller):
            return workspace
        raise WorkspaceNotFoundError(
            f"no workspace {wanted!r}", user_message=f"There is no workspace named “{wanted}”."
        )

    def _candidates(self, wanted: str, caller: Caller) -> list[Workspace]:
        visible = self.list(caller)
        by_id = [w for w in visible if w.id == wanted]
        own = [w for w in visible if not w.shared and w.owner == caller.account_id and caller.kind == "account"]
        return [
            *by_id,
            *(w for w in own if w.name == wanted),
            *(w for w in visible if w.shared and w.name == wanted),
        ]

    def personal(self, caller: Caller) -> Workspace:
        """An account's own private workspace (its oldest), created under its name on first use; nobody else's
        workspace can take that name from it."""
        assert caller.kind == "account" and caller.account_id and caller.name
        mine = [w for w in self.list(caller) if not w.shared and w.owner == caller.account_id]
        if mine:
            return min(mine, key=lambda w: w.created_at)
        try:
            return self.create(caller.name, owner=caller.account_id, shared=False).model_copy(update={"role": "owner"})
        except WorkspaceError:  # made meanwhile by another session of the same account
            mine = [w for w in self.list(caller) if not w.shared and w.owner == caller.account_id]
            if not mine:
                raise
            return min(mine, key=lambda w: w.created_at)

    # -- changing -----------------------------------------------------------------------------------------

    def create(
        self, name: str, owner: str | None = None, shared: bool = True, default_role: Role | None = DEFAULT_ROLE
    ) -> Workspace:
        """A new workspace: shared (unique name among shared ones), or private to `owner` (unique among theirs)."""
        clean = _check_new_name(name, None)
        if not shared and owner is None:
            raise WorkspaceError(
                "a private workspace needs an owner", user_message="A private workspace needs an owner."
            )
        workspace = Workspace(
            id=secrets.token_hex(6),
            name=clean,
            owner=None if shared else owner,
            shared=shared,
            default_role=default_role if shared else None,
            created_at=time.time(),
        )
        try:
            with self.db.write() as conn:
                conn.execute(
                    insert(schema.workspaces).values(
                        collection=self.collection, **workspace.model_dump(exclude={"role"})
                    )
                )
        except IntegrityError as exc:
            raise _taken(clean) from exc
        return workspace

    def rename(self, workspace: Workspace, new_name: str) -> Workspace:
        """Give a workspace another name; its id, documents and chats stay."""
        clean = _check_new_name(new_name, workspace.id)
        ws = schema.workspaces
        try:
            with self.db.write() as conn:
                conn.execute(
                    update(ws).where(ws.c.collection == self.collection, ws.c.id == workspace.id).values(name=clean)
                )
        except IntegrityError as exc:
            raise _taken(clean) from exc
        return workspace.model_copy(update={"name": clean})

    def remove(self, workspace: Workspace) -> None:
        """Forget a workspace's row and its memberships (its documents and chats are removed first by the service)."""
        ws = schema.workspaces
        with self.db.write() as conn:
            conn.execute(
                delete(schema.memberships).where(
                    schema.memberships.c.collection == self.collection,
                    schema.memberships.c.workspace_id == workspace.id,
                )
            )
            conn.execute(delete(ws).where(ws.c.collection == self.collection, ws.c.id == workspace.id))

    # -- roles ----------------------------------------------------------------------------------------------

    def members(self, workspace: Workspace) -> list[Member]:
        """The accounts given a role in a shared workspace, by name."""
        m, a = schema.memberships, schema.accounts
        with self.db.read() as conn:
            rows = conn.execute(
                select(m.c.account_id, a.c.name, m.c.role)
                .join(a, a.c.id == m.c.account_id)
                .where(m.c.collection == self.collection, m.c.workspace_id == workspace.id)
                .order_by(a.c.name_key)
            ).all()
        return [Member(account_id=r.account_id, name=r.name, role=r.role) for r in rows]

    def grant(self, workspace: Workspace, account_id: str, role: Role) -> None:
        """Give an account a role in a shared workspace (replacing the one it had)."""
        if not workspace.shared:
            raise AccessDeniedError(
                "private workspace", user_message=f"“{workspace.name}” is private: it has no members to give roles to."
            )
        m = schema.memberships
        key = (m.c.collection == self.collection) & (m.c.workspace_id == workspace.id) & (m.c.account_id == account_id)
        with self.db.write("memberships") as conn:
            if conn.execute(select(m.c.role).where(key)).first():
                conn.execute(update(m).where(key).values(role=role))
            else:
                conn.execute(
                    insert(m).values(
                        collection=self.collection, workspace_id=workspace.id, account_id=account_id, role=role
                    )
                )

    def revoke(self, workspace: Workspace, account_id: str) -> bool:
        """Take an account's role in a workspace away (it keeps the workspace's default role); False if it had none."""
        m = schema.memberships
        with self.db.write() as conn:
            result = conn.execute(
                delete(m).where(
                    m.c.collection == self.collection, m.c.workspace_id == workspace.id, m.c.account_id == account_id
                )
            )
        return result.rowcount > 0

    def set_default_role(self, workspace: Workspace, role: Role | None) -> Workspace:
        """What every signed-in account that is not a member may do in a shared workspace (None: members only)."""
        if not workspace.shared:
            raise AccessDeniedError("private workspace", user_message=f"“{workspace.name}” is private.")
        ws = schema.workspaces
        with self.db.write() as conn:
            conn.execute(
                update(ws).where(ws.c.collection == self.collection, ws.c.id == workspace.id).values(default_role=role)
            )
        return workspace.model_copy(update={"default_role": role})

    def close(self) -> None:
        """Give back the database handle."""
        self.db.close()


def _workspace(row) -> Workspace:  # noqa: ANN001 - a Row of workspaces
    return Workspace(
        id=row.id,
        name=row.name,
        owner=row.owner,
        shared=bool(row.shared),
        default_role=row.default_role,
        created_at=row.created_at,
    )


def _check_new_name(name: str, workspace_id: str | None) -> str:
    clean = check_name(name)
    if clean.casefold() == DEFAULT_ID and workspace_id != DEFAULT_ID:
        raise WorkspaceError(
            "the name default is reserved",
            user_message="“default” is kept for the default workspace; choose another name.",
        )
    return clean


def _taken(name: str) -> WorkspaceError:
    return WorkspaceError(f"workspace {name!r} exists", user_message=f"A workspace named “{name}” already exists.")
