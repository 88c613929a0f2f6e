"""Settings of the UI (env prefix ``UI_``), read once at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from comps.core.ports import PORTS, local_url
from comps.core.settings import ServiceSettings


class UISettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="UI_", extra="ignore", frozen=True)

    service_name: str = "ui"
    port: int = Field(default=PORTS["ui"], ge=0, le=65535)
    gateway_url: str = Field(default=local_url("gateway"), description="The gateway: the only service the UI calls.")
    public_url: str | None = Field(
        default=None,
        description="Where browsers reach this UI (for single sign-on's return); default http://<host>:<port>.",
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Timeout of each call but an answer's stream.")
    stream_timeout_s: float = Field(default=300.0, gt=0, description="How long an answer may take.")
    session_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0, description="A browser stays signed in this long.")

    @property
    def own_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
