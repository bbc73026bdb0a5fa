"""Workspaces: named sets of documents, kept apart in every search, list and delete.

A workspace has a stable id (what chunks, catalogue rows, keyword entries and chats carry) and a name
people choose and may change. `default` always exists: a data dir from before workspaces is its content.
A workspace may belong to an account (private to it) or be shared with everyone; with no accounts, every
workspace is shared.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
import time
import unicodedata
from pathlib import Path

from pydantic import BaseModel

from rag.database import open_database
from rag.errors import WorkspaceError, WorkspaceNotFoundError

DEFAULT_ID = "default"
MAX_NAME = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workspaces (
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    name       TEXT NOT NULL,
    owner      TEXT,
    shared     INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    PRIMARY KEY (collection, id),
    UNIQUE (collection, name)
);
"""
_FORBIDDEN = re.compile(r"[\\/:*?\"<>|]")


class Workspace(BaseModel, frozen=True):
    """One workspace: its stable id, its name, and who may see it."""

    id: str
    name: str
    owner: str | None = None
    shared: bool = True
    created_at: float = 0.0

    def visible_to(self, account: str | None) -> bool:
        """Shared workspaces are everyone's; a private one only its owner's (no accounts: all are shared)."""
        return self.shared or account is None or self.owner == account

    def managed_by(self, account: str | None, admin: bool = False) -> bool:
        """Who may rename or delete it: its owner (a private one), an admin (a shared one), anyone without accounts."""
        return account is None or admin or (not self.shared and self.owner == account)

    @property
    def label(self) -> str:
        """The name as the sidebar shows it."""
        return self.name if self.shared else f"{self.name} (private)"


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
    """The workspaces of one collection, in the catalogue's SQLite file."""

    def __init__(self, path: Path, collection: str) -> None:
        self.collection = collection
        self._lock = threading.Lock()
        self._db = open_database(path, _SCHEMA)
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO workspaces VALUES (?,?,?,?,?,?)",
                (collection, DEFAULT_ID, DEFAULT_ID, None, 1, time.time()),
            )

    def _rows(self, sql: str, *args: object) -> list[Workspace]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [Workspace(id=r[0], name=r[1], owner=r[2], shared=bool(r[3]), created_at=r[4]) for r in rows]

    def list(self, account: str | None = None) -> list[Workspace]:
        """Workspaces the account may see (all of them without accounts), `default` first, then by name."""
        rows = self._rows(
            "SELECT id, name, owner, shared, created_at FROM workspaces WHERE collection=? "
            "ORDER BY id != ?, name COLLATE NOCASE",
            self.collection,
            DEFAULT_ID,
        )
        return [w for w in rows if w.visible_to(account)]

    def get(self, name: str, account: str | None = None) -> Workspace:
        """A workspace by name (or id) that the account may see; one it may not see does not exist for it."""
        rows = self._rows(
            "SELECT id, name, owner, shared, created_at FROM workspaces WHERE collection=? AND (name=? OR id=?)",
            self.collection,
            name.strip(),
            name.strip(),
        )
        found = next((w for w in rows if w.name == name.strip()), rows[0] if rows else None)
        if found is None or not found.visible_to(account):
            raise WorkspaceNotFoundError(
                f"no workspace {name!r}", user_message=f"There is no workspace named “{name.strip()}”."
            )
        return found

    def create(self, name: str, owner: str | None = None, shared: bool = True) -> Workspace:
        """A new workspace; names are unique within the collection."""
        clean = check_name(name)
        workspace = Workspace(id=secrets.token_hex(6), name=clean, owner=owner, shared=shared, created_at=time.time())
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO workspaces VALUES (?,?,?,?,?,?)",
                    (self.collection, workspace.id, clean, owner, int(shared), workspace.created_at),
                )
        except sqlite3.IntegrityError as exc:
            raise WorkspaceError(
                f"workspace {clean!r} exists", user_message=f"A workspace named “{clean}” already exists."
            ) from exc
        return workspace

    def rename(self, workspace: Workspace, new_name: str) -> Workspace:
        """Give a workspace another name; its id, documents and chats stay."""
        clean = check_name(new_name)
        try:
            with self._lock:
                self._db.execute(
                    "UPDATE workspaces SET name=? WHERE collection=? AND id=?", (clean, self.collection, workspace.id)
                )
        except sqlite3.IntegrityError as exc:
            raise WorkspaceError(
                f"workspace {clean!r} exists", user_message=f"A workspace named “{clean}” already exists."
            ) from exc
        return workspace.model_copy(update={"name": clean})

    def remove(self, workspace: Workspace) -> None:
        """Forget a workspace's row (its documents and chats are removed first by the library)."""
        with self._lock:
            self._db.execute("DELETE FROM workspaces WHERE collection=? AND id=?", (self.collection, workspace.id))

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._db.close()
