"""The keyword (BM25) index in PostgreSQL, beside Milvus, for servers without a BM25 function: one row per chunk
with its stemmed terms (tsvector, GIN-indexed) and its length. Created on PostgreSQL only; the embedded SQLite
default keeps its FTS5 file (`keyword.sqlite3`). An index kept in an app's data dir before is rebuilt from Milvus
at the next start (`DocumentStore.areconcile_keywords`).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TSVECTOR

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_table(
        "keyword_chunks",
        sa.Column("collection", sa.String(255), primary_key=True),
        sa.Column("chunk_id", sa.String(200), primary_key=True),
        sa.Column("doc_id", sa.String(64), nullable=False),
        sa.Column("file_name", sa.Text, nullable=False),
        sa.Column("page", sa.Integer),
        sa.Column("chunk", sa.Integer),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("workspace", sa.String(32), nullable=False, server_default=sa.text("'default'")),
        sa.Column("tsv", TSVECTOR, nullable=False),
        sa.Column("doc_len", sa.Integer, nullable=False),
    )
    op.create_index("ix_keyword_chunks_doc", "keyword_chunks", ["collection", "doc_id"])
    op.create_index("ix_keyword_chunks_tsv", "keyword_chunks", ["tsv"], postgresql_using="gin")
