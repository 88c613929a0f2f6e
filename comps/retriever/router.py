"""HTTP routes of the retriever; the logic lives in `service.py`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI

from comps.core.app import create_app, http_client, ready_backend
from comps.core.backends import load_backend
from comps.core.http import HttpClient
from comps.embedding.client import EmbeddingClient
from comps.retriever.backends import REGISTRY, Retriever
from comps.retriever.protocol import CollectionsResponse, RetrievalRequest, RetrievalResponse
from comps.retriever.service import RetrieverService
from comps.retriever.settings import RetrieverSettings

RetrieverDep = Annotated[Retriever, Depends(ready_backend)]
HttpDep = Annotated[HttpClient, Depends(http_client)]


def build_router(service: RetrieverService) -> APIRouter:
    router = APIRouter(tags=["retriever"])

    @router.post("/v1/retrieval", response_model=RetrievalResponse)
    async def retrieval(body: RetrievalRequest, backend: RetrieverDep, http: HttpDep) -> RetrievalResponse:
        """The chunks that best answer the query, best first (OPEA's retriever request shape is accepted)."""
        return await service.retrieve(backend, http, body)

    @router.get("/v1/collections", response_model=CollectionsResponse)
    async def collections(backend: RetrieverDep) -> CollectionsResponse:
        """Every collection: vector dimension, index algorithm, embedding model, chunk and document counts."""
        return await service.collections(backend)

    return router


def build_app(settings: RetrieverSettings) -> FastAPI:
    backend_cls = load_backend("retriever", REGISTRY, settings.vectorstore_backend, "VECTORSTORE_BACKEND")
    embedding = EmbeddingClient(
        settings.embedding_url,
        timeout_s=settings.embedding_timeout_s,
        api_key=settings.embedding_api_key,
        unconfigured="embedding service is not configured (RETRIEVER_EMBEDDING_URL): send the query's embedding "
        "with the request, or configure the service",
    )
    return create_app(
        settings,
        backend=backend_cls(settings, embedding),
        routers=[build_router(RetrieverService(settings, embedding))],
        title="retriever",
    )
