"""Import the SQLite files an older release kept in the data dir, once: catalog.sqlite3 (documents,
workspaces), accounts.sqlite3 (accounts, failed sign-ins) and conversations.sqlite3 (turns).

Names become ids: each account gets a new random id, a private workspace's owner and every document in it
point at that id, and an account's conversations (kept under `user:<name>`) move to `account:<id>`. A
private workspace whose owner no longer exists goes to the first admin (or becomes shared when there is no
account at all, as the old release then showed it to everyone). Shared workspaces keep letting every
signed-in account upload (default role editor), as before. The files are renamed *.migrated afterwards
(by rag.database, once this transaction has committed).

Revision ID: 0002
Revises: 0001
"""

import secrets
import sqlite3
from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _rows(path: Path, table: str) -> list[dict[str, object]]:
    """Every row of a table of an old file ([] when the table is absent), its WAL included."""
    db = sqlite3.connect(path)
    try:
        db.row_factory = sqlite3.Row
        if not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone():
            return []
        return [dict(row) for row in db.execute(f"SELECT * FROM {table}")]  # noqa: S608 - fixed table names
    finally:
        db.close()


def upgrade() -> None:
    data_dir = context.config.attributes.get("data_dir")
    if data_dir is None:
        return
    data_dir = Path(data_dir)
    imported: list[Path] = context.config.attributes.setdefault("imported", [])
    meta = sa.MetaData()
    conn = op.get_bind()
    tables = {
        name: sa.Table(name, meta, autoload_with=conn)
        for name in ("accounts", "signin_failures", "workspaces", "documents", "turns")
    }

    ids: dict[str, str] = {}  # lower-cased account name -> new id
    admins: list[str] = []
    accounts_file = data_dir / "accounts.sqlite3"
    if accounts_file.is_file():
        for row in sorted(_rows(accounts_file, "accounts"), key=lambda r: str(r["name"]).lower()):
            account_id = secrets.token_hex(8)
            ids[str(row["name"]).lower()] = account_id
            if row["admin"]:
                admins.append(account_id)
            conn.execute(
                tables["accounts"]
                .insert()
                .values(
                    id=account_id,
                    name=row["name"],
                    name_key=str(row["name"]).lower(),
                    hash=row["hash"],
                    admin=bool(row["admin"]),
                    created_at=row["created_at"],
                )
            )
        for row in _rows(accounts_file, "failures"):
            conn.execute(tables["signin_failures"].insert().values(**row))
        imported.append(accounts_file)

    owners: dict[tuple[str, str], str | None] = {}  # (collection, workspace id) -> owner id of a private one
    catalog_file = data_dir / "catalog.sqlite3"
    if catalog_file.is_file():
        for row in _rows(catalog_file, "workspaces"):
            shared, owner = bool(row["shared"]), None
            if not shared:
                owner = ids.get(str(row["owner"] or "").lower()) or (admins[0] if admins else None)
                shared = owner is None
            owners[(row["collection"], row["id"])] = owner
            conn.execute(
                tables["workspaces"]
                .insert()
                .values(
                    collection=row["collection"],
                    id=row["id"],
                    name=row["name"],
                    owner=owner,
                    shared=shared,
                    default_role="editor" if shared else None,
                    created_at=row["created_at"],
                )
            )
        for row in _rows(catalog_file, "documents"):
            workspace = row.get("workspace") or "default"
            conn.execute(
                tables["documents"]
                .insert()
                .values(
                    collection=row["collection"],
                    doc_id=row["doc_id"],
                    file_name=row["file_name"],
                    file_type=row["file_type"],
                    size=row["size"],
                    pages=row["pages"],
                    chunks=row["chunks"],
                    status=row["status"],
                    stored_path=row["stored_path"],
                    added_at=row["added_at"],
                    generation=row.get("generation") or 0,
                    pending=row.get("pending"),
                    lease_until=row.get("lease_until"),
                    workspace=workspace,
                    owner=owners.get((row["collection"], workspace)),
                )
            )
        imported.append(catalog_file)

    conversations_file = data_dir / "conversations.sqlite3"
    if conversations_file.is_file():
        for row in _rows(conversations_file, "turns"):
            sid = str(row["sid"])
            if sid.startswith("user:"):
                account_id = ids.get(sid.removeprefix("user:").lower())
                sid = f"account:{account_id}" if account_id else f"removed-{sid}"  # nobody's: never shown again
            conn.execute(
                tables["turns"]
                .insert()
                .values(
                    sid=sid,
                    workspace=row.get("workspace") or "default",
                    role=row["role"],
                    content=row["content"],
                    mode=row["mode"],
                    sources=row["sources"] or "[]",
                    feedback=row.get("feedback"),
                    created_at=row["created_at"],
                )
            )
        imported.append(conversations_file)
