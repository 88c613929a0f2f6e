"""Conversations at the gateway: memory around the graph, and chathistory's routes through the one public door.

A chat request with ``conversation_id`` continues that conversation: the gateway loads its newest earlier turns
that fit `GatewaySettings.history_tokens` from chathistory (``GET /v1/conversations/{id}/context``), puts them
before the new turn, runs the pipeline, and stores the question and the answer (sources, model, usage, latency)
after the answer has gone out. ``store: true`` without an id starts a new conversation under an id made here
(told on the first chunk / in the reply as ``conversation_id``); chathistory creates it with that first write.

- Storing never delays the answer: the write is a task started when the stream ends. A request on the same
  conversation that comes to this gateway while that write is in flight does not wait for it: its context is the
  one the write will leave (the previous turn's context and exchange, within the same budget, as chathistory
  selects it), so it always sees the previous turn. Its own write waits for the one before, so turns are stored
  in order.
- Across gateway replicas: a turn is marked in flight in chathistory when it begins (the context read
  ``POST .../turns/{turn}`` marks it; a new conversation's, or one whose context is known here, is marked by a ``PUT``
  sent while the answer is prepared, which the answer's end waits for: nearly always long done). The mark is
  renewed every half lease during a long answer and cleared by the write (a request that fails releases it), and
  chathistory's reads of that conversation wait while it holds (`comps/chathistory/turns.py`): a request that
  reaches another replica while the answer is still being written sees it too.
- A client that leaves mid-answer: the partial answer is stored, marked ``cut_short``.
- The store down: the chat still answers, without the earlier turns; the reply says ``conversation_saved:
  false`` and ``chatqna_gateway_conversation_not_saved_total`` counts it. A write that fails after the answer
  is counted the same way, and the next replies (for a few seconds) say not saved.
- A conversation that does not exist or is another user's: 404 before anything runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import Counter

from comps.chathistory.protocol import estimate_tokens
from comps.core.caller import USER_ID_HEADER, caller_headers_var
from comps.core.errors import NotFound, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from comps.core.http import HttpClient
from comps.core.observability import outgoing_headers
from comps.identity.auth import principal_of
from megaservice.protocol import ChatQnARequest, Message
from megaservice.sse import StreamedAnswer

log = logging.getLogger("megaservice.conversations")

NOT_SAVED = Counter(
    "chatqna_gateway_conversation_not_saved_total",
    "Conversation turns that could not be stored (the store was down), by stage",
    ["stage"],
)
DOWN_FOR_S = 5.0  # after a failed write, replies say "not saved" this long without trying the store first
MAX_TURN_S = 900.0  # the longest a turn's mark in flight is renewed (an answer is over long before)


class Memory:
    """Loads a conversation's context before the graph and stores the exchange after it."""

    def __init__(self, url: str, *, timeout_s: float, budget_tokens: int, lease_s: float = 10.0) -> None:
        self.base = url.rstrip("/") + "/v1/conversations"
        self.timeout_s = timeout_s
        self.budget = budget_tokens
        self.lease_s = lease_s  # a turn's mark in flight holds this long unless renewed (every half of it)
        self.pending: dict[str, asyncio.Task[None]] = {}  # conversation id -> its write in flight
        self.owners: dict[str, str] = {}  # conversation id -> user id, of the writes in flight
        self.after: dict[str, list[Message]] = {}  # conversation id -> its context once the writes in flight land
        self.releasing: set[asyncio.Task[None]] = set()  # releases of failed turns' marks in flight
        self.down_until = 0.0

    def store_down(self) -> bool:
        return time.monotonic() < self.down_until

    async def begin(self, req: ChatQnARequest, http: HttpClient) -> Turn:
        """The turn of this request: its conversation's earlier turns put before the request's own."""
        headers = dict(caller_headers_var.get())
        question = _last_question(req.chat())
        if req.conversation_id is None:
            turn = Turn(self, http, headers, str(uuid.uuid4()), req, question, new=True, saved=not self.store_down())
            if turn.saved:
                self._mark(turn)
            return turn
        cid = _uuid(req.conversation_id)
        if cid in self.after and self.owners.get(cid) == headers.get(USER_ID_HEADER):
            # read-your-writes without waiting: the previous answer is being stored, its context is known
            turn = self._continue(req, http, headers, cid, question, self.after[cid])
            self._mark(turn)
            return turn
        turn_id = str(uuid.uuid4())
        try:
            ctx = await http.request_json(
                "POST",  # the context, once no other turn is in flight, and this turn marked in flight
                f"{self.base}/{cid}/turns/{turn_id}?max_tokens={self.budget}&lease_s={self.lease_s:g}",
                node="chathistory",
                timeout_s=self.timeout_s + self.lease_s,  # chathistory may wait for a turn in flight
                headers=headers,
            )
        except asyncio.CancelledError:  # the search failed first: the mark may have been made
            self._release(http, headers, cid, turn_id)
            raise
        except UpstreamError as exc:
            if exc.upstream_status == 404:
                raise NotFound(f"no conversation {req.conversation_id!r}", code="conversation_not_found") from None
            if exc.upstream_status is not None and 400 <= exc.upstream_status < 500:
                raise
            NOT_SAVED.labels("load").inc()
            self.down_until = time.monotonic() + DOWN_FOR_S
            log.warning("conversation %s: store unavailable, answering without memory: %s", cid, exc.message)
            return Turn(self, http, headers, cid, req, question, new=False, saved=False)
        history = [Message(role=m["role"], content=m["content"]) for m in ctx.get("messages", ())]
        turn = self._continue(req, http, headers, cid, question, history, turn_id)
        turn.renewal = asyncio.get_running_loop().call_later(self.lease_s / 2, self._renew, turn)
        return turn

    def _continue(
        self,
        req: ChatQnARequest,
        http: HttpClient,
        headers: dict[str, str],
        cid: str,
        question: str,
        history: list[Message],
        turn_id: str | None = None,
    ) -> Turn:
        own = req.chat()
        system = [m for m in own if m.role == "system"]
        merged = system + history + [m for m in own if m.role != "system"]
        turn = Turn(
            self, http, headers, cid, req.model_copy(update={"messages": merged}), question, new=False, saved=True
        )
        if turn_id is not None:
            turn.turn_id = turn_id
        turn.history = history
        return turn

    # -- the turn's mark in flight (comps/chathistory/turns.py): read-your-writes across gateway replicas ------

    def _mark(self, turn: Turn) -> None:
        """Mark the turn in flight without reading (a new conversation, or a context known here), while the
        answer is prepared; the answer's end waits for it (`Turn.landed`), so the next request, on any replica,
        finds the mark or the answer."""
        turn.marking = asyncio.create_task(self._put_mark(turn), name=f"mark-{turn.conversation_id}")

    async def _send(
        self, http: HttpClient, method: str, path: str, headers: dict[str, str], content: bytes | None = None
    ) -> None:
        """One call to chathistory whose answer is only its success (a write, a mark, a release)."""
        async with http.stream(
            method,
            f"{self.base}/{path}",
            node="chathistory",
            timeout_s=self.timeout_s,
            content=content,
            headers=headers,
        ):
            pass

    async def _put_mark(self, turn: Turn) -> None:
        try:
            path = f"{turn.conversation_id}/turns/{turn.turn_id}?lease_s={self.lease_s:g}"
            await self._send(turn.http, "PUT", path, turn.headers)
        except UpstreamError as exc:  # the write will tell the store is down; reads just do not wait
            log.warning("conversation %s: the turn was not marked in flight: %s", turn.conversation_id, exc.message)
        except Exception:  # never let a background call fail silently
            log.exception("conversation %s: marking the turn in flight failed", turn.conversation_id)
        if not turn.ended:
            turn.renewal = asyncio.get_running_loop().call_later(self.lease_s / 2, self._renew, turn)

    def _renew(self, turn: Turn) -> None:
        """A long answer: its mark is renewed every half lease until it is written (never past `MAX_TURN_S`, so
        that a turn some failure left unended cannot hold its conversation's readers for ever)."""
        if not turn.ended and time.perf_counter() - turn.started < MAX_TURN_S:
            turn.marking = asyncio.create_task(self._put_mark(turn), name=f"renew-{turn.conversation_id}")

    def release(self, turn: Turn) -> None:
        """A turn that will store nothing (its request failed before an answer): its mark goes now."""
        if turn.ended:
            return
        turn.ended = True
        if turn.renewal is not None:
            turn.renewal.cancel()
        if turn.saved:
            self._release(turn.http, turn.headers, turn.conversation_id, turn.turn_id, turn.marking)

    def _release(
        self,
        http: HttpClient,
        headers: dict[str, str],
        cid: str,
        turn_id: str,
        marking: asyncio.Task[None] | None = None,
    ) -> None:
        async def release() -> None:
            if marking is not None:
                await asyncio.wait([marking])
            try:
                await self._send(http, "DELETE", f"{cid}/turns/{turn_id}", headers)
            except UpstreamError as exc:  # the mark expires with its lease
                log.warning("conversation %s: the turn was not released: %s", cid, exc.message)
            except Exception:  # never let a background call fail silently
                log.exception("conversation %s: releasing the turn failed", cid)

        task = asyncio.create_task(release(), name=f"release-{cid}")
        self.releasing.add(task)
        task.add_done_callback(self.releasing.discard)

    async def settle(self, user_id: str | None) -> None:
        """Wait (bounded) for the writes in flight of every conversation of this user."""
        tasks = [t for cid, t in self.pending.items() if self.owners.get(cid) == user_id]
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout_s)

    def save(self, turn: Turn, *, cut_short: bool) -> None:
        """Store the exchange in the background; the conversation's next request waits for it."""
        if turn.renewal is not None:
            turn.renewal.cancel()
        if not turn.saved:
            return
        cid = turn.conversation_id
        before = self.pending.get(cid)  # stored first: turns keep their order
        content = "".join(turn.parts)
        task = asyncio.create_task(self._write(turn, cut_short, content, before), name=f"store-{cid}")
        self.pending[cid] = task
        self.owners[cid] = turn.headers.get(USER_ID_HEADER, "")
        exchange = [Message(role="user", content=turn.question), Message(role="assistant", content=content)]
        self.after[cid] = newest_within([*turn.history, *exchange], self.budget)

        def forget(done: asyncio.Task[None]) -> None:
            if self.pending.get(cid) is done:
                del self.pending[cid]
                self.owners.pop(cid, None)
                self.after.pop(cid, None)

        task.add_done_callback(forget)

    async def _write(self, turn: Turn, cut_short: bool, content: str, before: asyncio.Task[None] | None) -> None:
        waits = [t for t in (before, turn.marking) if t is not None]
        if waits:
            await asyncio.wait(waits)
        answer: dict[str, Any] = {
            "role": "assistant",
            "content": content,
            "sources": turn.sources,
            "model": turn.model,
            "usage": turn.usage,
            "latency_ms": int((time.perf_counter() - turn.started) * 1000),
            "cut_short": cut_short,
            "cached": turn.cached,
        }
        if turn.prompt is not None:
            answer |= {"prompt_id": turn.prompt.id, "prompt_version": turn.prompt.version}
        body = {
            "messages": [{"role": "user", "content": turn.question}, answer],
            "create": turn.new,
            "turn_id": turn.turn_id,
        }
        try:
            await self._send(turn.http, "POST", f"{turn.conversation_id}/messages", turn.headers, orjson.dumps(body))
        except UpstreamError as exc:
            NOT_SAVED.labels("save").inc()
            self.down_until = time.monotonic() + DOWN_FOR_S
            log.warning("conversation %s: the answer was not stored: %s", turn.conversation_id, exc.message)
        except Exception:  # never let a background write fail silently
            NOT_SAVED.labels("save").inc()
            log.exception("conversation %s: storing the answer failed", turn.conversation_id)

    async def drain(self, timeout_s: float = 10.0) -> None:
        """On shutdown: let the writes in flight finish (bounded)."""
        tasks = [*self.pending.values(), *self.releasing]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)


