"""Settings of the embedding service (env prefix ``EMBEDDING_``), read once at start-up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from comps.core.ports import PORTS
from comps.core.settings import ServiceSettings
from comps.core.torch_models import DeviceSetting

DEFAULT_MODEL = "all-MiniLM-L6-v2"  # `chatqna models fetch` brings it into models/


class EmbeddingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDING_", extra="ignore", frozen=True)

    service_name: str = "embedding"
    port: int = Field(default=PORTS["embedding"], ge=0, le=65535)
    backend: str = Field(default="sentence-transformers", description="sentence-transformers | remote")

    # sentence-transformers backend
    model: str = Field(default=DEFAULT_MODEL, description="A folder under the models dir, or a path.")
    device: DeviceSetting = Field(default="auto", description="auto: cuda when torch sees one, else cpu.")
    num_threads: int | None = Field(default=None, ge=1, description="torch intra-op threads; unset: torch's default.")
    max_batch_size: int = Field(default=64, ge=1, description="Most inputs in one model call.")
    max_wait_ms: float = Field(default=5.0, ge=0, description="How long a batch waits for more inputs.")
    max_queue: int = Field(default=4096, ge=1, description="Inputs waiting for the model; beyond that: 429.")

    # every backend
    max_inputs: int = Field(default=512, ge=1, description="Most inputs in one request.")
    truncate: bool = Field(default=True, description="Cut too-long inputs (true) or refuse them with a 400 (false).")

    # remote backend
    remote_url: str | None = Field(default=None, description="Base URL of a TEI or OpenAI-compatible server.")
    remote_api: Literal["tei", "openai"] = "tei"
    remote_model: str | None = Field(default=None, description="Model name sent to (and reported for) the remote.")
    remote_api_key: SecretStr | None = None
    remote_timeout_s: float = Field(default=60.0, gt=0)
