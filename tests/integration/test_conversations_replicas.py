"""Read-your-writes across gateway replicas: two real gateways on one real chathistory and PostgreSQL, stub
embedding, retriever, reranker and LLM. Gateway A reaches chathistory through a relay that holds A's write of an
answer (a write that is slow, made by the test), so the follow-up on gateway B comes while it is in flight."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from comps.identity.service import ANONYMOUS
from tests.support.database import pending_turns
from tests.support.http_hold import HoldingProxy
from tests.support.procs import Service, start_chathistory, start_service
from tests.support.stubs import StubMesh

pytestmark = pytest.mark.integration

INTERNAL = secrets.token_urlsafe(32)
ANSWER = "The answer is forty-two [1]."


@dataclass
class Replicas:
    mesh: StubMesh
    proxy: HoldingProxy  # gateway A's way to chathistory: holds a write when asked
    seen_b: HoldingProxy  # gateway B's: records what B asks
    chathistory: Service
    a: httpx.Client
    b: httpx.Client
    database_url: str


@pytest.fixture(scope="module")
def replicas(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    logs = tmp_path_factory.mktemp("replicas")
    services: list[Service] = []
    with StubMesh() as mesh:
        chathistory = start_chathistory(database_url, INTERNAL, logs)
        services.append(chathistory)
        proxy, seen_b = HoldingProxy(chathistory.url).start(), HoldingProxy(chathistory.url).start()
        try:
            gateways = []
            for name, url in (("gateway-a", proxy.url), ("gateway-b", seen_b.url)):
                env = {**mesh.env(), "GATEWAY_INTERNAL_API_KEY": INTERNAL, "GATEWAY_CHATHISTORY_URL": url}
                gw = start_service("megaservice", "GATEWAY_", env, name=name, log_dir=logs, timeout_s=120)
                services.append(gw)
                gateways.append(httpx.Client(base_url=gw.url, timeout=60))
            yield Replicas(mesh, proxy, seen_b, chathistory, gateways[0], gateways[1], database_url)
        finally:
            proxy.release()
            for svc in reversed(services):
                svc.stop()
            proxy.stop()
            seen_b.stop()


def chunks(r: httpx.Response) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]


def is_write(method: str, path: str) -> bool:
    return method == "POST" and path.endswith("/messages")


def is_begin(cid: str) -> Callable[[str, str], bool]:
    """A gateway's begin of a turn of that conversation (its context read, which marks the turn)."""
    return lambda method, path: method == "POST" and path.startswith(f"/v1/conversations/{cid}/turns/")


def test_a_follow_up_on_another_replica_sees_the_turn_still_being_written(replicas: Replicas) -> None:
    r = replicas
    with ThreadPoolExecutor(1) as pool:
        cid: str | None = None
        for n, question in enumerate(("What is the Zorblax project?", "What does the stub know about its budget?")):
            r.proxy.hold_next(is_write)
            body: dict[str, Any] = {"messages": question, "stream": True}
            body |= {"store": True} if cid is None else {"conversation_id": cid}
            first = r.a.post("/v1/chatqna", json=body)  # the whole stream, to [DONE]
            assert first.status_code == 200 and first.text.rstrip().endswith("data: [DONE]")
            cid = chunks(first)[0]["conversation_id"]
            r.proxy.wait_held()  # A's write of this answer is in flight, and stays so
            asked = len(r.seen_b.seen)
            follow: Future[httpx.Response] = pool.submit(
                r.b.post, "/v1/chatqna", json={"messages": "And who leads it?", "conversation_id": cid}
            )
            r.seen_b.wait_seen(is_begin(cid), after=asked)
            # B asked chathistory for the context while the write is held: B waits for it, it does not miss it
            assert not follow.done()
            r.proxy.release()
            second = follow.result(60)
            assert second.status_code == 200, second.text
            assert second.json()["conversation_saved"] is True
            sent = [m["content"] for m in r.mesh.seen["llm"][-1]["messages"]]
            assert sent[-3:-1] == [question, ANSWER], sent  # turn n, as written by A, before B's question
            assert len(sent) == 2 * (2 * n + 1) + 1
    assert cid is not None
    msgs = r.b.get(f"/v1/conversations/{cid}/messages").json()["data"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 4
    assert pending_turns(r.database_url, cid) == 0  # every mark cleared by its write


def test_a_messages_read_on_another_replica_waits_for_the_answer_being_written(replicas: Replicas) -> None:
    r = replicas
    r.proxy.hold_next(is_write)
    cid = r.a.post("/v1/chatqna", json={"messages": "Stored?", "store": True}).json()["conversation_id"]
    r.proxy.wait_held()
    with ThreadPoolExecutor(1) as pool:
        asked = len(r.seen_b.seen)
        listing = pool.submit(r.b.get, f"/v1/conversations/{cid}/messages")
        r.seen_b.wait_seen(lambda m, p: m == "GET" and p == f"/v1/conversations/{cid}/messages", after=asked)
        assert not listing.done()
        r.proxy.release()
        msgs = listing.result(60).json()["data"]
    assert [m["content"] for m in msgs] == ["Stored?", ANSWER]


def test_a_turn_whose_gateway_never_writes_holds_readers_only_until_its_lease_ends(replicas: Replicas) -> None:
    r = replicas
    cid = r.b.post("/v1/chatqna", json={"messages": "Before the crash?", "store": True}).json()["conversation_id"]
    # a gateway marks a turn in flight, then dies: no write, no release
    marked = httpx.put(
        f"{r.chathistory.url}/v1/conversations/{cid}/turns/{uuid.uuid4()}",
        params={"lease_s": 1.5},
        headers={"Authorization": f"Bearer {INTERNAL}", "x-chatqna-user-id": ANONYMOUS.user_id},
        timeout=30,
    )
    assert marked.status_code == 204, marked.text
    # answered once the lease has ended, with the turns there are: not an error, not a wait for ever
    second = r.b.post("/v1/chatqna", json={"messages": "And after it?", "conversation_id": cid})
    assert second.status_code == 200, second.text
    assert second.json()["conversation_saved"] is True
    assert r.mesh.seen["llm"][-1]["messages"][0]["content"] == "Before the crash?"
    msgs = r.b.get(f"/v1/conversations/{cid}/messages").json()["data"]
    assert [m["content"] for m in msgs] == ["Before the crash?", ANSWER, "And after it?", ANSWER]


def test_a_request_that_fails_releases_its_turn(replicas: Replicas) -> None:
    r = replicas
    cid = r.a.post("/v1/chatqna", json={"messages": "First?", "store": True}).json()["conversation_id"]
    r.mesh.knobs["llm"].status = 500
    try:
        failed = r.a.post("/v1/chatqna", json={"messages": "And then?", "conversation_id": cid})
        assert failed.status_code >= 500
    finally:
        r.mesh.knobs["llm"].status = 200
    r.proxy.wait_seen(lambda m, p: m == "DELETE" and p.startswith(f"/v1/conversations/{cid}/turns/"))
    wait_until(lambda: pending_turns(r.database_url, cid) == 0)
    msgs = r.b.get(f"/v1/conversations/{cid}/messages").json()["data"]
    assert [m["content"] for m in msgs] == ["First?", ANSWER]  # the failed turn stored nothing


def wait_until(check: Any, timeout_s: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
