"""The LLM service's admission queue: a bounded number of holders, FIFO waiters, 429 when full."""

from __future__ import annotations

import asyncio

import pytest

from comps.core.errors import Overloaded
from comps.llm.service import AdmissionQueue

pytestmark = pytest.mark.unit


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_waiters_are_served_in_arrival_order() -> None:
    async def run() -> list[int]:
        q = AdmissionQueue(parallel=1, max_queue=5)
        first = await q.acquire()
        order: list[int] = []

        async def waiter(i: int) -> None:
            granted = await q.acquire()
            order.append(i)
            q.release(granted)

        tasks = [asyncio.create_task(waiter(i)) for i in range(4)]
        await settle()
        assert (q.active, q.waiting) == (1, 4)
        q.release(first)
        await asyncio.gather(*tasks)
        assert (q.active, q.waiting) == (0, 0)
        return order

    assert asyncio.run(run()) == [0, 1, 2, 3]


def test_full_queue_is_refused_with_retry_after() -> None:
    async def run() -> Overloaded:
        q = AdmissionQueue(parallel=2, max_queue=1)
        await q.acquire()
        await q.acquire()
        waiting = asyncio.create_task(q.acquire())
        await settle()
        with pytest.raises(Overloaded) as info:
            await q.acquire()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert q.waiting == 0
        return info.value

    exc = asyncio.run(run())
    assert exc.status_code == 429
    assert int(exc.headers["Retry-After"]) >= 1
    assert "queue is full" in exc.message


def test_a_cancelled_waiter_does_not_keep_a_slot() -> None:
    async def run() -> tuple[int, int]:
        q = AdmissionQueue(parallel=1, max_queue=2)
        first = await q.acquire()
        gone = asyncio.create_task(q.acquire())
        stays = asyncio.create_task(q.acquire())
        await settle()
        gone.cancel()
        await settle()
        q.release(first)
        granted = await asyncio.wait_for(stays, 1)
        q.release(granted)
        return q.active, q.waiting

    assert asyncio.run(run()) == (0, 0)


def test_no_queue_means_refuse_at_once_when_busy() -> None:
    async def run() -> None:
        q = AdmissionQueue(parallel=1, max_queue=0)
        await q.acquire()
        with pytest.raises(Overloaded):
            await q.acquire()

    asyncio.run(run())
