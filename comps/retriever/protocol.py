"""The retriever's contract: ``POST /v1/retrieval`` and ``GET /v1/collections``.

`RetrievalRequest` also accepts OPEA's retriever request (its ``EmbedDoc``: ``text``, ``embedding``,
``search_type``, ``k``, ``distance_threshold``, ``fetch_k``, ``lambda_mult``, ``score_threshold``), with
``input`` as another name for ``text``, ``index_name`` for ``collection``, and an embedding given as an
OpenAI embeddings answer (``{"data": [{"embedding": [...]}]}``) or a one-row batch. Unknown fields are ignored.

Search types (all take ``filters``):
- ``similarity``: the ``k`` nearest chunks;
- ``similarity_score_threshold``: the ``k`` nearest, keeping ``score >= score_threshold``;
- ``similarity_distance_threshold``: chunks with cosine distance ``<= distance_threshold`` (required), ``k`` closest;
- ``mmr``: ``fetch_k`` nearest, then maximal marginal relevance (``lambda_mult``: 1 = relevance only,
  0 = diversity only) picks ``k``;
- ``hybrid``: BM25 over the chunks' text (needs ``text``) fused with the ``fetch_k`` nearest by reciprocal
  rank fusion (constant 60); ``score`` is then the fused score.

Scores are cosine similarities (``1 - cosine distance``, higher is better) except for hybrid.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

SearchType = Literal["similarity", "similarity_score_threshold", "similarity_distance_threshold", "mmr", "hybrid"]
FilterKey = Literal["source", "doc_id", "tags", "page"]
FilterValue = str | int | float | list[str | int]


MAX_COLLECTIONS = 32


class RetrievalOptions(BaseModel):
    """How to search: the retrieval options, declared here once. The gateway's request includes them and
    forwards them as they are, so a new option is one edit."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    collection: str | None = Field(
        default=None,
        validation_alias=AliasChoices("collection", "index_name"),
        description="Collection (index) to search; default: the service's INDEX_NAME.",
    )
    collections: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_COLLECTIONS,
        description="Several collections searched together (instead of `collection`): each is searched the same "
        "way and the hits are merged, best score first, k in all.",
    )
    k: int = Field(default=4, ge=1, le=100, description="Documents to return.")
    search_type: SearchType = "similarity"
    fetch_k: int = Field(default=20, ge=1, le=1000, description="Candidates fetched for mmr and hybrid.")
    lambda_mult: float = Field(default=0.5, ge=0, le=1, description="mmr: 1 = relevance only, 0 = diversity only.")
    score_threshold: float = Field(
        default=0.2, ge=-1, le=1, description="similarity_score_threshold: the least score kept."
    )
    distance_threshold: float | None = Field(
        default=None, ge=0, le=2, description="similarity_distance_threshold: largest cosine distance kept."
    )
    filters: dict[FilterKey, FilterValue] | None = Field(
        default=None,
        description="Metadata pre-filters, AND-ed: source, doc_id, tags (exact, case-insensitive), page (number); "
        "a list means any of its values.",
    )

    @model_validator(mode="after")
    def _threshold_given(self) -> Self:
        if self.collections is not None and self.collection is not None:
            raise PydanticCustomError("two_scopes", "give collection or collections, not both")
        if self.search_type == "similarity_distance_threshold" and self.distance_threshold is None:
            raise PydanticCustomError(
                "missing_distance_threshold", "search_type similarity_distance_threshold needs distance_threshold"
            )
        return self

    def retrieval_options(self) -> dict[str, Any]:
        """These options' values, by field name (what a subclass forwards to the retriever)."""
        return {name: getattr(self, name) for name in RetrievalOptions.model_fields}


class RetrievalRequest(RetrievalOptions):
    """A query (text, embedding or both) and how to search. With both, the embedding is used for vector
    search and the text for hybrid's BM25 part; with text only, the retriever asks the embedding service."""

    text: str | None = Field(
        default=None, max_length=100_000, validation_alias=AliasChoices("text", "input"), description="The query."
    )
    embedding: list[float] | None = Field(
        default=None,
        min_length=1,
        max_length=16_384,
        description="The query's embedding (from the collection's embedding model).",
    )

    @field_validator("embedding", mode="before")
    @classmethod
    def _unwrap_embedding(cls, value: Any) -> Any:
        """OPEA clients may pass an OpenAI embeddings answer, or a batch of one vector."""
        if isinstance(value, dict) and isinstance(value.get("data"), list) and len(value["data"]) == 1:
            value = value["data"][0].get("embedding") if isinstance(value["data"][0], dict) else value
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
            value = value[0]
        return value

    @field_validator("embedding")
    @classmethod
    def _finite_nonzero(cls, value: list[float] | None) -> list[float] | None:
        if value is not None:
            if not all(math.isfinite(x) for x in value):
                raise PydanticCustomError("not_finite", "must contain finite numbers only")
            if not any(value):
                raise PydanticCustomError("zero_vector", "must not be all zeros (its direction is undefined)")
        return value

    @model_validator(mode="after")
    def _has_query(self) -> Self:
        has_text = self.text is not None and self.text.strip() != ""
        if not has_text and self.embedding is None:
            raise PydanticCustomError("missing_query", "give the query as text, embedding or both")
        if self.search_type == "hybrid" and not has_text:
            raise PydanticCustomError(
                "missing_text", "search_type hybrid needs text (its keyword part searches the query's words)"
            )
        return self


class DocumentMetadata(BaseModel):
    source: str
    doc_id: str
    page: int | None = None
    chunk: int
    tags: list[str] = Field(default_factory=list)


class RetrievedDocument(BaseModel):
    id: str = Field(description="The chunk's key in the store.")
    text: str
    score: float = Field(description="Cosine similarity (1 - distance); for hybrid, the fused RRF score.")
    metadata: DocumentMetadata


class RetrievalResponse(BaseModel):
    query: str | None
    collection: str = Field(description="The collection searched (the first one, when several were).")
    search_type: str
    documents: list[RetrievedDocument] = Field(description="Best first; empty when nothing matches.")


class CollectionSummary(BaseModel):
    name: str
    dim: int
    algorithm: str
    model: str
    chunks: int
    documents: int


class CollectionsResponse(BaseModel):
    collections: list[CollectionSummary]
