"""Redis (with the search module) as the retriever's store; all query logic is `comps.vectorstore.search`."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from comps.core.errors import NotReady, UpstreamError
from comps.core.http import HttpClient
from comps.embedding.client import EmbeddingClient
from comps.retriever.settings import RetrieverSettings
from comps.vectorstore import schema, search
from comps.vectorstore.client import check_redis, redacted, redis_errors
from comps.vectorstore.search import CollectionSummary, Hit, Query


class RedisRetriever:
    name = "redis"

    def __init__(self, settings: RetrieverSettings, embedding: EmbeddingClient) -> None:
        self.settings = settings
        self.embedding = embedding
        self.where = redacted(settings.redis_url)
        self._redis: aioredis.Redis | None = None
        self._http: HttpClient | None = None

    async def warm_up(self, http: HttpClient) -> None:
        """Opens the client; Redis itself may come up later (readiness says so until it does)."""
        self._http = http
        self._redis = schema.connect(self.settings.redis_url)

    async def check_ready(self) -> dict[str, Any]:
        await check_redis(self._client(), self.where)
        assert self._http is not None
        return {
            "redis": self.where,
            "default_collection": self.settings.index_name,
            "hnsw_ef_runtime": self.settings.hnsw_ef_runtime,
            # Text-only queries need it; queries that carry their embedding do not, so it is reported, not required.
            "embedding": await self._embedding_status(self._http),
        }

    async def _embedding_status(self, http: HttpClient) -> str:
        """``ready``, ``not configured``, or why not (never raises)."""
        if self.embedding.url is None:
            return "not configured"
        try:
            await self.embedding.ready(http)
        except UpstreamError as exc:
            return f"unavailable: {exc.message}"
        return "ready"

    async def search(self, collection: str, query: Query) -> list[Hit]:
        with redis_errors(self.where):
            return await search.search(self._client(), collection, query)

    async def collections(self) -> list[CollectionSummary]:
        with redis_errors(self.where):
            return await search.describe_collections(self._client())

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise NotReady("redis backend is not started")
        return self._redis
