"""Usage and the admin API of the gateway.

- ``GET /v1/usage?from&to``: the caller's own usage by day and model;
- ``GET /v1/admin/usage?from&to&group_by=user|api_key|model|day``: everyone's, with median times;
- ``GET /v1/admin/system``: uptime, each service's readiness (one parallel fan-out, a short timeout each), queue
  depths, LLM slots in use, cache and store status, CPU and memory of each process (from the readiness answers);
- ``GET /v1/admin/model/info``: per model: backend, file, quantisation, context window, parallel slots, GPU layers.

(``GET /v1/admin/sessions/count`` is chathistory's, proxied: `megaservice.conversations`.) Admin routes refuse
other users with 403; dates are ``YYYY-MM-DD`` (UTC days, both ends included).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from comps.core.app import http_client, process_facts, ready_backend, state_of
from comps.core.errors import BadRequest, NotReady
from comps.core.http import HttpClient
from comps.identity.auth import admin_of, principal_of
from comps.identity.service import Principal
from comps.sqlstore.db import Database
from megaservice.models import ModelTable
from megaservice.probe import Probe, probe_all
from megaservice.usage import GroupBy, UsageRecorder, own_usage, usage_by

if TYPE_CHECKING:
    from megaservice.router import Dependencies

_DAY = r"^\d{4}-\d{2}-\d{2}$"
From = Annotated[
    str | None, Query(alias="from", pattern=_DAY, description="First day (YYYY-MM-DD, UTC); default: 29 days before to")
]
To = Annotated[
    str | None, Query(alias="to", pattern=_DAY, description="Last day, included (YYYY-MM-DD, UTC); default: today")
]
Admin = Annotated[Principal, Depends(admin_of)]
Caller = Annotated[Principal, Depends(principal_of)]
Http = Annotated[HttpClient, Depends(http_client)]


class OwnUsageRow(BaseModel):
    day: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cache_hits: int
    errors: int


class UsageRow(BaseModel):
    key: str
    username: str | None = None  # group_by=user
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cache_hits: int
    errors: int
    ttft_ms_p50: float | None
    total_ms_p50: float | None


class ServiceStatus(BaseModel):
    name: str
    url: str
    ready: bool
    detail: Any  # the service's readiness answer, or why it is not ready


class ModelInfo(BaseModel):
    id: str
    service: str
    status: str
    reason: str | None = None
    backend: str | None = None
    file: str | None = None
    quantisation: str | None = None
    context_window: int | None = None
    parallel_slots: int | None = None
    gpu_layers: int | None = None
    slots_in_use: int | None = None
    queue_waiting: int | None = None


def day_span(first: str | None, last: str | None, max_days: int) -> tuple[date, date]:
    """The range asked for, checked: 400 for a day that does not exist, a range inverted or over ``max_days``."""
    end = _day(last, "to") if last else datetime.now(UTC).date()
    start = _day(first, "from") if first else end - timedelta(days=29)
    if start > end:
        raise BadRequest(f"from ({start}) is after to ({end})", param="from", code="invalid_range")
    days = (end - start).days + 1
    if days > max_days:
        raise BadRequest(f"the range is {days} days; at most {max_days} at once", param="to", code="range_too_large")
    return start, end


async def _store(request: Request) -> Database:
    """The usage store; 503 when accounting is off."""
    deps: Dependencies = await ready_backend(request)  # type: ignore[assignment]
    if deps.db is None or deps.usage is None:
        raise NotReady("usage accounting is off (no DATABASE_URL, or GATEWAY_USAGE_ENABLED=false)", code="usage_off")
    return deps.db


Store = Annotated[Database, Depends(_store)]


def _day(value: str, param: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise BadRequest(f"{param}: {value!r} is not a day: {exc}", param=param, code="invalid_date") from None


def build_router(table: ModelTable, recorder: UsageRecorder | None, max_days: int, probe_timeout_s: float) -> APIRouter:
    router = APIRouter()

    async def store(request: Request) -> Database:
        deps: Dependencies = await ready_backend(request)  # type: ignore[assignment]
        if deps.db is None or recorder is None:
            raise NotReady(
                "usage accounting is off (no DATABASE_URL, or GATEWAY_USAGE_ENABLED=false)", code="usage_off"
            )
        return deps.db

    @router.get("/v1/usage", tags=["usage"])
    async def own(caller: Caller, db: Store, start: From = None, end: To = None) -> dict[str, Any]:
        """The caller's own usage by day and model."""
        lo, hi = day_span(start, end, max_days)
        rows = await own_usage(db, caller.user_id, lo, hi)
        return {"from": str(lo), "to": str(hi), "rows": [OwnUsageRow(**r).model_dump() for r in rows]}

    @router.get("/v1/admin/usage", tags=["admin"])
    async def everyone(
        _: Admin, db: Store, start: From = None, end: To = None, group_by: GroupBy = "user"
    ) -> dict[str, Any]:
        """Everyone's usage grouped by user, API key, model or day, with the median times (ms)."""
        lo, hi = day_span(start, end, max_days)
        rows = await usage_by(db, group_by, lo, hi)
        return {
            "from": str(lo),
            "to": str(hi),
            "group_by": group_by,
            "rows": [UsageRow(**r).model_dump(exclude_none=group_by != "user") for r in rows],
        }

    @router.get("/v1/admin/system", tags=["admin"])
    async def system(_: Admin, request: Request, http: Http) -> dict[str, Any]:
        """The mesh as the gateway sees it now (see the module doc)."""
        deps: Dependencies = request.app.state.service.backend
        targets = deps.service_urls()
        targets.update({_llm_name(table, m): url for m, url in table.urls.items()})
        probes, store_status = await asyncio.gather(
            probe_all(http, targets, probe_timeout_s), _store_status(deps.db, probe_timeout_s)
        )
        llm = {p.name: p for p in probes if p.name in {_llm_name(table, m) for m in table.urls}}
        state = state_of(request)
        return {
            "uptime_s": round(time.time() - state.started_at, 3),
            "services": [
                ServiceStatus(name=p.name, url=p.url, ready=p.ready, detail=p.details or p.reason).model_dump()
                for p in probes
            ],
            "queues": {
                "usage_buffer": recorder.buffered if recorder else None,
                **{name: p.details.get("queue") for name, p in llm.items()},
            },
            "llm_slots": {
                name: {"in_use": p.details.get("slots_in_use"), "parallel": p.details.get("parallel")}
                for name, p in llm.items()
            },
            "store": store_status,
            "usage": recorder.status() if recorder else {"enabled": False},
            "cache": deps.cache_status(),
            "processes": [{"name": "gateway", **process_facts(state.started_at)}]
            + [{"name": p.name, **p.details["process"]} for p in probes if isinstance(p.details.get("process"), dict)],
        }

    @router.get("/v1/admin/model/info", tags=["admin"])
    async def model_info(_: Admin, http: Http) -> dict[str, Any]:
        """Each model's facts, as its LLM service reports them in its readiness answer."""
        probes = await probe_all(http, table.urls, probe_timeout_s)
        return {"default": table.default, "models": [_model_info(p).model_dump() for p in probes]}

    return router


def _llm_name(table: ModelTable, model: str) -> str:
    return "llm" if not table.strict else f"llm:{model}"


def _model_info(p: Probe) -> ModelInfo:
    d = p.details
    queue = d.get("queue")
    queue = queue if isinstance(queue, dict) else {}
    return ModelInfo(
        id=p.name,
        service=p.url,
        status=p.state,
        reason=p.reason,
        backend=d.get("backend"),
        file=d.get("file") or d.get("remote_url"),
        quantisation=d.get("quantisation"),
        context_window=d.get("n_ctx"),
        parallel_slots=d.get("parallel"),
        gpu_layers=d.get("n_gpu_layers"),
        slots_in_use=d.get("slots_in_use"),
        queue_waiting=queue.get("waiting"),
    )


async def _store_status(db: Database | None, timeout_s: float) -> dict[str, Any]:
    if db is None:
        return {"status": "absent"}
    started = time.perf_counter()
    try:
        await asyncio.wait_for(db.ping(), timeout_s)
    except Exception as exc:  # any failure of the store is its status here
        return {"status": "unreachable", "reason": f"{type(exc).__name__}: {exc}"}
    return {"status": "ready", "ping_ms": round((time.perf_counter() - started) * 1000, 3)}
