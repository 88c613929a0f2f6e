"""The one way to build a service: `create_app(settings, backend, routers)` and `serve(app, settings)`.

What every service gets from here:
- lifespan: logging and tracing set up, the shared HTTP client opened, the backend warmed up in the
  background (liveness answers at once, readiness says 503 with the reason until it is done), and on
  shutdown in-flight requests drained before the backend and the client close;
- ``GET /v1/health_check`` (liveness), ``GET /v1/ready`` (really asks the backend), ``GET /metrics``;
- a process that cannot serve any more (`comps.core.tasks.fatal`: a critical background task or worker
  thread died) fails liveness and readiness, drains, and exits with a non-zero code for its supervisor;
- the error envelope for every non-2xx answer, request ids, a server span per request;
- optional bearer-token auth and CORS for configured origins only.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import os
import resource
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, runtime_checkable

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comps.core.errors import (
    BadRequest,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    document_errors,
    error_envelope,
    install_error_handlers,
)
from comps.core.http import KEEPALIVE_S, HttpClient
from comps.core.observability import ObservabilityMiddleware, flush_spans, setup_logging, setup_tracing
from comps.core.settings import ServiceSettings
from comps.core.tasks import FATAL_EXIT_CODE, exit_on_fatal, fatal_reason

log = logging.getLogger("comps.app")

OPEN_PATHS = frozenset({"/v1/health_check", "/v1/ready", "/metrics"})


@runtime_checkable
class Backend(Protocol):
    """What a service's backend must offer the kit. Heavy loading happens in `warm_up`, never in __init__."""

    name: str

    async def warm_up(self, http: HttpClient) -> None:
        """Load models, open connections. Runs once, in the background, after the server starts."""

    async def check_ready(self) -> dict[str, Any]:
        """Really check the backend and its dependencies; raise `NotReady` with the reason if not ready.

        Returns details for the readiness answer (model name, dimensions, ...)."""

    async def close(self) -> None:
        """Release what `warm_up` opened."""


class ServiceState:
    """Per-app state: the backend, the shared HTTP client and how warm-up went."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.http = HttpClient()
        self.warm = False
        self.warm_error: str | None = None
        self.started_at = time.time()

    def require_ready(self) -> Backend:
        if self.warm_error:
            raise NotReady(f"{self.backend.name} backend failed to start: {self.warm_error}")
        if not self.warm:
            raise NotReady(f"{self.backend.name} backend is warming up")
        return self.backend


def state_of(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


async def ready_backend(request: Request) -> Backend:
    """FastAPI dependency: the backend, or 503 until it has warmed up (async: no thread hop per request)."""
    return state_of(request).require_ready()


async def http_client(request: Request) -> HttpClient:
    """FastAPI dependency: the process's shared HTTP client (async: no thread hop per request)."""
    return state_of(request).http


