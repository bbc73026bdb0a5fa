"""Alembic's entry point, run by `rag.database` on the connection it opened, inside its transaction and under
its lock (there is no alembic.ini). A new revision is a new file in versions/ whose `down_revision` names the
newest one, with its tables added to `rag.schema` too."""

from alembic import context

from rag.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters a table by copying it
)
with context.begin_transaction():
    context.run_migrations()
