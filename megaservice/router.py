"""Thin routes of the gateway, its readiness (the readiness of the services its graph needs), and the app."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from comps.core.app import STREAMING_RESPONSES, create_app, http_client, is_json, ready_backend, state_of
from comps.core.errors import NotReady, ServiceError, UnsupportedMediaType, UpstreamError
from comps.core.http import HttpClient, bearer
from comps.core.tasks import TaskGroup
from comps.identity.auth import Authenticator, AuthMiddleware, AuthState, principal_of
from comps.identity.oidc import OIDCConfig, OIDCVerifier
from comps.identity.router import build_router as identity_router
from comps.identity.service import IdentityService, LoginLimiter
from comps.sqlstore import Database
from comps.sqlstore.db import migrate_when_up
from comps.vectorstore.versions import PgVersions
from megaservice import admin, conversations, documents, models
from megaservice import cache as answer_cache
from megaservice.access import Access
from megaservice.graph import Node
from megaservice.models import ModelTable
from megaservice.pipelines import build_pipelines
from megaservice.prompts import Prompts
from megaservice.protocol import ChatQnACompletion, ChatQnARequest
from megaservice.service import ChatQnA
from megaservice.settings import GatewaySettings
from megaservice.usage import UsageRecorder

log = logging.getLogger("megaservice")


class Dependencies:
    """The gateway's "backend": the user store (with auth on), and ready when every service of the default
    pipeline says it is."""

    name = "gateway"

    def __init__(
        self,
        settings: GatewaySettings,
        pipeline: str,
        nodes: list[Node],
        auth: AuthState,
        memory: conversations.Memory | None = None,
        usage: UsageRecorder | None = None,
    ) -> None:
        self.settings = settings
        self.memory = memory
        self.pipeline = pipeline
        self.nodes = nodes
        self.timeout_s = settings.ready_timeout_s
        self.auth = auth
        self.http: HttpClient | None = None
        self.db: Database | None = None
        self.usage = usage  # the usage recorder, when accounting is on
        self.tasks = TaskGroup("gateway")
        self.cache: answer_cache.AnswerCache | None = None

    async def warm_up(self, http: HttpClient) -> None:
        s = self.settings
        http.default_headers = bearer(s.internal_api_key)
        self.http = http
        if self.cache is not None:
            await self.cache.open()
        if s.database_url:  # users (auth on), usage records
            self.db = Database(s.database_url)
            await migrate_when_up(self.db, what="the user store (PostgreSQL)")
            if self.usage is not None:
                self.usage.db = self.db
                self.tasks.spawn("usage-writer", self.usage.run)
        if not s.auth_enabled:
            log.warning(
                "auth is OFF (GATEWAY_AUTH_ENABLED=false): every caller is an admin; listening on %s only", s.host
            )
            return
        assert self.db is not None and s.jwt_secret  # checked by the settings
        identity = IdentityService(
            self.db,
            jwt_secret=s.jwt_secret.get_secret_value(),
            access_ttl_s=s.access_token_ttl_s,
            refresh_ttl_s=s.refresh_token_ttl_s,
            cache_s=s.principal_cache_s,
            limiter=LoginLimiter(s.login_max_failures, s.login_max_failures_per_address, s.login_window_s),
        )
        await identity.ensure_collection(s.default_collection)
        created = (
            await identity.ensure_first_admin(
                s.admin_user, s.admin_password.get_secret_value() if s.admin_password else None
            )
            if s.admin_password
            else None
        )
        if created:
            log.info("created the first admin %r (from CHATQNA_ADMIN_USER / CHATQNA_ADMIN_PASSWORD)", created[0])
        self.auth.authenticator = Authenticator(identity, await self._oidc(http))

    async def _oidc(self, http: HttpClient) -> OIDCVerifier | None:
        """The SSO verifier when GATEWAY_OIDC_ISSUER is set; its keys are fetched now if the issuer answers
        (else at the first SSO token: an issuer that is down must not keep the gateway from starting)."""
        config = OIDCConfig.from_settings(self.settings)
        if config is None:
            return None
        verifier = OIDCVerifier(config, http)
        try:
            await verifier.warm_up()
        except UpstreamError as exc:
            log.warning("OIDC issuer not reachable yet (%s); will retry at the first SSO token", exc.message)
        return verifier

    async def check_ready(self) -> dict[str, Any]:
        self.tasks.check()
        probes = await asyncio.gather(*(self._probe(node) for node in self.nodes), self._probe_store())
        failed = {name: why for name, why in probes if why}
        if failed:
            raise NotReady(f"not ready: {', '.join(failed)} ({'; '.join(failed.values())})")
        return {
            "pipeline": self.pipeline,
            "services": {node.name: node.url for node in self.nodes},
            "auth": "on" if self.settings.auth_enabled else "off",
        }

    def service_urls(self) -> dict[str, str]:
        """The services this gateway calls besides the LLMs (by name), for the admin API."""
        s = self.settings
        urls = {"embedding": s.embedding_url, "retriever": s.retriever_url, "reranker": s.reranker_url,
                "dataprep": s.dataprep_url, "chathistory": s.chathistory_url, "prompts": s.prompts_url}  # fmt: skip
        return {name: url for name, url in urls.items() if url}

    def cache_status(self) -> dict[str, Any]:
        """The answer cache's state as of the last request (no round trip)."""
        return {"status": "off", "enabled": False} if self.cache is None else self.cache.status()

    async def _probe_store(self) -> tuple[str, str | None]:
        if self.db is None or not self.settings.auth_enabled:  # usage alone: a store outage only delays records
            return "postgres", None
        try:
            await asyncio.wait_for(self.db.ping(), self.timeout_s)
            return "postgres", None
        except Exception as exc:  # any failure of the store means not ready
            return "postgres", f"{type(exc).__name__}: {exc}"

    async def _probe(self, node: Node) -> tuple[str, str | None]:
        assert self.http is not None
        try:
            url = node.url.rstrip("/") + node.ready_path
            async with self.http.stream("GET", url, node=node.name, timeout_s=self.timeout_s):
                return node.name, None
        except ServiceError as exc:
            return node.name, exc.message

    async def close(self) -> None:
        await self.tasks.stop()
        if self.memory is not None:  # answers already sent are stored before the process ends
            await self.memory.drain()
        if self.usage is not None:  # and their usage records
            await self.usage.close()
        if self.auth.authenticator is not None:
            await self.auth.authenticator.identity.close()
        if self.db is not None:
            await self.db.close()
        if self.cache is not None:
            await self.cache.close()


