"""Embedding backends, registered by short name (``EMBEDDING_BACKEND``) and imported lazily."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from comps.core.app import Backend

if TYPE_CHECKING:
    import numpy as np

REGISTRY = {
    "sentence-transformers": "comps.embedding.backends.sentence_transformer:SentenceTransformerEmbedder",
    "remote": "comps.embedding.backends.remote:RemoteEmbedder",
}


@dataclass(frozen=True)
class Embedded:
    """Vectors for a request's inputs, in input order, as the model gives them (not normalized here)."""

    vectors: np.ndarray  # float32, shape (inputs, dimension)
    tokens: int  # tokens the model read, special tokens included, after truncation
    truncated: int = 0  # inputs longer than the model's limit, cut before embedding


class Embedder(Backend, Protocol):
    """What every embedding backend offers the service, besides the kit's `Backend` methods."""

    model_name: str
    dimension: int  # known after warm-up

    async def embed(self, texts: list[str], *, truncate: bool) -> Embedded:
        """Embed ``texts``; with ``truncate`` false an input over the model's limit is a `BadRequest`."""

    def describe(self) -> dict[str, Any]:
        """model, dimension, max_seq_length, device: for readiness and ``/v1/models``."""

    def tokenizer_json(self) -> str | None:
        """The model's tokenizer as a Hugging Face ``tokenizer.json`` document; None when not known here."""
