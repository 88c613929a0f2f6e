"""The vector store's contract: what dataprep writes with, what the retriever reads with, whatever the store.

Two implementations, chosen by ``VECTORSTORE_BACKEND`` (`settings.VectorStoreSettings`, read once by both
services): ``redis`` (`redis_store.RedisVectorStore`: RediSearch, the modules `schema`, `documents`, `search`)
and ``pgvector`` (`pgvector_store.PgvectorStore`: PostgreSQL with the ``vector`` extension). Both give the same
hits on the same data (`tests/integration/test_vectorstores.py` runs one suite against both).

Promises every store keeps:
- `replace_document` makes a document's new chunks current atomically: a search sees the old version or
  the new one, never a mix or none; concurrent writers of one document: the last one wins;
- a write into a collection that does not exist (or is deleted meanwhile) raises `CollectionMissing`;
- every `replace_document`, `delete_document` and `delete_all` adds 1 to the collection's content version in
  the same transaction as the write (`content_versions`: missing -> 0; it survives the collection's deletion),
  so an answer cache keyed on it never serves an answer from content that changed;
- `search` on a missing collection gives []; bad input raises `BadRequest`; the store being down raises
  `UpstreamUnavailable` / `UpstreamTimeout` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from comps.vectorstore.documents import Chunk, CollectionMissing, DocumentRecord
from comps.vectorstore.names import BACKENDS, Backend
from comps.vectorstore.schema import CollectionInfo
from comps.vectorstore.search import CollectionSummary, Hit, Query

__all__ = [
    "BACKENDS",
    "Backend",
    "Chunk",
    "CollectionInfo",
    "CollectionMissing",
    "CollectionSummary",
    "DocumentRecord",
    "Hit",
    "Query",
    "VectorStore",
]


class VectorStore(Protocol):
    name: str  # "redis" or "pgvector"
    where: str  # the store's address without its password, for messages

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        """Open the client (the server may come up later: `check_ready` says so until it does)."""

    async def check_ready(self) -> dict[str, Any]:
        """Details for readiness; `NotReady` with the reason when the store cannot serve."""
        ...

    async def close(self) -> None: ...

    # ------------------------------------------------------------------ write side (dataprep)
    async def ensure_collection(self, collection: str, dim: int, *, model: str = "", algorithm: str = "HNSW") -> None:
        """Create the collection for ``dim``-dimensional vectors; `BadRequest` if it holds another dimension."""

    async def collection_info(self, collection: str) -> CollectionInfo | None: ...

    async def get_document(self, collection: str, doc_id: str) -> DocumentRecord | None: ...

    async def list_documents(self, collection: str) -> list[DocumentRecord]:
        """Every document of the collection, sorted by source then id."""
        ...

    async def document_chunks(self, collection: str, record: DocumentRecord) -> list[Chunk]:
        """The chunks (text, vector, page) of ``record``'s version, in order: what a migration copies."""
        ...

    async def replace_document(
        self, collection: str, record: DocumentRecord, chunks: Sequence[Chunk]
    ) -> DocumentRecord:
        """Make ``chunks`` the document's current version atomically; returns the stored record (its version
        and chunk count set)."""
        ...

    async def delete_document(self, collection: str, doc_id: str) -> DocumentRecord | None:
        """Delete a document atomically; returns what was deleted (None: there was none)."""
        ...

    async def delete_all(self, collection: str) -> int:
        """Delete the collection; returns how many documents it had."""
        ...

    async def sweep_orphans(self) -> int:
        """Delete chunks no document version owns (a crash's leftovers); returns how many."""
        ...

    async def content_versions(self, collections: Sequence[str]) -> dict[str, int]:
        """Each collection's content version (0 for one never written)."""
        ...

    # ------------------------------------------------------------------ read side (retriever)
    async def search(self, collection: str, query: Query) -> list[Hit]:
        """Run ``query`` on ``collection``, best first; a missing or empty collection gives []."""
        ...

    async def collections(self) -> list[CollectionSummary]:
        """Every collection the store holds."""
        ...
