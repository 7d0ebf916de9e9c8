"""Alembic environment: zoo always hands in an open connection (see zoo.migrations.upgrade)."""
from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("zoo migrations run through zoo.migrations.upgrade(connection)")

# No render_as_batch: table rebuilds on SQLite cascade-delete child rows (see 0002).
context.configure(connection=connection)
with context.begin_transaction():
    context.run_migrations()
