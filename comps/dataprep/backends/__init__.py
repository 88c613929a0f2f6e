"""Dataprep document stores, registered by the vector store's name (``VECTORSTORE_BACKEND``), imported lazily."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from comps.core.app import Backend

if TYPE_CHECKING:
    from comps.vectorstore.documents import Chunk, DocumentRecord

REGISTRY = {
    "redis": "comps.dataprep.backends.redis_store:RedisDocumentStore",
    "pgvector": "comps.dataprep.backends.pgvector_store:PgvectorDocumentStore",
}


class DocumentStore(Backend, Protocol):
    """Where documents and job status are kept, besides the kit's `Backend` methods."""

    async def ensure_collection(self, collection: str, dim: int, model: str) -> None:
        """Create the collection for ``dim``-dimensional vectors; `BadRequest` if it holds another dimension."""

    async def get_document(self, collection: str, doc_id: str) -> DocumentRecord | None: ...

    async def list_documents(self, collection: str) -> list[DocumentRecord]: ...

    async def replace_document(
        self, collection: str, record: DocumentRecord, chunks: Sequence[Chunk]
    ) -> DocumentRecord:
        """Make ``chunks`` the document's current version atomically (all or nothing)."""

    async def delete_document(self, collection: str, doc_id: str) -> DocumentRecord | None: ...

    async def delete_all(self, collection: str) -> int:
        """Delete the collection; returns how many documents it had."""

    async def save_job(self, job: dict[str, Any]) -> None:
        """Keep a job's status (for a while) so it outlives this process; the store also remembers which
        jobs are not finished (`open_jobs`)."""

    async def open_jobs(self) -> list[dict[str, Any]]:
        """Every saved job that is not finished (what a crash left queued or running)."""
        ...

    async def claim_jobs(self, job_ids: Sequence[str], owner: str, lease_s: float) -> list[str]:
        """Take or renew, for ``lease_s`` seconds, the lease of each job that is free or already ``owner``'s;
        returns the ids ``owner`` holds now (the others belong to another live replica)."""
        ...

    async def sweep_orphans(self) -> int:
        """Delete chunks that no document version owns (left by a crash); returns how many."""
        ...

    async def load_job(self, job_id: str) -> dict[str, Any] | None: ...

    async def recent_jobs(self, limit: int) -> list[dict[str, Any]]:
        """The newest jobs first."""
