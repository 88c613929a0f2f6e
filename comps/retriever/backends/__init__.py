"""Retriever backends, registered by the vector store's name (``VECTORSTORE_BACKEND``) and imported lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from comps.core.app import Backend

if TYPE_CHECKING:
    from comps.vectorstore.search import CollectionSummary, Hit, Query

REGISTRY = {
    "redis": "comps.retriever.backends.store:StoreRetriever",
    "pgvector": "comps.retriever.backends.store:StoreRetriever",
}


class Retriever(Backend, Protocol):
    """What every retriever backend offers the service, besides the kit's `Backend` methods."""

    async def search(self, collection: str, query: Query) -> list[Hit]:
        """Run ``query`` on ``collection``, best first; a missing or empty collection gives []."""

    async def collections(self) -> list[CollectionSummary]:
        """Every collection the store holds."""
