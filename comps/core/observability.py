"""Logs with a request id, Prometheus metrics and OpenTelemetry tracing, set up once per process.

The request id and the trace context travel in a context variable and in the headers of every
outgoing call made through `comps.core.http`.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import sys
import time
import uuid

from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comps.core.caller import caller_headers_var
from comps.core.otlp import OtlpSpanBatcher, parse_headers
from comps.core.spans import LeanTracerProvider

REQUEST_ID_HEADER = "x-request-id"
PROBE_PATHS = frozenset({"/metrics", "/v1/health_check", "/v1/ready"})  # neither logged nor traced
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

HTTP_REQUESTS = Counter(
    "chatqna_http_requests_total", "HTTP requests answered", ["service", "route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "chatqna_http_request_duration_seconds",
    "Time from request start to the last byte of the response",
    ["service", "route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def setup_logging(service: str, fmt: str = "plain", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {service} [%(request_id)s] %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def setup_tracing(
    service: str,
    otlp_endpoint: str | None,
    sample_ratio: float = 1.0,
    otlp_headers: str | None = None,
    export_delay_s: float = 5.0,
) -> None:
    """Install the tracer provider (`comps.core.spans`); spans are exported over OTLP/HTTP only when an endpoint
    is set, in batches at most ``export_delay_s`` apart (`comps.core.otlp.OtlpSpanBatcher`).

    With an exporter, ``sample_ratio`` of the traces that start here are recorded (a caller's sampled flag
    decides for the traces it started). ``otlp_headers`` (``key1=value1,key2=value2``) go with every export."""
    if isinstance(trace.get_tracer_provider(), LeanTracerProvider):
        return
    # Without an exporter, a trace that no caller sampled is not recorded: its spans still carry and pass
    # on the trace context (traceparent) but cost a fraction, since nothing would ever read them.
    sampler = ParentBased(TraceIdRatioBased(sample_ratio) if otlp_endpoint else ALWAYS_OFF)
    processor = SpanProcessor()  # takes nothing
    if otlp_endpoint:
        endpoint = otlp_endpoint.rstrip("/") + "/v1/traces"
        processor = OtlpSpanBatcher(endpoint, parse_headers(otlp_headers), delay_s=export_delay_s)
    trace.set_tracer_provider(LeanTracerProvider(Resource.create({"service.name": service}), sampler, processor))


def flush_spans() -> None:
    """Export what is buffered (on shutdown: a process ended by a signal runs no atexit hooks)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, LeanTracerProvider):
        provider.force_flush(5000)


@functools.cache
def tracer() -> trace.Tracer:
    """The process's tracer, made once: `trace.get_tracer` is slow (tens of µs); a tracer obtained before
    `setup_tracing` is a proxy that switches to the process's provider once it is set."""
    return trace.get_tracer("chatqna")


def outgoing_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Headers for a call to another service: the caller (gateway only), request id and W3C trace context."""
    headers = {**caller_headers_var.get(), **(extra or {})}
    rid = request_id_var.get()
    if rid != "-":
        headers[REQUEST_ID_HEADER] = rid
    inject(headers)
    return headers


class ObservabilityMiddleware:
    """Pure ASGI middleware (streaming-safe): request id, server span, access log and metrics."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        self.log = logging.getLogger("comps.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get(REQUEST_ID_HEADER) or _new_id()
        token = request_id_var.set(rid)
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER.encode(), rid.encode())]
            await send(message)

        method = scope.get("method", "GET")
        path = scope.get("path", "")
        span_cm = (
            trace.use_span(trace.INVALID_SPAN)  # probes and scrapes: no trace (a probe every few seconds)
            if path in PROBE_PATHS
            else tracer().start_as_current_span(
                f"{method} {path}", context=extract(headers), kind=trace.SpanKind.SERVER
            )
        )
        with span_cm as span:
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                elapsed = time.perf_counter() - start
                span.set_attribute("http.route", route)
                span.set_attribute("http.status_code", status)
                if status >= 500:  # OpenTelemetry's HTTP conventions: a server error is an error span
                    span.set_status(trace.Status(trace.StatusCode.ERROR, f"HTTP {status}"))
                span.update_name(f"{method} {route}")
                HTTP_REQUESTS.labels(self.service, route, method, str(status)).inc()
                HTTP_LATENCY.labels(self.service, route, method).observe(elapsed)
                if route not in PROBE_PATHS:
                    self.log.info("%s %s %d %.1fms", method, scope.get("path", ""), status, elapsed * 1000)
                request_id_var.reset(token)


def _new_id() -> str:
    return uuid.uuid4().hex
