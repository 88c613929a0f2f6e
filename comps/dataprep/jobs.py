"""Ingestion jobs: their state, a bounded queue with a fixed number of workers, and per-document locks.

Job state lives in memory (the last ``DATAPREP_JOBS_KEPT`` finished jobs) and is mirrored to the store
at every change, so a job's status can still be read after dataprep restarts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from comps.core.errors import Overloaded
from comps.dataprep.protocol import FINISHED, ChunkUnit, JobInfo, JobStatus
from comps.dataprep.uploads import Upload

log = logging.getLogger("comps.dataprep.jobs")

JOBS = Counter("chatqna_dataprep_jobs_total", "Ingestion jobs finished, by status", ["status"])
QUEUED = Gauge("chatqna_dataprep_jobs_queued", "Ingestion jobs waiting for a worker")


@dataclass
class Job:
    source: str
    collection: str
    chunk_size: int
    chunk_overlap: int
    tags: list[str]
    chunk_unit: ChunkUnit = "chars"
    upload: Upload | None = None  # a file job; else `source` is the URL
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: JobStatus = "queued"
    chunks_total: int = 0
    chunks_embedded: int = 0
    doc_id: str | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    saving: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)  # saves in order, newest state last

    def info(self) -> JobInfo:
        return JobInfo(
            job_id=self.job_id,
            source=self.source,
            collection=self.collection,
            status=self.status,
            chunks_total=self.chunks_total,
            chunks_embedded=self.chunks_embedded,
            doc_id=self.doc_id,
            error=self.error,
            created_at=self.created_at,
            finished_at=self.finished_at,
        )

    def finish(self, status: JobStatus, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.finished_at = time.time()
        JOBS.labels(status).inc()


class JobRunner:
    """``workers`` tasks take jobs from a queue of at most ``max_queued``; ``run`` does one job and never
    raises; ``save`` mirrors a job's state (its failures are logged, not fatal)."""

    def __init__(
        self,
        *,
        workers: int,
        max_queued: int,
        kept: int,
        run: Callable[[Job], Awaitable[None]],
        save: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        self.workers = workers
        self.kept = kept
        self._run = run
        self._save = save
        self._queue: asyncio.Queue[Job] = asyncio.Queue(max_queued)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"dataprep-worker-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        """Stop the workers; jobs not finished are failed (and saved) with the reason."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for job in self._jobs.values():
            if job.status not in FINISHED:
                job.finish("failed", "dataprep stopped before the job finished; ingest it again")
                await self.save(job)
                if job.upload is not None:
                    await asyncio.to_thread(job.upload.discard)

    def submit(self, jobs: list[Job]) -> None:
        """Queue all of ``jobs`` or none (429 when the queue has no room for all)."""
        room = self._queue.maxsize - self._queue.qsize()
        if len(jobs) > room:
            raise Overloaded(
                f"the ingestion queue is full ({self._queue.qsize()} jobs waiting, room for {room}); retry later",
                retry_after=5,
            )
        for job in jobs:
            self._remember(job)
            self._queue.put_nowait(job)
        QUEUED.set(self._queue.qsize())

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def recent(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)

    async def save(self, job: Job) -> None:
        try:
            async with job.saving:
                await self._save(job.info().model_dump())
        except Exception as exc:  # the job goes on; only its copy in the store is stale
            log.warning("could not save the state of job %s: %s", job.job_id, exc)

    def _remember(self, job: Job) -> None:
        self._jobs[job.job_id] = job
        finished = [j.job_id for j in self._jobs.values() if j.status in FINISHED]
        for job_id in finished[: max(0, len(self._jobs) - self.kept)]:
            del self._jobs[job_id]

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            QUEUED.set(self._queue.qsize())
            try:
                await self._run(job)
            finally:
                self._queue.task_done()


class KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[object, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: object) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
