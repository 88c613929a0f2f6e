"""Reading a streamed answer: the gateway's server-sent events as `Meta`, `Token`, `Failure` and `Done`.

The first chunk carries the answer's ``sources`` (and ``conversation_id`` / ``conversation_saved`` when the
conversation is kept); then come ``chat.completion.chunk`` deltas; a failure mid-answer is an event with an
``error`` envelope; ``data: [DONE]`` ends it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Meta:
    sources: list[dict[str, Any]] = field(default_factory=list)
    conversation_id: str | None = None
    saved: bool | None = None
    model: str | None = None


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Failure:
    message: str
    code: str | None = None


@dataclass(frozen=True)
class Done:
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


Event = Meta | Token | Failure | Done


def events(lines: Iterable[str]) -> Iterator[Event]:
    """The events of an answer from its SSE lines; always ends with one `Done` (or after a `Failure`)."""
    first = True
    finish: str | None = None
    usage: dict[str, Any] | None = None
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments, other fields
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        if isinstance(chunk.get("error"), dict):
            yield Failure(str(chunk["error"].get("message") or "the answer failed"), chunk["error"].get("code"))
            return
        if first:
            first = False
            yield Meta(
                sources=list(chunk.get("sources") or []),
                conversation_id=chunk.get("conversation_id"),
                saved=chunk.get("conversation_saved"),
                model=chunk.get("model"),
            )
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                yield Token(text)
            finish = choice.get("finish_reason") or finish
        usage = chunk.get("usage") or usage
    yield Done(finish, usage)
