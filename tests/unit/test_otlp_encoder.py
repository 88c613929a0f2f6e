"""The kit's OTLP encoder writes what the OpenTelemetry SDK's own encoder writes, field for field, and its lean
tracer provider (`comps.core.spans`) records what the SDK's provider records for the same calls."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.propagate import extract, inject
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags, TraceState

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


def test_values_equal_as_keys_keep_their_own_types() -> None:
    """1, 1.0 and True are one dict key, yet each is encoded as its own type."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    values: list[Any] = ["1", 1, 1.0, True, ("1",), (1,), (True,)]
    for value in values:
        with tracer.start_as_current_span("s", attributes={"x": value, "y": "same"}):
            pass
    spans = memory.get_finished_spans()
    ours = ExportTraceServiceRequest.FromString(encode_spans(spans))
    assert ours == sdk_encode_spans(spans)
    kinds = [span.attributes[0].value.WhichOneof("value") for span in ours.resource_spans[0].scope_spans[0].spans]
    assert kinds == ["string_value", "int_value", "double_value", "bool_value", *["array_value"] * 3]


# Attribute values as the SDK's encoder takes them (int64 ints; NaN left out: a message holding one is unequal
# to itself), nested in arrays and key-value lists.
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=300)
    | st.binary(max_size=40)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.tuples(inner) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_ATTRIBUTES = st.dictionaries(st.text(min_size=1, max_size=20), _VALUES, max_size=8)
_IDS = st.integers(1, 2**64 - 1)


@st.composite
def _sdk_spans(draw: st.DrawFn) -> list[ReadableSpan]:
    """Spans of one resource and scope (the SDK groups by equal ones, the kit by the same ones: a process has
    one of each)."""
    resource = Resource(draw(_ATTRIBUTES))
    scope = InstrumentationScope(draw(st.text()), draw(st.none() | st.text()), None, draw(_ATTRIBUTES))
    return [_sdk_span(draw, resource, scope) for _ in range(draw(st.integers(1, 3)))]


def _sdk_span(draw: st.DrawFn, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    def context(remote: bool) -> SpanContext:
        state = TraceState([(f"k{i}", draw(st.text("abc123", min_size=1))) for i in range(draw(st.integers(0, 2)))])
        return SpanContext(draw(st.integers(1, 2**128 - 1)), draw(_IDS), remote, TraceFlags(1), state)

    status = draw(st.sampled_from([Status(code, "") for code in StatusCode] + [Status(StatusCode.ERROR, "broke ✗")]))
    return ReadableSpan(
        name=draw(st.text(max_size=200)),
        context=context(False),
        parent=draw(st.none() | st.booleans().map(context)),
        resource=resource,
        attributes=draw(_ATTRIBUTES),
        events=[Event(draw(st.text()), draw(_ATTRIBUTES), draw(_IDS)) for _ in range(draw(st.integers(0, 2)))],
        links=[Link(context(draw(st.booleans())), draw(_ATTRIBUTES)) for _ in range(draw(st.integers(0, 2)))],
        kind=draw(st.sampled_from(list(trace.SpanKind))),
        status=status,
        start_time=draw(st.none() | _IDS),
        end_time=draw(_IDS),
        instrumentation_scope=scope,
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_sdk_spans())
def test_any_span_encodes_as_the_sdks_does(spans: list[ReadableSpan]) -> None:
    assert ExportTraceServiceRequest.FromString(encode_spans(spans)) == sdk_encode_spans(spans)


def test_what_the_sdk_cannot_encode_is_encoded_nonetheless() -> None:
    """The SDK's encoder fails on an int beyond int64 and on a str with a lone surrogate (a span that no collector
    then gets); these encode it as a decimal string and with a "?" in its place, and nesting that never ends
    is cut."""
    endless: list[Any] = []
    endless.append(endless)
    span = ReadableSpan(
        "s\udc80",
        context=SpanContext(1, 2, False, TraceFlags(1)),
        attributes={"big": 2**64, "small": -(2**63) - 1, "text": "a\ud800b", "endless": endless},
    )
    (ours,) = ExportTraceServiceRequest.FromString(encode_spans([span])).resource_spans[0].scope_spans[0].spans
    values = {kv.key: kv.value for kv in ours.attributes}
    assert ours.name == "s?"
    assert values["big"].string_value == str(2**64) and values["small"].string_value == str(-(2**63) - 1)
    assert values["text"].string_value == "a?b"
    depth = 0
    value = values["endless"]
    while value.HasField("array_value"):
        (value,) = value.array_value.values
        depth += 1
    assert depth == 32  # then an empty value


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
        _decorated(chatqna)
        server.update_name("POST /v1/chatqna (renamed)")
        server.set_attribute("http.status_code", 200)
    server.set_attribute("after the end", "ignored")
    server.update_name("ignored")
    with chatqna.start_as_current_span("root"):
        pass


def _decorated(tracer: trace.Tracer) -> None:
    """Functions that start_as_current_span decorates: a span per call, current while it runs (an async one's
    while it awaits), its exception recorded."""

    @tracer.start_as_current_span("decorated")
    def decorated(n: int) -> int:
        trace.get_current_span().set_attribute("n", n)
        return n

    @tracer.start_as_current_span("decorated async", kind=trace.SpanKind.CONSUMER)
    async def decorated_async() -> str:
        await asyncio.sleep(0)
        trace.get_current_span().set_attribute("after", "await")
        raise KeyError("async broke")

    assert decorated(1) + decorated(2) == 3
    with pytest.raises(KeyError):
        asyncio.run(decorated_async())


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
                            assert "broke" in kv.value.string_value.splitlines()[-1]
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
    expected = [
        "POST /v1/chatqna (renamed)",
        "decorated",
        "decorated",
        "decorated async",
        "node llm",
        "node reranker",
        "node retriever",
    ]
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
