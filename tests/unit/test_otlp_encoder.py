"""The kit's OTLP encoder writes what the OpenTelemetry SDK's own encoder writes, field for field, and its lean
tracer provider (`comps.core.spans`) records what the SDK's provider records for the same calls."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.propagate import extract, inject
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased

from comps.core import otlp
from comps.core.otlp import OtlpSpanBatcher, encode_spans, parse_headers
from comps.core.spans import LeanTracerProvider
from comps.runtime.process import free_port
from tests.support.otlp import OtlpCollector

pytestmark = pytest.mark.unit

REMOTE = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "a=1,b=2"}


def _spans() -> tuple[ReadableSpan, ...]:
    """The SDK's spans of `_record`: every kind of field and attribute value."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "gateway", "n": 3, "f": [1.5, -2.0]}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    _record(provider)
    return memory.get_finished_spans()


def test_the_encoding_equals_the_sdks() -> None:
    spans = _spans()
    ours = ExportTraceServiceRequest.FromString(encode_spans(spans))
    assert ours == sdk_encode_spans(spans)
    assert len(ours.resource_spans[0].scope_spans) == 2
    assert encode_spans(spans) == encode_spans(spans)  # again, its strings from the encoder's cache


def test_values_equal_as_keys_keep_their_own_types_and_a_full_cache_is_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The encoder keeps string attributes encoded (`otlp._fields`); 1, 1.0 and True are one dict key, yet each
    is encoded as its own type, before and after a string of the same key is kept, and when the cache fills up."""
    monkeypatch.setattr(otlp, "_FIELD_CACHE_MAX", 3)
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    values: list[Any] = ["1", 1, 1.0, True, ("1",), (1,), (True,), "1", f"s{random.random()}", "1", 1.0]
    for value in values:
        with tracer.start_as_current_span("s", attributes={"x": value, "y": "same"}):
            pass
    spans = memory.get_finished_spans()
    for _ in range(2):
        ours = ExportTraceServiceRequest.FromString(encode_spans(spans))
        assert ours == sdk_encode_spans(spans)
        kinds = [span.attributes[0].value.WhichOneof("value") for span in ours.resource_spans[0].scope_spans[0].spans]
        assert kinds[:7] == ["string_value", "int_value", "double_value", "bool_value", *["array_value"] * 3]
        assert len(otlp._fields[b"\x4a"]) <= 3


def test_headers_are_read_as_the_otlp_variable_writes_them() -> None:
    assert parse_headers("Authorization=Basic%20YWJj, x-team = search ,bad") == {
        "Authorization": "Basic YWJj",
        "x-team": "search",
    }
    assert parse_headers(None) == {}


def test_a_collector_that_is_down_fails_the_batch_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    batcher = OtlpSpanBatcher(f"http://127.0.0.1:{free_port()}/v1/traces", timeout_s=2)
    for span in _spans():
        batcher.on_end(span)
    assert batcher.force_flush() is False
    assert "did not take them (ConnectionRefusedError" in caplog.text
    batcher.shutdown()


def test_the_batcher_posts_what_the_encoder_writes_when_a_batch_is_full_and_drops_beyond_its_queue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spans = _spans()
    with OtlpCollector() as collector:
        batcher = OtlpSpanBatcher(collector.url + "/v1/traces", delay_s=600)  # only a full batch is posted
        batcher.BATCH_SPANS = len(spans)
        for span in spans:
            batcher.on_end(span)
        got = collector.wait_for(lambda received: received if len(received) == len(spans) else None, 20)
        assert sorted(s.name for s in got) == sorted(s.name for s in spans)
        assert collector.posts == 1

        batcher.QUEUE_SPANS = 3  # a collector that cannot keep up: the spans beyond the queue are dropped
        batcher.BATCH_SPANS = 100
        for span in spans:
            batcher.on_end(span)
        assert batcher.force_flush() is True
        assert len(collector.spans) == len(spans) + 3
        assert f"dropped {len(spans) - 3} spans: more than 3 were waiting" in caplog.text
        assert collector.posts == 2 and len(collector.connections) == 1  # both posts on one kept-alive connection
        batcher.shutdown()


def test_an_endpoint_that_is_not_a_url_is_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        OtlpSpanBatcher("127.0.0.1:4318/v1/traces")


# -- the lean tracer provider (comps.core.spans) -------------------------------------------------------------

RESOURCE = Resource.create({"service.name": "gateway"})


def _record(provider: trace.TracerProvider) -> None:
    """Every API call the services make: remote parent, nesting, kinds, attributes of each type set at start and
    later (a list changed after it was set), events, links, statuses, an exception, a renamed span, two scopes."""
    chatqna = provider.get_tracer("chatqna", "1.2", schema_url="https://opentelemetry.io/schemas/1.26.0")
    other = provider.get_tracer("other")
    values = ["a", "b"]
    with chatqna.start_as_current_span(
        "POST /v1/chatqna", context=extract(REMOTE), kind=trace.SpanKind.SERVER, attributes={"s": "héllo ✓", "i": -5}
    ) as server:
        server.set_attributes({"f": 0.25, "b": True, "big": 2**62, "strings": values, "bytes": b"\x00\x01"})
        server.set_attributes({"empty": "", "ints": [1, -2], "bools": [True, False]})
        values.append("changed later")
        server.add_event("First Token Stream Event")
        server.add_event("with attributes", {"k": 1, "text": "x" * 200})
        with other.start_as_current_span("node llm", links=[trace.Link(server.get_span_context(), {"x": "y"})]) as llm:
            llm.set_status(trace.Status(trace.StatusCode.ERROR, "llm did not answer within 5s"))
            llm.set_attribute("retrieval.documents.0.document.metadata", '{"source": "a.txt"}')
        with chatqna.start_as_current_span("node retriever", kind=trace.SpanKind.CLIENT) as ok:
            ok.set_status(trace.Status(trace.StatusCode.OK))
            ok.set_status(trace.Status(trace.StatusCode.ERROR, "an OK status is final"))
        with pytest.raises(ValueError), chatqna.start_as_current_span("node reranker"):
            raise ValueError("the reranker broke")
        server.update_name("POST /v1/chatqna (renamed)")
        server.set_attribute("http.status_code", 200)
    server.set_attribute("after the end", "ignored")
    server.update_name("ignored")
    with chatqna.start_as_current_span("root"):
        pass


def _exported(make: Any, sampler: Sampler) -> tuple[ExportTraceServiceRequest, list[Any]]:
    """What one provider exports for `_record`, ids drawn from the same seed, times (and the exception's
    stack trace, which names this file's lines) left out."""
    memory = InMemorySpanExporter()
    random.seed(7)
    make(memory, sampler)
    spans = memory.get_finished_spans()
    request = ExportTraceServiceRequest.FromString(encode_spans(spans))
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                span.start_time_unix_nano = span.end_time_unix_nano = 0
                for event in span.events:
                    event.time_unix_nano = 0
                    for kv in event.attributes:
                        if kv.key == "exception.stacktrace":
                            assert "the reranker broke" in kv.value.string_value
                            kv.value.string_value = ""
    return request, list(spans)


def _sdk(memory: InMemorySpanExporter, sampler: Sampler) -> None:
    provider = TracerProvider(resource=RESOURCE, sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    _record(provider)


def _lean(memory: InMemorySpanExporter, sampler: Sampler) -> None:
    _record(LeanTracerProvider(RESOURCE, sampler, SimpleSpanProcessor(memory)))


@pytest.mark.parametrize(
    "sampler",
    [ParentBased(TraceIdRatioBased(1.0)), ParentBased(ALWAYS_OFF)],
    ids=["every trace", "only a caller's sampled trace"],
)
def test_the_lean_provider_exports_what_the_sdk_does(sampler: Sampler) -> None:
    sdk, _ = _exported(_sdk, sampler)
    lean, lean_spans = _exported(_lean, sampler)
    assert lean == sdk
    names = sorted(s.name for s in lean_spans)
    expected = ["POST /v1/chatqna (renamed)", "node llm", "node reranker", "node retriever"]
    assert names == (
        sorted([*expected, "root"]) if sampler.get_description().startswith("ParentBased{root:Trace") else expected
    )
    server = next(s for s in lean_spans if s.name.startswith("POST"))
    assert server.attributes["strings"] == ("a", "b")  # a list is copied when set
    assert server.parent is not None and server.parent.is_remote


def _traceparent(provider: trace.TracerProvider, parent: dict[str, str]) -> tuple[bool, str]:
    with provider.get_tracer("t").start_as_current_span("s", context=extract(parent)) as span:
        headers: dict[str, str] = {}
        inject(headers)
        return span.is_recording(), headers["traceparent"]


def test_an_unsampled_trace_records_nothing_yet_passes_its_context_on() -> None:
    memory = InMemorySpanExporter()
    provider = LeanTracerProvider(RESOURCE, ParentBased(TraceIdRatioBased(0.0)), SimpleSpanProcessor(memory))
    recording, header = _traceparent(provider, {})
    assert not recording and header.endswith("-00") and len(header) == 55
    recording, header = _traceparent(provider, REMOTE)  # the caller sampled it: recorded here too
    assert recording and header.startswith("00-0af7651916cd43dd8448eb211c80319c-") and header.endswith("-01")
    assert [s.name for s in memory.get_finished_spans()] == ["s"]


def test_half_the_traces_are_recorded_at_ratio_one_half() -> None:
    memory = InMemorySpanExporter()
    provider = LeanTracerProvider(RESOURCE, ParentBased(TraceIdRatioBased(0.5)), SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    for _ in range(2000):
        with tracer.start_as_current_span("root"), tracer.start_as_current_span("child"):
            pass
    spans: Sequence[Any] = memory.get_finished_spans()
    roots = sum(s.name == "root" for s in spans)
    assert 800 < roots < 1200  # binomial(2000, 0.5): 10 standard deviations either side
    assert sum(s.name == "child" for s in spans) == roots  # a child follows its parent's decision
