"""Content versions of collections: a counter per collection, bumped in the same transaction as every write
that changes what a search can find (a document committed or replaced, a document deleted, a collection
deleted). Readers, such as the gateway's answer cache, put the versions of the collections they search into
their keys: after a write, every key built before it is unreachable at once, on every replica.

The counter lives outside the collection's keys (``_version:<collection>``; no collection name starts with
``_``), so deleting a collection keeps it and a collection created again under the same name never reuses a
version an answer was cached under. In PostgreSQL (``VECTORSTORE_BACKEND=pgvector``) the counters are the rows
of ``vectorstore_versions``, bumped in each write's transaction; `PgVersions` reads them without the vector store's
client (no numpy), for the gateway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from comps.sqlstore.db import asyncpg_dsn

VERSION_PREFIX = "_version:"


def version_key(collection: str) -> str:
    return VERSION_PREFIX + collection


def bump(pipe: Any, collection: str) -> None:
    """Queue the increment of ``collection``'s version on a MULTI/EXEC pipeline (after ``pipe.multi()``)."""
    pipe.incr(version_key(collection))


async def content_versions(r: aioredis.Redis, collections: Sequence[str]) -> dict[str, int]:
    """The current version of each collection (0: never written), in one round trip."""
    if not collections:
        return {}
    values = await r.mget([version_key(c) for c in collections])
    return {c: int(v) if v is not None else 0 for c, v in zip(collections, values, strict=True)}


_PG_VERSIONS = "SELECT collection, version FROM vectorstore_versions WHERE collection = ANY($1::text[])"


async def pg_content_versions(conn: asyncpg.Connection, collections: Sequence[str]) -> dict[str, int]:
    """The current version of each collection in PostgreSQL (0: never written), in one query."""
    names = list(dict.fromkeys(collections))
    found = {row["collection"]: int(row["version"]) for row in await conn.fetch(_PG_VERSIONS, names)}
    return {name: found.get(name, 0) for name in names}


class PgVersions:
    """pgvector's content versions alone, over a small pool of their own (the gateway's answer cache)."""

    name = "pgvector"

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(asyncpg_dsn(self.url), min_size=1, max_size=self.pool_size)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def content_versions(self, collections: Sequence[str]) -> dict[str, int]:
        if self._pool is None:
            raise RuntimeError("PgVersions used before open()")
        async with self._pool.acquire() as conn:
            return await pg_content_versions(conn, collections)
