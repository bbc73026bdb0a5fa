"""API tokens for the HTTP API and the MCP server (`python -m rag tokens create`), stored hashed.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column(
            "account_id",
            sa.String(32),
            sa.ForeignKey("accounts.id", ondelete="CASCADE", name="fk_api_tokens_account_id_accounts"),
        ),
        sa.Column("workspace", sa.String(32)),
        sa.Column("read_only", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_used_at", sa.Float),
        sa.Column("revoked_at", sa.Float),
        sa.UniqueConstraint("digest", name="uq_api_tokens_digest"),
    )
