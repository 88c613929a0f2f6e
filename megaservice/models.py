"""Many models behind one gateway: the model table (name -> the LLM service that serves it), routing a request by
its ``model``, ``GET /v1/models`` and ``GET /v1/models/status``.

With ``GATEWAY_MODELS`` the table is declared (each model its own service, scaled on its own); a request naming
another model is a 404 that lists the models. Without it the one LLM at ``GATEWAY_LLM_URL`` is listed as
``GATEWAY_DEFAULT_MODEL`` (``chatqna``) and answers whatever model name a client sends, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from comps.core.app import http_client
from comps.core.errors import NotFound
from comps.core.http import HttpClient
from megaservice.probe import Probe, State, probe_all
from megaservice.settings import GatewaySettings

SINGLE_MODEL = "chatqna"
Http = Annotated[HttpClient, Depends(http_client)]


@dataclass(frozen=True)
class ModelTable:
    urls: dict[str, str]  # model name -> its LLM service's base URL
    default: str
    strict: bool  # False: one LLM, which answers every model name

    @classmethod
    def of(cls, s: GatewaySettings) -> ModelTable:
        if s.models:
            return cls(dict(s.models), s.default_model or next(iter(s.models)), strict=True)
        name = s.default_model or SINGLE_MODEL
        return cls({name: s.llm_url}, name, strict=False)

    def resolve(self, requested: str | None) -> str:
        """The model a request goes to: its own, the default when it names none; 404 for an unknown one."""
        if requested is None or not self.strict:
            return self.default
        if requested in self.urls:
            return requested
        raise NotFound(
            f"model {requested!r} does not exist; the models are: {', '.join(self.urls)}",
            param="model",
            code="model_not_found",
        )


class ModelEntry(BaseModel):
    """OpenAI's model object, plus its status and what its service serves."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "chatqna"
    status: State
    root: str | None = None  # the model its service really runs (e.g. the GGUF file)


class ModelListing(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelEntry]


class ModelStatus(BaseModel):
    id: str
    service: str
    status: State
    reason: str | None = None


class ModelsStatus(BaseModel):
    default: str
    models: list[ModelStatus]


def build_router(table: ModelTable, timeout_s: float) -> APIRouter:
    router = APIRouter(tags=["models"])

    async def probes(http: HttpClient) -> list[Probe]:
        return await probe_all(http, table.urls, timeout_s)

    @router.get("/v1/models", response_model=ModelListing)
    async def models(http: Http) -> ModelListing:
        """Every model of this gateway (OpenAI's list), each with its status."""
        return ModelListing(
            data=[ModelEntry(id=p.name, status=p.state, root=_served(p.details)) for p in await probes(http)]
        )

    @router.get("/v1/models/status", response_model=ModelsStatus)
    async def status(http: Http) -> ModelsStatus:
        """Each model's service: ready, loading (it answers but is not ready: why) or unreachable (why)."""
        return ModelsStatus(
            default=table.default,
            models=[ModelStatus(id=p.name, service=p.url, status=p.state, reason=p.reason) for p in await probes(http)],
        )

    return router


def _served(details: dict[str, Any]) -> str | None:
    model = details.get("model")
    return model if isinstance(model, str) else None
