"""ChatQnA: run the request's pipeline, then answer as OpenAI does, with the passages used as ``sources``.

Before the answer starts, a failing hop is an HTTP error naming the node (the kit's envelope: 502, 503,
504, or the LLM's own 4xx such as a prompt over its context window). Once a stream has started, a
failure is one SSE error event followed by ``data: [DONE]``. A client that goes away cancels the work
in flight; during a stream that closes the LLM connection, which stops the generation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from opentelemetry import trace
from prometheus_client import Counter, Histogram
from starlette.background import BackgroundTask

from comps.core.disconnect import ClientGone, until_disconnect
from comps.core.errors import BadRequest, ServiceError, UpstreamError, error_envelope
from comps.core.http import HttpClient
from comps.identity.auth import principal_of
from megaservice.adapters import Question, RagDefaults
from megaservice.cache import Answer, AnswerCache, Capture, Lookup, deterministic
from megaservice.condense import Condenser
from megaservice.conversations import Memory, Turn
from megaservice.graph import NODE_ERRORS
from megaservice.models import ModelTable
from megaservice.pipelines import Pipeline
from megaservice.prompt import Passage, is_follow_up, user_turns
from megaservice.prompts import Prompts, UsedPrompt, applied
from megaservice.protocol import ChatQnACompletion, ChatQnARequest, Source
from megaservice.settings import GatewaySettings
from megaservice.sse import DONE, data_of, delta_content, error_event, event, event_blocks
from megaservice.tracing import StreamTrace, Tracing
from megaservice.usage import Meter, UsageRecorder

log = logging.getLogger("megaservice")

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
REQUESTS = Counter("chatqna_gateway_requests_total", "ChatQnA requests by pipeline and mode", ["pipeline", "mode"])
TTFT = Histogram(
    "chatqna_gateway_time_to_first_token_seconds",
    "Streaming: from the request's arrival to the first content chunk sent",
    ["pipeline"],
    buckets=_TTFT_BUCKETS,
)
LLM_TTFT = Histogram(
    "chatqna_gateway_llm_time_to_first_token_seconds",
    "Streaming: from the LLM call to its first content chunk",
    buckets=_TTFT_BUCKETS,
)
CLIENT_GONE = Counter("chatqna_gateway_client_disconnects_total", "Requests whose client left before the end")

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ChatQnA:
    def __init__(
        self,
        settings: GatewaySettings,
        pipelines: dict[str, Pipeline],
        memory: Memory | None = None,
        prompts: Prompts | None = None,
        *,
        models: ModelTable | None = None,
        by_model: dict[str, dict[str, Pipeline]] | None = None,
        usage: UsageRecorder | None = None,
        cache: AnswerCache | None = None,
    ) -> None:
        self.models = models or ModelTable.of(settings)
        self.by_model = by_model or {self.models.default: pipelines}  # model -> its pipelines
        self.usage = usage
        self.default = settings.pipeline
        self.cache = cache
        self.default_collection = settings.default_collection
        self.memory = memory
        self.prompts = prompts
        self.pipelines = pipelines
        self.snippet = settings.source_snippet_chars
        self.rag = RagDefaults.of(settings)
        self.question_rewrite = settings.question_rewrite
        self.condenser = Condenser(pipelines["llm-only"].graph)
        self.tracing = Tracing(settings.trace_content)
        # The gateway's defaults that shape an answer (a part of every cache key).
        self.key_defaults = {"rag": dataclasses.asdict(self.rag), "snippet": self.snippet}
        self._counts = {(p, s): REQUESTS.labels(p, "stream" if s else "json") for p in pipelines for s in (False, True)}

    async def answer(self, req: ChatQnARequest, http: HttpClient, request: Request, opea: bool = False) -> Response:
        """The answer from the request's model; with usage accounting on, metered (errors too). ``opea``: a stream
        in OPEA's line format (`opea_token`) instead of OpenAI's chunks."""
        model = self.models.resolve(req.model)
        if self.usage is None:
            return await self._answer(req, http, request, model, None, opea)
        meter = self.usage.meter(principal_of(request), model, req.pipeline_for(self.default))
        try:
            response = await self._answer(req, http, request, model, meter, opea)
        except ServiceError as exc:
            meter.end("error", exc.status_code)
            raise
        except BaseException:
            meter.end("error", 500)
            raise
        if response.status_code == 499:
            meter.end("cancelled", 499)
        return response

    async def _answer(
        self, req: ChatQnARequest, http: HttpClient, request: Request, model: str, meter: Meter | None, opea: bool
    ) -> Response:
        arrived = meter.started if meter is not None else time.perf_counter()
        if req.prompt is not None and self.prompts is None:
            raise BadRequest("this gateway has no prompt registry", param="prompt", code="no_prompt_registry")
        pipe = self.by_model[model][req.pipeline_for(self.default)]  # a prompt or earlier turns do not change it
        if meter is not None:
            meter.pipeline = pipe.name
        turn: Turn | None = None
        used: UsedPrompt | None = None
        # What loads while the passages are found; not for a cacheable request, whose key needs it all first.
        later = None if self._may_cache(req, pipe) else self._later(req, pipe, http)
        try:
            if later is None:
                if req.prompt is not None and self.prompts is not None:
                    req, used = await self.prompts.apply(req, http)
                if (turn := await self._turn(req, http)) is not None:
                    turn.prompt = used
                    req = turn.request  # with the conversation's earlier turns
            q = Question.of(req, retrieves=pipe.name != "llm-only", rag=self.rag)
            look = await self._look(pipe, q, used, model) if self.cache is not None and later is None else None
            request.state.cached = look is not None and look.answer is not None  # a cache hit (the meter's `cached`)
            if look is not None and look.answer is not None:
                self._counts[pipe.name, req.stream].inc()
                self.tracing.chain(
                    trace.get_current_span(), pipe.name, q, request, turn.conversation_id if turn else None, look
                )
                if meter is not None:
                    meter.cached = True
                    meter.usage(look.answer.usage)
                    meter.first_token(time.perf_counter())
                    meter.end("ok")
                if turn is not None:
                    await turn.landed()
                return self._replay(look.answer, req, turn)
            if q.retrieves and (req.question_rewrite or self.question_rewrite) == "condense":
                standalone = await self.condenser.standalone(q.chat, http)
                if standalone:
                    q = dataclasses.replace(q, query=standalone)
            self._counts[pipe.name, req.stream].inc()
            self.tracing.chain(
                trace.get_current_span(), pipe.name, q, request, turn.conversation_id if turn else None, look
            )
            try:
                if not req.stream:
                    return await until_disconnect(request, self._complete(pipe, q, http, turn, later, meter, look))
                stream = await until_disconnect(
                    request, self._open(pipe, q, http, arrived, turn, later, opea, meter, look)
                )
            except ClientGone:
                CLIENT_GONE.inc()
                if (turn := turn or (later.turn() if later else None)) is not None:
                    turn.end(cut_short=True)
                return Response(status_code=499)
            return StreamingResponse(
                stream.events(),
                media_type="text/event-stream",
                headers=STREAM_HEADERS,
                background=BackgroundTask(stream.close),
            )
        except BaseException:  # no answer: a turn that began stores nothing, its mark in flight goes
            if (failed := turn or (later.turn() if later else None)) is not None:
                failed.release()
            raise

    async def _turn(self, req: ChatQnARequest, http: HttpClient) -> Turn | None:
        """The conversation turn of a request with ``conversation_id`` or ``store: true`` (else None)."""
        if self.memory is None or (req.conversation_id is None and not req.store):
            return None
        return await self.memory.begin(req, http)

    def _may_cache(self, req: ChatQnARequest, pipe: Pipeline) -> bool:
        grounded = pipe.name != "llm-only" or bool(req.context)
        return self.cache is not None and self.cache.wanted(
            req, deterministic(req, grounded=grounded, rag_temperature=self.rag.temperature)
        )

    async def _look(self, pipe: Pipeline, q: Question, used: UsedPrompt | None, model: str) -> Lookup | None:
        """The cache's lookup of this request (None: not cached): the key covers the collections searched, as
        access checks left them, and their content versions."""
        assert self.cache is not None
        req = q.request
        searched = (req.collections or [req.collection or self.default_collection]) if q.retrieves else []
        return await self.cache.lookup(
            req,
            collections=searched,
            deterministic=deterministic(
                req, grounded=q.retrieves or bool(q.given), rag_temperature=self.rag.temperature
            ),
            pipeline=pipe.name,
            question_rewrite=self.question_rewrite,
            prompt=(used.id, used.version) if used is not None else None,
            defaults={**self.key_defaults, "model": model},  # the model that answers (the request's may be unset)
        )

    def _replay(self, answer: Answer, req: ChatQnARequest, turn: Turn | None) -> Response:
        """A cached answer, as the same JSON or the same events as a fresh one, marked ``cached``."""
        extras = turn.extras() if turn is not None else {}
        if turn is not None:
            turn.cached = True
            turn.sources = answer.sources
            turn.model, turn.usage, turn.parts = answer.model, answer.usage, [answer.content]
            turn.end(cut_short=False)
        if not req.stream:
            return Response(orjson.dumps(answer.completion(extras)), media_type="application/json")
        keep_usage = req.stream_options is not None and req.stream_options.include_usage
        return Response(
            answer.events(extras, include_usage=keep_usage), media_type="text/event-stream", headers=STREAM_HEADERS
        )

    def _later(self, req: ChatQnARequest, pipe: Pipeline, http: HttpClient) -> _Later | None:
        """The conversation's earlier turns and the registry's prompt, loading while the passages are found, when
        the search does not need them: the question is not a follow-up searched with the turn before, and there
        is no condense step. None when there is nothing to load, or it must come first."""
        continues = self.memory is not None and req.conversation_id is not None
        remembers = self.memory is not None and (continues or req.store)  # a turn to begin (no I/O for a new one)
        if (
            not (continues or req.prompt is not None)
            or pipe.name == "llm-only"
            or (req.question_rewrite or self.question_rewrite) != "heuristic"
            or is_follow_up(user_turns(req.chat())[-1])
        ):
            return None
        return _Later(
            asyncio.create_task(self._turn(req, http), name="conversation-context") if remembers else None,
            asyncio.create_task(self.prompts.fetch(req, http), name="prompt") if req.prompt and self.prompts else None,
        )

    async def _prepare(
        self, pipe: Pipeline, q: Question, http: HttpClient, turn: Turn | None, later: _Later | None
    ) -> tuple[dict[str, Any], Any, Question, Turn | None]:
        """The graph's answers but the LLM's, the LLM's request, the question and the turn (once loaded)."""
        if later is None:
            answers, llm_request = await pipe.graph.prepare(http, q)
            return answers, llm_request, q, turn
        prefix = asyncio.create_task(pipe.graph.run_prefix(http, q), name="graph-prefix")
        tasks: list[asyncio.Task[Any]] = [t for t in (later.loading, later.prompting) if t is not None] + [prefix]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:  # a missing conversation or prompt (404) before a failing service
                if task in done and (exc := task.exception()) is not None:
                    raise exc
        finally:
            for task in tasks:
                task.cancel()  # no-op once done
        turn = later.turn()
        req = q.request if turn is None else turn.request
        if later.prompting is not None:
            req, used = applied(req, later.prompting.result())
            if turn is not None:
                turn.prompt = used
        q = dataclasses.replace(q, request=req, chat=req.chat())
        answers = prefix.result()
        return answers, pipe.graph.terminal_request(q, answers), q, turn

    async def _complete(
        self,
        pipe: Pipeline,
        q: Question,
        http: HttpClient,
        turn: Turn | None,
        later: _Later | None,
        meter: Meter | None = None,
        look: Lookup | None = None,
    ) -> Response:
        answers, llm_request, q, turn = await self._prepare(pipe, q, http, turn, later)
        sources = self.sources(pipe.passages(q, answers))
        completion = await pipe.graph.call_terminal(http, llm_request)
        if meter is not None:
            meter.usage(completion.usage)
            meter.end("ok")
        self.tracing.chain_answer(trace.get_current_span(), completion)
        body = ChatQnACompletion.model_construct(**dict(completion), sources=sources)
        if turn is None and look is None:
            return Response(body.__pydantic_serializer__.to_json(body), media_type="application/json")
        reply = body.__pydantic_serializer__.to_python(body, mode="json")
        if look is not None and self.cache is not None:
            choice = reply["choices"][0]
            fresh = Answer(reply["model"], choice["message"]["content"], choice["finish_reason"], reply["usage"],
                           reply["sources"])  # fmt: skip
            await self.cache.store(look, fresh)  # before the reply: the next request finds it
        if turn is None:
            return Response(orjson.dumps(reply), media_type="application/json")
        turn.sources = reply["sources"]
        turn.completed(reply)
        turn.end(cut_short=False)
        await turn.landed()
        return Response(orjson.dumps(reply | turn.extras()), media_type="application/json")

    async def _open(
        self,
        pipe: Pipeline,
        q: Question,
        http: HttpClient,
        arrived: float,
        turn: Turn | None,
        later: _Later | None,
        opea: bool,
        meter: Meter | None = None,
        look: Lookup | None = None,
    ) -> _Relay:
        answers, llm_request, q, turn = await self._prepare(pipe, q, http, turn, later)
        sources = [s.model_dump() for s in self.sources(pipe.passages(q, answers))]
        stack = AsyncExitStack()
        called = time.perf_counter()
        resp, llm_span = await stack.enter_async_context(pipe.graph.open_stream(http, llm_request))
        recorder = self.tracing.stream(llm_span, llm_request, trace.get_current_span(), arrived, called)
        if recorder is not None:
            stack.callback(recorder.end)  # before the stream's span ends, however the relay ends
        keep_usage = q.request.stream_options is not None and q.request.stream_options.include_usage
        if turn is not None:
            turn.sources = sources
        relay = _Relay(stack, resp, pipe.name, sources, arrived, called, recorder, keep_usage, turn, opea, meter)
        if look is not None and self.cache is not None:
            relay.capture, relay.cache = Capture(look), self.cache
        return relay

    def sources(self, passages: list[Passage]) -> list[Source]:
        n = self.snippet
        return [
            Source(id=p.id, source=p.source, doc_id=p.doc_id, page=p.page, score=p.score, text=p.text[:n])
            for p in passages
        ]


