"""Chunk texts -> vectors through the embedding service (OpenAI ``POST /v1/embeddings``, base64 floats).

All jobs put their chunks into one pool; a dispatcher sends requests of at most
``DATAPREP_EMBEDDING_BATCH_SIZE`` chunks, ``DATAPREP_EMBEDDING_CONCURRENCY`` in flight, each made of the
longest chunk waiting and the next longest ones down to `SIMILAR` of its length. Why: a model batch costs
about its size times its longest input (inputs are padded), so batches of similar lengths waste little;
many small documents (a few chunks each, the last one short) would otherwise reach the model as mixed
batches. Measured with all-MiniLM-L6-v2 on 2 CPU cores, 600 chunks of a 3 KB-file corpus:
45 chunks/s in length-sorted batches of 64, 35/s in batches of 64 in arrival order.

A failed request fails the chunks it carried; when it was a 4xx (the input's fault) and carried chunks of
several jobs, each job's chunks are retried alone, so one job's bad input does not fail the others.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram

from comps.core.errors import NotReady, UpstreamError
from comps.core.http import HttpClient
from comps.core.tasks import TaskGroup
from comps.dataprep.settings import DataprepSettings
from comps.embedding.client import NODE, EmbeddingClient

log = logging.getLogger("comps.dataprep.embedder")

LINGER_S = 0.02  # how long a request that is not full waits for more chunks
SIMILAR = 0.75  # a request takes chunks down to this fraction of its longest chunk's length
FALLBACK_LIMIT = 254  # tokens, when the embedding service does not say (all-MiniLM-L6-v2's 256 less [CLS], [SEP])
FALLBACK_CHARS_PER_TOKEN = 3.5

CHUNKS_EMBEDDED = Counter("chatqna_dataprep_chunks_embedded_total", "Chunks embedded by dataprep")
REQUEST_SIZE = Histogram(
    "chatqna_dataprep_embedding_request_chunks",
    "Chunks per embedding request",
    buckets=(1, 4, 8, 16, 32, 48, 64, 128, 256),
)

Result = tuple[np.ndarray, str]  # (vector, model name)


@dataclass(order=True)
class _Item:
    priority: tuple[int, int]  # (-length, arrival): the heap pops the longest first, then the oldest
    text: str = field(compare=False)
    owner: int = field(compare=False)  # which embed() call
    future: asyncio.Future[Result] = field(compare=False)


class ChunkEmbedder:
    def __init__(self, settings: DataprepSettings) -> None:
        self.client = EmbeddingClient(
            settings.embedding_url,
            timeout_s=settings.embedding_timeout_s,
            api_key=settings.embedding_api_key,
            model=settings.embedding_model,
        )
        self.batch_size = settings.embedding_batch_size
        self.concurrency = settings.embedding_concurrency
        self._pool: list[_Item] = []
        self._arrivals = itertools.count()
        self._owners = itertools.count()
        self._wake = asyncio.Event()
        self._http: HttpClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._measure: Measure | None = None
        self._measure_lock = asyncio.Lock()
        self._group: TaskGroup | None = None

    def start(self, http: HttpClient, tasks: TaskGroup | None = None) -> None:
        """Start the dispatcher, supervised by ``tasks`` (default: a group of its own): if it dies it is
        restarted, and the chunks in the pool wait for it."""
        self._http = http
        self._group = tasks or TaskGroup("dataprep embedder")
        self._group.spawn("dataprep-embedding-dispatcher", self._dispatch)

    async def close(self) -> None:
        """Stop the dispatcher; cancel the requests in flight and the chunks waiting."""
        if self._group is not None:
            await self._group.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for item in self._pool:
            if not item.future.done():
                item.future.cancel()
        self._pool.clear()

    def _base(self) -> str:
        if self.client.url is None:
            raise NotReady("the embedding service is not configured: set DATAPREP_EMBEDDING_URL")
        return self.client.url

    async def embed(self, texts: list[str], progress: Callable[[int], Awaitable[None]]) -> tuple[np.ndarray, str]:
        """Vectors for ``texts`` (float32, one row each, in order) and the model that made them.
        ``progress(n)`` is awaited as chunks are done. On any failure the job's other chunks are dropped."""
        self._base()
        loop = asyncio.get_running_loop()
        owner = next(self._owners)
        items = [_Item((-len(t), next(self._arrivals)), t, owner, loop.create_future()) for t in texts]
        for item in items:
            heapq.heappush(self._pool, item)
        self._wake.set()
        pending = {item.future for item in items}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    future.result()  # raises the request's error
                await progress(len(done))
        finally:
            for item in items:
                if not item.future.done():
                    item.future.cancel()  # the dispatcher skips it
                elif not item.future.cancelled():
                    item.future.exception()  # retrieved: no "never retrieved" warning for the chunks not awaited
        results = [item.future.result() for item in items]
        models = {model for _, model in results}
        dims = {len(vector) for vector, _ in results}
        if len(models) != 1 or len(dims) != 1:
            raise UpstreamError(
                f"embedding answered with mixed models {sorted(models)} or dimensions {sorted(dims)}",
                node=NODE,
                status=200,
            )
        return np.vstack([vector for vector, _ in results]), models.pop()

    # ------------------------------------------------------------------------------------------ dispatcher

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        self._wake.set()  # a restarted dispatcher first serves what waited while it was down
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._live() > 0:
                await slots.acquire()
                if self._live() < self.batch_size:
                    await asyncio.sleep(LINGER_S)  # let more chunks arrive: a fuller, better sorted request
                batch: list[_Item] = []
                while self._live() and len(batch) < self.batch_size:
                    if batch and len(self._pool[0].text) < SIMILAR * len(batch[0].text):
                        break
                    batch.append(heapq.heappop(self._pool))
                if not batch:
                    slots.release()
                    continue
                self._spawn(self._send(batch, slots))

    def _live(self) -> int:
        while self._pool and self._pool[0].future.done():
            heapq.heappop(self._pool)
        return len(self._pool)

    async def _send(self, batch: list[_Item], slots: asyncio.Semaphore) -> None:
        try:
            await self._embed_batch(batch)
        finally:
            slots.release()

    async def _embed_batch(self, batch: list[_Item], *, split_on_client_error: bool = True) -> None:
        REQUEST_SIZE.observe(len(batch))
        try:
            vectors, model = await self._request([item.text for item in batch])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            owners = sorted({item.owner for item in batch})
            status = getattr(exc, "upstream_status", None)
            if split_on_client_error and len(owners) > 1 and status is not None and 400 <= status < 500:
                for owner in owners:  # one job's bad input must not fail the others
                    await self._embed_batch([i for i in batch if i.owner == owner], split_on_client_error=False)
                return
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        CHUNKS_EMBEDDED.inc(len(batch))
        for item, vector in zip(batch, vectors, strict=True):
            if not item.future.done():
                item.future.set_result((vector, model))

    async def _request(self, texts: list[str]) -> tuple[np.ndarray, str]:
        assert self._http is not None, "ChunkEmbedder used before start()"
        return await self.client.embed(self._http, texts)

    async def measure(self) -> Measure:
        """How the embedding model counts tokens, asked once of the embedding service (``GET /v1/tokenizer``);
        where it does not say (a remote backend: 404), tokens are estimated from characters, with a warning."""
        async with self._measure_lock:
            if self._measure is None:
                self._measure = await self._ask_measure()
            return self._measure

    async def _ask_measure(self) -> Measure:
        assert self._http is not None, "ChunkEmbedder used before start()"
        try:
            document = await self.client.tokenizer(self._http)
            return await asyncio.to_thread(tokenizer_measure, document)
        except UpstreamError as exc:
            if getattr(exc, "upstream_status", None) != 404:
                raise
        except Exception as exc:  # any unusable answer: estimate instead
            log.warning("the embedding service's tokenizer is unusable (%s): chunk tokens are estimated", exc)
            return estimated_measure()
        log.warning(
            "the embedding service does not give its tokenizer: chunk tokens are estimated from characters "
            "(%.1f a token) with a limit of %d",
            FALLBACK_CHARS_PER_TOKEN,
            FALLBACK_LIMIT,
        )
        return estimated_measure()

    async def check_ready(self, http: HttpClient) -> dict[str, object]:
        """The embedding service's readiness details; `NotReady` with its reason when it is not ready."""
        base = self._base()
        try:
            details = await self.client.ready(http)
        except UpstreamError as exc:
            raise NotReady(f"the embedding service is not ready: {exc.message}") from None
        return {"embedding": base, "embedding_model": details.get("model")}


@dataclass(frozen=True)
class Measure:
    """How the embedding model counts: ``count(text)`` tokens (special tokens left out) and ``limit``, the most
    it reads of one input (its max_seq_length less the special tokens it adds)."""

    limit: int
    count: Callable[[str], int]
    exact: bool  # False: estimated from characters (the service did not give its tokenizer)


def tokenizer_measure(document: dict[str, Any]) -> Measure:
    """A `Measure` from the embedding service's ``GET /v1/tokenizer`` answer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(document["tokenizer"]))
    tok.no_truncation()
    tok.no_padding()
    special = len(tok.encode("", add_special_tokens=True).ids)
    limit = int(document["max_seq_length"]) - special

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    return Measure(limit, count, exact=True)


def estimated_measure(limit: int = FALLBACK_LIMIT) -> Measure:
    """Tokens estimated from characters, on the safe side (word-piece tokenizers: 3.5-4.5 characters a token)."""
    return Measure(limit, lambda text: math.ceil(len(text) / FALLBACK_CHARS_PER_TOKEN), exact=False)
