"""A real OTLP/HTTP trace collector on 127.0.0.1 for tests: it decodes what exporters send (protobuf
``ExportTraceServiceRequest`` on ``POST /v1/traces``, as Phoenix, Jaeger or an OpenTelemetry Collector
receive it) into plain `Span` records the test reads back, and lets a test wait for a condition on them.

    with OtlpCollector() as collector:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
        ...
        spans = collector.wait_for(lambda spans: ..., timeout_s=20)

For benchmarks: ``python -m tests.support.otlp PORT`` decodes and counts spans (keeping none) until killed.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status_code: int = 0  # 0 unset, 1 ok, 2 error

    @property
    def kind(self) -> str | None:
        return self.attributes.get("openinference.span.kind")

    def texts(self) -> list[str]:
        """Every string this span carries (name, attribute and event values)."""
        out = [self.name]
        for attrs in [self.attributes, *(e[1] for e in self.events)]:
            for value in attrs.values():
                values = value if isinstance(value, list) else [value]
                out.extend(v for v in values if isinstance(v, str))
        return out


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


class OtlpCollector:
    """Receives OTLP/HTTP protobuf trace exports; `spans` holds every span received, in arrival order."""

    def __init__(self, port: int = 0, keep: bool = True) -> None:
        self.spans: list[Span] = []
        self.keep = keep
        self.received = 0
        self.posts = 0
        self.connections: set[tuple[str, int]] = set()  # the exporters' addresses (one each, when kept alive)
        self._changed = threading.Condition()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # kept-alive connections, as a real collector keeps them

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404 if self.path != "/v1/traces" else 415)
                    return
                request = ExportTraceServiceRequest.FromString(body)
                collector.connections.add(self.client_address[:2])
                collector._add(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _add(self, request: ExportTraceServiceRequest) -> None:
        if not self.keep:  # a benchmark's collector: decoded (in C), counted, dropped
            with self._changed:
                self.received += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                self.posts += 1
            return
        received = []
        for rs in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    received.append(
                        Span(
                            service=str(resource.get("service.name", "")),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex() or None,
                            attributes={kv.key: _value(kv.value) for kv in s.attributes},
                            events=[(e.name, {kv.key: _value(kv.value) for kv in e.attributes}) for e in s.events],
                            status_code=s.status.code,
                        )
                    )
        with self._changed:
            self.spans.extend(received)
            self.received += len(received)
            self.posts += 1
            self._changed.notify_all()

    def wait_for(self, found: Callable[[list[Span]], Any], timeout_s: float = 30) -> Any:
        """Wait until ``found(spans)`` is truthy (re-checked at each export); returns its value."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not (result := found(list(self.spans))):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"not found in {len(self.spans)} spans from {self.posts} exports")
                self._changed.wait(left)
            return result

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def start(self) -> Self:
        threading.Thread(target=self._server.serve_forever, name="otlp-collector", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str]) -> None:
    collector = OtlpCollector(int(argv[0]), keep=False)
    print(f"collecting on {collector.url}", flush=True)
    try:
        collector._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        print(f"received {collector.received} spans in {collector.posts} exports", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
