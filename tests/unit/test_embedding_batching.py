"""The embedding batcher: gathering, limits, errors, cancellation, overload, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from comps.core.errors import BadRequest, NotReady, Overloaded
from comps.embedding.batching import Batcher

pytestmark = pytest.mark.unit


class Recorder:
    """A model stand-in: records each batch's payloads and runs in the executor's thread; with ``hold`` each call
    waits for ``gate`` (so a test knows what is in the model: `in_model`)."""

    def __init__(self, hold: bool = False, fail: Exception | None = None) -> None:
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()
        self.hold = hold
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.fail = fail

    def __call__(self, payloads: list[str]) -> list[str | Exception]:
        self.calls.append(list(payloads))
        self.threads.add(threading.current_thread().name)
        self.entered.release()
        if self.hold:
            assert self.gate.wait(30), "the test never opened the gate"
        if self.fail:
            raise self.fail
        return [BadRequest(f"bad {p}") if p.startswith("bad") else p.upper() for p in payloads]


async def in_model(rec: Recorder) -> None:
    """Wait until the next model call has begun."""
    assert await asyncio.to_thread(rec.entered.acquire, True, 30), "no model call began"


async def queued() -> None:
    """Let the jobs just scheduled reach the batcher's queue (submit queues at its first step)."""
    await asyncio.sleep(0)


def run_with(recorder: Recorder, body, **kw):
    async def main():
        executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        batcher = Batcher(
            recorder,
            executor,
            max_batch_size=kw.get("max_batch_size", 64),
            max_wait_s=kw.get("max_wait_s", 0.05),
            max_queue=kw.get("max_queue", 1000),
        )
        batcher.start()
        try:
            return await body(batcher)
        finally:
            await batcher.close()
            executor.shutdown()

    return asyncio.run(main())


def test_concurrent_jobs_go_into_one_model_call_in_the_model_thread() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> list[str]:
        return await asyncio.gather(*(b.submit(f"t{i}", 1) for i in range(10)))

    assert run_with(rec, body) == [f"T{i}" for i in range(10)]
    assert rec.calls == [[f"t{i}" for i in range(10)]]
    assert len(rec.threads) == 1 and next(iter(rec.threads)).startswith("model")


def test_batches_hold_at_most_max_batch_size_items_and_a_big_job_runs_alone() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> None:
        await asyncio.gather(*(b.submit(f"a{i}", 1) for i in range(10)), b.submit("big", 9))

    run_with(rec, body, max_batch_size=4)
    assert [len(c) for c in rec.calls] == [4, 4, 2, 1]
    assert rec.calls[-1] == ["big"]


def test_jobs_arriving_while_the_model_runs_form_the_next_batch() -> None:
    rec = Recorder(hold=True)

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(b.submit("first", 1))
        await in_model(rec)
        later = [asyncio.ensure_future(b.submit(f"n{i}", 1)) for i in range(5)]
        await queued()
        rec.gate.set()
        await asyncio.gather(first, *later)

    run_with(rec, body, max_wait_s=0.0)
    assert rec.calls == [["first"], [f"n{i}" for i in range(5)]]


def test_a_lone_job_waits_at_most_max_wait() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> float:
        started = time.perf_counter()
        await b.submit("x", 1)
        return time.perf_counter() - started

    assert 0.09 <= run_with(rec, body, max_wait_s=0.1) < 10  # the upper bound only catches a hang


def test_one_jobs_error_does_not_fail_the_others() -> None:
    rec = Recorder()

    async def body(b: Batcher) -> list:
        return await asyncio.gather(b.submit("ok", 1), b.submit("bad one", 1), return_exceptions=True)

    ok, bad = run_with(rec, body)
    assert ok == "OK"
    assert isinstance(bad, BadRequest) and bad.message == "bad bad one"
    assert len(rec.calls) == 1


def test_a_failing_model_call_fails_every_job_of_the_batch_and_the_batcher_goes_on() -> None:
    rec = Recorder(fail=RuntimeError("model broke"))

    async def body(b: Batcher) -> list:
        results = await asyncio.gather(b.submit("a", 1), b.submit("b", 1), return_exceptions=True)
        rec.fail = None
        return [*results, await b.submit("c", 1)]

    a, b_, c = run_with(rec, body)
    assert [str(a), str(b_)] == ["model broke", "model broke"]
    assert c == "C"


def test_a_cancelled_job_is_left_out_of_the_model_call() -> None:
    rec = Recorder(hold=True)

    async def body(b: Batcher) -> None:
        busy = asyncio.ensure_future(b.submit("busy", 1))
        await in_model(rec)
        gone = asyncio.ensure_future(b.submit("gone", 1))
        kept = asyncio.ensure_future(b.submit("kept", 1))
        await queued()
        gone.cancel()
        rec.gate.set()
        await asyncio.gather(busy, kept)

    run_with(rec, body, max_wait_s=0.0)
    assert rec.calls == [["busy"], ["kept"]]


def test_a_full_queue_answers_overloaded() -> None:
    rec = Recorder(hold=True)

    async def body(b: Batcher) -> Exception:
        running = asyncio.ensure_future(b.submit("running", 1))
        await in_model(rec)
        waiting = [asyncio.ensure_future(b.submit(f"w{i}", 1)) for i in range(3)]
        await queued()
        with pytest.raises(Overloaded) as exc:
            await b.submit("one too many", 1)
        rec.gate.set()
        await asyncio.gather(running, *waiting)
        return exc.value

    err = run_with(rec, body, max_queue=3, max_wait_s=0.0)
    assert err.status_code == 429 and err.message == "3 inputs are already waiting for the model; retry shortly"


def test_close_fails_waiting_jobs_with_not_ready() -> None:
    async def main() -> list:
        executor = ThreadPoolExecutor(1)
        rec = Recorder(hold=True)
        b = Batcher(rec, executor, max_batch_size=1, max_wait_s=0.0, max_queue=10)
        b.start()
        jobs = [asyncio.ensure_future(b.submit(f"j{i}", 1)) for i in range(3)]
        await in_model(rec)  # j0 is in the model, j1 and j2 wait
        await b.close()
        rec.gate.set()
        executor.shutdown()
        results = await asyncio.gather(*jobs, return_exceptions=True)
        with pytest.raises(NotReady):
            await b.submit("late", 1)
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, NotReady) and r.message == "the service is shutting down" for r in results)
