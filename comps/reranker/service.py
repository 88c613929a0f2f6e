"""The logic behind the reranker routes: limits, sorting, cutting to top_n, the two answer shapes."""

from __future__ import annotations

from prometheus_client import Counter

from comps.core.errors import BadRequest
from comps.reranker.backends import Reranker
from comps.reranker.protocol import (
    RerankedDocument,
    RerankingRequest,
    RerankingResponse,
    RerankRequest,
    RerankResult,
)
from comps.reranker.settings import RerankerSettings

TEXTS = Counter("chatqna_reranker_texts_total", "Candidate texts scored")


class RerankerService:
    def __init__(self, settings: RerankerSettings) -> None:
        self.settings = settings

    async def ranked(
        self,
        backend: Reranker,
        query: str,
        texts: list[str],
        *,
        top_n: int | None,
        raw: bool,
        truncate: bool,
        param: str,
    ) -> list[tuple[int, float]]:
        """(index, score) pairs, best first (equal scores keep the given order), at most ``top_n``."""
        if len(texts) > self.settings.max_texts:
            raise BadRequest(
                f"{param} has {len(texts)} items, more than the limit of {self.settings.max_texts} per request",
                param=param,
                code="too_many_texts",
            )
        scores = await backend.score(query, texts, truncate=truncate, raw=raw)
        TEXTS.inc(len(texts))
        order = sorted(range(len(texts)), key=lambda i: -scores[i])
        return [(i, scores[i]) for i in order[:top_n]]

    async def tei(self, backend: Reranker, req: RerankRequest) -> list[RerankResult]:
        ranked = await self.ranked(
            backend, req.query, req.texts, top_n=req.top_n, raw=req.raw_scores, truncate=req.truncate, param="texts"
        )
        return [
            RerankResult(index=i, score=score, text=req.texts[i] if req.return_text else None) for i, score in ranked
        ]

    async def opea(self, backend: Reranker, req: RerankingRequest) -> RerankingResponse:
        texts = [doc.text for doc in req.retrieved_docs]
        ranked = await self.ranked(
            backend, req.initial_query, texts, top_n=req.top_n, raw=False, truncate=True, param="retrieved_docs"
        )
        return RerankingResponse(
            query=req.initial_query,
            documents=[RerankedDocument(text=texts[i], score=score, index=i) for i, score in ranked],
        )
