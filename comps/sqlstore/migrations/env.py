"""Alembic environment: runs on the connection `comps.sqlstore.migrate` hands over (online mode only)."""

from __future__ import annotations

from alembic import context

# Importing the models registers their tables on Base.metadata.
import megaservice.usage  # noqa: F401
from comps.sqlstore.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with comps.sqlstore.migrate (or `chatqna db migrate`)")
context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
