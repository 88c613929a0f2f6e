"""Reranker backends, registered by short name (``RERANKER_BACKEND``) and imported lazily."""

from __future__ import annotations

from typing import Protocol

from comps.core.app import Backend

REGISTRY = {
    "cross-encoder": "comps.reranker.backends.cross_encoder:CrossEncoderReranker",
    "lexical-fusion": "comps.reranker.backends.lexical_fusion:LexicalFusionReranker",
    "remote": "comps.reranker.backends.remote:RemoteReranker",
}


class Reranker(Backend, Protocol):
    """What every reranker backend offers the service, besides the kit's `Backend` methods."""

    model_name: str  # what scores: the model folder's name, the method, or the remote server

    async def score(self, query: str, texts: list[str], *, truncate: bool, raw: bool) -> list[float]:
        """One relevance score per text, in the order of ``texts`` (higher is better)."""
