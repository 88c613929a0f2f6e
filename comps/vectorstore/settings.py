"""Settings shared by every service that uses the vector store (retriever, dataprep)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, field_validator

from comps.core.settings import ServiceSettings
from comps.vectorstore.names import validate_collection


class VectorStoreSettings(ServiceSettings):
    """Base of a service's settings class when it reads or writes the Redis vector store."""

    redis_url: str = Field(
        default="redis://127.0.0.1:6379",
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
        description="Redis with the search module (Redis Stack, Redis 8, or valkey + RediSearch).",
    )
    index_name: str = Field(
        default="rag-redis",
        validation_alias=AliasChoices("INDEX_NAME", "index_name"),
        description="Collection used when a request names none.",
    )

    @field_validator("index_name")
    @classmethod
    def _valid_collection(cls, value: str) -> str:
        try:
            return validate_collection(value)
        except Exception as exc:  # BadRequest -> a ValueError that load_settings reports with the variable
            raise ValueError(str(exc)) from None
