"""The tables the engine keeps (SQLAlchemy Core), one schema for SQLite and PostgreSQL.

Everything refers to accounts and workspaces by id, never by name: a name can change, or be given again
to someone else. Times are seconds since the epoch (floats), as everywhere else in the engine.

The tables are created and changed only by the Alembic revisions in `rag/migrations/versions/`; a new
table (jobs, evaluation reports, ...) is a new revision there plus its `Table` here.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import TSVECTOR

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ROLES = ("viewer", "editor", "owner")
"""Roles in a workspace, weakest first: viewer (ask, read sources), editor (also upload, re-index and delete
their own documents), owner (also re-index and delete anyone's documents, rename the workspace)."""

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(32), primary_key=True, comment="random hex, never reused"),
    Column("name", String(64), nullable=False, comment="as typed when created"),
    Column("name_key", String(64), nullable=False, unique=True, comment="lower-cased name: unique whatever the case"),
    Column("hash", Text, nullable=False, comment="argon2id"),
    Column("admin", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", Float, nullable=False),
    Column("session_epoch", Integer, nullable=False, server_default=text("0"), comment="bumped by a password change"),
)

signin_failures = Table(
    "signin_failures",
    metadata,
    Column("key", String(300), primary_key=True, comment="client:<address>, name:<name>, name+client:<...>"),
    Column("count", Integer, nullable=False),
    Column("last_at", Float, nullable=False),
    Column("until", Float, nullable=False, comment="no attempt with this key is checked before this time"),
)

signin_known = Table(
    "signin_known",
    metadata,
    Column("subject", String(40), primary_key=True, comment="an account id, or 'app' for APP_PASSWORD"),
    Column("client", String(256), primary_key=True),
    Column("last_at", Float, nullable=False, comment="last successful sign-in from this client"),
)

workspaces = Table(
    "workspaces",
    metadata,
    Column("collection", String(255), primary_key=True),
    Column("id", String(32), primary_key=True, comment="'default', or random hex"),
    Column("name", String(64), nullable=False),
    Column("owner", String(32), ForeignKey("accounts.id"), nullable=True, comment="the account of a private one"),
    Column("shared", Boolean, nullable=False, server_default=text("true")),
    Column(
        "default_role",
        String(16),
        nullable=True,
        comment="role of signed-in accounts that are not members of a shared workspace; NULL: members only",
    ),
    Column("created_at", Float, nullable=False),
    CheckConstraint("default_role IS NULL OR default_role IN ('viewer', 'editor', 'owner')", name="default_role"),
    CheckConstraint("shared OR owner IS NOT NULL", name="private_has_owner"),
    # Names are unique among shared workspaces, and among one account's private ones; never across accounts.
    Index(
        "uq_workspaces_shared_name",
        "collection",
        "name",
        unique=True,
        sqlite_where=text("shared"),
        postgresql_where=text("shared"),
    ),
    Index(
        "uq_workspaces_private_name",
        "collection",
        "owner",
        "name",
        unique=True,
        sqlite_where=text("NOT shared"),
        postgresql_where=text("NOT shared"),
    ),
)

memberships = Table(
    "memberships",
    metadata,
    Column("collection", String(255), primary_key=True),
    Column("workspace_id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(16), nullable=False),
    ForeignKeyConstraint(
        ["collection", "workspace_id"],
        ["workspaces.collection", "workspaces.id"],
        ondelete="CASCADE",
        name="fk_memberships_workspace_workspaces",
    ),
    CheckConstraint("role IN ('viewer', 'editor', 'owner')", name="role"),
    Index("ix_memberships_account", "account_id"),
)

documents = Table(
    "documents",
    metadata,
    Column("collection", String(255), primary_key=True),
    Column("doc_id", String(64), primary_key=True),
    Column("file_name", Text, nullable=False),
    Column("file_type", String(16), nullable=False),
    Column("size", Integer, nullable=False),
    Column("pages", Integer),
    Column("chunks", Integer, nullable=False, server_default=text("0")),
    Column("status", String(16), nullable=False, comment="indexing | indexed | deleting"),
    Column("stored_path", Text, nullable=False),
    Column("added_at", Float, nullable=False),
    Column("generation", Integer, nullable=False, server_default=text("0")),
    Column("pending", Integer, comment="generation a re-index is writing"),
    Column("lease_until", Float, comment="the writer's claim on the row"),
    Column("workspace", String(32), nullable=False, server_default=text("'default'")),
    Column(
        "owner",
        String(32),
        ForeignKey("accounts.id", ondelete="SET NULL"),
        nullable=True,
        comment="the uploader's account id; NULL: the operator, or no accounts",
    ),
    Index("ix_documents_by_name", "collection", "workspace", "file_name"),
    Index("ix_documents_stored_path", "stored_path"),
    Index("ix_documents_by_added", "collection", "status", "workspace", "added_at", "chunks"),  # migration 0005
)

claims = Table(
    "claims",
    metadata,
    Column("collection", String(255), primary_key=True),
    Column("key", String(600), primary_key=True, comment="doc:<doc id>, or name:<workspace id>:<file name>"),
    Column("owner", String(300), nullable=False, comment="host/boot/pid namespace|pid|process start|random"),
    Column("lease_until", Float, nullable=False, comment="taken over by another writer after this time"),
)
"""Writers' claims (`DocumentLibrary.claim`): one writer of a document, one commit of a file name, across
processes."""

turns = Table(
    "turns",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sid", String(128), nullable=False, comment="a browser session id, or account:<account id>"),
    Column("workspace", String(32), nullable=False, server_default=text("'default'")),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("mode", String(32)),
    Column("sources", Text, nullable=False, server_default=text("'[]'"), comment="JSON list of sources"),
    Column("feedback", Integer),
    Column("created_at", Float, nullable=False),
    Index("ix_turns_by_sid", "sid", "workspace", "id"),
    sqlite_autoincrement=True,
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(32), primary_key=True, comment="the token's public part, as `tokens list` shows it"),
    Column("name", String(64), nullable=False, comment="the account's name when made, or a label without accounts"),
    Column(
        "account_id",
        String(32),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=True,
        comment="whom it acts for (removing the account removes its tokens); NULL: made while no account existed",
    ),
    Column("workspace", String(32), nullable=True, comment="id of the only workspace it may use; NULL: all"),
    Column("read_only", Boolean, nullable=False, server_default=text("false")),
    Column("digest", String(64), nullable=False, unique=True, comment="SHA-256 of the secret, which is never kept"),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float),
    Column("revoked_at", Float),
)

