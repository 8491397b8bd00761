"""Alembic environment: runs on the connection the ledger hands in."""

from alembic import context

from jupyterhub_credits.ledger.schema import VERSION_TABLE, metadata
from jupyterhub_credits.sessions import schema as _sessions  # noqa: F401 - registers its tables
from jupyterhub_credits.earning import schema as _earning  # noqa: F401 - registers its tables

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the ledger always passes a connection
    raise RuntimeError("run migrations through jupyterhub_credits.ledger.database.upgrade")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
