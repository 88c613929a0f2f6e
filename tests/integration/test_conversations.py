"""Conversations through the real gateway: memory across requests and restarts, identity enforced, the store down.

A real gateway (auth on) and a real chathistory process on one real PostgreSQL; stub embedding, retriever,
reranker and LLM services record what the LLM was sent.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.support.database import pending_turns
from tests.support.otlp import OtlpCollector, Span
from tests.support.procs import Service, start_service
from tests.support.stubs import StubMesh

pytestmark = pytest.mark.integration

JWT_SECRET = secrets.token_urlsafe(48)
INTERNAL = secrets.token_urlsafe(32)
ADMIN = ("conv-admin", "admin-pass-" + secrets.token_hex(6))
ANSWER = "The answer is forty-two [1]."


@dataclass
class Stack:
    mesh: StubMesh
    database_url: str
    logs: Path
    collector: OtlpCollector
    gateway: Service | None = None
    chathistory: Service | None = None
    prompts: Service | None = None

    def start_chathistory(self) -> None:
        env = {"DATABASE_URL": self.database_url, "CHATHISTORY_API_KEY": INTERNAL}
        port = self.chathistory.port if self.chathistory else None
        self.chathistory = start_service(
            "comps.chathistory", "CHATHISTORY_", env, log_dir=self.logs, timeout_s=120, port=port
        )

    def start_prompts(self) -> None:
        env = {"DATABASE_URL": self.database_url, "PROMPTS_API_KEY": INTERNAL}
        port = self.prompts.port if self.prompts else None
        self.prompts = start_service(
            "comps.prompt_registry", "PROMPTS_", env, log_dir=self.logs, timeout_s=120, port=port
        )

    def start_gateway(self) -> None:
        assert self.chathistory is not None
        env = {
            **self.mesh.env(),
            "GATEWAY_AUTH_ENABLED": "true",
            "DATABASE_URL": self.database_url,
            "GATEWAY_JWT_SECRET": JWT_SECRET,
            "GATEWAY_INTERNAL_API_KEY": INTERNAL,
            "GATEWAY_CHATHISTORY_URL": self.chathistory.url,
            "GATEWAY_PROMPTS_URL": self.prompts.url if self.prompts else "",
            "GATEWAY_HISTORY_TOKENS": "200",
            "CHATQNA_ADMIN_USER": ADMIN[0],
            "CHATQNA_ADMIN_PASSWORD": ADMIN[1],
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        port = self.gateway.port if self.gateway else None
        self.gateway = start_service(
            "megaservice", "GATEWAY_", env, name="gateway", log_dir=self.logs, timeout_s=120, port=port
        )

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def login(self, username: str, password: str) -> str:
        r = httpx.post(f"{self.url}/v1/auth/login", json={"username": username, "password": password}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["access_token"]


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with StubMesh() as mesh, OtlpCollector() as collector:
        s = Stack(mesh, database_url, tmp_path_factory.mktemp("conversations"), collector)
        s.start_chathistory()
        s.start_prompts()
        s.start_gateway()
        try:
            yield s
        finally:
            for svc in (s.gateway, s.chathistory, s.prompts):
                if svc is not None:
                    svc.stop()


@pytest.fixture(scope="module")
def admin(stack: Stack) -> httpx.Client:
    return stack.client(stack.login(*ADMIN))


def new_user(stack: Stack, admin: httpx.Client) -> tuple[httpx.Client, str]:
    """A user with an API key: (client, key)."""
    name, password = f"u{secrets.token_hex(4)}", "pw-" + secrets.token_hex(8)
    assert admin.post("/v1/admin/users", json={"username": name, "password": password}).status_code == 201
    client = stack.client(stack.login(name, password))
    key = client.post("/v1/auth/keys", json={"name": "test"}).json()["key"]
    return client, key


def wait_for(check: Any, timeout_s: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def llm_saw(stack: Stack) -> list[dict[str, Any]]:
    return stack.mesh.seen["llm"][-1]["messages"]


def chunks(r: httpx.Response) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]


def test_a_conversation_continues_with_the_openai_client(stack: Stack, admin: httpx.Client) -> None:
    user, key = new_user(stack, admin)
    oai = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=30)
    first = oai.chat.completions.create(
        model="chatqna",
        messages=[{"role": "user", "content": "What is the Zorblax project?"}],
        extra_body={"store": True},
    )
    cid = first.model_extra["conversation_id"]
    assert first.model_extra["conversation_saved"] is True
    assert first.choices[0].message.content == ANSWER
    second = oai.chat.completions.create(
        model="chatqna",
        messages=[{"role": "user", "content": "And who leads it?"}],
        extra_body={"conversation_id": cid},
    )
    assert second.model_extra["conversation_id"] == cid
    sent = llm_saw(stack)
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == "What is the Zorblax project?" and sent[1]["content"] == ANSWER
    # the follow-up searched with the earlier question (the heuristic reads the stored turns too)
    assert "What is the Zorblax project?" in stack.mesh.seen["retriever"][-1]["text"]
    convs = user.get("/v1/conversations").json()["data"]
    assert [c["id"] for c in convs] == [cid] and convs[0]["title"] == "What is the Zorblax project?"
    msgs = user.get(f"/v1/conversations/{cid}/messages").json()["data"]  # there at once: read-your-writes
    assert len(msgs) == 4
    answer = msgs[1]
    assert answer["role"] == "assistant" and answer["content"] == ANSWER and answer["cut_short"] is False
    assert answer["model"] == "stub-llm" and answer["usage"]["total_tokens"] > 0
    assert [s["source"] for s in answer["sources"]] == [s["source"] for s in first.model_extra["sources"]]
    assert answer["latency_ms"] >= 0


def test_a_turns_trace_names_its_conversation_and_user(stack: Stack, admin: httpx.Client) -> None:
    """Phoenix groups a conversation's traces as a session (OpenInference ``session.id``)."""
    user, _ = new_user(stack, admin)
    r = user.post("/v1/chatqna", json={"messages": "What is the Zorblax project?", "store": True})
    assert r.status_code == 200, r.text
    cid, uid = r.json()["conversation_id"], user.get("/v1/auth/me").json()["id"]

    def chain(spans: list[Span]) -> Span | None:
        return next((s for s in spans if s.kind == "CHAIN" and s.attributes.get("session.id") == cid), None)

    span = stack.collector.wait_for(chain)
    assert span.attributes["gen_ai.conversation.id"] == cid and span.attributes["user.id"] == uid


