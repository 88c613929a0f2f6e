"""Redis (with the search module) as the retriever's store; all query logic is `comps.vectorstore.search`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from comps.core.errors import NotReady, UpstreamTimeout, UpstreamUnavailable
from comps.core.http import HttpClient
from comps.retriever.embedder import QueryEmbedder
from comps.retriever.settings import RetrieverSettings
from comps.vectorstore import schema, search
from comps.vectorstore.search import CollectionSummary, Hit, Query

PING_TIMEOUT_S = 3.0


class RedisRetriever:
    name = "redis"

    def __init__(self, settings: RetrieverSettings, embedder: QueryEmbedder) -> None:
        self.settings = settings
        self.embedder = embedder
        self.where = _without_password(settings.redis_url)
        self._redis: aioredis.Redis | None = None
        self._http: HttpClient | None = None

    async def warm_up(self, http: HttpClient) -> None:
        """Opens the client; Redis itself may come up later (readiness says so until it does)."""
        self._http = http
        self._redis = schema.connect(self.settings.redis_url)

    async def check_ready(self) -> dict[str, Any]:
        r = self._client()
        try:
            await asyncio.wait_for(r.ping(), PING_TIMEOUT_S)
            await asyncio.wait_for(r.execute_command("FT._LIST"), PING_TIMEOUT_S)
        except ResponseError as exc:
            raise NotReady(
                f"redis at {self.where} has no search module ({exc}); "
                "use Redis Stack, Redis 8 or valkey with RediSearch"
            ) from exc
        except (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError) as exc:
            raise NotReady(f"redis at {self.where} is unreachable: {exc or type(exc).__name__}") from exc
        assert self._http is not None
        return {
            "redis": self.where,
            "default_collection": self.settings.index_name,
            "hnsw_ef_runtime": self.settings.hnsw_ef_runtime,
            # Text-only queries need it; queries that carry their embedding do not, so it is reported, not required.
            "embedding": await self.embedder.status(self._http),
        }

    async def search(self, collection: str, query: Query) -> list[Hit]:
        with _redis_errors(self.where):
            return await search.search(self._client(), collection, query)

    async def collections(self) -> list[CollectionSummary]:
        with _redis_errors(self.where):
            return await search.describe_collections(self._client())

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise NotReady("redis backend is not started")
        return self._redis


@contextmanager
def _redis_errors(where: str) -> Iterator[None]:
    """Redis being down or slow becomes a 503/504 naming redis, not a 500."""
    try:
        yield
    except RedisTimeoutError as exc:
        raise UpstreamTimeout(f"redis at {where} did not answer in time: {exc}", node="redis") from exc
    except RedisConnectionError as exc:
        raise UpstreamUnavailable(f"redis at {where} is unreachable: {exc}", node="redis") from exc


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" if parts.username else f":***@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
