"""The kit's OTLP encoder writes what the OpenTelemetry SDK's own encoder writes, field for field."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.propagate import extract
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import AttributeValue

from comps.core.otlp import OtlpHttpSpanExporter, encode_spans, parse_headers
from comps.runtime.process import free_port

pytestmark = pytest.mark.unit

REMOTE = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "a=1,b=2"}


def _spans() -> tuple[ReadableSpan, ...]:
    """Spans with every kind of field: remote and local parents, trace state, events, links, statuses, two
    scopes, attribute values of each type (unicode, negative and 64-bit ints, lists, bytes)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "gateway", "n": 3, "f": [1.5, -2.0]}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    chatqna = provider.get_tracer("chatqna", "1.2", schema_url="https://opentelemetry.io/schemas/1.26.0")
    other = provider.get_tracer("other")
    attributes: dict[str, AttributeValue] = {
        "s": "héllo ✓",
        "empty": "",
        "i": -5,
        "big": 2**62,
        "b": True,
        "f": 0.25,
        "strings": ["a", "b"],
        "ints": [1, -2],
        "bools": [True, False],
        "bytes": b"\x00\x01",
    }
    with chatqna.start_as_current_span(
        "POST /v1/chatqna", context=extract(REMOTE), kind=trace.SpanKind.SERVER, attributes=attributes
    ) as server:
        server.add_event("First Token Stream Event")
        server.add_event("with attributes", {"k": 1, "text": "x" * 200})
        with other.start_as_current_span("node llm", links=[trace.Link(server.get_span_context(), {"x": "y"})]) as llm:
            llm.set_status(trace.Status(trace.StatusCode.ERROR, "llm did not answer within 5s"))
            llm.set_attribute("retrieval.documents.0.document.metadata", '{"source": "a.txt"}')
        with chatqna.start_as_current_span("node retriever", kind=trace.SpanKind.CLIENT) as ok:
            ok.set_status(trace.Status(trace.StatusCode.OK))
    with chatqna.start_as_current_span("root"):
        pass
    return memory.get_finished_spans()


def test_the_encoding_equals_the_sdks() -> None:
    spans = _spans()
    ours = ExportTraceServiceRequest.FromString(encode_spans(spans))
    assert ours == sdk_encode_spans(spans)
    assert len(ours.resource_spans[0].scope_spans) == 2


def test_headers_are_read_as_the_otlp_variable_writes_them() -> None:
    assert parse_headers("Authorization=Basic%20YWJj, x-team = search ,bad") == {
        "Authorization": "Basic YWJj",
        "x-team": "search",
    }
    assert parse_headers(None) == {}


def test_a_collector_that_is_down_fails_the_batch_without_raising() -> None:
    exporter = OtlpHttpSpanExporter(f"http://127.0.0.1:{free_port()}/v1/traces", timeout_s=2)
    assert exporter.export(_spans()) is SpanExportResult.FAILURE
    exporter.shutdown()


def test_an_endpoint_that_is_not_a_url_is_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        OtlpHttpSpanExporter("127.0.0.1:4318/v1/traces")
