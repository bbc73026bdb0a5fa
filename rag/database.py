"""The SQLite files of a data dir (catalogue, conversations, keyword index, accounts), opened one way.

Each is private to the user running the app (0600 in a 0700 folder; its WAL journal follows), shared by
threads behind its owner's lock, and brought up to date when an older version created it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from rag.config import private_dir, private_file


def open_database(
    path: Path, schema: str, added_columns: Mapping[str, Sequence[tuple[str, str]]] | None = None
) -> sqlite3.Connection:
    """Open (creating) a private SQLite file in WAL mode with `schema`, adding any `added_columns`
    (table -> (column, declaration)) that a file written by an older version lacks."""
    private_file(private_dir(path.parent) / path.name)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(schema)
    for table, columns in (added_columns or {}).items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, declaration in columns:
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
    return db
