"""HTTP routes of the reranker service; the logic lives in `service.py`."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Response

from comps.core.app import create_app, ready_backend
from comps.core.backends import load_backend
from comps.core.http import MODEL_HEADER
from comps.core.settings import resolve_model_path
from comps.reranker.backends import REGISTRY, Reranker
from comps.reranker.protocol import RerankingRequest, RerankingResponse, RerankRequest, RerankResult
from comps.reranker.service import RerankerService
from comps.reranker.settings import RerankerSettings

log = logging.getLogger("comps.reranker")

RerankerDep = Annotated[Reranker, Depends(ready_backend)]


def build_router(service: RerankerService) -> APIRouter:
    router = APIRouter(tags=["reranker"])

    @router.post("/rerank", response_model=list[RerankResult], response_model_exclude_none=True)
    async def rerank(body: RerankRequest, backend: RerankerDep, response: Response) -> list[RerankResult]:
        """TEI rerank: ``[{"index", "score", "text"?}]``, best first; the ``x-chatqna-model`` header names the
        model (or method) that scored."""
        response.headers[MODEL_HEADER] = backend.model_name
        return await service.tei(backend, body)

    @router.post("/v1/reranking", response_model=RerankingResponse)
    async def reranking(body: RerankingRequest, backend: RerankerDep) -> RerankingResponse:
        """OPEA reranking: the ``top_n`` best documents with their scores."""
        return await service.opea(backend, body)

    return router


def backend_name(settings: RerankerSettings) -> str:
    """RERANKER_BACKEND, with ``auto`` resolved: cross-encoder if RERANKER_MODEL exists, else lexical-fusion."""
    if settings.backend != "auto":
        return settings.backend
    if settings.model:
        if resolve_model_path(settings.model, settings.models_dir).is_dir():
            return "cross-encoder"
        log.warning("RERANKER_MODEL=%r is not a folder; using the lexical-fusion backend", settings.model)
    return "lexical-fusion"


def build_app(settings: RerankerSettings) -> FastAPI:
    backend_cls = load_backend("reranker", REGISTRY, backend_name(settings), "RERANKER_BACKEND")
    return create_app(
        settings, backend=backend_cls(settings), routers=[build_router(RerankerService(settings))], title="reranker"
    )
