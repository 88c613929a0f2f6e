"""Dynamic batching: requests that arrive together are embedded in one model call.

Jobs wait in a queue; one asyncio task takes what is queued (up to ``max_batch_size`` items; a job
bigger than that runs alone), waits at most ``max_wait_s`` for more when the batch is not full, and
runs the batch in the given executor (one dedicated thread), off the event loop. While the model
runs, new jobs queue up and form the next batch. A full queue answers 429; a caller that goes away
is dropped from its batch before the model call.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Histogram

from comps.core.errors import NotReady, Overloaded

P = TypeVar("P")
R = TypeVar("R")

BATCH_SIZE = Histogram(
    "chatqna_embedding_batch_size",
    "Inputs per model call",
    buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256, 512),
)
QUEUE_WAIT = Histogram(
    "chatqna_embedding_queue_wait_seconds",
    "Time from a request entering the queue to the start of its model call",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


@dataclass
class _Job(Generic[P, R]):
    payload: P
    size: int
    future: asyncio.Future[R]
    enqueued: float


class Batcher(Generic[P, R]):
    """Runs ``run_batch(payloads) -> results`` (one result or exception per payload) on gathered jobs."""

    def __init__(
        self,
        run_batch: Callable[[list[P]], list[R | Exception]],
        executor: Executor,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
    ) -> None:
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._jobs: deque[_Job[P, R]] = deque()
        self._queued = 0  # items in self._jobs
        self._running: list[_Job[P, R]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="embedding-batcher")

    def check(self) -> None:
        """Raise `NotReady` unless the batching task is alive."""
        if self._task is None or self._task.done():
            raise NotReady("the batching task is not running")

    async def submit(self, payload: P, size: int) -> R:
        """Queue ``payload`` (``size`` items) and wait for its result."""
        self.check()
        if self._queued and self._queued + size > self.max_queue:
            raise Overloaded(f"{self._queued} inputs are already waiting for the model; retry shortly")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(payload, size, future, time.perf_counter()))
        self._queued += size
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in [*self._running, *self._jobs]:
            if not job.future.done():
                job.future.set_exception(NotReady("the service is shutting down"))
        self._jobs.clear()
        self._queued = 0

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._jobs:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = loop.time() + self.max_wait_s
            while self._queued < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            started = time.perf_counter()
            for job in batch:
                QUEUE_WAIT.observe(started - job.enqueued)
            BATCH_SIZE.observe(sum(job.size for job in batch))
            self._running = batch
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [j.payload for j in batch])
            except Exception as exc:  # the whole batch failed: every caller gets the error
                results = [exc] * len(batch)
            if len(results) != len(batch):
                results = [RuntimeError(f"batch of {len(batch)} jobs gave {len(results)} results")] * len(batch)
            for job, result in zip(batch, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, Exception):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
            self._running = []

    def _take(self) -> list[_Job[P, R]]:
        batch: list[_Job[P, R]] = []
        items = 0
        while self._jobs:
            job = self._jobs[0]
            if not job.future.done() and batch and items + job.size > self.max_batch_size:
                break
            self._jobs.popleft()
            self._queued -= job.size
            if job.future.done():  # the caller went away
                continue
            batch.append(job)
            items += job.size
        return batch
