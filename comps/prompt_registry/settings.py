"""Settings of the prompt registry (env prefix ``PROMPTS_``), read once at start-up."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from comps.core.ports import PORTS
from comps.core.settings import ServiceSettings


class PromptRegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTS_", extra="ignore", frozen=True)

    service_name: str = "prompts"
    port: int = Field(default=PORTS["prompts"], ge=0, le=65535)
    database_url: str = Field(
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
        description="PostgreSQL of the prompts (postgresql://...); the same store as the others or one of its own.",
    )
    migrate: bool = Field(default=True, description="Bring the schema to the newest revision at start.")
    pool_size: int = Field(default=5, ge=1, le=100, description="Connections to PostgreSQL.")
