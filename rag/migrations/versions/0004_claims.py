"""Writers' claims: one writer of a document (or one commit of a file name) at a time, across processes.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "claims",
        sa.Column("collection", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(600), primary_key=True),
        sa.Column("owner", sa.String(300), nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("claims")
