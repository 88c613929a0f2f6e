"""Server-sent events as OpenAI streams them: ``data: <json>\\n\\n`` events, ending with ``data: [DONE]``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from comps.core.errors import ServiceError

DONE = b"data: [DONE]\n\n"


def event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def error_event(exc: ServiceError) -> bytes:
    """The envelope of a failure after the stream started (then `DONE` follows)."""
    return event(orjson.dumps(exc.envelope()))


async def event_blocks(content: aiohttp.StreamReader) -> AsyncIterator[list[bytes]]:
    """The complete events of an SSE stream, as they arrive: each read yields the events it completed
    (several when they came together, so they are passed on together, never held back). Each block
    is an event's lines without its blank line; CRLF line ends become LF."""
    pending = b""
    while chunk := await content.readany():
        data = pending + chunk
        if data.find(b"\r") != -1:  # (``in`` tries its operand as a byte's value first: an exception each time)
            keep_cr = data.endswith(b"\r")  # its LF may come with the next read
            data = data.replace(b"\r\n", b"\n")
            if keep_cr:
                data = data[:-1]
        else:
            keep_cr = False
        *blocks, pending = data.split(b"\n\n")
        if keep_cr:
            pending += b"\r"
        if blocks:
            yield blocks
    if pending.strip():
        yield [pending.rstrip(b"\r\n")]


def data_of(block: bytes) -> bytes | None:
    """An event's data (its ``data:`` lines joined by newlines); None for an event without data
    (a comment or keep-alive)."""
    if block.startswith(b"data: ") and block.find(b"\n") == -1:  # what OpenAI-style servers send
        return block[6:]
    lines = [
        line[6:] if line.startswith(b"data: ") else line[5:] for line in block.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


def delta_content(chunk: object) -> str | None:
    """A chat-completion chunk's delta content (None: none, or not a chunk)."""
    if not isinstance(chunk, dict):
        return None
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    delta = choices[0].get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else None


class StreamedAnswer:
    """What a streamed answer's chunks said as they passed: its content, model, usage and finish reason, and
    whether a chunk was an error (or not a chunk). The one reader of chunks for the answer cache's capture and
    a conversation's turn."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.failed = False

    def observe(self, chunk: object) -> None:
        if not isinstance(chunk, dict):
            self.failed = True
            return
        if "error" in chunk:
            self.failed = True
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if (content := delta_content(chunk)) is not None:
            self.parts.append(content)
        choices = chunk.get("choices")
        if choices and isinstance(choices, list) and isinstance(choices[0], dict):
            if isinstance(finish := choices[0].get("finish_reason"), str):
                self.finish_reason = finish
