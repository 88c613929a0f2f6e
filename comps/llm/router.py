"""Thin routes: OpenAI chat completions and the model list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from comps.core.app import STREAMING_RESPONSES, ready_backend
from comps.llm.backends import LLMBackend
from comps.llm.protocol import ChatCompletion, ChatCompletionRequest, ModelList
from comps.llm.service import ChatService

BackendDep = Annotated[LLMBackend, Depends(ready_backend)]


def make_router(service: ChatService) -> APIRouter:
    router = APIRouter(tags=["llm"])

    @router.post("/v1/chat/completions", response_model=ChatCompletion, responses=STREAMING_RESPONSES)
    async def chat_completions(body: ChatCompletionRequest, request: Request, backend: BackendDep) -> Response:
        """OpenAI chat completion; with ``stream: true`` a stream of ``chat.completion.chunk`` events."""
        return await service.chat(body, backend, request)

    @router.get("/v1/models", response_model=ModelList)
    async def models(backend: BackendDep) -> ModelList:
        """The models this service serves."""
        return ModelList(data=await backend.models())

    return router
