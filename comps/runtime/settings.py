"""Settings of the local runtime (`chatqna up`): where state lives, which ports the mesh uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from comps.core.ports import PORTS


def _env(name: str, default: object, description: str = "") -> Any:
    return Field(default=default, validation_alias=AliasChoices(name), description=description)


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    state_dir: Path = _env("CHATQNA_STATE_DIR", Path(".state"), "Redis data and service logs")
    models_dir: Path = _env("CHATQNA_MODELS_DIR", Path("models"), "Model files")
    host: str = _env("CHATQNA_HOST", "127.0.0.1", "Address every local service binds to")
    vectorstore_backend: Literal["redis", "pgvector"] = _env(
        "VECTORSTORE_BACKEND", "redis", "Where the retriever and dataprep keep vectors: redis, or pgvector (PostgreSQL)"
    )
    redis_url: str | None = _env("REDIS_URL", None, "Use this Redis instead of starting the embedded one")
    redis_port: int = _env("CHATQNA_REDIS_PORT", 6379)
    auth_enabled: bool = _env("GATEWAY_AUTH_ENABLED", True, "Accounts at the gateway (needs PostgreSQL)")
    database_url: str | None = _env("DATABASE_URL", None, "Use this PostgreSQL instead of starting the embedded one")
    postgres_port: int = _env("CHATQNA_POSTGRES_PORT", 5432)
    admin_user: str | None = _env("CHATQNA_ADMIN_USER", None, "Name of the first admin (default: admin)")
    admin_password: SecretStr | None = _env(
        "CHATQNA_ADMIN_PASSWORD", None, "Password of the first admin (default: generated)"
    )
    embedding_port: int = _env("EMBEDDING_PORT", PORTS["embedding"])
    retriever_port: int = _env("RETRIEVER_PORT", PORTS["retriever"])
    reranker_port: int = _env("RERANKER_PORT", PORTS["reranker"])
    llm_port: int = _env("LLM_PORT", PORTS["llm"])
    llm_models: dict[str, str] = _env(
        "CHATQNA_LLM_MODELS",
        {},
        'Model name -> GGUF (a file under CHATQNA_MODELS_DIR or a path), as JSON: {"smol": "a.gguf", "big": "b.gguf"}: '
        "one LLM service each, on LLM_PORT, LLM_PORT+1, ... (the first is the default model); unset: the one default",
    )
    dataprep_port: int = _env("DATAPREP_PORT", PORTS["dataprep"])
    chathistory_port: int = _env("CHATHISTORY_PORT", PORTS["chathistory"])
    prompts_port: int = _env("PROMPTS_PORT", PORTS["prompts"])
    gateway_port: int = _env("MEGA_SERVICE_PORT", PORTS["gateway"])
    ui_port: int = _env("UI_PORT", PORTS["ui"])
    ready_timeout_s: float = _env("CHATQNA_READY_TIMEOUT_S", 600.0, "How long `up` waits for every service")
    log_format: str = _env("LOG_FORMAT", "plain")
    trace_content: bool = _env(
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", True,
        "Prompts, answers and passages in trace spans (on for local use; the services' own default is off)",
    )  # fmt: skip
