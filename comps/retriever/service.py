"""The logic behind the retriever routes: the query vector, the search, the answer, the metrics."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from prometheus_client import Histogram

from comps.core.http import HttpClient
from comps.embedding.client import EmbeddingClient
from comps.retriever.backends import Retriever
from comps.retriever.protocol import (
    CollectionsResponse,
    CollectionSummary,
    DocumentMetadata,
    RetrievalRequest,
    RetrievalResponse,
    RetrievedDocument,
)
from comps.retriever.settings import RetrieverSettings
from comps.vectorstore import search
from comps.vectorstore.names import validate_collection

QUERY_LATENCY = Histogram(
    "chatqna_retriever_query_seconds",
    "Time the vector store took to answer a retrieval (the embedding call excluded)",
    ["search_type"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EMBEDDING_LATENCY = Histogram(
    "chatqna_retriever_embedding_seconds",
    "Time the embedding service took to embed a text-only query",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RESULTS = Histogram(
    "chatqna_retriever_results",
    "Documents returned per retrieval",
    ["search_type"],
    buckets=(0, 1, 2, 3, 4, 5, 8, 10, 20, 50, 100),
)


class RetrieverService:
    def __init__(self, settings: RetrieverSettings, embedding: EmbeddingClient) -> None:
        self.settings = settings
        self.embedding = embedding

    async def retrieve(self, backend: Retriever, http: HttpClient, req: RetrievalRequest) -> RetrievalResponse:
        names = [validate_collection(c) for c in req.collections or [req.collection or self.settings.index_name]]
        search.filter_values(req.filters)  # bad filter values fail before an embedding is paid for
        vector: list[float] | np.ndarray | None = req.embedding
        if vector is None:
            started = time.perf_counter()
            vectors, _ = await self.embedding.embed(http, [req.text or ""])
            vector = vectors[0]
            EMBEDDING_LATENCY.observe(time.perf_counter() - started)
        query = search.Query(
            vector=vector,
            text=req.text,
            k=req.k,
            search_type=req.search_type,
            fetch_k=req.fetch_k,
            lambda_mult=req.lambda_mult,
            score_threshold=req.score_threshold,
            distance_threshold=req.distance_threshold,
            filters=req.filters,
            ef_runtime=self.settings.hnsw_ef_runtime,
        )
        started = time.perf_counter()
        if len(names) == 1:
            hits = await backend.search(names[0], query)
        else:  # each collection searched alike, then one ranking: scores are comparable (same model, same measure)
            found = await asyncio.gather(*(backend.search(name, query) for name in dict.fromkeys(names)))
            hits = sorted((h for some in found for h in some), key=lambda h: h.score, reverse=True)[: req.k]
        QUERY_LATENCY.labels(req.search_type).observe(time.perf_counter() - started)
        RESULTS.labels(req.search_type).observe(len(hits))
        return RetrievalResponse(
            query=req.text,
            collection=names[0],
            search_type=req.search_type,
            documents=[
                RetrievedDocument(
                    id=h.key,
                    text=h.text,
                    score=h.score,
                    metadata=DocumentMetadata(
                        source=h.source, doc_id=h.doc_id, page=h.page, chunk=h.chunk, tags=list(h.tags)
                    ),
                )
                for h in hits
            ],
        )

    async def collections(self, backend: Retriever) -> CollectionsResponse:
        return CollectionsResponse(
            collections=[
                CollectionSummary(
                    name=c.name, dim=c.dim, algorithm=c.algorithm, model=c.model, chunks=c.chunks, documents=c.documents
                )
                for c in await backend.collections()
            ]
        )
