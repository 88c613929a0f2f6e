"""Settings: one pydantic-settings class per service, read once at start-up.

Each service subclasses `ServiceSettings` with its own ``env_prefix`` (``EMBEDDING_``, ``LLM_``...).
Settings that every process shares (log format, tracing endpoint and content) are read from their usual,
unprefixed names. `load_settings` turns a validation failure into a `ConfigError` whose message
names the environment variable to fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from comps.core.errors import ConfigError

S = TypeVar("S", bound="ServiceSettings")


class ServiceSettings(BaseSettings):
    """What every service process needs; subclasses add their own fields and env prefix."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True, populate_by_name=True)

    service_name: str = "service"
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    log_format: Literal["plain", "json"] = Field(
        default="plain", validation_alias=AliasChoices("LOG_FORMAT", "log_format")
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", validation_alias=AliasChoices("LOG_LEVEL", "log_level")
    )
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "otlp_endpoint"),
        description="OTLP/HTTP collector base URL; no spans are exported when unset.",
    )
    otlp_headers: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_HEADERS", "otlp_headers"),
        description="Headers sent with every span export, `key1=value1,key2=value2` (values URL-encoded), "
        "e.g. a collector's `Authorization`.",
    )
    trace_sample_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        validation_alias=AliasChoices("OTEL_TRACES_SAMPLER_ARG", "trace_sample_ratio"),
        description="Fraction of the traces starting at this service that are recorded and exported "
        "(a caller's sampled flag decides for its own).",
    )
    trace_export_delay_ms: int = Field(
        default=5000,
        ge=1,
        le=600_000,
        validation_alias=AliasChoices("OTEL_BSP_SCHEDULE_DELAY", "trace_export_delay_ms"),
        description="Longest wait before the spans gathered are exported (sooner when 2048 are waiting).",
    )
    trace_content: bool = Field(
        default=False,
        validation_alias=AliasChoices("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "trace_content"),
        description="Put the text of prompts, answers and passages into spans (ids, scores, models and token "
        "counts always go): off by default, on in `chatqna up`.",
    )
    api_key: SecretStr | None = Field(
        default=None, description="When set, every route but health, readiness and metrics needs this bearer token."
    )
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS (none by default).")
    max_body_bytes: int | None = Field(
        default=16 * 1024 * 1024,
        ge=1,
        description="Largest request body; over it: 413 (checked on Content-Length and while reading). "
        "None: no limit beyond the service's own.",
    )
    drain_timeout_s: float = Field(default=30.0, ge=0, description="Seconds to finish in-flight requests on shutdown.")
    models_dir: Path = Field(
        default=Path("models"),
        validation_alias=AliasChoices("CHATQNA_MODELS_DIR", "models_dir"),
        description="Where model names that are not paths are looked up.",
    )

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable that sets ``field`` (its first alias, or prefix + name)."""
        info = cls.model_fields[field]
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            return str(alias.choices[0])
        if isinstance(alias, str):
            return alias
        return (cls.model_config.get("env_prefix") or "").upper() + field.upper()

    @classmethod
    def env_name_set(cls, field: str) -> str:
        """The variable that set ``field``: the first of its names found in the environment (a field may have
        several, e.g. the gateway's GATEWAY_PORT and OPEA's MEGA_SERVICE_PORT), else `env_name`."""
        alias = cls.model_fields[field].validation_alias
        if isinstance(alias, AliasChoices):
            present = {name.upper() for name in os.environ}
            for choice in alias.choices:
                if isinstance(choice, str) and choice.upper() in present:
                    return choice
        return cls.env_name(field)

    @classmethod
    def env_names(cls) -> set[str]:
        """Every environment variable this settings class reads (its first name for each field)."""
        return {cls.env_name(name) for name in cls.model_fields}


def resolve_model_path(name_or_path: str, models_dir: Path) -> Path:
    """A model given as a path is used as is; a bare name is looked up under ``models_dir``."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return models_dir / name_or_path


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Read ``cls`` from the environment once; a bad value raises `ConfigError` naming the variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = err.get("loc") or ("?",)
            field = _field_named(cls, str(loc[0]))
            var = cls.env_name_set(field) if field in cls.model_fields else field
            value = err.get("input")
            lines.append(f"{var}={value!r}: {err.get('msg')}")
        raise ConfigError(f"invalid configuration for {cls.__name__}: " + "; ".join(lines)) from None


def _field_named(cls: type[ServiceSettings], name: str) -> str:
    """The field an error's location names: a field's name, or one of its aliases (as pydantic-settings reports)."""
    for field, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and name.upper() in {str(c).upper() for c in alias.choices}:
            return field
    return name
