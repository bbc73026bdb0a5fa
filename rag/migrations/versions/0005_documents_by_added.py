"""An index for the newest documents of a workspace (Chat's document filter, `docs list`, Home's counts): a page
load reads the newest hundred straight from it instead of sorting every row of a large library, and counts the
documents and their chunks from the index alone (it carries `chunks`), without reading the rows.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_documents_by_added", "documents", ["collection", "status", "workspace", "added_at", "chunks"])


def downgrade() -> None:
    op.drop_index("ix_documents_by_added", table_name="documents")
