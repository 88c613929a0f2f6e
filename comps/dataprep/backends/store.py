"""What both dataprep stores share: the documents go to the vector store (`VECTORSTORE_BACKEND`), whose
`comps.vectorstore` implementation holds every transaction; the subclasses add where job status is kept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from comps.core.http import HttpClient
from comps.dataprep.settings import DataprepSettings
from comps.vectorstore.documents import Chunk, DocumentRecord
from comps.vectorstore.protocol import VectorStore
from comps.vectorstore.stores import store_for


class VectorDocuments:
    def __init__(self, settings: DataprepSettings) -> None:
        self.settings = settings
        self.vectors: VectorStore = store_for(settings)
        self.name = self.vectors.name

    async def warm_up(self, http: HttpClient) -> None:
        """Opens the store's client; the store itself may come up later (readiness says so until it does)."""
        await self.vectors.open()

    async def check_ready(self) -> dict[str, Any]:
        return {**await self.vectors.check_ready(), "default_collection": self.settings.index_name}

    async def close(self) -> None:
        await self.vectors.close()

    async def ensure_collection(self, collection: str, dim: int, model: str) -> None:
        await self.vectors.ensure_collection(collection, dim, model=model, algorithm=self.settings.index_algorithm)

    async def get_document(self, collection: str, doc_id: str) -> DocumentRecord | None:
        return await self.vectors.get_document(collection, doc_id)

    async def list_documents(self, collection: str) -> list[DocumentRecord]:
        return await self.vectors.list_documents(collection)

    async def replace_document(
        self, collection: str, record: DocumentRecord, chunks: Sequence[Chunk]
    ) -> DocumentRecord:
        return await self.vectors.replace_document(collection, record, chunks)

    async def delete_document(self, collection: str, doc_id: str) -> DocumentRecord | None:
        return await self.vectors.delete_document(collection, doc_id)

    async def delete_all(self, collection: str) -> int:
        return await self.vectors.delete_all(collection)

    async def sweep_orphans(self) -> int:
        return await self.vectors.sweep_orphans()
