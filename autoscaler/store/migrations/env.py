"""Alembic's environment for the store: always run programmatically on a connection we pass in.

``autoscaler.store.migrate`` builds the ``Config`` in code (no ``alembic.ini``) and puts the open
connection in ``config.attributes["connection"]``, so migrations run inside the caller's transaction.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import autoscaler.store.sql  # noqa: F401  (registers the tables on SQLModel.metadata)

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable by running the alembic CLI by hand
    raise RuntimeError("run migrations with `autoscaler store upgrade`, not the alembic command line")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