def test_without_store_nothing_is_kept(stack: Stack, admin: httpx.Client) -> None:
    user, _ = new_user(stack, admin)
    r = user.post("/v1/chatqna", json={"messages": "hello?"})
    assert r.status_code == 200 and "conversation_id" not in r.json()
    assert user.get("/v1/conversations").json()["data"] == []


def test_a_stream_says_its_id_first_and_the_next_request_sees_the_answer(stack: Stack, admin: httpx.Client) -> None:
    user, _ = new_user(stack, admin)
    r = user.post("/v1/chatqna", json={"messages": "Streamed question?", "stream": True, "store": True})
    events = chunks(r)
    cid = events[0]["conversation_id"]
    assert events[0]["conversation_saved"] is True and "sources" in events[0]
    assert r.text.rstrip().endswith("data: [DONE]")
    for n in range(5):  # at once, each time: the previous turn is always there (read-your-writes)
        r = user.post("/v1/chatqna", json={"messages": f"follow-up {n}?", "stream": True, "conversation_id": cid})
        assert r.status_code == 200
        sent = llm_saw(stack)
        assert sent[-3]["content"] == ("Streamed question?" if n == 0 else f"follow-up {n - 1}?")
        assert sent[-2] == {"role": "assistant", "content": ANSWER}


def test_a_question_that_stands_alone_is_searched_alone_and_answered_with_the_earlier_turns(
    stack: Stack, admin: httpx.Client
) -> None:
    user, _ = new_user(stack, admin)
    cid = user.post("/v1/chatqna", json={"messages": "Who leads Zorblax?", "store": True}).json()["conversation_id"]
    question = "What does the stub know about the Zorblax budget in detail?"
    for stream in (False, True):
        r = user.post("/v1/chatqna", json={"messages": question, "conversation_id": cid, "stream": stream})
        assert r.status_code == 200, r.text
        assert stack.mesh.seen["retriever"][-1]["text"] == question
        sent = llm_saw(stack)
        assert sent[0] == {"role": "user", "content": "Who leads Zorblax?"} and question in sent[-1]["content"]
    assert len(user.get(f"/v1/conversations/{cid}/messages").json()["data"]) == 6


def test_the_context_is_the_newest_turns_within_the_budget(stack: Stack, admin: httpx.Client) -> None:
    user, _ = new_user(stack, admin)
    long = "word " * 60  # about 75 tokens a question; the budget is 200
    cid = user.post("/v1/chatqna", json={"messages": f"q0 {long}", "store": True}).json()["conversation_id"]
    for n in range(1, 6):
        user.post("/v1/chatqna", json={"messages": f"q{n} {long}", "conversation_id": cid})
    sent = llm_saw(stack)
    assert 1 < len(sent) < 11 and not any(m["content"].startswith("q0 ") for m in sent)
    assert sent[-3]["content"].startswith("q4 ")


