"""Engine, sessions, the tables' base and migrations of the relational store."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from comps.core.errors import BadRequest

log = logging.getLogger("comps.sqlstore")

MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed 64-bit number: every process that migrates takes this lock first (pg_advisory_lock).
MIGRATION_LOCK_ID = 0x43_48_41_54_51_4E_41  # "CHATQNA"

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base of every table of the relational store (identity now; conversations and usage next)."""

    metadata = MetaData(naming_convention=NAMING)


def async_url(url: str) -> str:
    """``postgresql://...`` (what operators write) as the asyncpg dialect's URL; other drivers are refused."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"only PostgreSQL is supported, not {parsed.get_backend_name()!r}")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL (``postgresql+asyncpg://...``) as asyncpg takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def redacted(url: str) -> str:
    """The URL without its password, for logs and tables."""
    return make_url(url).render_as_string(hide_password=True)


class Database:
    """One engine (a small connection pool) per process; sessions are short and per unit of work."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(
            async_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, echo=echo
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction: committed when the block ends, rolled back if it raises. A value that
        PostgreSQL cannot store (a NUL character in text, a number out of its column's range) is the caller's
        bad input: a 400, not a 500."""
        try:
            async with self.sessions() as session, session.begin():
                yield session
        except DBAPIError as exc:
            refused = _data_error(exc)
            if refused is None:
                raise
            raise BadRequest(f"a value cannot be stored: {refused}", code="invalid_value") from None

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


def _data_error(exc: BaseException) -> str | None:
    """The message of the PostgreSQL data exception (SQLSTATE class 22) behind ``exc``, if that is its cause."""
    import asyncpg

    seen: BaseException | None = exc
    for _ in range(6):  # SQLAlchemy's error wraps the adapter's, which wraps asyncpg's
        if seen is None:
            return None
        if isinstance(seen, asyncpg.exceptions.DataError):
            return str(seen).split("\n", 1)[0][:200]
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


async def migrate_when_up(db: Database, *, what: str) -> None:
    """`migrate`, waiting (up to the kit's warm-up wait) for a PostgreSQL that is still starting."""
    from comps.core.http import wait_until_up

    async def attempt() -> None:
        import asyncpg
        from sqlalchemy.exc import SQLAlchemyError

        from comps.core.errors import UpstreamUnavailable

        try:
            await migrate(db)
        except (OSError, asyncpg.PostgresError, SQLAlchemyError) as exc:
            raise UpstreamUnavailable(f"PostgreSQL: {exc}", node="postgres") from exc

    await wait_until_up(attempt, what=what, log=log)


class StoreBackend:
    """A service backend (the kit's `Backend`) whose dependency is the relational store: it opens the engine and
    migrates at warm-up (when ``migrate``), is ready while PostgreSQL answers, and closes the engine."""

    name = "postgres"
    what = "the relational store (PostgreSQL)"

    def __init__(self, database_url: str, *, pool_size: int = 10, migrate: bool = True) -> None:
        self.database_url = database_url
        self.pool_size = pool_size
        self.migrate = migrate
        self.db: Database | None = None

    async def open_store(self) -> Database:
        self.db = Database(self.database_url, pool_size=self.pool_size)
        if self.migrate:
            await migrate_when_up(self.db, what=self.what)
        return self.db

    async def check_ready(self) -> dict[str, Any]:
        if self.db is None:
            raise RuntimeError("the store is not open")
        await self.db.ping()
        return {}

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()


async def migrate(db: Database, revision: str = "head") -> None:
    """Upgrade the schema to ``revision``; concurrent callers wait on one advisory lock, then find it done."""
    async with db.engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        try:
            await conn.run_sync(_upgrade, revision)
            await conn.commit()
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
            await conn.commit()


def _upgrade(conn: Connection, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    command.upgrade(config, revision)
