"""Settings of the retriever service (env prefix ``RETRIEVER_``), read once at start-up."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from comps.core.settings import ServiceSettings


class RetrieverSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RETRIEVER_", extra="ignore", frozen=True)

    service_name: str = "retriever"
    port: int = Field(default=7000, ge=0, le=65535)
    backend: str = Field(default="redis", description="Vector store backend: redis.")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379",
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
        description="Redis with the search module (Redis Stack, Redis 8, or valkey + RediSearch).",
    )
    index_name: str = Field(
        default="rag-redis",
        validation_alias=AliasChoices("INDEX_NAME", "index_name"),
        description="Collection searched when a request names none.",
    )
    hnsw_ef_runtime: int | None = Field(
        default=64,
        ge=1,
        le=4096,
        description="HNSW candidates explored per query (recall vs latency); unset: the index's own EF_RUNTIME.",
    )

    embedding_url: str | None = Field(
        default=None, description="Embedding service base URL, used for queries that come as text only."
    )
    embedding_api_key: SecretStr | None = Field(default=None, description="Bearer token for the embedding service.")
    embedding_timeout_s: float = Field(default=30.0, gt=0, description="Per call to the embedding service.")

    @field_validator("index_name")
    @classmethod
    def _valid_collection(cls, value: str) -> str:
        from comps.vectorstore.schema import validate_collection

        try:
            return validate_collection(value)
        except Exception as exc:  # BadRequest -> a ValueError that load_settings reports with the variable
            raise ValueError(str(exc)) from None
