"""The database layer: migrations at start (once, under a lock, whoever starts at the same moment), the
embedded file's modes, writes from several processes that neither deadlock nor lose an update, and a data
dir made by the previous release opened with every document, account and chat found; on both engines."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text

from rag import schema
from rag.access import Caller
from rag.accounts import Accounts
from rag.catalog import Catalog
from rag.config import Settings, load_settings
from rag.conversations import ConversationStore
from rag.database import FILE_NAME, Database
from rag.errors import ConfigError
from rag.workspaces import Workspaces

REPO = Path(__file__).resolve().parents[2]
LEGACY = REPO / "tests" / "data" / "legacy" / "datadir"


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RAG_DATA_DIR": str(settings.data_dir),
        "RAG_DATABASE_URL": settings.database_url,
    }


def test_processes_starting_together_migrate_once_and_lose_no_update(db_settings: Settings) -> None:
    """Four processes open a new database at the same moment (each would migrate it), then each adds 1 to a
    counter 40 times in read-then-write transactions (the first creating it): the schema is made once, no
    write deadlocks, and the sum is exact."""
    script = """
from sqlalchemy import insert, select, update
from rag import schema
from rag.config import load_settings
from rag.database import Database
table = schema.signin_failures
db = Database.open(load_settings())
for _ in range(40):
    with db.write("counter") as conn:
        row = conn.execute(select(table.c.count).where(table.c.key == "n")).first()
        if row is None:
            conn.execute(insert(table).values(key="n", count=1, last_at=0, until=0))
        else:
            conn.execute(update(table).where(table.c.key == "n").values(count=row[0] + 1))
db.close()
"""
    racers = [subprocess.Popen([sys.executable, "-c", script], env=_env(db_settings), cwd=REPO) for _ in range(4)]
    assert [p.wait(timeout=300) for p in racers] == [0, 0, 0, 0]
    with Database.open(db_settings) as db, db.read() as conn:
        newest = max(p.name.split("_", 1)[0] for p in (REPO / "rag" / "migrations" / "versions").glob("0*.py"))
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [newest]
        total = conn.execute(select(schema.signin_failures.c.count).where(schema.signin_failures.c.key == "n"))
        assert total.scalar_one() == 160


def test_the_embedded_database_is_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    with Database.open(load_settings(data_dir=data)) as db, db.write() as conn:
        conn.execute(insert(schema.signin_failures).values(key="k", count=1, last_at=0, until=0))
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for path in data.iterdir():  # the database, its lock and, while open, its WAL journal
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert (data / FILE_NAME).exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [("mysql://u:s3cret@h/db", "unsupported database"), ("sqlite://s3cret", "unsupported"), ("s3cret", "expected")],
)
def test_a_bad_database_url_is_refused_without_showing_it(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(database_url=url)
    assert "RAG_DATABASE_URL" in err.value.user_message and message in err.value.user_message
    assert "s3cret" not in err.value.user_message  # a URL may hold a password


def test_a_postgres_url_gets_the_psycopg_driver() -> None:
    assert load_settings(database_url="postgresql://u:p@h/db").database_url == "postgresql+psycopg://u:p@h/db"


def test_a_data_dir_of_the_previous_release_is_migrated_in_place(tmp_path: Path, database_url: str) -> None:
    data = tmp_path / "data"
    shutil.copytree(LEGACY, data)
    settings = load_settings(data_dir=data, database_url=database_url)
    db = Database.open(settings)
    try:
        accounts = Accounts(db)
        alice, bob = accounts.get("alice"), accounts.get("bob")
        assert alice is not None and alice.admin and bob is not None and not bob.admin and alice.id != bob.id
        # The failed sign-in came along as recorded (read first: a sign-in forgets failures over an hour old).
        with db.read() as conn:
            failed = schema.signin_failures.c
            counts = conn.execute(select(failed.count).where(failed.key.like("%192.0.2.10"))).scalars().all()
        assert counts == [1]
        assert accounts.login("bob", "bob-password-22", "10.0.0.9").id == bob.id  # its hash came along

        workspaces = Workspaces(db, "documents")
        seen_by_bob = {w.name: w for w in workspaces.list(Caller.of(bob))}
        assert set(seen_by_bob) == {"default", "Team notes", "bob"}
        assert seen_by_bob["bob"].owner == bob.id and seen_by_bob["Team notes"].role == "editor"
        assert "bob" not in {w.name for w in workspaces.list(Caller.of(alice))}  # still private

        catalog = Catalog(db, "documents")
        docs = {d.file_name: d for d in catalog.list(workspace=None)}
        assert set(docs) == {"cafeteria.txt", "roadmap.txt", "diary.txt"}
        assert docs["diary.txt"].workspace == seen_by_bob["bob"].id and docs["diary.txt"].owner == bob.id
        assert docs["roadmap.txt"].workspace == seen_by_bob["Team notes"].id and docs["roadmap.txt"].owner is None

        chats = ConversationStore(db)
        assert [t.content for t in chats.history("Zq3lSxv9dQ0pQhL2cKp1aA")][0] == "What is served on Thursday?"
        assert chats.history(f"account:{alice.id}", seen_by_bob["Team notes"].id)[0].content.startswith("When")
        assert chats.history(f"account:{bob.id}", seen_by_bob["bob"].id)[1].sources[0].text == "lentil soup"
    finally:
        db.close()
    leftovers = sorted(p.name for p in data.iterdir() if p.name.endswith(".sqlite3"))
    assert leftovers == ([FILE_NAME] if not database_url else [])  # the old files are kept as *.migrated
    assert (data / "catalog.sqlite3.migrated").exists()

    with Database.open(settings) as again, again.read() as conn:  # a second start imports nothing twice
        assert conn.execute(select(func.count()).select_from(schema.accounts)).scalar_one() == 2
        assert conn.execute(select(func.count()).select_from(schema.documents)).scalar_one() == 3
