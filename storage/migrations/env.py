"""Alembic environment: runs migrations on the connection Tailor hands over.

``storage.migrate`` passes an open connection in ``config.attributes``; the
``alembic`` command line is not needed (and not configured) for Tailor.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from storage.tables import Base

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `tailor db upgrade` (storage.migrate)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
