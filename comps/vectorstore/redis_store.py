"""Redis (RediSearch) behind the `VectorStore` protocol: a thin shell over `schema`, `documents` and `search`,
which hold the key layout, the transactions and the queries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from comps.core.errors import NotReady
from comps.vectorstore import documents, schema, search
from comps.vectorstore.client import check_redis, redacted, redis_errors
from comps.vectorstore.documents import Chunk, DocumentRecord
from comps.vectorstore.schema import CollectionInfo
from comps.vectorstore.search import CollectionSummary, Hit, Query


class RedisVectorStore:
    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = redacted(url)
        self._redis: aioredis.Redis | None = None

    @property
    def r(self) -> aioredis.Redis:
        if self._redis is None:
            raise NotReady("the redis vector store is not open")
        return self._redis

    async def open(self) -> None:
        self._redis = schema.connect(self.url)

    async def check_ready(self) -> dict[str, Any]:
        await check_redis(self.r, self.where)
        return {"redis": self.where}

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def ensure_collection(self, collection: str, dim: int, *, model: str = "", algorithm: str = "HNSW") -> None:
        with redis_errors(self.where):
            await schema.ensure_index(self.r, collection, dim, model=model, algorithm=algorithm)  # type: ignore[arg-type]

    async def collection_info(self, collection: str) -> CollectionInfo | None:
        with redis_errors(self.where):
            return await schema.collection_info(self.r, collection)

    async def get_document(self, collection: str, doc_id: str) -> DocumentRecord | None:
        with redis_errors(self.where):
            return await documents.get_document(self.r, collection, doc_id)

    async def list_documents(self, collection: str) -> list[DocumentRecord]:
        with redis_errors(self.where):
            return await documents.list_documents(self.r, collection)

    async def document_chunks(self, collection: str, record: DocumentRecord) -> list[Chunk]:
        with redis_errors(self.where):
            async with self.r.pipeline(transaction=False) as pipe:
                for key in record.chunk_keys(collection):
                    pipe.hmget(key, [schema.TEXT, schema.EMBEDDING, schema.PAGE])
                rows = await pipe.execute()
        chunks = []
        for text, blob, page in rows:
            if text is None or blob is None:
                raise documents.CollectionMissing(f"document {record.doc_id} changed while being read; read it again")
            vector = np.frombuffer(blob, dtype=np.float32)
            chunks.append(Chunk(text.decode(), vector, int(float(page)) if page not in (None, b"") else None))
        return chunks

    async def replace_document(
        self, collection: str, record: DocumentRecord, chunks: Sequence[Chunk]
    ) -> DocumentRecord:
        with redis_errors(self.where):
            return await documents.replace_document(self.r, collection, record, chunks)

    async def delete_document(self, collection: str, doc_id: str) -> DocumentRecord | None:
        with redis_errors(self.where):
            return await documents.delete_document(self.r, collection, doc_id)

    async def delete_all(self, collection: str) -> int:
        with redis_errors(self.where):
            return await documents.delete_all(self.r, collection)

    async def sweep_orphans(self) -> int:
        with redis_errors(self.where):
            return await documents.sweep_orphans(self.r)

    async def content_versions(self, collections: Sequence[str]) -> dict[str, int]:
        # `comps.vectorstore.versions` (the answer cache's branch) keeps the counter, INCRed in each write's
        # MULTI/EXEC; imported here so that this module does not depend on it before that branch lands.
        from comps.vectorstore import versions  # type: ignore[attr-defined,unused-ignore]

        with redis_errors(self.where):
            found: dict[str, int] = await versions.content_versions(self.r, list(collections))
            return found

    async def search(self, collection: str, query: Query) -> list[Hit]:
        with redis_errors(self.where):
            return await search.search(self.r, collection, query)

    async def collections(self) -> list[CollectionSummary]:
        with redis_errors(self.where):
            return await search.describe_collections(self.r)