class Turn(StreamedAnswer):
    """One question and its answer in a conversation: what to send, and what to store afterwards."""

    def __init__(
        self,
        memory: Memory,
        http: HttpClient,
        headers: dict[str, str],
        conversation_id: str,
        request: ChatQnARequest,
        question: str,
        *,
        new: bool,
        saved: bool,
    ) -> None:
        super().__init__()  # the answer, as its chunks pass (`observe`) or whole (`completed`)
        self.memory = memory
        self.http = http
        self.headers = headers
        self.conversation_id = conversation_id
        self.request = request
        self.question = question
        self.new = new
        self.saved = saved
        self.started = time.perf_counter()
        self.sources: list[dict[str, Any]] = []
        self.prompt: Any = None  # the registry prompt used (megaservice.prompts.UsedPrompt)
        self.history: list[Message] = []  # the earlier turns put before the question
        self.cached = False  # the answer came from the answer cache
        self.ended = False
        self.turn_id = str(uuid.uuid4())  # its mark in flight in chathistory
        self.marking: asyncio.Task[None] | None = None  # the mark (or its renewal) being made
        self.renewal: asyncio.TimerHandle | None = None  # the next renewal of the mark

    async def landed(self) -> None:
        """Before the answer's end goes out: the turn's mark is made (it nearly always is by then: it was sent
        when the turn began), so the client's next request, on whichever gateway, finds it or the answer."""
        if self.marking is not None and not self.marking.done():
            await asyncio.wait([self.marking], timeout=self.memory.timeout_s)

    def extras(self) -> dict[str, Any]:
        """What the reply (or the first chunk) says about the conversation."""
        return {"conversation_id": self.conversation_id, "conversation_saved": self.saved}

    def completed(self, completion: dict[str, Any]) -> None:
        """A whole (non-streamed) completion."""
        self.model = completion.get("model")
        self.usage = completion.get("usage")
        choices = completion.get("choices") or [{}]
        self.parts = [((choices[0].get("message") or {}).get("content")) or ""]

    def release(self) -> None:
        """The request failed before any answer: nothing is stored, the mark in flight goes."""
        self.memory.release(self)

    def end(self, *, cut_short: bool) -> None:
        """Store the exchange (once, however the answer ended)."""
        if not self.ended:
            self.ended = True
            self.memory.save(self, cut_short=cut_short)


