"""OTLP/HTTP span export with a lean protobuf encoder.

The SDK's OTLP exporter builds a protobuf object per span, attribute and value before serialising them
(about two thirds of what tracing costs a service); this writes the same ``ExportTraceServiceRequest``
bytes directly, with each attribute key, and each short string attribute while it keeps coming back, encoded once
(`_attributes`; what it costs a traced request: ``benchmarks/bench_gateway.py --tracing --instructions``).
`OtlpSpanBatcher` encodes each span as it
ends (so that no span waits in memory for the exporter, and no second thread competes with the event loop for
the interpreter while encoding) and posts the encoded batches with ``http.client`` from one background thread,
on one kept-alive connection. A batch the collector does not take is dropped with a warning (the trace is lost,
the service goes on).
"""

from __future__ import annotations

import http.client
import logging
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

from comps.core.spans import UNSET_STATUS

log = logging.getLogger(__name__)

_FLAGS_HAS_IS_REMOTE = 0x100  # SpanFlags: the span says whether its parent is remote...
_FLAGS_IS_REMOTE = 0x200  # ...and it is
_KEY_CACHE_MAX = 8192  # distinct attribute keys kept encoded (a process has a few hundred)
_FIELD_CACHE_MAX = 4096  # string attributes (key and value) kept encoded...
_FIELD_CACHE_BYTES = 256  # ...when their encoding is shorter than this (a prompt or a passage is not kept)
_WARN_EVERY_S = 60.0
_SMALL = [bytes((n,)) for n in range(0x80)]
_double = struct.Struct("<d").pack
_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n] if n >= 0 else _varint(n & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    if n < 0x4000:  # a span's length, mostly
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


def _value(v: Any) -> bytes:
    """An ``AnyValue`` message's body."""
    if isinstance(v, str):
        return _field(b"\x0a", v.encode())
    if isinstance(v, bool):  # before int: a bool is an int
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, int):
        return b"\x18" + _varint(v)
    if isinstance(v, float):
        return b"\x21" + _double(v)
    if isinstance(v, bytes):
        return _field(b"\x3a", v)
    if isinstance(v, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _value(x)) for x in v))
    if isinstance(v, Mapping):
        return _field(
            b"\x32", b"".join(_field(b"\x0a", _key(str(k)) + _field(b"\x12", _value(x))) for k, x in v.items())
        )
    return b""  # None: an empty AnyValue


_keys: dict[str, bytes] = {}


def _key(key: str) -> bytes:
    """A ``KeyValue``'s key field, encoded once per process."""
    encoded = _keys.get(key)
    if encoded is None:
        encoded = _field(b"\x0a", key.encode())
        if len(_keys) < _KEY_CACHE_MAX:
            _keys[key] = encoded
    return encoded


