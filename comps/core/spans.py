"""A lean span recorder behind the OpenTelemetry API, for services that record every request.

The SDK's ``Span`` checks and copies each attribute under a lock, copies the whole span again when it ends and
builds several helper objects per span: in the gateway (5 spans and ~75 attributes a request) that was most of
what tracing cost, 0.2-0.5 ms of CPU per request. `LeanTracerProvider` implements the same API (so code and any
instrumentation library written against ``opentelemetry.trace`` work unchanged) with spans that keep their
attributes in a plain dict until they end. The SDK's sampler decides (``ParentBased(TraceIdRatioBased)``; a span
under a local parent follows it without asking) and its `Resource` names the service; an ended span goes to the
span processor (`comps.core.otlp.OtlpSpanBatcher`, which reads the fields an SDK ``ReadableSpan`` has).

Attribute values are trusted to be what the API allows (str, bool, int, float, bytes or a sequence of one of
them); ``None`` is dropped, a list is kept as a tuple, so that changing it afterwards changes nothing.
"""

from __future__ import annotations

import functools
import inspect
import random
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, SpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import Attributes, AttributeValue

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_UNSET_STATUS = Status(StatusCode.UNSET)  # a span's until it is set


def _clean(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class LeanSpan(trace.Span):
    """A recording span; what the exporter reads are plain attributes (``ReadableSpan``'s names)."""

    __slots__ = (
        "_processor",
        "attributes",
        "context",
        "end_time",
        "events",
        "instrumentation_scope",
        "kind",
        "links",
        "name",
        "parent",
        "resource",
        "start_time",
        "status",
    )
    dropped_attributes = dropped_events = dropped_links = 0

    def __init__(
        self,
        processor: SpanProcessor,
        name: str,
        ctx: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Attributes,
        links: Sequence[Link],
        start_time: int | None,
        resource: Resource,
        scope: InstrumentationScope,
    ) -> None:
        self._processor = processor
        self.context = ctx
        self.name = name
        self.parent = parent
        self.kind = kind
        self.attributes: dict[str, Any] = (
            {k: _clean(v) for k, v in attributes.items() if v is not None} if attributes else {}
        )
        self.events: list[Event] = []
        self.links = tuple(links)
        self.status = _UNSET_STATUS
        self.resource = resource
        self.instrumentation_scope = scope
        self.start_time = start_time or time.time_ns()
        self.end_time: int | None = None

    # -- what the exporter and the span processor read --------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self.context

    # -- the API ------------------------------------------------------------------------------------------------

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self.end_time is None:
            attrs = self.attributes
            for key, value in attributes.items():  # the hot path: ~75 values a request in the gateway
                if value.__class__ is list:
                    attrs[key] = tuple(value)
                elif value is not None:
                    attrs[key] = value

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self.end_time is None and value is not None:
            self.attributes[key] = _clean(value)

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        if self.end_time is None:
            self.events.append(Event(name, dict(attributes) if attributes else None, timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self.end_time is None and context.is_valid:
            self.links = (*self.links, Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time is not None or self.status.status_code is StatusCode.OK:
            return  # OK is final (the API's rule)
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self.status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        attrs: dict[str, Any] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        attrs.update(attributes or {})
        self.add_event("exception", attrs, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is None:
            self.end_time = end_time or time.time_ns()
            self._processor.on_end(self)  # type: ignore[arg-type]  # it reads ReadableSpan's fields, which are here


class LeanTracer(trace.Tracer):
    def __init__(self, provider: LeanTracerProvider, scope: InstrumentationScope) -> None:
        self._provider = provider
        self._scope = scope

    def start_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        provider = self._provider
        parent = trace.get_current_span(context).get_span_context()
        trace_id = parent.trace_id if parent.is_valid else random.getrandbits(128) or 1
        span_id = random.getrandbits(64) or 1
        attrs = dict(attributes) if attributes else {}
        trace_state: TraceState | None
        if parent.is_valid and not parent.is_remote:  # a local child follows its parent (`ParentBased`'s rule)
            recorded, trace_state = parent.trace_flags.sampled, parent.trace_state
        else:
            sampling = provider.sampler.should_sample(context, trace_id, name, kind, attributes, links)
            recorded, trace_state = sampling.decision is Decision.RECORD_AND_SAMPLE, sampling.trace_state
            attrs.update(sampling.attributes or {})
        ctx = SpanContext(trace_id, span_id, False, _SAMPLED if recorded else _NOT_SAMPLED, trace_state)
        if not recorded:
            return trace.NonRecordingSpan(ctx)
        return LeanSpan(
            provider.processor,
            name,
            ctx,
            parent if parent.is_valid else None,
            kind,
            attrs,
            links or (),
            start_time,
            provider.resource,
            self._scope,
        )

    def start_as_current_span(  # type: ignore[override]  # the API's returns its own context manager class
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> CurrentSpan:
        return CurrentSpan(
            self,
            (name, context, kind, attributes, links, start_time),
            end_on_exit,
            record_exception,
            set_status_on_exception,
        )


class CurrentSpan:
    """What ``start_as_current_span`` returns: the span started and made current on entry; on exit an
    ``Exception`` recorded and made the span's status (unless told not to), the context restored and the span
    ended: the API's ``use_span``, as a class rather than two generators under contextlib (half what a span costs
    the gateway). Like the API's, it decorates a function too (an async one for its whole run)."""

    __slots__ = ("_args", "_end_on_exit", "_record_exception", "_set_status", "_span", "_token", "_tracer")

    def __init__(
        self,
        tracer: LeanTracer,
        args: tuple[Any, ...],
        end_on_exit: bool,
        record_exception: bool,
        set_status_on_exception: bool,
    ) -> None:
        self._tracer = tracer
        self._args = args
        self._end_on_exit = end_on_exit
        self._record_exception = record_exception
        self._set_status = set_status_on_exception

    def __enter__(self) -> trace.Span:
        span = self._span = self._tracer.start_span(*self._args)
        self._token = context_api.attach(trace.set_span_in_context(span))
        return span

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        span = self._span
        try:
            context_api.detach(self._token)
            if isinstance(exc, Exception) and span.is_recording():  # not a GeneratorExit or a cancellation
                if self._record_exception:
                    span.record_exception(exc)
                if self._set_status:
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            if self._end_on_exit:
                span.end()

    def _again(self) -> CurrentSpan:
        return CurrentSpan(self._tracer, self._args, self._end_on_exit, self._record_exception, self._set_status)

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self._again():
                    return await func(*args, **kwargs)

            return run_async

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self._again():
                return func(*args, **kwargs)

        return run


class LeanTracerProvider(trace.TracerProvider):
    """Spans of ``resource``, sampled by ``sampler``, handed to ``processor`` when they end."""

    def __init__(self, resource: Resource, sampler: Sampler, processor: SpanProcessor) -> None:
        self.resource = resource
        self.sampler = sampler
        self.processor = processor

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        scope = InstrumentationScope(instrumenting_module_name, instrumenting_library_version, schema_url, attributes)
        return LeanTracer(self, scope)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.processor.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.processor.shutdown()