def newest_within(messages: list[Message], budget: int) -> list[Message]:
    """The newest messages whose token estimates fit ``budget``, oldest first: what chathistory's context
    (``GET /v1/conversations/{id}/context?max_tokens=``) answers for these messages."""
    kept: list[Message] = []
    used = 0
    for m in reversed(messages):
        used += estimate_tokens(m.text())
        if used > budget:
            break
        kept.append(m)
    return kept[::-1]


def _last_question(chat: Sequence[Message]) -> str:
    return next((m.text() for m in reversed(chat) if m.role == "user" and m.text().strip()), "")


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound(f"no conversation {value!r}", code="conversation_not_found") from None


# -- chathistory's and the prompt registry's routes through the gateway -----------------------------------

Routes = tuple[tuple[str, tuple[str, ...]], ...]
CHATHISTORY_ROUTES: Routes = (
    ("/v1/conversations", ("GET", "POST")),
    ("/v1/conversations/{rest:path}", ("GET", "POST", "PATCH", "DELETE")),
    ("/v1/chathistory/{op}", ("POST",)),
    ("/v1/feedback/{op}", ("POST",)),
    ("/v1/admin/feedback", ("GET",)),
    ("/v1/admin/sessions/count", ("GET",)),
)
PROMPT_ROUTES: Routes = (
    ("/v1/prompts", ("GET", "POST")),
    ("/v1/prompts/{rest:path}", ("GET", "PUT", "DELETE")),
    ("/v1/prompt/{op}", ("POST",)),
)