_fields: dict[bytes, dict[tuple[str, Any], bytes]] = {}  # by tag: (key, value) -> the field, encoded
_prefixes: dict[tuple[bytes, str], bytes] = {}  # (tag, key) -> a float field's bytes before the value


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated ``KeyValue`` fields under ``tag``.

    A short string (or strings) attribute is encoded once while it keeps coming back (a span's kind, a model's name,
    a popular document's id and metadata: most of a gateway span's attributes), so that most cost a lookup:
    `_FIELD_CACHE_MAX` of them are kept under each tag, all forgotten when that many are."""
    if not attributes:
        return b""
    fields = _fields.get(tag)
    if fields is None:
        fields = _fields[tag] = {}
    get = fields.get
    out = []
    for item in attributes.items():
        try:
            field = get(item)
        except TypeError:  # a value that cannot be a key (a list in a tuple): encoded every time
            field = None
        out.append(field if field is not None else _attribute(tag, item, fields))
    return b"".join(out)


def _attribute(tag: bytes, item: tuple[str, Any], fields: dict[tuple[str, Any], bytes]) -> bytes:
    """One ``KeyValue`` field, kept in ``fields`` when its value is short strings only (never numbers: as keys,
    1, 1.0 and True are one, and each is encoded in its own way)."""
    k, v = item
    cls = v.__class__
    if cls is float:  # (a document's score: the most common number) its key's bytes made once
        prefix = _prefixes.get((tag, k))
        if prefix is None:
            key = _keys.get(k) or _key(k)
            prefix = tag + _varint(len(key) + 11) + key + b"\x12\x09\x21"
            if len(_prefixes) < _KEY_CACHE_MAX:
                _prefixes[(tag, k)] = prefix
        return prefix + _double(v)
    if cls is int:
        value = b"\x18" + _varint(v)
    elif cls is str:
        encoded = v.encode()
        n = len(encoded)
        value = b"\x0a" + _SMALL[n] + encoded if n < 0x80 else _field(b"\x0a", encoded)
    else:
        value = _value(v)
    n = len(value)
    kv = (_keys.get(k) or _key(k)) + (b"\x12" + _SMALL[n] + value if n < 0x80 else _field(b"\x12", value))
    n = len(kv)
    field = tag + _SMALL[n] + kv if n < 0x80 else _field(tag, kv)
    if n < _FIELD_CACHE_BYTES and (cls is str or (cls is tuple and all(x.__class__ is str for x in v))):
        if len(fields) >= _FIELD_CACHE_MAX:
            fields.clear()
        fields[item] = field
    return field


def _count(tag: bytes, n: int) -> bytes:
    return tag + _varint(n) if n else b""


# By the member's id: an enum's hash is a Python call. The SDK's kinds start at 0, OTLP's at 1.
_KINDS = {id(kind): b"\x30" + _SMALL[kind.value + 1] for kind in SpanKind}
_FLAGS = {
    remote: b"\x85\x01" + _fixed32(_FLAGS_HAS_IS_REMOTE | (_FLAGS_IS_REMOTE if remote else 0))
    for remote in (False, True)
}
_NO_PARENT = _FLAGS[False]
_EMPTY_STATUS = b"\x7a\x00"


def _span(span: ReadableSpan) -> bytes:
    """A ``Span`` message's body (the common case, a span without events, links or a status message, in a few
    concatenations). A ``SpanContext`` is a tuple (trace id, span id, is remote, flags, state): read by index, its
    fields cost no Python call each."""
    ctx = span.get_span_context()
    assert ctx is not None  # an SDK span always has one
    parent = span.parent
    name = span.name.encode()
    out = (
        b"\x0a\x10"
        + ctx[0].to_bytes(16, "big")
        + b"\x12\x08"
        + ctx[1].to_bytes(8, "big")
        + (_field(b"\x1a", ",".join(f"{k}={v}" for k, v in ctx[4].items()).encode()) if ctx[4] else b"")
        + (b"\x22\x08" + parent[1].to_bytes(8, "big") if parent is not None else b"")
        + (b"\x2a" + _SMALL[len(name)] + name if len(name) < 0x80 else _field(b"\x2a", name))
        + _KINDS[id(span.kind)]
        + b"\x39"
        + _fixed64(span.start_time or 0)
        + b"\x41"
        + _fixed64(span.end_time or 0)
        + _attributes(b"\x4a", span.attributes)
    )
    if span.dropped_attributes:
        out += b"\x50" + _varint(span.dropped_attributes)
    for event in span.events:
        body = b"\x09" + _fixed64(event.timestamp) + _field(b"\x12", event.name.encode())
        body += _attributes(b"\x1a", event.attributes) + _count(b"\x20", event.dropped_attributes)
        out += _field(b"\x5a", body)
    if span.dropped_events:
        out += b"\x60" + _varint(span.dropped_events)
    for link in span.links:
        body = (
            b"\x0a\x10"
            + link.context.trace_id.to_bytes(16, "big")
            + b"\x12\x08"
            + link.context.span_id.to_bytes(8, "big")
        )
        body += _attributes(b"\x22", link.attributes) + _count(b"\x28", link.dropped_attributes)
        out += _field(b"\x6a", body + b"\x35" + _FLAGS[link.context.is_remote][2:])
    if span.dropped_links:
        out += b"\x70" + _varint(span.dropped_links)
    status = span.status
    if status is UNSET_STATUS:  # a lean span's, unless it was set
        out += _EMPTY_STATUS
    elif status.description or status.status_code is not StatusCode.UNSET:
        message = _field(b"\x12", status.description.encode()) if status.description else b""
        out += _field(b"\x7a", message + _count(b"\x18", status.status_code.value))
    else:
        out += _EMPTY_STATUS
    return out + (_FLAGS[parent[2]] if parent is not None else _NO_PARENT)


_Groups = dict[tuple[int, int], tuple[Any, Any, list[bytes]]]  # (resource, scope) ids -> both, encoded spans


def _encoded(span: ReadableSpan) -> bytes:
    """``span`` as a ``ScopeSpans.spans`` field."""
    return _field(b"\x12", _span(span))


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
        parts = [_field(b"\x0a", _attributes(b"\x0a", resource.attributes))]
        for scope, encoded in scopes:
            scope_body = b""
            tail = b""
            if scope is not None:
                scope_body = _field(b"\x0a", scope.name.encode())
                if scope.version:
                    scope_body += _field(b"\x12", scope.version.encode())
                scope_body += _attributes(b"\x1a", scope.attributes)
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
        _group(groups, span, _encoded(span))
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
        encoded = _encoded(span)
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
