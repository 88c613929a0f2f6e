"""The embedding service's contract: request and response bodies of its two APIs.

- OpenAI ``POST /v1/embeddings``: `EmbeddingRequest` -> `EmbeddingResponse`.
- TEI ``POST /embed``: `EmbedRequest` -> ``list[list[float]]`` (one vector per input, in input order).

Inputs are text only: a string or a non-empty list of non-empty strings. Token-id arrays (which the
OpenAI API also accepts) are refused with a 400 naming the reason. The service's limit on the number
of inputs (``EMBEDDING_MAX_INPUTS``, 512 by default) is checked by the service, not here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticCustomError


def validate_texts(value: Any) -> Any:
    """A string or a non-empty list of non-empty strings; anything else gets a message saying what is wrong."""
    if isinstance(value, str):
        if not value:
            raise PydanticCustomError("empty_input", "must not be an empty string")
        return value
    if not isinstance(value, list):
        raise PydanticCustomError("input_type", "must be a string or a list of strings")
    if not value:
        raise PydanticCustomError("empty_input", "must not be an empty list")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value) or all(isinstance(v, list) for v in value):
        raise PydanticCustomError("token_ids", "token-id arrays are not supported; send text")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise PydanticCustomError(
                "input_type", "item {index} must be a string, not {kind}", {"index": i, "kind": type(v).__name__}
            )
        if not v:
            raise PydanticCustomError("empty_input", "item {index} is an empty string", {"index": i})
    return value


class EmbeddingRequest(BaseModel):
    """OpenAI embeddings request. ``model`` is accepted and ignored: the service serves one model."""

    input: str | list[str] = Field(description="Text or texts to embed.")
    model: str | None = Field(default=None, description="Ignored; the answer names the model that ran.")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: little-endian float32 bytes, base64-encoded (as OpenAI does)."
    )
    dimensions: int | None = Field(
        default=None, description="Only the model's own dimension is accepted (no truncated embeddings)."
    )
    user: str | None = None

    _texts = field_validator("input", mode="before")(validate_texts)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or a base64 string when encoding_format is base64.")


class EmbeddingUsage(BaseModel):
    """Tokens counted with the model's tokenizer, special tokens included, after truncation."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class EmbedRequest(BaseModel):
    """TEI ``/embed`` request. The answer is ``list[list[float]]``, one vector per input."""

    inputs: str | list[str] = Field(description="Text or texts to embed.")
    normalize: bool = Field(default=True, description="L2-normalize each vector.")
    truncate: bool | None = Field(
        default=None,
        description="Cut inputs longer than the model's max_seq_length; false refuses them with a 400. "
        "Unset: the service's EMBEDDING_TRUNCATE (true by default).",
    )

    _texts = field_validator("inputs", mode="before")(validate_texts)


def as_list(texts: str | list[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else texts
