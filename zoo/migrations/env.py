"""Alembic environment: zoo always hands in an open connection (see zoo.migrations.upgrade)."""
from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("zoo migrations run through zoo.migrations.upgrade(connection)")

context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