def build_router(chathistory_url: str, timeout_s: float, memory: Memory | None = None) -> APIRouter:
    """chathistory's routes. A read waits for this gateway's writes in flight of the caller (read-your-writes:
    a reply's conversation is there at once)."""
    return proxy_router(chathistory_url, timeout_s, CHATHISTORY_ROUTES, "chathistory", memory)


def proxy_router(url: str, timeout_s: float, routes: Routes, node: str, memory: Memory | None = None) -> APIRouter:
    """An internal service's routes, same paths and shapes; the caller is named to it in the identity headers
    (the authentication middleware set them), so a user only ever reaches what the service lets them."""
    router = APIRouter(tags=[node], dependencies=[Depends(principal_of)])
    base = url.rstrip("/")

    async def relay(request: Request) -> Response:
        http: HttpClient = request.app.state.service.http
        body = await request.body()
        if memory is not None and memory.pending:
            await memory.settle(caller_headers_var.get().get(USER_ID_HEADER))
        extra = dict(http.default_headers)
        if body:
            extra["Content-Type"] = request.headers.get("content-type", "application/json")
        target = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            async with asyncio.timeout(timeout_s):
                async with http.session.request(
                    request.method, target, data=body or None, headers=outgoing_headers(extra)
                ) as resp:
                    content = await resp.read()
                    kept = {
                        k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "content-disposition")
                    }
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{node} did not answer within {timeout_s:g}s", node=node) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"{node} is unreachable: {exc}", node=node) from exc
        return Response(content, status_code=resp.status, headers=kept)

    for path, methods in routes:
        slug = "".join(c if c.isalnum() else "_" for c in path).strip("_")
        for method in methods:
            router.add_api_route(
                path,
                relay,
                methods=[method],
                summary=f"{node}: {method} {path}",
                operation_id=f"{node}_{method.lower()}_{slug}",
            )
    return router