JOB_STATES = ("queued", "running", "done", "cancelled", "failed")
"""Where a job is: waiting its turn, claimed by a worker (under a lease), or ended one of three ways."""

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("collection", String(255), nullable=False),
    Column("owner", String(160), nullable=False, comment="account:<id>, a browser session id, or cli"),
    Column("workspace", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, comment="first claimed"),
    Column("finished_at", Float),
    Column("worker", String(200), comment="workers.id of the worker running it (kept once it ended)"),
    Column("lease_until", Float, comment="a running job whose lease ran out is claimed again"),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    Column("report", Text, comment="JSON IngestReport once ended"),
    Column("error", Text),
    CheckConstraint("state IN ('queued', 'running', 'done', 'cancelled', 'failed')", name="state"),
    Index("ix_jobs_queue", "collection", "state", "created_at"),
    Index("ix_jobs_owner", "collection", "owner", "created_at"),
    # One running job per owner, whoever runs it: the fairness rule as a constraint, across workers.
    Index(
        "uq_jobs_running_owner",
        "collection",
        "owner",
        unique=True,
        sqlite_where=text("state = 'running'"),
        postgresql_where=text("state = 'running'"),
    ),
)

job_files = Table(
    "job_files",
    metadata,
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("name", Text, nullable=False, comment="as the user gave it"),
    Column("stored", Text, comment="storage key of the staged bytes (NULL: refused before staging)"),
    Column("content_hash", String(64)),
    Column("reindex", Boolean, nullable=False, server_default=text("false")),
    Column("uploader", String(32), comment="the uploader's account id (NULL: the operator, or no accounts)"),
    Column("progress", Text, nullable=False, comment="JSON FileProgress, written by the worker as it goes"),
    Column("result", Text, comment="JSON FileResult once the file ended"),
    Column("updated_at", Float, nullable=False),
    Index("ix_job_files_stored", "stored"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(200), primary_key=True, comment="host|pid|start|token"),
    Column("collection", String(255), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("kind", String(16), nullable=False, comment="worker (python -m rag worker), app, cli"),
    Column("concurrency", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("stopped_at", Float, comment="set by a clean stop; a worker whose heartbeat stops is lost"),
)

keyword_chunks = Table(
    "keyword_chunks",
    metadata,
    Column("collection", String(255), primary_key=True),
    Column("chunk_id", String(200), primary_key=True),
    Column("doc_id", String(64), nullable=False),
    Column("file_name", Text, nullable=False),
    Column("page", Integer),
    Column("chunk", Integer),
    Column("text", Text, nullable=False),
    Column("workspace", String(32), nullable=False, server_default=text("'default'")),
    Column("tsv", TSVECTOR, nullable=False, comment="to_tsvector('english', text): stemmed terms with positions"),
    Column("doc_len", Integer, nullable=False, comment="tokens in the chunk (BM25's length normalisation)"),
    Index("ix_keyword_chunks_doc", "collection", "doc_id"),
    Index("ix_keyword_chunks_tsv", "tsv", postgresql_using="gin"),
    comment="PostgreSQL only: the BM25 keyword index beside Milvus (SQLite keeps its FTS5 file, rag.keyword)",
)
