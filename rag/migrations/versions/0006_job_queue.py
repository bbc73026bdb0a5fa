"""The durable job queue (jobs, their files' progress, the workers that run them), and stored bytes named by
their storage key instead of a local path.

A document's `stored_path` becomes the key of its bytes in RAG_STORAGE_URL (`<sha256><ext>`), so every
machine finds them wherever the store is mounted; rows written before kept an absolute path into
`<data dir>/uploads/`, whose last part is that key.

Revision ID: 0006
Revises: 0005
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_KEY = re.compile(r"^(?:.*[/\\])?uploads[/\\]([0-9a-f]{64}(?:\.[^/\\]{0,16})?)$")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("collection", sa.String(255), nullable=False),
        sa.Column("owner", sa.String(160), nullable=False),
        sa.Column("workspace", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("worker", sa.String(200)),
        sa.Column("lease_until", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("report", sa.Text),
        sa.Column("error", sa.Text),
        sa.CheckConstraint("state IN ('queued', 'running', 'done', 'cancelled', 'failed')", name="ck_jobs_state"),
    )
    op.create_index("ix_jobs_queue", "jobs", ["collection", "state", "created_at"])
    op.create_index("ix_jobs_owner", "jobs", ["collection", "owner", "created_at"])
    op.create_index(
        "uq_jobs_running_owner",
        "jobs",
        ["collection", "owner"],
        unique=True,
        sqlite_where=sa.text("state = 'running'"),
        postgresql_where=sa.text("state = 'running'"),
    )
    op.create_table(
        "job_files",
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("stored", sa.Text),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("reindex", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("uploader", sa.String(32)),
        sa.Column("progress", sa.Text, nullable=False),
        sa.Column("result", sa.Text),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_job_files_stored", "job_files", ["stored"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("collection", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("stopped_at", sa.Float),
    )
    conn = op.get_bind()
    documents = sa.table("documents", sa.column("collection"), sa.column("doc_id"), sa.column("stored_path"))
    for collection, doc_id, stored in conn.execute(sa.select(documents)).all():
        found = _KEY.match(stored or "")
        if found:
            conn.execute(
                documents.update()
                .where(documents.c.collection == collection, documents.c.doc_id == doc_id)
                .values(stored_path=found.group(1))
            )
