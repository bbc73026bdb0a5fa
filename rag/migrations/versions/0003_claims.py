"""Writers' claims: one writer of a document (or one commit of a file name) at a time, across processes.

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
        "claims",
        sa.Column("collection", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(600), primary_key=True),
        sa.Column("owner", sa.String(300), nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("claims")
