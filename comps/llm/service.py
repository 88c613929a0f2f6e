"""The logic behind the routes: a fair bounded admission queue, OpenAI answers and streams built
from backend events, metrics, and stopping a generation as soon as its client goes away."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import Receive, Scope, Send

from comps.core.disconnect import ClientGone, until_disconnect
from comps.core.errors import Overloaded, ServiceError, error_envelope
from comps.llm.backends import Delta, Event, Finished, LLMBackend, Started
from comps.llm.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    DeltaMessage,
    FinishReason,
    PromptTokensDetails,
    Usage,
    completion_id,
    now,
)

log = logging.getLogger("comps.llm.service")
T = TypeVar("T")

QUEUE_DEPTH = Gauge("chatqna_llm_queue_depth", "Requests waiting for a generation slot")
ACTIVE = Gauge("chatqna_llm_active_sequences", "Requests holding a generation slot")
REJECTED = Counter("chatqna_llm_rejected_requests", "Requests refused with 429 because the queue was full")
GENERATED_TOKENS = Counter("chatqna_llm_generated_tokens", "Completion tokens generated")
PROMPT_TOKENS = Counter("chatqna_llm_prompt_tokens", "Prompt tokens of finished generations")
QUEUE_WAIT = Histogram(
    "chatqna_llm_queue_wait_seconds",
    "From the request's admission to the queue to its generation slot (0 when a slot was free)",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300),
)
TTFT = Histogram(
    "chatqna_llm_time_to_first_token_seconds",
    "From the request's arrival (queueing included) to its first generated token",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TPOT = Histogram(
    "chatqna_llm_time_per_output_token_seconds",
    "Mean time between tokens after the first, per generation",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2),
)


class AdmissionQueue:
    """At most ``parallel`` holders at once; up to ``max_queue`` wait in FIFO order; beyond: 429."""

    def __init__(self, parallel: int, max_queue: int) -> None:
        self.parallel = parallel
        self.max_queue = max_queue
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._hold_s = 5.0  # moving average of how long a slot is held: the basis of Retry-After

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def snapshot(self) -> dict[str, int]:
        """For the readiness answer: requests generating (holding a slot), waiting, and the limits."""
        return {"active": self.active, "waiting": len(self._waiters), "max_queue": self.max_queue}

    async def acquire(self) -> float:
        """Wait for a slot (FIFO); returns the time it was granted, for `release`."""
        if self.active < self.parallel and not self._waiters:
            self.active += 1
            self._gauges()
            QUEUE_WAIT.observe(0)
            return time.monotonic()
        if len(self._waiters) >= self.max_queue:
            REJECTED.inc()
            retry = self._hold_s * (len(self._waiters) + 1) / self.parallel
            raise Overloaded(
                f"the LLM queue is full ({self.active} generating, {len(self._waiters)} waiting); retry later",
                retry_after=max(1, min(60, math.ceil(retry))),
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queued_at = time.monotonic()
        self._waiters.append(fut)
        self._gauges()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted just as the waiter went away: pass it on
                self._hand_over()
            else:
                self._waiters.remove(fut)
            self._gauges()
            raise
        granted = time.monotonic()
        QUEUE_WAIT.observe(granted - queued_at)
        return granted

    def release(self, granted_at: float) -> None:
        self._hold_s = 0.8 * self._hold_s + 0.2 * (time.monotonic() - granted_at)
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot moves to the next waiter; `active` stays
                self._gauges()
                return
        self.active -= 1
        self._gauges()

    def _gauges(self) -> None:
        ACTIVE.set(self.active)
        QUEUE_DEPTH.set(len(self._waiters))


class _Meter:
    """Token counts and timings of one generation, recorded as they happen."""

    def __init__(self, arrived: float) -> None:
        self.arrived = arrived
        self.first: float | None = None
        self.last = 0.0
        self.counted = 0

    def delta(self, event: Delta) -> None:
        if event.tokens:
            self.last = time.perf_counter()
            if self.first is None:
                self.first = self.last
                TTFT.observe(self.first - self.arrived)
            GENERATED_TOKENS.inc(event.tokens)
            self.counted += event.tokens

    def finished(self, event: Finished) -> None:
        if event.completion_tokens > self.counted:
            GENERATED_TOKENS.inc(event.completion_tokens - self.counted)
        PROMPT_TOKENS.inc(event.prompt_tokens)
        if self.first is not None and event.completion_tokens > 1:
            TPOT.observe((self.last - self.first) / (event.completion_tokens - 1))


class _Lease:
    """A granted slot and the generation holding it; `release` closes the generation and frees the slot,
    once, whoever calls it first (the stream's own ``finally`` or the response's lifecycle)."""

    def __init__(self, queue: AdmissionQueue, granted: float, events: AsyncGenerator[Event, None]) -> None:
        self.queue = queue
        self.granted = granted
        self.events = events
        self.released = False

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        try:
            await self.events.aclose()
        finally:
            self.queue.release(self.granted)


class _LeasedStream(StreamingResponse):
    """A streamed answer that frees its slot when the response ends, however it ends: its body generator
    may never start at all (the client left before the first chunk was asked for), and then its own
    ``finally`` never runs."""

    def __init__(self, body: AsyncGenerator[str, None], lease: _Lease) -> None:
        super().__init__(
            body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self.lease = lease

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            finally:
                await self.lease.release()


class ChatService:
    def __init__(self, parallel: int, max_queue: int) -> None:
        self.queue = AdmissionQueue(parallel, max_queue)

    async def chat(self, req: ChatCompletionRequest, backend: LLMBackend, request: Request) -> Response:
        arrived = time.perf_counter()
        prepared = await backend.prepare(req)  # 400 before anything waits
        try:
            granted = await until_disconnect(request, self.queue.acquire())
        except ClientGone:
            return Response(status_code=499)
        events = backend.generate(prepared)
        try:
            started = await until_disconnect(request, anext(events))
            if not isinstance(started, Started):
                raise ServiceError(f"the {backend.name} backend did not start the generation properly")
        except BaseException as exc:
            await events.aclose()
            self.queue.release(granted)
            if isinstance(exc, ClientGone):
                return Response(status_code=499)
            raise
        meter = _Meter(arrived)
        lease = _Lease(self.queue, granted, events)
        if req.stream:
            return _LeasedStream(self._stream(req, started, meter, lease), lease)
        try:
            body = await until_disconnect(request, self._collect(started, events, meter))
        except ClientGone:
            return Response(status_code=499)
        finally:
            await lease.release()
        return JSONResponse(body)

    async def _collect(self, started: Started, events: AsyncGenerator[Event, None], meter: _Meter) -> dict[str, Any]:
        parts: list[str] = []
        async for event in events:
            if isinstance(event, Delta):
                meter.delta(event)
                parts.append(event.text)
            elif isinstance(event, Finished):
                meter.finished(event)
                return ChatCompletion(
                    id=completion_id(),
                    created=now(),
                    model=started.model,
                    choices=[Choice(message=AssistantMessage(content="".join(parts)), finish_reason=event.reason)],
                    usage=_usage(event),
                ).model_dump()
        raise ServiceError("the generation ended without finishing")

    async def _stream(
        self, req: ChatCompletionRequest, started: Started, meter: _Meter, lease: _Lease
    ) -> AsyncGenerator[str, None]:
        events = lease.events
        cid, created, model = completion_id(), now(), started.model

        def chunk(delta: DeltaMessage, finish: FinishReason | None = None) -> str:
            return _sse(
                ChatCompletionChunk(
                    id=cid, created=created, model=model, choices=[ChunkChoice(delta=delta, finish_reason=finish)]
                )
            )

        try:
            yield chunk(DeltaMessage(role="assistant", content=""))
            async for event in events:
                if isinstance(event, Delta):
                    meter.delta(event)
                    if event.text:
                        yield chunk(DeltaMessage(content=event.text))
                elif isinstance(event, Finished):
                    meter.finished(event)
                    yield chunk(DeltaMessage(), event.reason)
                    if req.include_usage():
                        usage = ChatCompletionChunk(
                            id=cid, created=created, model=model, choices=[], usage=_usage(event)
                        )
                        yield _sse(usage)
                    break
            else:
                raise ServiceError("the generation ended without finishing")
        except ServiceError as exc:
            yield f"data: {json.dumps(exc.envelope(), ensure_ascii=False)}\n\n"
        except Exception as exc:  # never a broken stream: the client gets the error and [DONE]
            log.exception("generation failed mid-stream")
            yield f"data: {json.dumps(error_envelope(f'generation failed: {exc}', 'internal_error'))}\n\n"
        finally:
            await lease.release()
        yield "data: [DONE]\n\n"


def _sse(body: ChatCompletionChunk) -> str:
    """One event as OpenAI sends it: unset delta fields left out, ``finish_reason`` always there."""
    data = body.model_dump()
    for choice in data["choices"]:
        choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    if data["usage"] is None:
        del data["usage"]
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _usage(event: Finished) -> Usage:
    return Usage(
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        total_tokens=event.prompt_tokens + event.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=event.cached_tokens),
    )
