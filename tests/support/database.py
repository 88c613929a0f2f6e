"""Databases for tests: one new, empty database per test module on the session's PostgreSQL server."""

from __future__ import annotations

import asyncio
import re
import uuid

import asyncpg
from sqlalchemy.engine import make_url

from comps.sqlstore.db import asyncpg_dsn


def fresh_database(server_url: str, label: str) -> str:
    """Create ``t_<label>_<random>`` and return its URL (the server URL with that database)."""
    name = f"t_{re.sub(r'[^a-z0-9_]', '_', label.lower())[:40]}_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def pending_turns(database_url: str, cid: str) -> int:
    """How many turns of conversation ``cid`` chathistory holds as in flight (its ``pending_turns`` table)."""

    async def count() -> int:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            return int(await conn.fetchval("SELECT count(*) FROM pending_turns WHERE conversation_id = $1", cid))
        finally:
            await conn.close()

    return asyncio.run(count())
