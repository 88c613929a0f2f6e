"""The reranker service's contract: request and response bodies of its two APIs.

- TEI ``POST /rerank``: `RerankRequest` -> ``list[RerankResult]``, sorted by score (best first), cut to
  ``top_n``. ``texts`` are taken in their retrieval order (best first): the lexical-fusion backend
  uses that order as one of the two rankings it fuses.
- OPEA ``POST /v1/reranking``: `RerankingRequest` -> `RerankingResponse`, the same ranking with the
  documents' text, cut to ``top_n`` (1 by default, as in OPEA).

The service's limit on the number of texts (``RERANKER_MAX_TEXTS``, 256 by default) is checked by the
service, not here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("empty_query", "must not be empty")
    return value


def _not_empty(value: list[str]) -> list[str]:
    if not value:
        raise PydanticCustomError("empty_list", "must not be an empty list")
    return value


class RerankRequest(BaseModel):
    """TEI rerank request."""

    query: str
    texts: list[str] = Field(description="Candidates in retrieval order, best first.")
    top_n: int | None = Field(default=None, ge=1, description="Keep this many best; all when unset.")
    return_text: bool = Field(default=False, description="Add each text to its result.")
    raw_scores: bool = Field(
        default=False,
        description="Model logits instead of sigmoid scores (cross-encoder, remote); lexical-fusion scores "
        "are reciprocal-rank-fusion sums either way.",
    )
    truncate: bool = Field(
        default=True, description="Cut a query+text pair over the model's limit; false refuses it with a 400."
    )

    _query = field_validator("query")(_not_blank)
    _texts = field_validator("texts")(_not_empty)


class RerankResult(BaseModel):
    index: int = Field(description="Position of the text in the request's ``texts``.")
    score: float
    text: str | None = Field(default=None, description="Only with return_text; left out otherwise.")


class RetrievedDoc(BaseModel):
    """A retrieved document; fields besides ``text`` (metadata, ids) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    text: str


class RerankingRequest(BaseModel):
    """OPEA reranking request."""

    initial_query: str
    retrieved_docs: list[RetrievedDoc] = Field(description="Candidates in retrieval order, best first.")
    top_n: int = Field(default=1, ge=1)

    _query = field_validator("initial_query")(_not_blank)
    _docs = field_validator("retrieved_docs")(_not_empty)


class RerankedDocument(BaseModel):
    text: str
    score: float
    index: int = Field(description="Position of the document in ``retrieved_docs``.")


class RerankingResponse(BaseModel):
    query: str
    documents: list[RerankedDocument] = Field(description="Best first, at most top_n.")