class _Relay:
    """Passes the LLM's events on as they come; adds ``sources`` to the first one and ends every stream
    with ``[DONE]``, after an error event if the LLM's stream broke."""

    def __init__(
        self,
        stack: AsyncExitStack,
        resp: aiohttp.ClientResponse,
        pipeline: str,
        sources: list[dict[str, object]],
        arrived: float,
        called: float,
        recorder: StreamTrace | None = None,
        keep_usage: bool = True,
        turn: Turn | None = None,
        opea: bool = False,
        meter: Meter | None = None,
    ) -> None:
        self.opea = opea  # OPEA's lines (`opea_token`) instead of the chunks
        self.meter = meter  # usage accounting: ended with the stream
        self.failed = False  # an error event was sent
        self.turn = turn  # a conversation's: stored when the stream ends, cut short unless [DONE] came
        self.finished = False
        self.stack = stack
        self.resp = resp
        self.pipeline = pipeline
        self.sources = sources
        self.arrived = arrived
        self.called = called
        self.recorder = recorder  # what the trace gets of the answer, when it is recorded
        self.keep_usage = keep_usage  # the client asked for the usage chunk (the LLM is always asked)
        self.first = True
        self.timed = False
        self.capture: Capture | None = None  # a cacheable answer: kept when the stream ends well
        self.cache: AnswerCache | None = None

    async def events(self) -> AsyncIterator[bytes]:
        try:
            async with self.stack:  # closes (and so stops) the LLM stream however this ends
                async for blocks in event_blocks(self.resp.content):
                    out = []
                    for block in blocks:
                        data = data_of(block)
                        if data is None:
                            continue
                        if data == b"[DONE]":
                            self.finished = True
                            await self._keep()  # before [DONE]: the client's next request finds it
                            if self.turn is not None:
                                await self.turn.landed()  # and finds the turn in flight (or stored)
                            out.append(DONE)
                            yield b"".join(out)
                            return
                        if (data := self._inspect(data)) is not None and (frame := self._frame(data)):
                            out.append(frame)
                    if out:
                        yield b"".join(out)  # what arrived together leaves together: no waiting
            NODE_ERRORS.labels("llm", "stream_error").inc()
            self.failed = True
            yield error_event(UpstreamError("llm ended its stream without [DONE]", node="llm"))
        except ServiceError as exc:  # mapped by the kit (stall, broken connection); counted by the graph
            self.failed = True
            yield error_event(exc)
        except Exception as exc:  # never a broken stream: the client gets the error, then [DONE]
            self.failed = True
            log.exception("relaying the LLM stream failed")
            yield event(orjson.dumps(error_envelope(f"relaying the answer failed: {exc}", "internal_error")))
        finally:
            self._end()
        yield DONE

    async def _keep(self) -> None:
        c = self.capture
        if c is None or self.cache is None or c.failed or c.finish_reason is None:
            return
        await self.cache.store(
            c.lookup, Answer(c.model or "", "".join(c.parts), c.finish_reason, c.usage, self.sources)
        )

    def _end(self) -> None:
        if self.turn is not None:
            self.turn.end(cut_short=not self.finished)
        if self.meter is not None:
            self.meter.end("error" if self.failed else "ok" if self.finished else "cancelled")

    def _frame(self, data: bytes) -> bytes | None:
        """The event sent for a chunk: itself, or in OPEA's format its content alone (None without content);
        an error stays the envelope in both."""
        if not self.opea or data.startswith(b'{"error"'):
            return event(data)
        content = delta_content(_json(data))
        return opea_token(content) if content else None

    def _inspect(self, data: bytes) -> bytes | None:
        """Sources onto the first chunk; time to first token at the first content; errors counted; None for a
        usage chunk the client did not ask for."""
        chunk: object = None
        if self.first or not self.timed or self.turn is not None or self.capture is not None:
            chunk = _json(data)
            if self.turn is not None:
                self.turn.observe(chunk)
            if self.capture is not None:
                self.capture.observe(chunk)
            if self.first:
                self.first = False
                if isinstance(chunk, dict) and "choices" in chunk:
                    chunk["sources"] = self.sources
                    chunk["cached"] = False
                    if self.turn is not None:
                        chunk.update(self.turn.extras())
                    data = orjson.dumps(chunk)
            if not self.timed and _has_content(chunk):
                self.timed = True
                now = time.perf_counter()
                if self.meter is not None:
                    self.meter.first_token(now)
                TTFT.labels(self.pipeline).observe(now - self.arrived)
                LLM_TTFT.observe(now - self.called)
                if self.recorder is not None:
                    self.recorder.first_token(now)
        if self.recorder is not None:
            self.recorder.event(data, chunk)
        if data.startswith(b'{"error"'):
            NODE_ERRORS.labels("llm", "stream_error").inc()
            self.failed = True
        if data.find(b'"choices":[]') != -1:  # the usage chunk (the LLM is always asked for it)
            if self.meter is not None:
                usage = (chunk if chunk is not None else _json(data)) or {}
                self.meter.usage(usage.get("usage") if isinstance(usage, dict) else None)
            if not self.keep_usage:
                return None
        return data

    async def close(self) -> None:
        self._end()  # a client that left mid-stream: the generator may never resume to its own finally
        await self.stack.aclose()


@dataclasses.dataclass(frozen=True, slots=True)
class _Later:
    """What loads while the passages are found: a conversation's earlier turns, the registry's prompt."""

    loading: asyncio.Task[Turn | None] | None
    prompting: asyncio.Task[dict[str, Any]] | None

    def turn(self) -> Turn | None:
        """The conversation's turn, if it has loaded."""
        t = self.loading
        if t is None or not t.done() or t.cancelled() or t.exception() is not None:
            return None
        return t.result()


def _json(data: bytes) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _has_content(chunk: object) -> bool:
    return bool(delta_content(chunk))


def opea_token(text: str) -> bytes:
    """One token in OPEA's stream: ``data: b'...'`` (Python's repr of its UTF-8 bytes, so always ASCII)."""
    return event(repr(text.encode()).encode("ascii"))
