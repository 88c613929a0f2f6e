"""A small service built on the kit, for testing the kit itself across real processes.

- warm-up finishes only once the file named by RELAY_READY_FILE exists (readiness flip);
- ``POST /v1/echo`` has a typed body (validation errors, bad JSON);
- ``GET /v1/headers`` returns the request id and traceparent it received;
- ``GET /v1/relay`` calls RELAY_DOWNSTREAM_URL's ``/v1/headers`` through the shared HTTP client.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from comps.core.app import create_app, http_client, ready_backend
from comps.core.backends import run_service
from comps.core.errors import NotReady
from comps.core.http import HttpClient
from comps.core.observability import request_id_var
from comps.core.settings import ServiceSettings


class RelaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore", frozen=True)
    service_name: str = "relay"
    port: int = 6999
    ready_file: Path | None = None
    downstream_url: str | None = None
    max_items: int = Field(default=10, ge=1)


class FileGatedBackend:
    name = "file-gated"

    def __init__(self, ready_file: Path | None) -> None:
        self.ready_file = ready_file

    async def warm_up(self, http: HttpClient) -> None:
        while self.ready_file is not None and not self.ready_file.exists():  # noqa: ASYNC110 - another process makes it
            await asyncio.sleep(0.05)

    async def check_ready(self) -> dict[str, Any]:
        if self.ready_file is not None and not self.ready_file.exists():
            raise NotReady(f"{self.ready_file} is gone")
        return {"gate": str(self.ready_file)}

    async def close(self) -> None:
        return None


class EchoRequest(BaseModel):
    text: str
    count: int = Field(default=1, ge=1, le=5)


Backend = Annotated[FileGatedBackend, Depends(ready_backend)]
Http = Annotated[HttpClient, Depends(http_client)]


def build(settings: RelaySettings) -> FastAPI:
    router = APIRouter()

    @router.post("/v1/echo")
    async def echo(body: EchoRequest, _: Backend) -> dict[str, Any]:
        return {"text": body.text * body.count}

    @router.get("/v1/slow")
    async def slow(seconds: float = 1.0, started: str | None = None) -> dict[str, Any]:
        if started:  # tells the test the request is in flight
            await asyncio.to_thread(Path(started).touch)
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @router.get("/v1/headers")
    async def headers(request: Request) -> dict[str, Any]:
        return {
            "request_id": request_id_var.get(),
            "traceparent": request.headers.get("traceparent"),
        }

    @router.get("/v1/relay")
    async def relay(request: Request, http: Http) -> dict[str, Any]:
        downstream = await http.request_json(
            "GET", f"{settings.downstream_url}/v1/headers", node="downstream", timeout_s=5
        )
        return {"seen_downstream": downstream, "traceparent_in": request.headers.get("traceparent")}

    return create_app(settings, backend=FileGatedBackend(settings.ready_file), routers=[router])


if __name__ == "__main__":
    run_service(RelaySettings, build)
