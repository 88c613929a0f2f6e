"""LLM backends, registered by short name (``LLM_BACKEND``) and imported lazily.

A backend turns a validated request into a stream of events. The service owns everything else
(admission queue, OpenAI chunk shapes, metrics, disconnects):

- ``await prepare(request)`` validates what only the backend can (prompt length vs. context window)
  and returns what ``generate`` needs; it raises `BadRequest` before anything is queued.
- ``generate(prepared)`` is an async generator: first `Started` (once the request is accepted, so
  errors before it become HTTP errors), then `Delta` events, then one `Finished`. Closing it early
  (client gone) stops the generation and frees its resources.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol

from comps.core.app import Backend
from comps.llm.protocol import ChatCompletionRequest, FinishReason, ModelCard

REGISTRY = {
    "llama-cpp": "comps.llm.backends.llamacpp:LlamaCppBackend",
    "remote": "comps.llm.backends.remote:RemoteBackend",
}


@dataclass(frozen=True, slots=True)
class Started:
    model: str


@dataclass(frozen=True, slots=True)
class Delta:
    text: str  # may be empty (e.g. half a UTF-8 character, or text held back by a stop string)
    tokens: int  # tokens generated since the previous Delta


@dataclass(frozen=True, slots=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV cache was reused


Event = Started | Delta | Finished


class LLMBackend(Backend, Protocol):
    async def models(self) -> list[ModelCard]: ...

    async def prepare(self, request: ChatCompletionRequest) -> Any: ...

    def generate(self, prepared: Any) -> AsyncGenerator[Event, None]: ...
