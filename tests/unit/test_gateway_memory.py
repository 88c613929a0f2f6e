"""The gateway's conversation memory (megaservice/conversations.py) against a stand-in chathistory: a request that
comes while the previous answer is being stored gets that turn without waiting and without a read, and the
writes land in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from comps.core.caller import Caller, caller_headers_var
from megaservice.conversations import Memory, newest_within
from megaservice.protocol import ChatQnARequest, Message

CID = "5f0f8a9e-3f0e-4c8e-9f43-8a7d9c1e2b3a"


class FakeChatHistory:
    """``request_json``: the context reads; ``stream``: the writes, each held until released."""

    def __init__(self, stored: list[Message]) -> None:
        self.stored = stored
        self.reads = 0
        self.writes: list[list[str]] = []
        self.marks: list[str] = []  # turns marked in flight by a PUT (the context read marks the others)
        self.cleared: list[str] = []  # the turn each write clears
        self.marked = asyncio.Event()
        self.release = asyncio.Event()

    async def request_json(self, method: str, url: str, **_: Any) -> dict[str, Any]:
        self.reads += 1
        return {"messages": [m.model_dump() for m in self.stored]}

    @asynccontextmanager
    async def stream(self, method: str, url: str, *, content: bytes | None = None, **_: Any) -> AsyncIterator[None]:
        if method == "PUT":  # a turn marked in flight, without a read (or its mark renewed)
            self.marks.append(url.rsplit("/", 1)[1].split("?")[0])
            self.marked.set()
            yield
            return
        await self.release.wait()
        assert content is not None
        body = orjson.loads(content)
        self.writes.append([m["content"] for m in body["messages"]])
        self.cleared.append(body["turn_id"])
        self.stored += [Message(role=m["role"], content=m["content"]) for m in body["messages"]]
        yield


def test_a_turn_during_the_previous_write_sees_it_without_a_read_and_writes_land_in_order() -> None:
    async def main() -> None:
        caller_headers_var.set(Caller("9d4c5e1a-0000-4000-8000-000000000001", "ann", "user").headers())
        earlier = [Message(role="user", content="q0 " + "x" * 40), Message(role="assistant", content="a0")]
        store = FakeChatHistory(list(earlier))
        memory = Memory("http://chathistory", timeout_s=5, budget_tokens=10)
        first = await memory.begin(ChatQnARequest(messages="q1?", conversation_id=CID), store)  # type: ignore[arg-type]
        assert store.reads == 1 and first.history == earlier
        first.parts = ["a1."]
        first.end(cut_short=False)  # the write is held
        second = await memory.begin(ChatQnARequest(messages="q2?", conversation_id=CID), store)  # type: ignore[arg-type]
        assert store.reads == 1  # no read, no wait
        expected = newest_within(
            [*earlier, Message(role="user", content="q1?"), Message(role="assistant", content="a1.")], 10
        )
        assert second.history == expected and [m.content for m in expected] == ["a0", "q1?", "a1."]
        assert [m.content for m in second.request.chat()] == ["a0", "q1?", "a1.", "q2?"]
        second.parts = ["a2."]
        second.end(cut_short=False)
        store.release.set()
        await memory.drain()
        assert store.writes == [["q1?", "a1."], ["q2?", "a2."]]
        # the second turn, not read, was marked in flight (for the other gateway replicas); each write clears its own
        assert store.marks == [second.turn_id] and store.cleared == [first.turn_id, second.turn_id]
        assert not memory.pending and not memory.after
        # once stored, the next turn reads the store again
        await memory.begin(ChatQnARequest(messages="q3?", conversation_id=CID), store)  # type: ignore[arg-type]
        assert store.reads == 2

    asyncio.run(main())


def test_another_user_never_gets_a_conversation_from_the_writes_in_flight() -> None:
    async def main() -> None:
        caller_headers_var.set(Caller("9d4c5e1a-0000-4000-8000-000000000001", "ann", "user").headers())
        store = FakeChatHistory([])
        memory = Memory("http://chathistory", timeout_s=5, budget_tokens=100)
        turn = await memory.begin(ChatQnARequest(messages="secret?", conversation_id=CID), store)  # type: ignore[arg-type]
        turn.parts = ["classified."]
        turn.end(cut_short=False)
        caller_headers_var.set(Caller("9d4c5e1a-0000-4000-8000-000000000002", "bob", "user").headers())
        store.stored = []  # what the store would answer bob (it checks the owner): here, nothing of ann's
        theirs = await memory.begin(ChatQnARequest(messages="and?", conversation_id=CID), store)  # type: ignore[arg-type]
        assert store.reads == 2 and theirs.history == []
        store.release.set()
        await memory.drain()

    asyncio.run(main())


def test_a_long_answer_renews_its_mark_until_it_is_written() -> None:
    async def main() -> None:
        caller_headers_var.set(Caller("9d4c5e1a-0000-4000-8000-000000000001", "ann", "user").headers())
        store = FakeChatHistory([])
        memory = Memory("http://chathistory", timeout_s=5, budget_tokens=100, lease_s=0.02)
        turn = await memory.begin(ChatQnARequest(messages="q?", conversation_id=CID), store)  # type: ignore[arg-type]
        while len(store.marks) < 2:  # the context read marked it; then renewed every half lease
            store.marked.clear()
            await store.marked.wait()
        assert set(store.marks) == {turn.turn_id}
        turn.parts = ["a."]
        turn.end(cut_short=False)
        store.release.set()
        await memory.drain()
        assert store.cleared == [turn.turn_id]
        assert turn.renewal is not None and turn.renewal.cancelled()  # no renewal after the write

    asyncio.run(main())