Http = Annotated[HttpClient, Depends(http_client)]
Ready = Annotated[Dependencies, Depends(ready_backend)]

# The chat routes read their body themselves (pydantic parses the JSON in one pass, no dependency
# solving: a third of FastAPI's per-request cost); this puts the request model back into the docs.
_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatQnARequest"}}},
    }
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        **STREAMING_RESPONSES[200],
        "model": ChatQnACompletion,
        "description": "A chat.completion, or with stream: true, chat.completion.chunk events (text/event-stream).",
    }
}


async def chat_body(request: Request) -> ChatQnARequest:
    """The request, parsed in one pass; JSON only, as the kit's other routes take it (415 otherwise)."""
    if not is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType(
            "request body must be JSON sent with Content-Type: application/json", code="invalid_value"
        )
    try:
        return ChatQnARequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def build_router(chatqna: ChatQnA, access: Access, *, opea_compat: bool = False) -> APIRouter:
    router = APIRouter(tags=["chatqna"])

    async def answer(request: Request, opea: bool = False) -> Response:
        state = state_of(request)
        state.require_ready()
        req = await chat_body(request)
        if opea and "stream" not in req.model_fields_set:  # OPEA streams unless told not to
            req = req.model_copy(update={"stream": True})
        if req.pipeline_for(chatqna.default) != "llm-only":  # a user reads only collections they may read
            await access.scope(principal_of(request), req)
        return await chatqna.answer(req, state.http, request, opea=opea)

    async def chatqna_answer(request: Request) -> Response:
        return await answer(request, opea=opea_compat)

    async def openai_answer(request: Request) -> Response:
        return await answer(request)

    router.add_api_route(
        "/v1/chatqna",
        chatqna_answer,
        methods=["POST"],
        responses=_RESPONSES,
        openapi_extra=_BODY_DOC,
        summary="Answer from the documents",
        description="An OpenAI chat request plus retrieval knobs; the answer carries its `sources`."
        + (
            " OPEA compatibility is on: streams unless `stream` is false, as `data: b'<token>'` lines."
            if opea_compat
            else ""
        ),
    )
    router.add_api_route(
        "/v1/chat/completions",
        openai_answer,
        methods=["POST"],
        responses=_RESPONSES,
        openapi_extra=_BODY_DOC,
        summary="The same as /v1/chatqna, where OpenAI clients look for it",
    )

    return router


