"""Thin routes of the gateway, its readiness (the readiness of the services its graph needs), and the app."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from comps.core.app import create_app, http_client, ready_backend, state_of
from comps.core.errors import NotReady, ServiceError
from comps.core.http import HttpClient
from comps.llm.protocol import ModelList
from megaservice.graph import BadAnswer, Node
from megaservice.pipelines import build_pipelines
from megaservice.protocol import ChatQnACompletion, ChatQnARequest
from megaservice.service import ChatQnA
from megaservice.settings import GatewaySettings


class Dependencies:
    """The gateway's "backend": ready when every service of the default pipeline says it is."""

    name = "gateway"

    def __init__(self, pipeline: str, nodes: list[Node], timeout_s: float) -> None:
        self.pipeline = pipeline
        self.nodes = nodes
        self.timeout_s = timeout_s
        self.http: HttpClient | None = None

    async def warm_up(self, http: HttpClient) -> None:
        self.http = http

    async def check_ready(self) -> dict[str, Any]:
        probes = await asyncio.gather(*(self._probe(node) for node in self.nodes))
        failed = {name: why for name, why in probes if why}
        if failed:
            raise NotReady(f"not ready: {', '.join(failed)} ({'; '.join(failed.values())})")
        return {"pipeline": self.pipeline, "services": {node.name: node.url for node in self.nodes}}

    async def _probe(self, node: Node) -> tuple[str, str | None]:
        assert self.http is not None
        try:
            url = node.url.rstrip("/") + node.ready_path
            async with self.http.stream("GET", url, node=node.name, timeout_s=self.timeout_s):
                return node.name, None
        except ServiceError as exc:
            return node.name, exc.message

    async def close(self) -> None:
        return None


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
        "model": ChatQnACompletion,
        "description": "A chat.completion, or with stream: true, chat.completion.chunk events (text/event-stream).",
    }
}


async def chat_body(request: Request) -> ChatQnARequest:
    try:
        return ChatQnARequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def build_router(chatqna: ChatQnA, llm: Node) -> APIRouter:
    router = APIRouter(tags=["chatqna"])

    async def answer(request: Request) -> Response:
        state = state_of(request)
        state.require_ready()
        return await chatqna.answer(await chat_body(request), state.http, request)

    router.add_api_route(
        "/v1/chatqna",
        answer,
        methods=["POST"],
        responses=_RESPONSES,
        openapi_extra=_BODY_DOC,
        summary="Answer from the documents",
        description="An OpenAI chat request plus retrieval knobs; the answer carries its `sources`.",
    )
    router.add_api_route(
        "/v1/chat/completions",
        answer,
        methods=["POST"],
        responses=_RESPONSES,
        openapi_extra=_BODY_DOC,
        summary="The same as /v1/chatqna, where OpenAI clients look for it",
    )

    @router.get("/v1/models", response_model=ModelList)
    async def models(http: Http, _: Ready) -> ModelList:
        """The LLM's models."""
        body = await http.request_json("GET", llm.url.rstrip("/") + "/v1/models", node=llm.name, timeout_s=llm.timeout_s)
        try:
            return ModelList.model_validate(body)
        except ValidationError as exc:
            raise BadAnswer(
                f"{llm.name} answered /v1/models with an unexpected body: {exc.errors()[0]['msg']}", node=llm.name
            ) from None

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
    pipelines = build_pipelines(settings)
    default = pipelines[settings.pipeline].graph
    deps = Dependencies(settings.pipeline, list(default.nodes.values()), settings.ready_timeout_s)
    chatqna = ChatQnA(settings, pipelines)
    llm = pipelines["llm-only"].graph.terminal
    app = create_app(settings, backend=deps, routers=[build_router(chatqna, llm)], title="ChatQnA gateway")
    _document_request_model(app)
    return app
