"""The relational store on a real PostgreSQL: migrations are idempotent and safe to run from many replicas at once,
and the embedded server of the local runtime keeps its data across a restart."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest

from comps.runtime.postgres_server import EmbeddedPostgres
from comps.runtime.process import free_port
from comps.sqlstore import Database, async_url, migrate
from comps.sqlstore.db import redacted

pytestmark = pytest.mark.integration


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


def test_eight_replicas_migrating_at_once_do_not_race(database_url: str) -> None:
    async def run() -> set[str]:
        dbs = [Database(database_url, pool_size=1) for _ in range(8)]
        try:
            await asyncio.gather(*(migrate(db) for db in dbs))
            await migrate(dbs[0])  # and again: nothing to do
        finally:
            await asyncio.gather(*(db.close() for db in dbs))
        return await _tables(database_url)

    tables = asyncio.run(run())
    assert {"users", "api_keys", "refresh_tokens", "collections", "alembic_version"} <= tables


def test_urls_are_normalised_and_redacted() -> None:
    assert async_url("postgresql://u:secret@h:5432/d").startswith("postgresql+asyncpg://u:secret@h:5432/d")
    assert "secret" not in redacted("postgresql://u:secret@h/d")
    with pytest.raises(ValueError, match="only PostgreSQL"):
        async_url("mysql://u@h/d")


def test_the_embedded_server_keeps_its_data_across_a_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    port = free_port()
    tmp_path = Path(tempfile.mkdtemp(prefix="chatqna-pg-restart-"))  # see conftest's postgres_url
    try:
        _restart(tmp_path, port)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _restart(tmp_path: Path, port: int) -> None:
    with EmbeddedPostgres(tmp_path / "pg", port) as server:
        url = server.url

        async def write() -> None:
            conn = await asyncpg.connect(url)
            await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
            await conn.close()

        asyncio.run(write())
    with EmbeddedPostgres(tmp_path / "pg", port) as again:
        assert again.url == url  # the same generated password

        async def read() -> str:
            conn = await asyncpg.connect(again.url)
            try:
                return await conn.fetchval("SELECT v FROM kept")
            finally:
                await conn.close()

        assert asyncio.run(read()) == "still here"
        with pytest.raises(asyncpg.InvalidPasswordError):  # password authentication, even on 127.0.0.1
            asyncio.run(asyncpg.connect(url.replace(again.password, "wrong-password"), timeout=5))
