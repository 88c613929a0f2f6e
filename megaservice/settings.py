"""Settings of the gateway (env prefix ``GATEWAY_``), read once at start-up.

OPEA's names are accepted too, where the ``GATEWAY_`` one is not set: ``EMBEDDING_SERVER_HOST_IP`` /
``EMBEDDING_SERVER_PORT``, ``RETRIEVER_SERVICE_HOST_IP`` / ``_PORT``, ``RERANK_SERVER_HOST_IP`` / ``_PORT``,
``LLM_SERVER_HOST_IP`` / ``_PORT`` (each pair becomes ``http://host:port``) and ``MEGA_SERVICE_PORT``.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from comps.core.settings import ServiceSettings
from megaservice.protocol import PipelineName

# field -> (OPEA host variable, OPEA port variable, default port)
OPEA_URLS: dict[str, tuple[str, str, int]] = {
    "embedding_url": ("EMBEDDING_SERVER_HOST_IP", "EMBEDDING_SERVER_PORT", 6000),
    "retriever_url": ("RETRIEVER_SERVICE_HOST_IP", "RETRIEVER_SERVICE_PORT", 7000),
    "reranker_url": ("RERANK_SERVER_HOST_IP", "RERANK_SERVER_PORT", 8000),
    "llm_url": ("LLM_SERVER_HOST_IP", "LLM_SERVER_PORT", 9000),
}


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    service_name: str = "gateway"
    port: int = Field(default=8888, ge=0, le=65535)
    pipeline: PipelineName = Field(
        default="rag-rerank",
        description="Default graph: rag-rerank (embed, retrieve, rerank, LLM), rag (no reranker), llm-only.",
    )

    embedding_url: str = "http://127.0.0.1:6000"
    retriever_url: str = "http://127.0.0.1:7000"
    reranker_url: str = "http://127.0.0.1:8000"
    llm_url: str = "http://127.0.0.1:9000"

    embedding_timeout_s: float = Field(default=10.0, gt=0, description="Longest wait for the query's embedding.")
    retriever_timeout_s: float = Field(default=10.0, gt=0, description="Longest wait for the retrieved passages.")
    reranker_timeout_s: float = Field(default=30.0, gt=0, description="Longest wait for the reranking.")
    llm_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest wait for the LLM's answer (streaming: for its first byte)."
    )
    llm_read_timeout_s: float = Field(
        default=120.0, gt=0, description="Streaming: longest silence of the LLM (before its first byte too)."
    )
    ready_timeout_s: float = Field(default=2.0, gt=0, description="Per-service limit of the readiness probes.")
    rag_temperature: float | None = Field(
        default=0.0,
        ge=0.0,
        le=2.0,
        description="Temperature of answers grounded in passages when the request sets none (OpenAI's 1.0 makes "
        "small models wander off the passages; 0 is greedy). Unset: the LLM's own default.",
    )
    source_snippet_chars: int = Field(default=300, ge=0, description="Characters of each passage shown in sources.")

    @model_validator(mode="before")
    @classmethod
    def _opea_names(cls, data: Any) -> Any:
        """Fill what GATEWAY_* leaves unset from OPEA's variables (read once, here, at start-up)."""
        if not isinstance(data, dict):
            return data
        env = os.environ
        data = dict(data)
        for field, (host_var, port_var, default_port) in OPEA_URLS.items():
            if field not in data and (env.get(host_var) or env.get(port_var)):
                data[field] = f"http://{env.get(host_var) or '127.0.0.1'}:{env.get(port_var) or default_port}"
        if "port" not in data and env.get("MEGA_SERVICE_PORT"):
            data["port"] = env["MEGA_SERVICE_PORT"]
        return data
