"""Ingestion jobs: their state, a bounded queue with a fixed number of supervised workers, and
per-document locks.

Job state lives in memory (the last ``DATAPREP_JOBS_KEPT`` finished jobs) and is saved to the store at
every change, with what it takes to run the job again (its options, and where its upload is spooled):
after a crash, `JobRunner.recover` finds the jobs left queued or running, resumes those it can and fails
the others with the reason, so no job stays unfinished.

Several replicas may share one store: a job belongs to the replica that holds its lease (``claim``), renewed
by a heartbeat every third of ``lease_s``. A replica only resumes a job whose lease it could take: one left by
a dead replica (its lease expired) or by its own earlier life. A replica that finds its lease taken (it was
paused for longer than the lease) drops the job without finishing it: the new owner does.
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
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from comps.core.errors import Overloaded
from comps.core.tasks import TaskGroup
from comps.dataprep.protocol import FINISHED, ChunkUnit, DocumentKind, JobInfo, JobStatus
from comps.dataprep.uploads import Upload

log = logging.getLogger("comps.dataprep.jobs")

JOBS = Counter("chatqna_dataprep_jobs_total", "Ingestion jobs finished, by status", ["status"])
QUEUED = Gauge("chatqna_dataprep_jobs_queued", "Ingestion jobs waiting for a worker")
RECOVERED = Counter(
    "chatqna_dataprep_jobs_recovered_total",
    "Unfinished jobs of an earlier run or of a dead replica taken over",
    ["outcome"],
)
LEASES_LOST = Counter("chatqna_dataprep_job_leases_lost_total", "Jobs dropped because another replica took them")
LOST_UPLOAD = "dataprep restarted and the uploaded file of this job is gone; ingest it again"


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
    retries: int = 0  # embedding tries after the embedding service failed
    lost: bool = False  # another replica took the job over: this one must not finish it
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
            retries=self.retries,
        )

    def record(self) -> dict[str, Any]:
        """What the store keeps: the status, and what running the job again needs."""
        record: dict[str, Any] = self.info().model_dump()
        record.update(chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap, tags=",".join(self.tags))
        if self.upload is not None:
            u = self.upload
            record.update(upload_path=str(u.path), upload_kind=u.kind, upload_size=u.size, upload_sha256=u.sha256)
        return record

    @classmethod
    def from_record(cls, saved: dict[str, Any]) -> Job:
        """The job a saved record describes, queued again (its progress starts over)."""
        upload = None
        if saved.get("upload_path"):
            kind: DocumentKind = saved["upload_kind"]
            upload = Upload(saved["source"], kind, Path(saved["upload_path"]), int(saved["upload_size"]),
                            saved["upload_sha256"])  # fmt: skip
        return cls(
            source=saved["source"], collection=saved["collection"], chunk_size=int(saved["chunk_size"]),
            chunk_overlap=int(saved["chunk_overlap"]), tags=[t for t in saved.get("tags", "").split(",") if t],
            upload=upload, job_id=saved["job_id"], created_at=float(saved["created_at"]),
        )  # fmt: skip

    def finish(self, status: JobStatus, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.finished_at = time.time()
        JOBS.labels(status).inc()


class JobLost(Exception):
    """The job's lease is another replica's now: stop without finishing (or saving) it."""


class JobRunner:
    """``workers`` supervised tasks take jobs from a queue of at most ``max_queued``; ``run`` does one job
    and should not raise (if it does, the job fails with the reason and the worker is restarted); ``save``
    keeps a job's record in the store (its failures are logged, not fatal); ``claim`` takes or renews the
    leases of jobs for ``lease_s`` and returns the ids held (see the module's text)."""

    def __init__(
        self,
        *,
        workers: int,
        max_queued: int,
        kept: int,
        run: Callable[[Job], Awaitable[None]],
        save: Callable[[dict[str, Any]], Awaitable[None]],
        claim: Callable[[list[str]], Awaitable[list[str]]] | None = None,
        lease_s: float = 15.0,
    ) -> None:
        self.workers = workers
        self.claim = claim or _hold_all
        self.lease_s = lease_s
        self.kept = kept
        self._run = run
        self._save = save
        self._queue: asyncio.Queue[Job] = asyncio.Queue(max_queued)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self.tasks = TaskGroup("dataprep")

    def start(self, tasks: TaskGroup | None = None) -> None:
        """Start the workers, under ``tasks`` (default: the runner's own group)."""
        self.tasks = tasks or self.tasks
        for i in range(self.workers):
            self.tasks.spawn(f"dataprep-worker-{i}", self._work)
        self.tasks.spawn("dataprep-job-heartbeat", self._heartbeat)

    async def stop(self) -> None:
        """Stop the workers; jobs not finished are failed (and saved) with the reason."""
        await self.tasks.stop()
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

    async def recover(self, saved: list[dict[str, Any]]) -> tuple[int, int]:
        """Queue again the unfinished jobs of an earlier run (``saved`` records); a job whose upload is gone
        fails with the reason. Returns (resumed, failed)."""
        resumed = failed = 0
        theirs = [r["job_id"] for r in saved if r["job_id"] not in self._jobs]
        held = set(await self.claim(theirs)) if theirs else set()  # the others are live replicas' jobs
        for record in sorted(saved, key=lambda r: float(r.get("created_at", 0))):
            if record["job_id"] not in held:
                continue
            try:
                job = Job.from_record(record)
            except (KeyError, ValueError) as exc:  # a record from an older version: cannot be run again
                job = Job(source=record.get("source", "?"), collection=record.get("collection", "?"), chunk_size=0,
                          chunk_overlap=0, tags=[], job_id=record["job_id"])  # fmt: skip
                job.finish("failed", f"dataprep restarted and cannot resume this job ({exc!r}); ingest it again")
            else:
                upload = job.upload
                if upload is not None and not await asyncio.to_thread(_intact, upload):
                    job.finish("failed", LOST_UPLOAD)
            self._remember(job)
            if job.status == "failed":
                failed += 1
                RECOVERED.labels("failed").inc()
                await self.save(job)
                continue
            resumed += 1
            RECOVERED.labels("resumed").inc()
            await self.save(job)
            await self._queue.put(job)  # waits for room: recovered jobs are never refused
            QUEUED.set(self._queue.qsize())
        return resumed, failed

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def recent(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)

    async def save(self, job: Job) -> None:
        try:
            async with job.saving:
                await self._save(job.record())
        except Exception as exc:  # the job goes on; only its copy in the store is stale
            log.warning("could not save the state of job %s: %s", job.job_id, exc)

    def _remember(self, job: Job) -> None:
        self._jobs[job.job_id] = job
        finished = [j.job_id for j in self._jobs.values() if j.status in FINISHED]
        for job_id in finished[: max(0, len(self._jobs) - self.kept)]:
            del self._jobs[job_id]

    async def _heartbeat(self) -> None:
        """Renew the leases of this replica's unfinished jobs; drop those another replica has taken."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            mine = [j.job_id for j in self._jobs.values() if j.status not in FINISHED]
            try:
                held = set(await self.claim(mine)) if mine else set()
            except Exception as exc:  # the store is down: try again next beat (the leases may run out meanwhile)
                log.warning("could not renew the leases of %d jobs: %s", len(mine), exc)
                continue
            for job_id in set(mine) - held:
                job = self._jobs.pop(job_id)
                job.lost = True
                LEASES_LOST.inc()
                log.warning("job %s (%s) was taken over by another replica: dropped here", job_id, job.source)

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            QUEUED.set(self._queue.qsize())
            if job.lost:
                self._queue.task_done()
                continue
            try:
                await self._run(job)
            except Exception as exc:  # never a job left "running": fail it, then the worker dies and restarts
                if job.status not in FINISHED and not job.lost:
                    job.finish("failed", f"internal error: {type(exc).__name__}: {exc}")
                    await self.save(job)
                raise
            finally:
                self._queue.task_done()


async def _hold_all(job_ids: list[str]) -> list[str]:
    """The claim of a runner that shares its store with no other replica."""
    return job_ids


def _intact(upload: Upload) -> bool:
    try:
        return upload.path.stat().st_size == upload.size
    except OSError:
        return False


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
