"""OTLP/HTTP span export with a lean protobuf encoder.

The SDK's OTLP exporter builds a protobuf object per span, attribute and value before serialising them (about two
thirds of what tracing cost a service); `comps.core._otlp` (C, ``comps/core/_otlp.c``) writes the same
``ExportTraceServiceRequest`` bytes straight from a finished span's fields, and this module groups them by resource
and scope (what it costs a traced request: ``benchmarks/bench_gateway.py --tracing --instructions``).
`OtlpSpanBatcher` encodes each span as it ends (so that no span waits in memory for the exporter, and no second
thread competes with the event loop for the interpreter while encoding) and posts the encoded batches with
``http.client`` from one background thread, on one kept-alive connection. A batch the collector does not take is
dropped with a warning (the trace is lost, the service goes on).
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from comps.core import _otlp

log = logging.getLogger(__name__)

_WARN_EVERY_S = 60.0
_SMALL = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    """A length (n >= 0)."""
    if n < 0x80:
        return _SMALL[n]
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + _varint(len(payload)) + payload


_Groups = dict[tuple[int, int], tuple[Any, Any, list[bytes]]]  # (resource, scope) ids -> both, encoded spans


def _group(groups: _Groups, span: ReadableSpan, encoded: bytes) -> None:
    """Add ``span``'s encoding to its resource's and scope's group."""
    resource, scope = span.resource, span.instrumentation_scope
    key = (id(resource), id(scope))
    group = groups.get(key)
    if group is None:
        group = groups[key] = (resource, scope, [])
    group[2].append(encoded)


def _request(groups: _Groups) -> bytes:
    """An ``ExportTraceServiceRequest`` (opentelemetry-proto) of the grouped spans, its parts joined once."""
    by_resource: dict[int, tuple[Any, list[tuple[Any, list[bytes]]]]] = {}
    for resource, scope, encoded in groups.values():
        by_resource.setdefault(id(resource), (resource, []))[1].append((scope, encoded))
    out: list[bytes] = []
    for resource, scopes in by_resource.values():
        parts = [_field(b"\x0a", _otlp.attributes(0x0A, resource.attributes))]
        for scope, encoded in scopes:
            scope_body = b""
            tail = b""
            if scope is not None:
                scope_body = _field(b"\x0a", scope.name.encode())
                if scope.version:
                    scope_body += _field(b"\x12", scope.version.encode())
                scope_body += _otlp.attributes(0x1A, scope.attributes)
                if scope.schema_url:
                    tail = _field(b"\x1a", scope.schema_url.encode())
            head = _field(b"\x0a", scope_body)
            parts += (b"\x12", _varint(len(head) + sum(map(len, encoded)) + len(tail)), head)
            parts += encoded
            parts.append(tail)
        if resource.schema_url:
            parts.append(_field(b"\x1a", resource.schema_url.encode()))
        out += (b"\x0a", _varint(sum(map(len, parts))))
        out += parts
    return b"".join(out)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """An ``ExportTraceServiceRequest`` holding ``spans``, grouped by resource and scope."""
    groups: _Groups = {}
    for span in spans:
        _group(groups, span, _otlp.span(span))
    return _request(groups)


def parse_headers(value: str | None) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS``: ``key1=value1,key2=value2`` (values URL-encoded)."""
    headers = {}
    for item in (value or "").split(","):
        key, sep, val = item.partition("=")
        if sep and key.strip():
            headers[key.strip()] = unquote(val.strip())
    return headers


class OtlpSpanBatcher(SpanProcessor):
    """Encodes each recorded span when it ends, on the thread that ends it (a service's event loop: a few µs, and
    the span is freed at once instead of waiting in a queue), and posts what has gathered to ``endpoint``
    (``.../v1/traces``, ``application/x-protobuf``) from one background thread: every ``delay_s``, or as soon as
    `BATCH_SPANS` wait. Beyond `QUEUE_SPANS` waiting (a collector slower than the spans come) new spans are dropped
    and counted in the next warning."""

    BATCH_SPANS = 2048
    QUEUE_SPANS = 8192

    def __init__(
        self, endpoint: str, headers: Mapping[str, str] | None = None, delay_s: float = 5.0, timeout_s: float = 10.0
    ) -> None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"OTLP endpoint {endpoint!r} is not an http(s) URL")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port
        self._path = url.path or "/"
        self._headers = {**(headers or {}), "Content-Type": "application/x-protobuf"}
        self._delay_s = delay_s
        self._timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._warned: float | None = None
        self._lock = threading.Lock()  # the spans gathered: appended by any thread, taken by the poster
        self._groups: _Groups = {}
        self._count = 0
        self._dropped = 0
        self._posting = threading.Lock()  # one post at a time (the thread's, or a flush's)
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def on_end(self, span: ReadableSpan) -> None:
        ctx = span.context
        if ctx is None or not ctx[3] & 1:  # the flags (a SpanContext is a tuple), and in them: sampled
            return
        encoded = _otlp.span(span)
        with self._lock:
            if self._count >= self.QUEUE_SPANS:
                self._dropped += 1
                return
            _group(self._groups, span, encoded)
            self._count += 1
            full = self._count >= self.BATCH_SPANS
            if self._thread is None:  # started by the first span (after a fork, in the process that records)
                self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
                self._thread.start()
        if full:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            self._export()

    def _export(self) -> bool:
        """Post what has gathered; False when the collector did not take it (the spans are dropped)."""
        with self._posting:
            with self._lock:
                groups, n, dropped = self._groups, self._count, self._dropped
                self._groups, self._count, self._dropped = {}, 0, 0
            if not n:
                return True
            if dropped:
                self._warn(f"dropped {dropped} spans: more than {self.QUEUE_SPANS} were waiting for the collector")
            body = _request(groups)
            try:
                try:
                    status = self._post(body)
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    status = self._post(body)  # the kept-alive connection was closed by the collector: once more
            except (OSError, http.client.HTTPException) as exc:
                return self._failed(n, f"{type(exc).__name__}: {exc}")
            if not 200 <= status < 300:
                return self._failed(n, f"HTTP {status}")
            return True

    def _post(self, body: bytes) -> int:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout_s)
        conn = self._conn
        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except BaseException:
            conn.close()
            self._conn = None
            raise

    def _failed(self, n: int, why: str) -> bool:
        self._warn(f"dropped {n} spans: the OTLP collector at {self._host} did not take them ({why})")
        return False

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if self._warned is None or now - self._warned >= _WARN_EVERY_S:  # a collector that is down: one a minute
            self._warned = now
            log.warning("%s", message)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Post what has gathered now (on shutdown), in the calling thread."""
        return self._export()

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._export()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
