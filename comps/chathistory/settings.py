"""Settings of the chathistory service (env prefix ``CHATHISTORY_``), read once at start-up."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from comps.core.ports import PORTS
from comps.core.settings import ServiceSettings


class ChatHistorySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CHATHISTORY_", extra="ignore", frozen=True)

    service_name: str = "chathistory"
    port: int = Field(default=PORTS["chathistory"], ge=0, le=65535)
    database_url: str = Field(
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
        description="PostgreSQL of conversations, messages and feedback (postgresql://...); the same store as "
        "identity's or one of its own.",
    )
    migrate: bool = Field(default=True, description="Bring the schema to the newest revision at start.")
    pool_size: int = Field(default=10, ge=1, le=200, description="Connections to PostgreSQL.")
    max_context_messages: int = Field(
        default=400, ge=2, le=10_000, description="Most messages a context load reads before the token budget."
    )
    async_commit: bool = Field(
        default=True,
        description="Chat turns are committed without waiting for PostgreSQL's WAL flush (synchronous_commit=off "
        "for that transaction): visible at once, half the write's time; a crash of PostgreSQL itself (not a "
        "restart) may lose the last fraction of a second of turns. false: every write waits for the disk.",
    )
    turn_wait_s: float = Field(
        default=3.0,
        ge=0,
        le=60,
        description="Longest a read of a conversation's context or messages (a gateway's next turn too) waits while "
        "a chat turn of it is in flight (its answer not yet stored by a gateway); then it reads what there is.",
    )
    max_import_conversations: int = Field(default=1000, ge=1, description="Most conversations in one import.")
    max_page: int = Field(default=200, ge=1, le=1000, description="Most rows in one page of a list.")
