"""Any OpenAI-compatible server (llama-server, vLLM, TGI's Messages API, Ollama, OpenAI) behind our API.

Requests go upstream as streams (with usage) whatever the client asked, so one code path serves
both modes; each upstream chunk becomes one event, passed on as it arrives. Upstream errors keep
their meaning: a 4xx (e.g. a prompt over the context window) stays that 4xx, an unreachable or
overloaded server is 503, a stall 504, and a mid-stream failure ends our stream with an error event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from comps.core.errors import ConfigError, NotReady, ServiceError, UpstreamError
from comps.core.http import HttpClient, bearer, sse_data
from comps.llm.backends import Delta, Event, Finished, Started
from comps.llm.protocol import ChatCompletionRequest, ModelCard
from comps.llm.settings import LLMSettings

NODE = "llm-remote"


class RemoteBackend:
    name = "remote"

    def __init__(self, settings: LLMSettings) -> None:
        if not settings.remote_url:
            raise ConfigError("LLM_BACKEND=remote needs LLM_REMOTE_URL (the server's base URL)")
        base = settings.remote_url.rstrip("/")
        self.base = base[: -len("/v1")] if base.endswith("/v1") else base
        self.headers = bearer(settings.remote_api_key)
        self.model = settings.remote_model
        self.timeout_s = settings.remote_timeout_s
        self.http: HttpClient | None = None

    async def warm_up(self, http: HttpClient) -> None:
        self.http = http

    async def check_ready(self) -> dict[str, Any]:
        try:
            models = await self.models()
        except ServiceError as exc:
            raise NotReady(f"the remote LLM is not ready: {exc.message}") from None
        return {"remote_url": self.base, "model": self.model or (models[0].id if models else None)}

    async def close(self) -> None:
        return None

    async def models(self) -> list[ModelCard]:
        assert self.http is not None
        body = await self.http.request_json(
            "GET", f"{self.base}/v1/models", node=NODE, timeout_s=5, headers=self.headers
        )
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise UpstreamError(f"{NODE} answered /v1/models without a data list", node=NODE)
        return [ModelCard(id=str(m.get("id")), owned_by=str(m.get("owned_by") or "remote")) for m in data]

    async def prepare(self, request: ChatCompletionRequest) -> dict[str, Any]:
        body = request.model_dump(exclude_unset=True, exclude_none=True)
        for field in _LOCAL_ONLY:  # OpenAI refuses fields it does not know
            body.pop(field, None)
        body.update(stream=True, stream_options={"include_usage": True})
        if self.model:
            body["model"] = self.model
        return body

    async def generate(self, body: dict[str, Any]) -> AsyncGenerator[Event, None]:
        assert self.http is not None
        async with self.http.stream(
            "POST",
            f"{self.base}/v1/chat/completions",
            node=NODE,
            timeout_s=self.timeout_s,
            json_body=body,
            headers=self.headers,
        ) as resp:
            started = False
            reason: str | None = None
            usage: dict[str, Any] = {}
            count = 0
            async for data in sse_data(resp):
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError as exc:
                    raise UpstreamError(f"{NODE} sent an event that is not JSON: {exc}", node=NODE) from None
                if isinstance(chunk.get("error"), dict):
                    message = chunk["error"].get("message", "unknown error")
                    raise UpstreamError(f"{NODE} failed mid-stream: {message}", node=NODE)
                if not started:
                    yield Started(str(chunk.get("model") or self.model or body.get("model") or "unknown"))
                    started = True
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        count += 1
                        yield Delta(text, 1)
                    reason = choice.get("finish_reason") or reason
                usage = chunk.get("usage") or usage
            if not started or reason is None:
                raise UpstreamError(f"{NODE} ended its stream before finishing the answer", node=NODE)
            yield Finished(
                "length" if reason == "length" else "stop",
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or count),
                cached_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
            )


_LOCAL_ONLY = ("repetition_penalty", "stop_on_repetition")