def test_a_client_leaving_mid_answer_leaves_the_partial_answer_cut_short(stack: Stack, admin: httpx.Client) -> None:
    user, _ = new_user(stack, admin)
    cid = user.post("/v1/chatqna", json={"messages": "first", "store": True}).json()["conversation_id"]
    stack.mesh.knobs["llm"].chunk_delay_s = 0.2
    stack.mesh.knobs["llm"].tokens = [f" t{i}" for i in range(100)]
    try:
        body = {"messages": "a long one?", "stream": True, "conversation_id": cid}
        with user.stream("POST", "/v1/chatqna", json=body) as r:
            for line in r.iter_lines():
                if '"content":" t1"' in line:
                    break
        msgs = wait_for(
            lambda: len(m := user.get(f"/v1/conversations/{cid}/messages").json()["data"]) == 4 and m,
            what="the partial answer stored",
        )
    finally:
        stack.mesh.knobs["llm"].chunk_delay_s = 0
        stack.mesh.knobs["llm"].tokens = list(ANSWER_TOKENS)
    assert msgs[3]["cut_short"] is True and msgs[3]["content"].startswith(" t0 t1")
    assert len(msgs[3]["content"]) < 100 * 3
    assert msgs[1]["cut_short"] is False


ANSWER_TOKENS = ["The", " answer", " is", " forty", "-two", " [1]", "."]


def test_user_b_never_sees_continues_exports_or_deletes_user_as_conversation(stack: Stack, admin: httpx.Client) -> None:
    a, _ = new_user(stack, admin)
    b, _ = new_user(stack, admin)
    cid = a.post("/v1/chatqna", json={"messages": "my secret plan?", "store": True}).json()["conversation_id"]
    assert len(a.get(f"/v1/conversations/{cid}/messages").json()["data"]) == 2
    stack.mesh.stubs.reset()
    attempts = {
        "continue it": b.post("/v1/chatqna", json={"messages": "and?", "conversation_id": cid}),
        "continue it, streamed": b.post(
            "/v1/chat/completions", json={"messages": "and?", "conversation_id": cid, "stream": True}
        ),
        "read it": b.get(f"/v1/conversations/{cid}"),
        "read its messages": b.get(f"/v1/conversations/{cid}/messages"),
        "export it": b.get(f"/v1/conversations/{cid}/export"),
        "rename it": b.patch(f"/v1/conversations/{cid}", json={"title": "mine"}),
        "add to it": b.post(
            f"/v1/conversations/{cid}/messages", json={"messages": [{"role": "user", "content": "x"}], "create": True}
        ),
        "delete it": b.delete(f"/v1/conversations/{cid}"),
        "begin a turn of it": b.post(f"/v1/conversations/{cid}/turns/{uuid.uuid4()}"),
        "OPEA get": b.post("/v1/chathistory/get", json={"user": "whoever", "id": cid}),
        "OPEA delete": b.post("/v1/chathistory/delete", json={"user": "whoever", "id": cid}),
        "OPEA overwrite": b.post("/v1/chathistory/create", json={"id": cid, "data": {"messages": "x"}}),
        "feedback": b.post("/v1/feedback/create", json={"chat_id": cid, "feedback_data": {"is_thumbs_up": False}}),
    }
    for what, r in attempts.items():
        assert r.status_code == 404, f"{what}: {r.status_code} {r.text}"
        assert "secret plan" not in r.text, what
    assert stack.mesh.seen["llm"] == []  # nothing ran for B
    assert b.get("/v1/conversations", params={"q": "secret"}).json()["data"] == []
    assert b.get("/v1/conversations/export").json()["conversations"] == []
    assert b.post("/v1/chathistory/get", json={"user": "whoever"}).json() == []
    assert len(a.get(f"/v1/conversations/{cid}/messages").json()["data"]) == 2  # untouched
    # B cannot leave a turn of A's conversation in flight (it would hold A's reads): marking is the gateway's own
    assert b.put(f"/v1/conversations/{cid}/turns/{uuid.uuid4()}").status_code == 405
    assert pending_turns(stack.database_url, cid) == 0
    # headers from outside do not name another user
    spoofed = {"x-chatqna-user-id": a.get("/v1/auth/me").json()["id"]}
    assert b.get(f"/v1/conversations/{cid}", headers=spoofed).status_code == 404
    # and without credentials, nothing
    assert httpx.get(f"{stack.url}/v1/conversations", timeout=10).status_code == 401
    assert httpx.post(f"{stack.url}/v1/chathistory/get", json={"user": "x"}, timeout=10).status_code == 401