def _document_request_model(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            model = ChatQnARequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(model.pop("$defs", {}))
            components["ChatQnARequest"] = model
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_app(settings: GatewaySettings) -> FastAPI:
    table = ModelTable.of(settings)
    by_model = {name: build_pipelines(settings, url) for name, url in table.urls.items()}
    pipelines = by_model[table.default]
    default = pipelines[settings.pipeline].graph
    usage = (
        UsageRecorder(flush_s=settings.usage_flush_s, batch=settings.usage_batch, buffer=settings.usage_buffer)
        if settings.usage_enabled and settings.database_url
        else None
    )
    auth = AuthState(settings.auth_enabled)
    memory = (
        conversations.Memory(
            settings.chathistory_url,
            timeout_s=settings.chathistory_timeout_s,
            budget_tokens=settings.history_tokens,
            lease_s=settings.turn_lease_s,
        )
        if settings.chathistory_url
        else None
    )
    deps = Dependencies(settings, settings.pipeline, list(default.nodes.values()), auth, memory, usage)
    prompts = Prompts(settings.prompts_url, timeout_s=settings.chathistory_timeout_s) if settings.prompts_url else None
    cache = _answer_cache(settings, deps, pipelines["rag"].graph.nodes["embedding"])
    deps.cache = cache
    chatqna = ChatQnA(settings, pipelines, memory, prompts, models=table, by_model=by_model, usage=usage, cache=cache)
    access = Access(auth, settings.default_collection)
    routers = [
        build_router(chatqna, access, opea_compat=settings.opea_compat),
        models.build_router(table, settings.ready_timeout_s),
        admin.build_router(table, usage, settings.usage_max_days, settings.ready_timeout_s),
        identity_router(open_registration=settings.open_registration, allowed_origins=settings.cors_origins),
        documents.build_router(
            access, settings.dataprep_url, settings.dataprep_timeout_s, opea_compat=settings.opea_compat
        ),
        documents.collections_router(access, settings.dataprep_url, settings.dataprep_timeout_s),
        _health_router(),
        answer_cache.build_router(
            cache, ttl_s=settings.cache_ttl_s, max_entries=settings.cache_max_entries, semantic=settings.cache_semantic
        ),
    ]
    if settings.chathistory_url:
        routers.append(conversations.build_router(settings.chathistory_url, settings.chathistory_timeout_s, memory))
    if settings.prompts_url:
        routers.append(
            conversations.proxy_router(
                settings.prompts_url, settings.chathistory_timeout_s, conversations.PROMPT_ROUTES, "prompts"
            )
        )
    app = create_app(
        settings,
        backend=deps,
        routers=routers,
        title="ChatQnA gateway",
        middleware=[(AuthMiddleware, {"state": auth})],
        body_limits={"/v1/dataprep/ingest": settings.max_upload_bytes},
    )
    app.state.auth = auth
    _document_request_model(app)
    return app


def _answer_cache(settings: GatewaySettings, deps: Dependencies, embedding: Node) -> answer_cache.AnswerCache | None:
    """The answer cache, when it is on and has a Redis; the collections' content versions are read in that Redis
    (VECTORSTORE_BACKEND=redis) or in pgvector's PostgreSQL. Semantic matching embeds questions with the pipeline's
    embedding service."""
    if not (settings.cache_enabled and settings.redis_url):
        return None
    versions = None
    if settings.vectorstore_backend == "pgvector":
        url = settings.vectorstore_database_url or settings.database_url
        if not url:
            return None  # nowhere to read the versions: no cache rather than a stale one
        versions = answer_cache.StoreVersions(PgVersions(url), timeout_s=settings.cache_timeout_s)

    async def embed(text: str) -> list[float]:
        assert deps.http is not None
        body = await deps.http.request_json(
            "POST", embedding.target, node=embedding.name, timeout_s=embedding.timeout_s, json_body={"input": text}
        )
        vector: list[float] = body["data"][0]["embedding"]
        return vector

    return answer_cache.AnswerCache(
        settings.redis_url,
        ttl_s=settings.cache_ttl_s,
        max_entries=settings.cache_max_entries,
        timeout_s=settings.cache_timeout_s,
        semantic=settings.cache_semantic,
        threshold=settings.cache_semantic_threshold,
        embed=embed,
        versions=versions,
    )


def _health_router() -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/health")
    async def health() -> dict[str, str]:
        """What older frontends and scripts probe (no credentials needed)."""
        return {"status": "ok"}

    return router
