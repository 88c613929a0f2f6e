"""Settings of the reranker service (env prefix ``RERANKER_``), read once at start-up."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from comps.core.ports import PORTS
from comps.core.settings import ServiceSettings
from comps.core.torch_models import DeviceSetting


class RerankerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RERANKER_", extra="ignore", frozen=True)

    service_name: str = "reranker"
    port: int = Field(default=PORTS["reranker"], ge=0, le=65535)
    backend: str = Field(
        default="auto",
        description="cross-encoder | lexical-fusion | remote; auto: cross-encoder when RERANKER_MODEL names "
        "an existing folder, else lexical-fusion.",
    )
    max_texts: int = Field(default=256, ge=1, description="Most texts in one request.")
    max_queue: int = Field(
        default=4096, ge=1, description="Texts being scored or waiting to be; beyond that: 429 with Retry-After."
    )

    # cross-encoder backend
    model: str | None = Field(default=None, description="A cross-encoder folder under the models dir, or a path.")
    device: DeviceSetting = Field(default="auto", description="auto: cuda when torch sees one, else cpu.")
    num_threads: int | None = Field(default=None, ge=1, description="torch intra-op threads; unset: torch's default.")
    batch_size: int = Field(default=32, ge=1, description="Query-text pairs per forward pass.")

    # lexical-fusion backend
    rrf_k: int = Field(default=60, ge=1, description="Reciprocal rank fusion constant k in 1/(k + rank).")

    # remote backend
    remote_url: str | None = Field(default=None, description="Base URL of a TEI-compatible /rerank server.")
    remote_api_key: SecretStr | None = None
    remote_timeout_s: float = Field(default=60.0, gt=0)
