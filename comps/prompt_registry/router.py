"""HTTP routes of the prompt registry: ``/v1/prompts`` and OPEA's ``/v1/prompt/create|get|delete``."""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from comps.core.app import create_app, ready_backend
from comps.core.caller import Caller, caller_of
from comps.core.errors import Unauthorized
from comps.core.http import HttpClient
from comps.prompt_registry.protocol import (
    Kind,
    OpeaPromptCreate,
    OpeaPromptDelete,
    OpeaPromptId,
    PromptCreate,
    PromptEdit,
    PromptOut,
    PromptVersionOut,
)
from comps.prompt_registry.service import Registry
from comps.prompt_registry.settings import PromptRegistrySettings
from comps.sqlstore.db import StoreBackend

log = logging.getLogger("comps.prompt_registry")


class Store(StoreBackend):
    what = "the prompt store (PostgreSQL)"

    def __init__(self, settings: PromptRegistrySettings) -> None:
        super().__init__(settings.database_url, pool_size=settings.pool_size, migrate=settings.migrate)
        self.registry: Registry | None = None

    async def warm_up(self, http: HttpClient) -> None:
        self.registry = Registry(await self.open_store())


async def _registry(request: Request) -> Registry:
    store: Store = await ready_backend(request)  # type: ignore[assignment]
    assert store.registry is not None
    return store.registry


async def _caller(request: Request) -> Caller:
    caller = caller_of(request)
    if caller is None:
        raise Unauthorized("no user named: prompts are reached through the gateway", code="missing_user")
    return caller


Reg = Annotated[Registry, Depends(_registry)]
Who = Annotated[Caller, Depends(_caller)]


def build_router() -> APIRouter:
    router = APIRouter(tags=["prompts"])

    @router.post("/v1/prompts", status_code=201, response_model=PromptOut)
    async def create(body: PromptCreate, reg: Reg, who: Who) -> PromptOut:
        """A named system prompt or RAG template; ``shared`` (admins) for everyone."""
        return await reg.create(who, body)

    @router.get("/v1/prompts", response_model=list[PromptOut])
    async def list_(reg: Reg, who: Who, q: Annotated[str | None, Query(max_length=200)] = None) -> list[PromptOut]:
        """The shared prompts and the caller's own, newest version of each."""
        return await reg.list_prompts(who, q)

    @router.get("/v1/prompts/{ref}", response_model=PromptOut)
    async def get(ref: str, reg: Reg, who: Who, version: Annotated[int | None, Query(ge=1)] = None) -> PromptOut:
        """By id or name (the caller's own before the shared one); ``version`` for an older text."""
        return await reg.get(who, ref, version)

    @router.get("/v1/prompts/{ref}/versions", response_model=list[PromptVersionOut])
    async def versions(ref: str, reg: Reg, who: Who) -> list[PromptVersionOut]:
        return await reg.versions(who, ref)

    @router.put("/v1/prompts/{ref}", response_model=PromptOut)
    async def edit(ref: str, body: PromptEdit, reg: Reg, who: Who) -> PromptOut:
        """A new version of the text; answers stored with an older version keep pointing to it."""
        return await reg.edit(who, ref, body.text)

    @router.delete("/v1/prompts/{ref}", status_code=204)
    async def delete(ref: str, reg: Reg, who: Who) -> Response:
        await reg.delete(who, ref)
        return Response(status_code=204)

    # -- OPEA ----------------------------------------------------------------------------------------

    @router.post("/v1/prompt/create", tags=["opea"])
    async def opea_create(body: OpeaPromptCreate, reg: Reg, who: Who) -> str:
        """OPEA's body; a personal prompt (rag if it has {context} and {question}, else system); returns its id."""
        text = body.prompt_text
        kind: Kind = "rag" if "{context}" in text and "{question}" in text else "system"
        name = f"prompt-{secrets.token_hex(4)}"
        return (await reg.create(who, PromptCreate(name=name, kind=kind, text=text))).id

    @router.post("/v1/prompt/get", tags=["opea"])
    async def opea_get(body: OpeaPromptId, reg: Reg, who: Who) -> Any:
        """With ``prompt_id``: that prompt; with ``prompt_text``: those containing it; else all the caller sees."""
        if body.prompt_id:
            return _opea(await reg.get(who, body.prompt_id))
        return [_opea(p) for p in await reg.list_prompts(who, body.prompt_text)]

    @router.post("/v1/prompt/delete", tags=["opea"])
    async def opea_delete(body: OpeaPromptDelete, reg: Reg, who: Who) -> bool:
        await reg.delete(who, body.prompt_id)
        return True

    return router


def _opea(p: PromptOut) -> dict[str, Any]:
    return {"id": p.id, "prompt_text": p.text, "name": p.name, "kind": p.kind, "shared": p.shared, "version": p.version}


def build_app(settings: PromptRegistrySettings) -> FastAPI:
    return create_app(settings, backend=Store(settings), routers=[build_router()], title="prompt registry")
