"""Settings shared by every service that uses the vector store (retriever, dataprep)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, field_validator, model_validator

from comps.core.settings import ServiceSettings
from comps.vectorstore.names import Backend, validate_collection


class VectorStoreSettings(ServiceSettings):
    """Base of a service's settings class when it reads or writes the vector store."""

    vectorstore_backend: Backend = Field(
        default="redis",
        validation_alias=AliasChoices("VECTORSTORE_BACKEND", "vectorstore_backend"),
        description="Where vectors live: redis (RediSearch) or pgvector (PostgreSQL with the vector extension).",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379",
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
        description="Redis with the search module (Redis Stack, Redis 8, or valkey + RediSearch).",
    )
    vectorstore_database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("VECTORSTORE_DATABASE_URL", "DATABASE_URL", "vectorstore_database_url"),
        description="PostgreSQL with pgvector for VECTORSTORE_BACKEND=pgvector (default: DATABASE_URL).",
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

    @model_validator(mode="after")
    def _pgvector_needs_a_database(self) -> VectorStoreSettings:
        if self.vectorstore_backend == "pgvector" and not self.vectorstore_database_url:
            raise ValueError("VECTORSTORE_BACKEND=pgvector needs VECTORSTORE_DATABASE_URL (or DATABASE_URL)")
        return self
