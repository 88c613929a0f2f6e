"""HTTP routes of the embedding service; the logic lives in `service.py`."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse, Response

from comps.core.app import create_app, ready_backend
from comps.core.backends import load_backend
from comps.core.errors import NotFound
from comps.embedding.backends import REGISTRY, Embedder
from comps.embedding.protocol import EmbeddingRequest, EmbeddingResponse, EmbedRequest
from comps.embedding.service import EmbeddingService
from comps.embedding.settings import EmbeddingSettings

EmbedderDep = Annotated[Embedder, Depends(ready_backend)]


def build_router(service: EmbeddingService) -> APIRouter:
    router = APIRouter(tags=["embedding"])

    @router.post("/v1/embeddings", response_model=EmbeddingResponse)
    async def embeddings(body: EmbeddingRequest, backend: EmbedderDep) -> EmbeddingResponse:
        """OpenAI embeddings."""
        return await service.openai(backend, body)

    @router.post("/embed", response_model=list[list[float]])
    async def embed(body: EmbedRequest, backend: EmbedderDep) -> JSONResponse:
        """TEI embed: one vector per input; the token count is in the ``x-compute-tokens`` header, as TEI does."""
        result = await service.tei(backend, body)
        return JSONResponse(result.vectors.tolist(), headers={"x-compute-tokens": str(result.tokens)})

    @router.get("/v1/models")
    async def models(backend: EmbedderDep) -> dict[str, Any]:
        """The one model served, OpenAI style, with its details."""
        return {"object": "list", "data": [{"id": backend.model_name, "object": "model", **backend.describe()}]}

    @router.get("/v1/tokenizer")
    async def tokenizer(backend: EmbedderDep) -> Response:
        """The model's token limit and its tokenizer (a Hugging Face ``tokenizer.json``), so that clients such as
        dataprep cut documents into chunks that the model reads whole. 404 when this backend does not know it."""
        document = backend.tokenizer_json()
        if document is None:
            raise NotFound(f"the {backend.name} backend does not know its model's tokenizer", code="no_tokenizer")
        limit = backend.describe().get("max_seq_length")
        body = (
            f'{{"model":{json.dumps(backend.model_name)},"max_seq_length":{json.dumps(limit)},"tokenizer":{document}}}'
        )
        return Response(body, media_type="application/json")

    return router


def build_app(settings: EmbeddingSettings) -> FastAPI:
    backend_cls = load_backend("embedding", REGISTRY, settings.backend, "EMBEDDING_BACKEND")
    return create_app(
        settings, backend=backend_cls(settings), routers=[build_router(EmbeddingService(settings))], title="embedding"
    )
