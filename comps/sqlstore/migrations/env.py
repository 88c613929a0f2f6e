"""Alembic environment: runs on the connection `comps.sqlstore.migrate` hands over (online mode only)."""

from __future__ import annotations

from alembic import context

import comps.identity.models  # noqa: F401 - registers the identity tables on Base.metadata
from comps.sqlstore.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with comps.sqlstore.migrate (or `chatqna db migrate`)")
context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
