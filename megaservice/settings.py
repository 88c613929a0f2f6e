"""Settings of the gateway (env prefix ``GATEWAY_``), read once at start-up.

OPEA's names are accepted too, where the ``GATEWAY_`` one is not set: ``EMBEDDING_SERVER_HOST_IP`` /
``EMBEDDING_SERVER_PORT``, ``RETRIEVER_SERVICE_HOST_IP`` / ``_PORT``, ``RERANK_SERVER_HOST_IP`` / ``_PORT``,
``LLM_SERVER_HOST_IP`` / ``_PORT`` (each pair becomes ``http://host:port``), and ``MEGA_SERVICE_PORT`` (an
alias of ``GATEWAY_PORT``).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from comps.core.ports import PORTS, local_url
from comps.core.settings import ServiceSettings
from comps.vectorstore.names import Backend
from megaservice.protocol import PipelineName

# field -> (OPEA host variable, OPEA port variable, service)
OPEA_URLS: dict[str, tuple[str, str, str]] = {
    "embedding_url": ("EMBEDDING_SERVER_HOST_IP", "EMBEDDING_SERVER_PORT", "embedding"),
    "retriever_url": ("RETRIEVER_SERVICE_HOST_IP", "RETRIEVER_SERVICE_PORT", "retriever"),
    "reranker_url": ("RERANK_SERVER_HOST_IP", "RERANK_SERVER_PORT", "reranker"),
    "llm_url": ("LLM_SERVER_HOST_IP", "LLM_SERVER_PORT", "llm"),
}


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    service_name: str = "gateway"
    port: int = Field(
        default=PORTS["gateway"],
        ge=0,
        le=65535,
        validation_alias=AliasChoices("GATEWAY_PORT", "MEGA_SERVICE_PORT"),
        description="Also read from OPEA's MEGA_SERVICE_PORT (GATEWAY_PORT wins when both are set).",
    )
    pipeline: PipelineName = Field(
        default="rag-rerank",
        description="Default graph: rag-rerank (embed, retrieve, rerank, LLM), rag (no reranker), llm-only.",
    )

    embedding_url: str = local_url("embedding")
    retriever_url: str = local_url("retriever")
    reranker_url: str = local_url("reranker")
    llm_url: str = local_url("llm")

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
    rag_max_tokens: int | None = Field(
        default=192,
        ge=1,
        description="max_tokens of answers grounded in passages when the request sets none (a RAG answer is a few "
        "sentences; a small model that misses its end otherwise runs on to the LLM's default). Unset: the LLM's.",
    )
    rag_repetition_penalty: float | None = Field(
        default=1.1,
        gt=0.0,
        le=2.0,
        description="Repeat penalty of answers grounded in passages when the request sets none (1 = off; only "
        "generated tokens count, so copying from the passages is not penalised). Unset: the LLM's default.",
    )
    rag_stop: list[str] = Field(
        default_factory=lambda: ["\nQuestion:", "\nPassages:"],
        max_length=8,
        description="Stop strings of answers grounded in passages when the request sets none: a small model that "
        "has answered sometimes goes on to write the prompt's next question.",
    )
    passage_tokens: int = Field(
        default=400,
        ge=16,
        description="Most tokens of passages in the prompt (estimated at 4 characters a token), best first: on a "
        "CPU the time to the first token grows with the prompt (about 300 tokens/s with the default model).",
    )
    rerank_min_score: float | None = Field(
        default=None,
        description="Passages the reranker scores below this are not given to the LLM (the best one always is). "
        "The scale is the reranker's: 0..1 for a cross-encoder, 1/(k+rank) sums for lexical-fusion. Unset: none.",
    )

    # -- the mesh behind the door --
    dataprep_url: str = local_url("dataprep")
    dataprep_timeout_s: float = Field(default=300.0, gt=0, description="Longest wait for a proxied dataprep call.")
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1,
        description="Largest upload to /v1/dataprep/ingest (dataprep limits each file).",
    )
    chathistory_url: str | None = Field(
        default=local_url("chathistory"),
        description="The chathistory service (conversations: `conversation_id`, `store`); unset: no memory.",
    )
    chathistory_timeout_s: float = Field(
        default=5.0, gt=0, description="Longest wait for a conversation's context or a proxied chathistory call."
    )
    turn_lease_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="A conversation's turn is marked in flight in chathistory when it begins, renewed every half of "
        "this while the answer runs, and cleared by the answer's write: a next request on any gateway replica waits "
        "for that write. A gateway that dies leaves a mark that holds at most this long.",
    )
    prompts_url: str | None = Field(
        default=local_url("prompts"), description="The prompt registry (requests' `prompt`); unset: none."
    )
    question_rewrite: Literal["heuristic", "condense"] = Field(
        default="heuristic",
        description="The search query of a follow-up: the word-list heuristic (megaservice/prompt.py) or one short "
        "LLM call that rewrites it into a standalone question (megaservice/condense.py).",
    )
    history_tokens: int = Field(
        default=1024,
        ge=0,
        description="Token budget of the earlier turns sent with a conversation's new question (a share of the "
        "LLM's window: 4096 tokens by default, leaving room for passages and the answer).",
    )
    opea_compat: bool = Field(
        default=False,
        description="OPEA's stock UIs: /v1/chatqna streams unless the request says stream: false, as lines "
        "`data: b'<token>'` (Python's repr of the token's UTF-8 bytes) ending `data: [DONE]`; the dataprep routes "
        "answer in OPEA's shapes. /v1/chat/completions stays OpenAI's.",
    )
    internal_api_key: SecretStr | None = Field(
        default=None,
        description="The mesh's internal token: sent as a bearer token to every internal service (their "
        "<SERVICE>_API_KEY).",
    )
    default_collection: str = Field(
        default="rag-redis",
        validation_alias=AliasChoices("INDEX_NAME", "default_collection"),
        description="The shared collection a request that names none searches and ingests into.",
    )

    # -- the answer cache (megaservice/cache.py) --
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
        description="The Redis where the answer cache lives (the vector store's, with VECTORSTORE_BACKEND=redis: "
        "one round trip reads the collections' content versions and the answer); unset: no cache.",
    )
    vectorstore_backend: Backend = Field(
        default="redis",
        validation_alias=AliasChoices("VECTORSTORE_BACKEND", "vectorstore_backend"),
        description="The vector store the mesh uses: the answer cache reads the collections' content versions there.",
    )
    vectorstore_database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("VECTORSTORE_DATABASE_URL", "vectorstore_database_url"),
        description="PostgreSQL with pgvector for VECTORSTORE_BACKEND=pgvector, where the answer cache reads the "
        "content versions (default: DATABASE_URL, as the retriever and dataprep read it).",
    )
    cache_enabled: bool = Field(default=True, description="Cache deterministic answers (needs a Redis URL).")
    cache_ttl_s: int = Field(default=86_400, ge=1, description="How long a cached answer lives.")
    cache_max_entries: int = Field(
        default=10_000, ge=1, description="Most cached answers; beyond, the oldest are evicted (counted)."
    )
    cache_timeout_s: float = Field(
        default=0.25, gt=0, description="Longest wait for the cache's Redis; slower or down: answered uncached."
    )
    cache_semantic: bool = Field(
        default=False,
        description="Also serve a cached answer to a paraphrase of its question (same everything else), when "
        "their embeddings' cosine similarity reaches cache_semantic_threshold. A wrong match is a wrong answer.",
    )
    cache_semantic_threshold: float = Field(
        default=0.97,
        gt=0,
        le=1,
        description="Least cosine similarity of a paraphrase: with all-MiniLM-L6-v2 no lower one kept every near miss "
        "out (benchmarks/eval_cache_semantic.py).",
    )

    # -- identity (comps/identity) --
    auth_enabled: bool = Field(
        default=True,
        validate_default=True,
        description="false: no accounts, every caller is an anonymous admin; then only a loopback host is allowed.",
    )
    database_url: str | None = Field(
        default=None,
        validate_default=True,
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
        description="PostgreSQL of users, keys, tokens and collection owners (postgresql://...).",
    )
    jwt_secret: SecretStr | None = Field(
        default=None,
        validate_default=True,
        description="HS256 signing secret of access tokens; at least 32 characters, required with auth.",
    )
    access_token_ttl_s: int = Field(default=900, ge=30, le=86_400, description="Lifetime of an access JWT.")
    refresh_token_ttl_s: int = Field(default=30 * 86_400, ge=300, description="Lifetime of a refresh token.")
    open_registration: bool = Field(default=False, description="Anyone may POST /v1/auth/register.")
    admin_user: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CHATQNA_ADMIN_USER", "admin_user"),
        description="The first admin, created at start when no admin exists.",
    )
    admin_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("CHATQNA_ADMIN_PASSWORD", "admin_password")
    )
    login_max_failures: int = Field(
        default=5, ge=1, description="Failed logins per account within login_window_s before 429."
    )
    login_max_failures_per_address: int = Field(
        default=50, ge=1, description="Failed logins per client address within login_window_s before 429."
    )
    login_window_s: float = Field(default=300.0, gt=0)
    principal_cache_s: float = Field(
        default=2.0,
        ge=0,
        le=5,
        description="How long an API key or user lookup is reused; a revoked key or disabled user stops working "
        "within this time on every replica.",
    )
    oidc_issuer: str | None = Field(default=None, description="OIDC issuer URL (Entra ID, Keycloak, ...).")
    oidc_audience: str | None = Field(
        default=None, description="Expected `aud` of external tokens (default: client id)."
    )
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_redirect_url: str | None = Field(
        default=None, description="This gateway's callback URL for the browser flow (.../v1/auth/oidc/callback)."
    )
    oidc_scopes: str = "openid profile email"
    oidc_username_claim: str = Field(default="preferred_username", description="Claim that is the username.")
    oidc_roles_claim: str = Field(
        default="roles", description="Dotted path of the roles claim: Entra `roles`, Keycloak `realm_access.roles`."
    )
    oidc_admin_roles: list[str] = Field(
        default_factory=lambda: ["admin"], description="Role values that make an admin."
    )

    # -- many models behind one gateway (megaservice/models.py) --
    models: dict[str, str] = Field(
        default_factory=dict,
        description='Model name -> URL of the LLM service that serves it, as JSON ({"smol": "http://llm-smol:9000", '
        "...}); requests are routed by their `model`. Unset: the one LLM at GATEWAY_LLM_URL answers every model name.",
    )
    default_model: str | None = Field(
        default=None,
        description="The model of a request that names none: one of GATEWAY_MODELS (default: its first); with one "
        "LLM, the name it is listed under (default: chatqna).",
    )

    # -- usage accounting and the admin API (megaservice/usage.py, admin.py) --
    usage_enabled: bool = Field(
        default=True, description="Record every answered request (needs DATABASE_URL; written off the request path)."
    )
    usage_flush_s: float = Field(
        default=1.0, gt=0, le=60, description="How often the usage records in memory are written."
    )
    usage_batch: int = Field(default=500, ge=1, le=10_000, description="Most usage records written at once.")
    usage_buffer: int = Field(
        default=20_000,
        ge=1,
        description="Most usage records kept in memory while the store is down (the oldest are dropped beyond).",
    )
    usage_max_days: int = Field(default=366, ge=1, description="Longest date range a usage query may span.")

    @model_validator(mode="after")
    def _default_model_declared(self) -> GatewaySettings:
        if self.models and self.default_model is not None and self.default_model not in self.models:
            raise ValueError(
                f"GATEWAY_DEFAULT_MODEL {self.default_model!r} is not one of GATEWAY_MODELS: {', '.join(self.models)}"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _opea_names(cls, data: Any) -> Any:
        """Fill what GATEWAY_* leaves unset from OPEA's variables (read once, here, at start-up)."""
        if not isinstance(data, dict):
            return data
        env = os.environ
        data = dict(data)
        for field, (host_var, port_var, service) in OPEA_URLS.items():
            if field not in data and (env.get(host_var) or env.get(port_var)):
                data[field] = f"http://{env.get(host_var) or '127.0.0.1'}:{env.get(port_var) or PORTS[service]}"
        return data

    @field_validator("auth_enabled")
    @classmethod
    def _loopback_without_auth(cls, value: bool, info: ValidationInfo) -> bool:
        host = info.data.get("host", "127.0.0.1")
        if value and info.data.get("api_key") is not None:
            raise ValueError(
                "GATEWAY_API_KEY (one shared token) is for a gateway without accounts; with auth on, "
                "each user makes API keys (POST /v1/auth/keys)"
            )
        if not value and not is_loopback(host):
            raise ValueError(f"auth may be off only on a loopback address, and GATEWAY_HOST is {host!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_with_auth(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("auth_enabled", True) and not value:
            raise ValueError("required while auth is on (GATEWAY_AUTH_ENABLED): postgresql://user:pass@host/db")
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if not info.data.get("auth_enabled", True):
            return value
        secret = value.get_secret_value() if value else ""
        if not secret:
            raise ValueError("required while auth is on: a random string of 32+ characters (openssl rand -hex 32)")
        if len(secret) < 32 or secret.lower() in WEAK_SECRETS or len(set(secret)) < 8:
            raise ValueError("too weak: use a random string of 32+ characters (openssl rand -hex 32)")
        return value


WEAK_SECRETS = frozenset({"changeme", "change-me", "secret", "default", "password"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to bind to) is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
