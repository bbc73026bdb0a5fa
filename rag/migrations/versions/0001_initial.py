"""The first schema: accounts, sign-in limiter, workspaces, memberships, documents, conversation turns.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("name_key", sa.String(64), nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("session_epoch", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.UniqueConstraint("name_key", name="uq_accounts_name_key"),
    )
    op.create_table(
        "signin_failures",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("last_at", sa.Float, nullable=False),
        sa.Column("until", sa.Float, nullable=False),
    )
    op.create_table(
        "signin_known",
        sa.Column("subject", sa.String(40), primary_key=True),
        sa.Column("client", sa.String(256), primary_key=True),
        sa.Column("last_at", sa.Float, nullable=False),
    )
    op.create_table(
        "workspaces",
        sa.Column("collection", sa.String(255), primary_key=True),
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(32), sa.ForeignKey("accounts.id", name="fk_workspaces_owner_accounts")),
        sa.Column("shared", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("default_role", sa.String(16)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.CheckConstraint(
            "default_role IS NULL OR default_role IN ('viewer', 'editor', 'owner')",
            name="ck_workspaces_default_role",
        ),
        sa.CheckConstraint("shared OR owner IS NOT NULL", name="ck_workspaces_private_has_owner"),
    )
    op.create_index(
        "uq_workspaces_shared_name",
        "workspaces",
        ["collection", "name"],
        unique=True,
        sqlite_where=sa.text("shared"),
        postgresql_where=sa.text("shared"),
    )
    op.create_index(
        "uq_workspaces_private_name",
        "workspaces",
        ["collection", "owner", "name"],
        unique=True,
        sqlite_where=sa.text("NOT shared"),
        postgresql_where=sa.text("NOT shared"),
    )
    op.create_table(
        "memberships",
        sa.Column("collection", sa.String(255), primary_key=True),
        sa.Column("workspace_id", sa.String(32), primary_key=True),
        sa.Column(
            "account_id",
            sa.String(32),
            sa.ForeignKey("accounts.id", ondelete="CASCADE", name="fk_memberships_account_id_accounts"),
            primary_key=True,
        ),
        sa.Column("role", sa.String(16), nullable=False),
        sa.ForeignKeyConstraint(
            ["collection", "workspace_id"],
            ["workspaces.collection", "workspaces.id"],
            ondelete="CASCADE",
            name="fk_memberships_workspace_workspaces",
        ),
        sa.CheckConstraint("role IN ('viewer', 'editor', 'owner')", name="ck_memberships_role"),
    )
    op.create_index("ix_memberships_account", "memberships", ["account_id"])
    op.create_table(
        "documents",
        sa.Column("collection", sa.String(255), primary_key=True),
        sa.Column("doc_id", sa.String(64), primary_key=True),
        sa.Column("file_name", sa.Text, nullable=False),
        sa.Column("file_type", sa.String(16), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("pages", sa.Integer),
        sa.Column("chunks", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stored_path", sa.Text, nullable=False),
        sa.Column("added_at", sa.Float, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("pending", sa.Integer),
        sa.Column("lease_until", sa.Float),
        sa.Column("workspace", sa.String(32), nullable=False, server_default=sa.text("'default'")),
        sa.Column(
            "owner",
            sa.String(32),
            sa.ForeignKey("accounts.id", ondelete="SET NULL", name="fk_documents_owner_accounts"),
        ),
    )
    op.create_index("ix_documents_by_name", "documents", ["collection", "workspace", "file_name"])
    op.create_index("ix_documents_stored_path", "documents", ["stored_path"])
    op.create_table(
        "turns",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sid", sa.String(128), nullable=False),
        sa.Column("workspace", sa.String(32), nullable=False, server_default=sa.text("'default'")),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("mode", sa.String(32)),
        sa.Column("sources", sa.Text, nullable=False, server_default=sa.text("'[]'")),
        sa.Column("feedback", sa.Integer),
        sa.Column("created_at", sa.Float, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_turns_by_sid", "turns", ["sid", "workspace", "id"])
