"""The vector store (`VECTORSTORE_BACKEND`: redis or pgvector) as the retriever's backend; all query logic is the
store's (`comps.vectorstore`)."""

from __future__ import annotations

from typing import Any

from comps.core.errors import UpstreamError
from comps.core.http import HttpClient
from comps.embedding.client import EmbeddingClient
from comps.retriever.settings import RetrieverSettings
from comps.vectorstore.search import CollectionSummary, Hit, Query
from comps.vectorstore.stores import store_for


class StoreRetriever:
    def __init__(self, settings: RetrieverSettings, embedding: EmbeddingClient) -> None:
        self.settings = settings
        self.embedding = embedding
        self.store = store_for(settings)
        self.name = self.store.name
        self._http: HttpClient | None = None

    async def warm_up(self, http: HttpClient) -> None:
        """Opens the store's client; the store itself may come up later (readiness says so until it does)."""
        self._http = http
        await self.store.open()

    async def check_ready(self) -> dict[str, Any]:
        details = await self.store.check_ready()
        assert self._http is not None
        return {
            **details,
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
        return await self.store.search(collection, query)

    async def collections(self) -> list[CollectionSummary]:
        return await self.store.collections()

    async def close(self) -> None:
        await self.store.close()
