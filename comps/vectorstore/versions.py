"""Content versions of collections: a counter per collection, bumped in the same transaction as every write
that changes what a search can find (a document committed or replaced, a document deleted, a collection
deleted). Readers, such as the gateway's answer cache, put the versions of the collections they search into
their keys: after a write, every key built before it is unreachable at once, on every replica.

The counter lives outside the collection's keys (``_version:<collection>``; no collection name starts with
``_``), so deleting a collection keeps it and a collection created again under the same name never reuses a
version an answer was cached under.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

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
