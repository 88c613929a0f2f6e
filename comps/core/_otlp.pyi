# The OTLP span encoder in C (comps/core/_otlp.c).
from collections.abc import Mapping
from typing import Any

def span(span: Any, /) -> bytes:
    """The ``ScopeSpans.spans`` field (tag, length, ``Span``) of a finished span (an SDK ``ReadableSpan`` or a
    ``LeanSpan``)."""

def attributes(tag: int, attributes: Mapping[str, Any] | None, /) -> bytes:
    """Repeated ``KeyValue`` fields under ``tag`` (one byte)."""
