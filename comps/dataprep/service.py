"""The logic behind the dataprep routes: accepting ingest requests as jobs, running a job (read ->
parse and chunk -> embed -> replace the document atomically), listing and deleting documents.

`DataprepService` is the app's backend for the kit: warm-up opens the store, the URL fetcher, the spool
folder and the job workers; readiness needs Redis with search AND the embedding service, every background
task running, and the start-up recovery done: the unfinished jobs of an earlier run (a crash) resumed or
failed with the reason, and chunks that no document version owns swept away. Then, every half lease, the
jobs of a replica that died (their lease expired) are taken over the same way.

A job whose embedding fails because the embedding service is down, restarting or overloaded (unreachable,
HTTP 429 or 5xx, timeout) tries again after a backoff, ``DATAPREP_EMBEDDING_RETRIES`` times; the stored
version of its document stays untouched until the new one is complete.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import Counter
from pydantic import ValidationError
from starlette.requests import Request

from comps.core.errors import BadRequest, NotFound, NotReady, ServiceError, UpstreamError
from comps.core.http import HttpClient
from comps.core.tasks import TaskGroup
from comps.dataprep.backends import DocumentStore
from comps.dataprep.embedder import ChunkEmbedder
from comps.dataprep.jobs import Job, JobLost, JobRunner, KeyedLocks
from comps.dataprep.parsing import ParseError, parse_document
from comps.dataprep.protocol import (
    CONTENT_TYPES,
    DeleteRequest,
    DocumentInfo,
    DocumentKind,
    IngestOptions,
    IngestResponse,
    JobInfo,
    JobRef,
    document_id,
    kind_of,
)
from comps.dataprep.settings import DataprepSettings
from comps.dataprep.uploads import read_ingest_form
from comps.dataprep.urls import FetchFailed, UrlFetcher, UrlRefused, check_url
from comps.embedding.client import NODE as EMBEDDING
from comps.vectorstore.documents import Chunk, CollectionMissing, DocumentRecord
from comps.vectorstore.names import validate_collection

log = logging.getLogger("comps.dataprep")

RECOVERY_RETRY_MAX_S = 5.0  # start-up recovery retries until the store answers, at most this far apart
EMBEDDING_RETRY_MAX_S = 30.0  # the longest wait between two embedding tries of a job

RETRIES = Counter("chatqna_dataprep_embedding_retries_total", "Embedding tries of a job after the service failed")

T = TypeVar("T")


class DataprepService:
    def __init__(self, settings: DataprepSettings, store: DocumentStore) -> None:
        self.settings = settings
        self.store = store
        self.name = f"dataprep-{store.name}"
        self.embedder = ChunkEmbedder(settings)
        self.fetcher = UrlFetcher(
            allow_private=settings.allow_private_urls,
            timeout_s=settings.url_timeout_s,
            max_bytes=settings.max_file_bytes,
            max_redirects=settings.max_redirects,
        )
        self.locks = KeyedLocks()
        self.runner: JobRunner | None = None
        self.spool: Path | None = None
        self._own_spool = False
        self._http: HttpClient | None = None
        self.tasks = TaskGroup("dataprep")
        self.recovered: tuple[int, int, int] | None = None  # (jobs resumed, jobs failed, orphan chunks swept)
        self.replica = settings.replica_id or f"{socket.gethostname()}:{settings.port or id(self)}"

    # ------------------------------------------------------------------------------ kit backend protocol

    async def warm_up(self, http: HttpClient) -> None:
        self._http = http
        await self.store.warm_up(http)
        await self.fetcher.start()
        self.embedder.start(http, self.tasks)
        if self.settings.spool_dir is not None:
            self.spool = self.settings.spool_dir
            await asyncio.to_thread(self.spool.mkdir, parents=True, exist_ok=True)
        else:
            self.spool = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="chatqna-dataprep-"))
            self._own_spool = True
        self.runner = JobRunner(
            workers=self.settings.workers,
            max_queued=self.settings.max_queued_jobs,
            kept=self.settings.jobs_kept,
            run=self._run,
            save=self.store.save_job,
            claim=self._claim,
            lease_s=self.settings.job_lease_s,
        )
        self.runner.start(self.tasks)
        self.tasks.spawn("dataprep-recovery", self._recover, once=True)

    async def check_ready(self) -> dict[str, Any]:
        assert self._http is not None
        self.tasks.check()
        details = await self.store.check_ready()
        if self.recovered is None:
            raise NotReady("dataprep is recovering the jobs and chunks a crash may have left")
        details.update(await self.embedder.check_ready(self._http))
        return details

    async def close(self) -> None:
        try:
            await self.tasks.stop()
            if self.runner is not None:
                await self.runner.stop()
            await self.embedder.close()
            await self.fetcher.close()
        finally:
            await self.store.close()
            if self._own_spool and self.spool is not None:
                await asyncio.to_thread(shutil.rmtree, self.spool, True)

    # ---------------------------------------------------------------------------------------- requests

    def collection(self, name: str | None) -> str:
        return validate_collection(name or self.settings.index_name)

    async def ingest(self, request: Request) -> IngestResponse:
        assert self.runner is not None and self.spool is not None
        limits = self.settings
        form = await read_ingest_form(
            request, spool_dir=self.spool, max_file_bytes=limits.max_file_bytes, max_files=limits.max_files
        )
        try:
            fields = form.fields
            try:
                options = IngestOptions(
                    chunk_size=fields.get("chunk_size") or None,
                    chunk_overlap=fields.get("chunk_overlap") or None,
                    chunk_tokens=fields.get("chunk_tokens") or None,
                    chunk_overlap_tokens=fields.get("chunk_overlap_tokens") or None,
                    collection=fields.get("collection") or self.settings.index_name,
                    tags=fields.get("tags"),
                    link_list=fields.get("link_list"),
                )
            except ValidationError as exc:
                message, param = _first_error(exc)
                raise BadRequest(message, param=param, code="invalid_value") from None
            try:
                unit, size, overlap = options.chunking(self.settings.chunk_tokens, self.settings.chunk_overlap_tokens)
            except ValueError as exc:
                param = "chunk_overlap" if options.chunk_size or options.chunk_overlap else "chunk_overlap_tokens"
                raise BadRequest(str(exc), param=param, code="invalid_value") from None
            self.collection(options.collection)
            if not form.uploads and not options.link_list:
                raise BadRequest("nothing to ingest: send files and/or link_list", param="files")
            if len(form.uploads) + len(options.link_list) > self.settings.max_files:
                raise BadRequest(f"more than {limits.max_files} files and links in one request", param="link_list")
            for url in options.link_list:
                try:
                    await check_url(url, allow_private=self.settings.allow_private_urls)
                except UrlRefused as exc:
                    raise BadRequest(str(exc), param="link_list", code="url_refused") from None
            common = dict(
                collection=options.collection,
                chunk_size=size,
                chunk_overlap=overlap,
                chunk_unit=unit,
                tags=options.tags,
            )
            jobs = [Job(source=u.filename, upload=u, **common) for u in form.uploads]  # type: ignore[arg-type]
            jobs += [Job(source=url, **common) for url in options.link_list]  # type: ignore[arg-type]
            await self._claim([j.job_id for j in jobs])  # leased before any replica can see them
            self.runner.submit(jobs)
        except BaseException:
            await asyncio.to_thread(form.discard)
            raise
        await asyncio.gather(*(self.runner.save(job) for job in jobs))
        return IngestResponse(jobs=[JobRef(job_id=j.job_id, source=j.source, status=j.status) for j in jobs])

    async def job(self, job_id: str) -> JobInfo:
        assert self.runner is not None
        job = self.runner.get(job_id)
        if job is not None:
            return job.info()
        saved = await self.store.load_job(job_id)
        if saved is None:
            raise NotFound(f"no job {job_id!r} (unknown, or older than DATAPREP_JOB_TTL_S)", param="job_id")
        return JobInfo.model_validate(saved)

    async def jobs_by_id(self, ids: list[str]) -> list[JobInfo]:
        """These jobs, newest first; ids of jobs that are not known are left out."""
        found = []
        for job_id in dict.fromkeys(ids):
            try:
                found.append(await self.job(job_id))
            except NotFound:
                continue
        return sorted(found, key=lambda j: j.created_at, reverse=True)

    async def jobs(self, limit: int) -> list[JobInfo]:
        """The newest jobs: this process's own (live) ones, and those the store remembers."""
        assert self.runner is not None
        found = {j.job_id: j.info() for j in self.runner.recent()}
        for saved in await self.store.recent_jobs(limit):
            found.setdefault(saved["job_id"], JobInfo.model_validate(saved))
        return sorted(found.values(), key=lambda j: j.created_at, reverse=True)[:limit]

    async def documents(self, collection: str | None) -> list[DocumentInfo]:
        records = await self.store.list_documents(self.collection(collection))
        return [_document_info(r) for r in records]

    async def delete(self, req: DeleteRequest) -> int:
        collection = self.collection(req.collection)
        if req.file_path == "all":
            return await self.store.delete_all(collection)
        for doc_id in (req.file_path, document_id(collection, req.file_path)):
            if await self.store.delete_document(collection, doc_id) is not None:
                return 1
        raise NotFound(
            f"no document {req.file_path!r} (by id or source) in collection {collection!r}", param="file_path"
        )

    # --------------------------------------------------------------------------------------------- jobs

    async def _claim(self, job_ids: list[str]) -> list[str]:
        return await self.store.claim_jobs(job_ids, self.replica, self.settings.job_lease_s)

    async def _recover(self) -> None:
        """Once the store answers: resume or fail the jobs an earlier run left unfinished, and sweep chunks
        that no document version owns. Then take over, every half lease, the jobs of replicas that died."""
        assert self.runner is not None
        saved, swept = await self._open_jobs_and_sweep()
        resumed, failed = await self.runner.recover(saved)
        self.recovered = (resumed, failed, swept)
        if resumed or failed or swept:
            log.warning("start-up recovery: %d unfinished jobs resumed, %d failed (upload lost), "
                        "%d orphan chunks deleted", resumed, failed, swept)  # fmt: skip
        self.tasks.spawn("dataprep-takeover", self._take_over)

    async def _take_over(self) -> None:
        assert self.runner is not None
        while True:
            await asyncio.sleep(self.settings.job_lease_s / 2)
            resumed, failed = await self.runner.recover(await self.store.open_jobs())
            if resumed or failed:
                log.warning("took over %d jobs of a replica that stopped (%d failed: upload lost)", resumed, failed)

    async def _open_jobs_and_sweep(self) -> tuple[list[dict[str, Any]], int]:
        """The unfinished jobs in the store and the number of orphan chunks swept, once the store answers."""
        delay = 0.2
        while True:
            try:
                return await self.store.open_jobs(), await self.store.sweep_orphans()
            except ServiceError as exc:  # the store is not up yet
                log.info("start-up recovery waits for the store: %s", exc.message)
                await asyncio.sleep(delay)
                delay = min(RECOVERY_RETRY_MAX_S, delay * 2)

    async def _run(self, job: Job) -> None:
        assert self.runner is not None
        job.status = "running"
        await self.runner.save(job)
        started = time.perf_counter()
        try:
            await self._ingest(job)
        except JobLost:
            log.warning("job %s (%s) stopped here: another replica took it over", job.job_id, job.source)
            return
        except (ParseError, UrlRefused, FetchFailed, CollectionMissing) as exc:
            job.finish("failed", str(exc))
        except ServiceError as exc:
            job.finish("failed", exc.message)
        except asyncio.CancelledError:
            raise  # JobRunner.stop fails and saves it
        except Exception as exc:
            log.exception("job %s (%s) failed", job.job_id, job.source)
            job.finish("failed", f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if job.upload is not None and not job.lost:
                await asyncio.to_thread(job.upload.discard)
        log.info(
            "job %s %s: %s (%d chunks, %.2fs)%s",
            job.job_id,
            job.status,
            job.source,
            job.chunks_total,
            time.perf_counter() - started,
            f": {job.error}" if job.error else "",
        )
        await self.runner.save(job)

    async def _ingest(self, job: Job) -> None:
        assert self._http is not None and self.runner is not None
        load, nbytes, kind, digest = await self._content(job)
        job.doc_id = document_id(job.collection, job.source)
        tags = ",".join(job.tags)
        async with self.locks.hold((job.collection, job.doc_id)):
            existing = await self.store.get_document(job.collection, job.doc_id)
            wanted = (digest, job.chunk_size, job.chunk_overlap, job.chunk_unit, tags)
            had = existing and (existing.sha256, existing.chunk_size, existing.chunk_overlap, existing.chunk_unit,
                                existing.tags)  # fmt: skip
            if had == wanted:
                job.finish("skipped")
                return
            size, overlap = job.chunk_size, job.chunk_overlap
            length: Callable[[str], int] = len
            if job.chunk_unit == "tokens":
                measure = await self._retrying(job, self.embedder.measure)
                size, length = min(size, measure.limit), measure.count
                overlap = min(overlap, size // 2)
            chunks = await asyncio.to_thread(lambda: parse_document(load(), kind, size, overlap, length=length))
            job.chunks_total = len(chunks)
            await self.runner.save(job)

            async def progress(n: int) -> None:
                job.chunks_embedded += n
                await self.runner.save(job)  # type: ignore[union-attr]

            async def embed() -> tuple[Any, str]:
                job.chunks_embedded = 0  # a retry embeds every chunk again
                return await self.embedder.embed([c.text for c in chunks], progress)

            vectors, model = await self._retrying(job, embed)
            if job.lost:
                raise JobLost
            await self.store.ensure_collection(job.collection, int(vectors.shape[1]), model)
            record = DocumentRecord(
                doc_id=job.doc_id,
                source=job.source,
                sha256=digest,
                tags=tags,
                content_type=kind,
                size_bytes=nbytes,
                chunk_size=job.chunk_size,
                chunk_overlap=job.chunk_overlap,
                chunk_unit=job.chunk_unit,
                model=model,
            )
            stored = [Chunk(c.text, v, c.page) for c, v in zip(chunks, vectors, strict=True)]
            await self.store.replace_document(job.collection, record, stored)
        job.finish("succeeded")

    async def _retrying(self, job: Job, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, tried again with a doubling wait while the embedding service fails in a way that may
        pass (unreachable, restarting, overloaded), at most ``DATAPREP_EMBEDDING_RETRIES`` times."""
        assert self.runner is not None
        wait = self.settings.embedding_retry_s
        while True:
            try:
                return await call()
            except UpstreamError as exc:
                if not _passing(exc):
                    raise
                if job.retries >= self.settings.embedding_retries or job.lost:
                    raise UpstreamError(
                        f"the embedding service still failed after {job.retries} retries: {exc.message}",
                        node=EMBEDDING,
                    ) from exc
                job.retries += 1
                RETRIES.inc()
                log.warning("job %s (%s): embedding failed (%s); retry %d of %d in %.1fs", job.job_id, job.source,
                            exc.message, job.retries, self.settings.embedding_retries, wait)  # fmt: skip
                await self.runner.save(job)
                await asyncio.sleep(wait)  # backoff: the embedding service is restarting or busy
                wait = min(EMBEDDING_RETRY_MAX_S, wait * 2)

    async def _content(self, job: Job) -> tuple[Callable[[], bytes], int, DocumentKind, str]:
        """How to get the job's bytes (an upload is read in the parsing thread, so waiting jobs hold no
        content), their size, the parser kind and the sha256."""
        upload = job.upload
        if upload is not None:
            return upload.path.read_bytes, upload.size, upload.kind, upload.sha256
        fetched = await self.fetcher.fetch(job.source)
        if not fetched.data:
            raise FetchFailed(f"{fetched.url} answered with an empty body")
        kind = CONTENT_TYPES.get(fetched.content_type) or kind_of(fetched.url.split("?", 1)[0].split("#", 1)[0])
        if kind is None:
            raise FetchFailed(
                f"{fetched.url} answered with content type {fetched.content_type or 'none'!r}, which cannot be ingested"
            )
        digest = await asyncio.to_thread(lambda: hashlib.sha256(fetched.data).hexdigest())
        return (lambda: fetched.data), len(fetched.data), kind, digest


def _passing(exc: UpstreamError) -> bool:
    """Whether an embedding failure may pass by itself: no answer, a dropped or timed-out one, 429 or 5xx (a
    4xx is the input's fault, and trying it again would fail again)."""
    status = exc.upstream_status
    return exc.node == EMBEDDING and (status is None or status == 429 or status >= 500)


def _document_info(record: DocumentRecord) -> DocumentInfo:
    return DocumentInfo(
        doc_id=record.doc_id,
        source=record.source,
        chunks=record.chunks,
        sha256=record.sha256,
        updated_at=record.updated_at,
        tags=[t for t in record.tags.split(",") if t],
    )


def _first_error(exc: ValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err.get("loc", ())) or None
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if param is None:  # the model-level rule: chunk_overlap < chunk_size
        return msg, "chunk_overlap"
    return f"{param}: {msg}", param