async def strict_json_body(request: Request) -> None:
    """FastAPI dependency of every route: a JSON body must be strict JSON (RFC 8259), else 400.

    Python's parser (which FastAPI uses) also accepts ``NaN``/``Infinity`` literals and lone surrogate
    escapes such as ``"\\ud800"``, which make strings that are not Unicode text: tokenizers, llama.cpp and
    the UTF-8 encoding of any answer echoing them then fail with a 500. The body FastAPI already parsed
    (routes with a body only) is cached on the request; writing it back out as UTF-8 with
    ``allow_nan=False`` finds both in one C pass."""
    if getattr(request.scope.get("route"), "body_field", None) is None:
        return
    if not is_json(request.headers.get("content-type")) or not await request.body():
        return
    try:
        json.dumps(await request.json(), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(exc.object[exc.start])
        raise BadRequest(
            f"request body is not valid JSON: lone surrogate \\u{bad:04x} in a string (not Unicode text)",
            code="invalid_value",
        ) from None
    except ValueError:
        raise BadRequest(
            "request body is not valid JSON: NaN and Infinity are not JSON numbers", code="invalid_value"
        ) from None
    except RecursionError:  # parsed a little less deep in the stack than here
        raise BadRequest("request body is not valid JSON: nested too deeply", code="invalid_value") from None


def process_facts(started_at: float) -> dict[str, Any]:
    """This process's id, uptime, CPU seconds and resident memory (what the admin API shows of each service)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read().split()[1]) * resource.getpagesize()
    except OSError:  # not Linux: the peak instead
        rss = usage.ru_maxrss * 1024
    return {"pid": os.getpid(), "uptime_s": round(time.time() - started_at, 3),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3), "rss_bytes": rss}  # fmt: skip


def is_json(content_type: str | None) -> bool:
    """Whether FastAPI parses a body of this Content-Type as JSON: application/json or application/*+json."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


# The 200 of a route that streams when asked (``stream: true``): its model as JSON, or server-sent events (each
# ``data:`` a JSON chunk, the last ``[DONE]``: no schema says both, so the events' is left open).
STREAMING_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


def create_app(
    settings: ServiceSettings,
    *,
    backend: Backend,
    routers: Sequence[APIRouter] = (),
    title: str | None = None,
    version: str = "0.1.0",
    middleware: Sequence[tuple[Any, dict[str, Any]]] = (),  # (ASGI middleware class, its keyword arguments)
    body_limits: dict[str, int] | None = None,
    ready_details: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """The service's app. ``middleware`` (class, kwargs) runs inside CORS and the body limit, outside the routes
    (e.g. the gateway's authentication); ``body_limits`` sets other limits than max_body_bytes for some paths;
    ``ready_details`` adds what the service itself knows (e.g. its queue) to the readiness answer."""
    state = ServiceState(backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_logging(settings.service_name, settings.log_format, settings.log_level)
        setup_tracing(
            settings.service_name,
            settings.otlp_endpoint,
            settings.trace_sample_ratio,
            settings.otlp_headers.get_secret_value() if settings.otlp_headers else None,
            settings.trace_export_delay_ms / 1000,
        )
        await state.http.start()
        warm_task = asyncio.create_task(_warm_up(state), name="warm-up")
        try:
            yield
        finally:
            warm_task.cancel()
            await asyncio.gather(warm_task, return_exceptions=True)
            try:
                await backend.close()
            finally:
                await state.http.close()
                flush_spans()
            log.info("%s stopped", settings.service_name)

    # FastAPI's own telemetry would add a second server span and spans per dependency to every request;
    # the kit traces requests itself (ObservabilityMiddleware) and exports Prometheus metrics.
    app = FastAPI(
        title=title or settings.service_name,
        version=version,
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        dependencies=[Depends(strict_json_body)],
    )
    app.state.service = state
    app.state.settings = settings
    install_error_handlers(app)

    @app.get("/v1/health_check", tags=["ops"])
    async def health_check() -> JSONResponse:
        """Liveness: the process serves requests. Fails when warm-up failed for good or the process is dead
        inside (a critical task or worker thread died)."""
        dead = f"warm-up failed: {state.warm_error}" if state.warm_error else fatal_reason()
        if dead:
            return JSONResponse(status_code=503, content=error_envelope(dead, "service_unavailable"))
        return JSONResponse({"status": "ok", "service": settings.service_name})

    @app.get("/v1/ready", tags=["ops"])
    async def ready() -> JSONResponse:
        """Readiness: the backend is loaded and its dependencies answer right now."""
        try:
            if fatal_reason():
                raise NotReady(f"the process is stopping: {fatal_reason()}")
            backend_ready = state.require_ready()
            details = await asyncio.wait_for(backend_ready.check_ready(), 10)
        except ServiceError as exc:
            return JSONResponse(status_code=503, content=error_envelope(exc.message, "service_unavailable"))
        except TimeoutError:
            return JSONResponse(
                status_code=503, content=error_envelope("readiness check timed out", "service_unavailable")
            )
        except Exception as exc:  # a dependency failing in an unexpected way is still "not ready"
            return JSONResponse(status_code=503, content=error_envelope(f"not ready: {exc}", "service_unavailable"))
        extra = ready_details() if ready_details is not None else {}
        return JSONResponse(
            {"status": "ready", "service": settings.service_name, "backend": backend.name, **details, **extra,
             "process": process_facts(state.started_at)}
        )  # fmt: skip

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)

    for cls, kwargs in middleware:
        app.add_middleware(cls, **kwargs)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"], allow_headers=["*"]
        )
    if settings.api_key is not None:
        app.add_middleware(BearerAuthMiddleware, token=settings.api_key.get_secret_value())
    if settings.max_body_bytes is not None:
        app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, paths=body_limits or {})
    app.add_middleware(ObservabilityMiddleware, service=settings.service_name)
    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(fastapi_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _warm_up(state: ServiceState) -> None:
    started = time.perf_counter()
    try:
        await state.backend.warm_up(state.http)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        state.warm_error = f"{type(exc).__name__}: {exc}"
        log.exception("warm-up of %s failed", state.backend.name)
        return
    state.warm = True
    log.info("%s backend ready in %.2fs", state.backend.name, time.perf_counter() - started)


class BodyLimitMiddleware:
    """413 for a request body over ``limit`` bytes: at once from Content-Length, or while a chunked body
    is read (the read fails with `PayloadTooLarge`, which the error handlers answer as 413)."""

    def __init__(self, app: ASGIApp, limit: int, paths: dict[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.paths = paths or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.paths.get(scope.get("path", ""), self.limit)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            resp = JSONResponse(status_code=413, content=self._too_large(limit).envelope())
            await resp(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise self._too_large(limit)
            return message

        await self.app(scope, limited_receive, send)

    @staticmethod
    def _too_large(limit: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is over the limit of {limit} bytes", code="body_too_large")


class BearerAuthMiddleware:
    """Requires ``Authorization: Bearer <token>`` on every route but health, readiness and metrics."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") not in OPEN_PATHS and scope.get("method") != "OPTIONS":
            given = dict(scope.get("headers", [])).get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.token):
                resp = JSONResponse(
                    status_code=401,
                    content=error_envelope("missing or invalid bearer token", "authentication_error"),
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


SERVER_KEEPALIVE_S = 2 * KEEPALIVE_S
GC_YOUNG_THRESHOLD = 10_000  # container allocations between young-generation collections (see `serve`)


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run ``app`` until SIGINT/SIGTERM; in-flight requests get ``drain_timeout_s`` to finish. After a
    `comps.core.tasks.fatal` the process exits with `FATAL_EXIT_CODE`."""
    setup_logging(settings.service_name, settings.log_format, settings.log_level)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout_s) or None,
        # Idle keep-alive connections outlive the mesh's clients' (`comps.core.http.KEEPALIVE_S`): a server that
        # closed first would race a client reusing the connection at that moment (a reset seen as a 503).
        timeout_keep_alive=SERVER_KEEPALIVE_S,
        lifespan="on",
    )
    exit_on_fatal()
    # What start-up made (modules, the app, settings) lives as long as the process: frozen, it is out of the
    # garbage collector's walks, so that a full collection costs what requests keep alive, not the whole heap
    # (tens of ms each in the gateway; spans waiting for export made them several times more frequent).
    gc.collect()
    gc.freeze()
    # A young-generation collection every 700 container allocations (CPython's default) ran every few requests
    # and cost ~0.5 ms each in the gateway: ~0.2 ms of every request's CPU. Every 10,000, the same garbage goes
    # in ~20x fewer collections (gateway on stubs: CPU per streamed request 2.66 -> 2.23 ms).
    gc.set_threshold(GC_YOUNG_THRESHOLD)
    uvicorn.Server(config).run()
    if fatal_reason():
        sys.exit(FATAL_EXIT_CODE)
