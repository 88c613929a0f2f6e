"""Databases for tests: one new, empty database per test module on the session's PostgreSQL server."""

from __future__ import annotations

import asyncio
import re
import uuid

import asyncpg
from sqlalchemy.engine import make_url


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
