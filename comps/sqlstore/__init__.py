"""The relational store shared by every service that keeps records: SQLAlchemy 2 (async) on PostgreSQL.

`Database` owns the engine and the session factory; `Base` is the declarative base of every table;
`migrate` brings the schema to the newest Alembic revision under a PostgreSQL advisory lock, so that
several replicas starting at once do not race.
"""

from comps.sqlstore.db import Base, Database, async_url, migrate

__all__ = ["Base", "Database", "async_url", "migrate"]
