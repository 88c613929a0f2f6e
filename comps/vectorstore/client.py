"""What every service that talks to the vector store's Redis needs besides the schema: a readiness
check (PING + search module) and Redis failures turned into the kit's upstream errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from comps.core.errors import NotReady, UpstreamTimeout, UpstreamUnavailable

PING_TIMEOUT_S = 3.0


async def check_redis(r: aioredis.Redis, where: str) -> None:
    """`NotReady` with the reason unless Redis answers PING and has the search module."""
    try:
        await asyncio.wait_for(r.ping(), PING_TIMEOUT_S)
        await asyncio.wait_for(r.execute_command("FT._LIST"), PING_TIMEOUT_S)
    except ResponseError as exc:
        raise NotReady(
            f"redis at {where} has no search module ({exc}); use Redis Stack, Redis 8 or valkey with RediSearch"
        ) from exc
    except (TimeoutError, RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise NotReady(f"redis at {where} is unreachable: {str(exc) or type(exc).__name__}") from exc


@contextmanager
def redis_errors(where: str) -> Iterator[None]:
    """Redis being down or slow becomes a 503/504 naming redis, not a 500."""
    try:
        yield
    except RedisTimeoutError as exc:
        raise UpstreamTimeout(f"redis at {where} did not answer in time: {exc}", node="redis") from exc
    except RedisConnectionError as exc:
        raise UpstreamUnavailable(f"redis at {where} is unreachable: {exc}", node="redis") from exc


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" if parts.username else f":***@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
