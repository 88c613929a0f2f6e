"""A chat request's ``prompt`` (a name or id in the prompt registry) instead of ``chat_template``.

The gateway fetches the prompt as the caller sees it (their own of that name before the shared one): a ``rag``
prompt becomes the request's template of the last turn, a ``system`` prompt a system message before the
conversation. The answer stored in a conversation records which version was used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from comps.core.caller import caller_headers_var
from comps.core.errors import BadRequest, NotFound, UpstreamError
from comps.core.http import HttpClient
from megaservice.protocol import ChatQnARequest, Message


@dataclass(frozen=True, slots=True)
class UsedPrompt:
    id: str
    version: int


class Prompts:
    def __init__(self, url: str, *, timeout_s: float) -> None:
        self.base = url.rstrip("/") + "/v1/prompts/"
        self.timeout_s = timeout_s

    async def apply(self, req: ChatQnARequest, http: HttpClient) -> tuple[ChatQnARequest, UsedPrompt]:
        return applied(req, await self.fetch(req, http))

    async def fetch(self, req: ChatQnARequest, http: HttpClient) -> dict[str, Any]:
        """The request's prompt as the caller sees it (404 when there is none of that name or id)."""
        assert req.prompt is not None
        if req.chat_template is not None:
            raise BadRequest("give either prompt or chat_template, not both", param="prompt", code="prompt_conflict")
        try:
            found: dict[str, Any] = await http.request_json(
                "GET",
                self.base + quote(req.prompt, safe=""),
                node="prompts",
                timeout_s=self.timeout_s,
                headers=dict(caller_headers_var.get()),
            )
        except UpstreamError as exc:
            if exc.upstream_status == 404:
                raise NotFound(f"no prompt {req.prompt!r}", param="prompt", code="prompt_not_found") from None
            raise
        return found


def applied(req: ChatQnARequest, found: dict[str, Any]) -> tuple[ChatQnARequest, UsedPrompt]:
    """The request with the prompt in it: a ``rag`` prompt as its template, a ``system`` one as a system message
    before the conversation (its earlier turns included, if they are already in)."""
    used = UsedPrompt(found["id"], found["version"])
    if found["kind"] == "rag":
        return req.model_copy(update={"chat_template": found["text"]}), used
    system = Message(role="system", content=found["text"])
    return req.model_copy(update={"messages": [system, *req.chat()]}), used