def test_bad_conversation_input_is_a_4xx(stack: Stack, admin: httpx.Client) -> None:
    user, _ = new_user(stack, admin)
    other, _ = new_user(stack, admin)
    theirs = other.post("/v1/chatqna", json={"messages": "Mine?", "store": True}).json()["conversation_id"]
    # a follow-up loads the turns before the search, a question that stands alone while the passages are found
    for question in ("q?", "What does the stub know about the Zorblax project?"):
        for cid in ("not-a-uuid", "6f1c7a3e-0000-4000-8000-000000000000", theirs):
            for stream in (False, True):
                body = {"messages": question, "conversation_id": cid, "stream": stream}
                r = user.post("/v1/chatqna", json=body)
                assert r.status_code == 404 and r.json()["error"]["code"] == "conversation_not_found", r.text
    r = user.post("/v1/chatqna", json={"messages": "q?", "conversation_id": "x" * 65})
    assert r.status_code == 400 and r.json()["error"]["param"] == "conversation_id"
    assert user.get("/v1/conversations", params={"cursor": "bad"}).status_code == 400
    r = user.post("/v1/conversations/import", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_import"


def test_feedback_through_the_gateway_and_the_admin_report(stack: Stack, admin: httpx.Client) -> None:
    user, _ = new_user(stack, admin)
    cid = user.post("/v1/chatqna", json={"messages": "Rate me?", "store": True}).json()["conversation_id"]
    r = user.post("/v1/feedback/create", json={"chat_id": cid, "feedback_data": {"is_thumbs_up": False, "rating": 1}})
    assert r.status_code == 200, r.text
    assert user.get("/v1/admin/feedback").status_code == 403
    report = admin.get("/v1/admin/feedback", params={"thumbs_up": "false"}).json()["data"]
    row = next(f for f in report if f["conversation_id"] == cid)
    assert row["question"] == "Rate me?" and row["answer"] == ANSWER and row["sources"]


def test_a_prompt_of_the_registry_and_the_version_each_answer_used(stack: Stack, admin: httpx.Client) -> None:
    user, _ = new_user(stack, admin)
    template = "Passages:\n{context}\nTERSE ANSWER TO: {question}"
    r = admin.post(
        "/v1/prompts", json={"name": f"terse-{secrets.token_hex(3)}", "kind": "rag", "text": template, "shared": True}
    )
    assert r.status_code == 201, r.text
    prompt = r.json()
    r = user.post("/v1/chatqna", json={"messages": "Short?", "prompt": prompt["name"], "store": True})
    assert r.status_code == 200, r.text
    cid = r.json()["conversation_id"]
    assert llm_saw(stack)[-1]["content"].endswith("TERSE ANSWER TO: Short?")
    assert user.put(f"/v1/prompts/{prompt['id']}", json={"text": template + "!"}).status_code == 403
    assert admin.put(f"/v1/prompts/{prompt['id']}", json={"text": template + "!"}).json()["version"] == 2
    user.post("/v1/chatqna", json={"messages": "Again?", "prompt": prompt["id"], "conversation_id": cid})
    assert llm_saw(stack)[-1]["content"].endswith("TERSE ANSWER TO: Again?!")
    answers = [m for m in user.get(f"/v1/conversations/{cid}/messages").json()["data"] if m["role"] == "assistant"]
    assert [(m["prompt_id"], m["prompt_version"]) for m in answers] == [(prompt["id"], 1), (prompt["id"], 2)]
    old = user.get(f"/v1/prompts/{prompt['id']}", params={"version": 1}).json()
    assert old["text"] == template
    system = user.post("/v1/prompts", json={"name": "pirate", "kind": "system", "text": "Talk like a pirate."})
    assert system.status_code == 201, system.text
    user.post("/v1/chatqna", json={"messages": "Hi?", "prompt": "pirate"})
    assert llm_saw(stack)[0] == {"role": "system", "content": "Talk like a pirate."}
    r = user.post("/v1/chatqna", json={"messages": "Hi?", "prompt": "no-such-prompt"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "prompt_not_found"
    r = user.post("/v1/chatqna", json={"messages": "Hi?", "prompt": "pirate", "chat_template": template})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    other, _ = new_user(stack, admin)  # a personal prompt is nobody else's
    assert other.post("/v1/chatqna", json={"messages": "Hi?", "prompt": "pirate"}).status_code == 404
    # A question that stands alone: the prompt (and the earlier turns) load while the passages are found.
    alone = "What does the stub know about the Zorblax budget in detail?"
    for stream in (False, True):
        body = {"messages": alone, "prompt": prompt["name"], "conversation_id": cid, "stream": stream}
        assert user.post("/v1/chatqna", json=body).status_code == 200
        sent = llm_saw(stack)
        assert sent[-1]["content"].endswith(f"TERSE ANSWER TO: {alone}!") and sent[0]["content"] == "Short?"
        r = user.post("/v1/chatqna", json={"messages": alone, "prompt": "pirate", "store": True, "stream": stream})
        assert r.status_code == 200 and llm_saw(stack)[0] == {"role": "system", "content": "Talk like a pirate."}
        assert (
            other.post("/v1/chatqna", json={"messages": alone, "prompt": "pirate", "stream": stream}).status_code == 404
        )
        body = {"messages": alone, "prompt": "pirate", "chat_template": template, "stream": stream}
        assert user.post("/v1/chatqna", json=body).json()["error"]["param"] == "prompt"
    answers = [m for m in user.get(f"/v1/conversations/{cid}/messages").json()["data"] if m["role"] == "assistant"]
    assert [(m["prompt_id"], m["prompt_version"]) for m in answers[2:]] == [(prompt["id"], 2)] * 2
    pirate = user.get("/v1/conversations").json()["data"][0]["id"]
    answers = [m for m in user.get(f"/v1/conversations/{pirate}/messages").json()["data"] if m["role"] == "assistant"]
    assert answers[0]["prompt_id"] == system.json()["id"] and answers[0]["prompt_version"] == 1


def test_the_condense_step_searches_with_the_llms_rewrite(stack: Stack, admin: httpx.Client) -> None:
    user, _ = new_user(stack, admin)
    cid = user.post("/v1/chatqna", json={"messages": "What is Quellmoor?", "store": True}).json()["conversation_id"]
    stack.mesh.stubs.reset()
    r = user.post(
        "/v1/chatqna", json={"messages": "Who leads it?", "conversation_id": cid, "question_rewrite": "condense"}
    )
    assert r.status_code == 200, r.text
    rewrite, answer = stack.mesh.seen["llm"]
    assert "Follow-up question: Who leads it?" in rewrite["messages"][0]["content"]
    assert "user: What is Quellmoor?" in rewrite["messages"][0]["content"]
    assert stack.mesh.seen["retriever"][-1]["text"] == ANSWER  # the stub's rewrite
    assert answer["messages"][-1]["content"].endswith("Who leads it?")  # the LLM still answers the conversation
    stack.mesh.stubs.reset()
    user.post("/v1/chatqna", json={"messages": "Who leads it?", "conversation_id": cid})
    assert len(stack.mesh.seen["llm"]) == 1  # the heuristic is the default: no rewrite call


def test_a_conversation_continues_across_a_restart_of_every_process(stack: Stack, admin: httpx.Client) -> None:
    user, key = new_user(stack, admin)
    cid = user.post("/v1/chatqna", json={"messages": "Before the restart?", "store": True}).json()["conversation_id"]
    assert stack.gateway is not None and stack.chathistory is not None
    stack.gateway.stop()  # drains its writes in flight
    stack.chathistory.stop()
    assert stack.prompts is not None
    stack.prompts.stop()
    stack.start_chathistory()
    stack.start_prompts()
    stack.start_gateway()
    oai = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=30)
    oai.chat.completions.create(
        model="chatqna", messages=[{"role": "user", "content": "After?"}], extra_body={"conversation_id": cid}
    )
    assert [m["content"] for m in llm_saw(stack)[:2]] == ["Before the restart?", ANSWER]


def test_the_chat_still_answers_when_the_store_is_down(stack: Stack, admin: httpx.Client) -> None:
    user, _ = new_user(stack, admin)
    cid = user.post("/v1/chatqna", json={"messages": "kept?", "store": True}).json()["conversation_id"]
    assert stack.chathistory is not None
    stack.chathistory.stop()
    try:
        r = user.post("/v1/chatqna", json={"messages": "still there?", "conversation_id": cid})
        assert r.status_code == 200, r.text
        assert r.json()["conversation_saved"] is False and r.json()["choices"][0]["message"]["content"] == ANSWER
        r = user.post("/v1/chatqna", json={"messages": "new one?", "store": True, "stream": True})
        assert r.status_code == 200 and chunks(r)[0]["conversation_saved"] is False
        metrics = httpx.get(f"{stack.url}/metrics", timeout=10).text
        assert 'chatqna_gateway_conversation_not_saved_total{stage="load"} 1.0' in metrics
        assert user.get("/v1/conversations").status_code == 503
    finally:
        stack.start_chathistory()
