"""Settings of the LLM service (env prefix ``LLM_``), read once at start-up."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from comps.core.ports import PORTS
from comps.core.settings import ServiceSettings

DEFAULT_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"  # `chatqna models fetch` brings it into models/


class LLMSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLM_", extra="ignore", frozen=True)

    service_name: str = "llm"
    port: int = Field(default=PORTS["llm"], ge=0, le=65535)
    backend: str = Field(default="llama-cpp", description="llama-cpp | remote")

    # Generation limits shared by both backends.
    parallel: int = Field(default=4, ge=1, le=64, description="Sequences generated at once (slots).")
    max_queue: int = Field(default=32, ge=0, description="Requests that may wait for a slot; beyond that: 429.")
    default_max_tokens: int = Field(
        default=512, ge=1, description="max_tokens when a request sets none (capped by what is left of n_ctx)."
    )
    repetition_penalty: float = Field(
        default=1.0, gt=0.0, le=2.0, description="Repeat penalty when a request sets none; 1 = off."
    )
    stop_on_repetition: bool = Field(
        default=True,
        description="End an answer before a whole sentence (20+ characters) is generated a second time, when "
        'the request does not say (finish_reason "repetition"): small models loop on a sentence until max_tokens.',
    )

    # llama-cpp backend.
    model: str = Field(default=DEFAULT_MODEL, description="GGUF file: a path, or a name under CHATQNA_MODELS_DIR.")
    n_ctx: int = Field(
        default=4096,
        ge=64,
        description="Context window of EACH sequence (prompt + completion); KV cache = n_ctx x parallel.",
    )
    n_batch: int = Field(default=512, ge=1, description="Most tokens per llama_decode call (prompt chunking).")
    n_threads: int = Field(default=0, ge=0, description="CPU threads for llama.cpp; 0 = every CPU of the machine.")
    n_gpu_layers: int = Field(default=0, ge=-1, description="Layers offloaded to the GPU; -1 = all.")
    use_extra_bufts: bool = Field(
        default=False,
        description="llama.cpp extra CPU weight buffers (AMX / repacked layouts). Off by default: the AMX path "
        "crashes on some Xeons (SIGSEGV in ggml_backend_amx_mul_mat, ggml-org/llama.cpp#20824).",
    )
    chat_template: str | None = Field(
        default=None, description="Jinja chat template (a file path or the template itself); default: the GGUF's own."
    )

    # remote backend.
    remote_url: str | None = Field(default=None, description="Base URL of an OpenAI-compatible server (no /v1).")
    remote_api_key: SecretStr | None = None
    remote_model: str | None = Field(default=None, description="Model name sent upstream; default: the client's.")
    remote_timeout_s: float = Field(default=120.0, gt=0, description="Seconds to the first byte and between chunks.")

    @field_validator("n_batch")
    @classmethod
    def _batch_holds_every_slot(cls, value: int, info: ValidationInfo) -> int:
        parallel = info.data.get("parallel", 1)
        if value < parallel:
            raise ValueError(f"must be at least LLM_PARALLEL ({parallel}): each step decodes a token of every slot")
        return value
