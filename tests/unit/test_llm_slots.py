"""A generation slot is freed however a streamed answer ends, even when its body never starts (defect 1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request

from comps.llm.backends import Delta, Event, Finished, Started
from comps.llm.protocol import ChatCompletionRequest
from comps.llm.service import ChatService

pytestmark = pytest.mark.unit


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.closed = 0

    async def prepare(self, request: ChatCompletionRequest) -> None:
        return None

    async def generate(self, prepared: Any) -> AsyncIterator[Event]:
        try:
            yield Started("fake")
            yield Delta("hi", 1)
            yield Finished("stop", 1, 1)
        finally:
            self.closed += 1


def _scope(spec_version: str) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [],
            "asgi": {"version": "3.0", "spec_version": spec_version}}  # fmt: skip


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def _gone() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def _answered(service: ChatService, backend: FakeBackend, spec_version: str) -> Any:
    req = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "stream": True})
    response = await service.chat(req, backend, Request(_scope(spec_version), _never))  # type: ignore[arg-type]
    assert service.queue.active == 1  # the handler returned: the slot is held by the response now
    return response


@pytest.mark.parametrize("spec_version", ["2.4", "2.3"])
def test_slot_is_freed_when_the_client_leaves_before_the_stream_starts(spec_version: str) -> None:
    """The race: the client's disconnect is seen after the handler returned its response, before the
    body generator first runs. With ASGI spec 2.4 the first send fails (OSError); before 2.4 Starlette's
    disconnect listener cancels the response while it sends its headers. Either way the body generator
    never starts, so its ``finally`` cannot be what frees the slot."""

    async def run() -> tuple[int, int, int]:
        service = ChatService(parallel=1, max_queue=0)
        backend = FakeBackend()
        response = await _answered(service, backend, spec_version)

        async def send(message: dict[str, Any]) -> None:
            if spec_version == "2.4":
                raise OSError("connection reset by peer")
            await asyncio.Event().wait()  # the disconnect listener wins

        receive = _never if spec_version == "2.4" else _gone
        try:
            await response(_scope(spec_version), receive, send)
        except ClientDisconnect:
            pass
        return service.queue.active, service.queue.waiting, backend.closed

    assert asyncio.run(run()) == (0, 0, 1)


def test_slot_is_freed_once_after_a_complete_stream() -> None:
    async def run() -> tuple[int, int, list[bytes]]:
        service = ChatService(parallel=1, max_queue=0)
        backend = FakeBackend()
        response = await _answered(service, backend, "2.4")
        sent: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message.get("body", b""))

        await response(_scope("2.4"), _never, send)
        return service.queue.active, backend.closed, sent

    active, closed, sent = asyncio.run(run())
    assert (active, closed) == (0, 1)
    assert b"".join(sent).endswith(b"data: [DONE]\n\n")


def test_many_early_disconnects_never_exhaust_the_slots() -> None:
    """After more early disconnects than slots, a new request still gets a slot (not a 429)."""

    async def run() -> int:
        service = ChatService(parallel=2, max_queue=0)
        backend = FakeBackend()
        for _ in range(5):
            response = await _answered(service, backend, "2.4")

            async def send(message: dict[str, Any]) -> None:
                raise OSError("gone")

            with pytest.raises(ClientDisconnect):
                await response(_scope("2.4"), _never, send)
        return service.queue.active

    assert asyncio.run(run()) == 0
