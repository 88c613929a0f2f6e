"""Stop work as soon as the client that asked for it goes away.

Starlette does not cancel a handler when its client disconnects; `until_disconnect` does: it awaits
the work and, concurrently, the ASGI ``http.disconnect`` message, and cancels the work (closing any
upstream call in flight, e.g. an LLM generation) when the client leaves first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready; the work was cancelled."""


async def until_disconnect(request: Request, aw: Awaitable[T]) -> T:
    """Await ``aw`` in this task unless the client disconnects first; then cancel it and raise `ClientGone`.

    Read the request body before calling this: the watcher consumes the ASGI receive channel.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await aw
    except asyncio.CancelledError:
        if gone:
            task.uncancel()
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()
