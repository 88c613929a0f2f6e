"""The logic behind the reranker routes: limits, sorting, cutting to top_n, the two answer shapes."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from comps.core.errors import BadRequest, Overloaded
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
QUEUED = Gauge("chatqna_reranker_queued_texts", "Texts being scored or waiting to be")
REJECTED = Counter("chatqna_reranker_rejected_requests", "Requests refused with 429 because the queue was full")


class RerankerService:
    def __init__(self, settings: RerankerSettings) -> None:
        self.settings = settings
        self.queued = 0  # texts of the requests being scored now

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
        if self.queued and self.queued + len(texts) > self.settings.max_queue:
            REJECTED.inc()
            raise Overloaded(f"{self.queued} texts are already waiting for the reranker; retry shortly")
        self.queued += len(texts)
        QUEUED.set(self.queued)
        try:
            scores = await backend.score(query, texts, truncate=truncate, raw=raw)
        finally:
            self.queued -= len(texts)
            QUEUED.set(self.queued)
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
