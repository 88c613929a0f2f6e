"""Settings of the retriever service (env prefix ``RETRIEVER_``), read once at start-up."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from comps.core.ports import PORTS
from comps.vectorstore.settings import VectorStoreSettings


class RetrieverSettings(VectorStoreSettings):
    model_config = SettingsConfigDict(env_prefix="RETRIEVER_", extra="ignore", frozen=True)

    service_name: str = "retriever"
    port: int = Field(default=PORTS["retriever"], ge=0, le=65535)

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
