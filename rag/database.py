"""The engine's database: one SQLAlchemy Core layer over two engines, brought up to date at start.

`RAG_DATABASE_URL` chooses the engine. Empty (the default): one SQLite file, `RAG_DATA_DIR/rag.sqlite3`,
private to the user running the app (0600 in a 0700 folder; its WAL journal follows), nothing to install.
`postgresql+psycopg://user:password@host/db`: PostgreSQL, shared by every app process and CLI that points
at it.

    db = Database.open(settings)          # one engine per URL per process, shared, reference-counted
    with db.read() as conn:               # a consistent snapshot
        conn.execute(select(schema.accounts))
    with db.write("signin") as conn:      # writers serialised: SQLite BEGIN IMMEDIATE; PostgreSQL an advisory
        ...                               # lock named "signin" held until commit, so read-then-write is safe
    db.close()

Opening runs the Alembic migrations in `rag/migrations` (schema changes, and the one-time import of the
SQLite files an older release kept in the data dir) under a lock, so processes starting together migrate
once: a file lock beside the SQLite file, or a PostgreSQL advisory lock.

`open_database` below is the older helper for a standalone SQLite file (the keyword index still is one).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from rag.config import Settings, private_dir, private_file
from rag.errors import ConfigError

log = logging.getLogger(__name__)

FILE_NAME = "rag.sqlite3"
"""The embedded database's file in the data dir."""
LEGACY_FILES = ("catalog.sqlite3", "accounts.sqlite3", "conversations.sqlite3")
"""The SQLite files of the release before this layer; imported once by the migrations, then renamed *.migrated."""

_MIGRATION_LOCK = 0x5241_4701  # "RAG" + 1: the PostgreSQL advisory lock migrations run under


def database_url(settings: Settings) -> str:
    """The SQLAlchemy URL of the settings' database: RAG_DATABASE_URL, or the data dir's SQLite file."""
    if settings.database_url:
        return settings.database_url
    return f"sqlite:///{(Path(settings.data_dir) / FILE_NAME).resolve()}"


class Database:
    """A handle on the shared engine of one database URL; `close()` gives it back."""

    _lock = threading.Lock()
    _engines: dict[str, tuple[Engine, int]] = {}  # url -> (engine, open handles)

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self.kind = engine.dialect.name  # "sqlite" or "postgresql"
        self._closed = False

    @classmethod
    def open(cls, settings: Settings) -> Database:
        """The database of these settings, created and migrated on first use in this process."""
        url = database_url(settings)
        with cls._lock:
            engine, handles = cls._engines.get(url, (None, 0))
            if engine is None:
                engine = _create_engine(url, Path(settings.data_dir))
                try:
                    _migrate(engine, Path(settings.data_dir))
                except BaseException:
                    engine.dispose()
                    raise
            cls._engines[url] = (engine, handles + 1)
        return cls(url, engine)

    @property
    def sqlite(self) -> bool:
        """Whether this is the embedded SQLite file."""
        return self.kind == "sqlite"

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection in a read transaction (one consistent snapshot), rolled back at the end."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def write(self, serialize: str | None = None) -> Iterator[Connection]:
        """A connection in a write transaction, committed when the block ends (rolled back on an error).

        SQLite takes its write lock at the start (BEGIN IMMEDIATE), so a read-then-write never deadlocks
        or loses an update between threads or processes. On PostgreSQL, single statements are atomic; a
        block that reads and then writes on what it read names a `serialize` lock, held until commit, which
        every block naming it waits for.
        """
        with self.engine.connect() as conn:
            conn.execution_options(rag_immediate=True)
            with conn.begin():
                if serialize and not self.sqlite:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(serialize)})
                yield conn

    def close(self) -> None:
        """Give the engine back; the last handle of a URL disposes of it (closes its connections)."""
        if self._closed:
            return
        self._closed = True
        with Database._lock:
            engine, handles = Database._engines[self.url]
            if handles > 1:
                Database._engines[self.url] = (engine, handles - 1)
                return
            del Database._engines[self.url]
        engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock_key(name: str) -> int:
    """A stable signed 64-bit key for a PostgreSQL advisory lock."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def _create_engine(url: str, data_dir: Path) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not parsed.database or str(path) == ":memory:":
            raise ConfigError("RAG_DATABASE_URL: an SQLite database must be a file")
        private_file(private_dir(path.parent) / path.name)  # 0600 in 0700; SQLite gives its journal the same mode
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _connect(dbapi: sqlite3.Connection, _record: object) -> None:
            dbapi.isolation_level = None  # SQLAlchemy's BEGIN below, not the driver's guess
            dbapi.execute("PRAGMA journal_mode=WAL")
            dbapi.execute("PRAGMA foreign_keys=ON")
            dbapi.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: a crash loses no committed transaction

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("rag_immediate")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True)
    raise ConfigError(f"RAG_DATABASE_URL: unsupported database {parsed.get_backend_name()!r}")


def _migrate(engine: Engine, data_dir: Path) -> None:
    """Bring the schema to the newest revision, once, whoever else starts at the same moment."""
    from alembic import command
    from alembic.config import Config
    from filelock import FileLock

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["data_dir"] = data_dir
    config.attributes["imported"] = []
    guard: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if engine.dialect.name == "sqlite":
        database = Path(engine.url.database or "")
        guard = FileLock(str(database.with_name(database.name + ".migrate.lock")), timeout=300, mode=0o600)
    with guard, engine.connect() as conn:
        conn.execution_options(rag_immediate=True)
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    for path in config.attributes["imported"]:  # committed: the old files are kept, renamed, never read again
        for suffix in ("", "-wal", "-shm"):
            old = Path(f"{path}{suffix}")
            if old.exists():
                old.rename(Path(f"{path}.migrated{suffix}"))
        log.warning("imported %s into the database; the old file is kept as %s.migrated", path.name, path.name)


def open_database(
    path: Path, schema: str, added_columns: Mapping[str, Sequence[tuple[str, str]]] | None = None
) -> sqlite3.Connection:
    """Open (creating) a standalone private SQLite file in WAL mode with `schema`, adding any `added_columns`
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
