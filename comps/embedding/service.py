"""The logic behind the embedding routes: limits, normalization, and the two answer shapes."""

from __future__ import annotations

import base64
import logging

import numpy as np
from prometheus_client import Counter

from comps.core.errors import BadRequest
from comps.embedding.backends import Embedded, Embedder
from comps.embedding.protocol import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    EmbedRequest,
    as_list,
)
from comps.embedding.settings import EmbeddingSettings

INPUTS = Counter("chatqna_embedding_inputs_total", "Inputs embedded")
TOKENS = Counter("chatqna_embedding_tokens_total", "Tokens read by the embedding model")
TRUNCATED = Counter(
    "chatqna_embedding_truncated_inputs_total",
    "Inputs longer than the model's limit, cut before embedding: their end is invisible to vector search",
)
log = logging.getLogger("comps.embedding.service")


class EmbeddingService:
    def __init__(self, settings: EmbeddingSettings) -> None:
        self.settings = settings

    async def embed(
        self, backend: Embedder, texts: list[str], *, param: str, normalize: bool, truncate: bool | None
    ) -> Embedded:
        if len(texts) > self.settings.max_inputs:
            raise BadRequest(
                f"{param} has {len(texts)} items, more than the limit of {self.settings.max_inputs} per request",
                param=param,
                code="too_many_inputs",
            )
        result = await backend.embed(texts, truncate=self.settings.truncate if truncate is None else truncate)
        vectors = _l2_normalize(result.vectors) if normalize else result.vectors
        INPUTS.inc(len(texts))
        TOKENS.inc(result.tokens)
        if result.truncated:
            TRUNCATED.inc(result.truncated)
            log.warning(
                "%d of %d inputs were longer than %s's limit of %s tokens and were cut: their end is not embedded "
                "(chunk documents in the model's tokens, see GET /v1/tokenizer)",
                result.truncated, len(texts), backend.model_name, backend.describe().get("max_seq_length"),
            )  # fmt: skip
        return Embedded(vectors, result.tokens, result.truncated)

    async def openai(self, backend: Embedder, req: EmbeddingRequest) -> EmbeddingResponse:
        if req.dimensions is not None and req.dimensions != backend.dimension:
            raise BadRequest(
                f"dimensions={req.dimensions} is not supported: {backend.model_name} gives "
                f"{backend.dimension}-dimensional embeddings only",
                param="dimensions",
                code="unsupported_dimensions",
            )
        result = await self.embed(backend, as_list(req.input), param="input", normalize=True, truncate=None)
        if req.encoding_format == "base64":
            data = [
                EmbeddingData(index=i, embedding=base64.b64encode(v.astype("<f4").tobytes()).decode("ascii"))
                for i, v in enumerate(result.vectors)
            ]
        else:
            data = [EmbeddingData(index=i, embedding=v) for i, v in enumerate(result.vectors.tolist())]
        return EmbeddingResponse(
            data=data,
            model=backend.model_name,
            usage=EmbeddingUsage(prompt_tokens=result.tokens, total_tokens=result.tokens),
        )

    async def tei(self, backend: Embedder, req: EmbedRequest) -> Embedded:
        return await self.embed(
            backend, as_list(req.inputs), param="inputs", normalize=req.normalize, truncate=req.truncate
        )


def _l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalized: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return normalized
