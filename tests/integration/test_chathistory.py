"""The chathistory service on a real PostgreSQL, called as the gateway calls it (internal token + identity headers).

Through the gateway (authentication, isolation, the chat flow) see tests/integration/test_conversations.py.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from comps.core.caller import Caller
from tests.support.procs import Service, start_service

pytestmark = pytest.mark.integration

INTERNAL = secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def service(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    logs = tmp_path_factory.mktemp("chathistory")
    env = {"DATABASE_URL": database_url, "CHATHISTORY_API_KEY": INTERNAL, "CHATHISTORY_MAX_IMPORT_CONVERSATIONS": "5"}
    svc = start_service("comps.chathistory", "CHATHISTORY_", env, log_dir=logs, timeout_s=120)
    yield svc
    svc.stop()


def as_user(service: Service, role: str = "user") -> httpx.Client:
    who = Caller(str(uuid.uuid4()), f"u{secrets.token_hex(3)}", role)
    return httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {INTERNAL}", **who.headers()}, timeout=30
    )


def turn(q: str, a: str, **answer: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a, **answer}]


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code:
        assert err["code"] == code, err


def test_needs_the_internal_token_and_a_user(service: Service) -> None:
    assert httpx.get(f"{service.url}/v1/conversations").status_code == 401
    r = httpx.get(f"{service.url}/v1/conversations", headers={"Authorization": f"Bearer {INTERNAL}"})
    assert_error(r, 401, "missing_user")


def test_create_list_patch_delete(service: Service) -> None:
    a = as_user(service)
    r = a.post("/v1/conversations", json={"messages": turn("What is the leave policy?", "25 days.")})
    assert r.status_code == 201, r.text
    conv = r.json()
    assert conv["title"] == "What is the leave policy?"
    assert a.get(f"/v1/conversations/{conv['id']}").json()["id"] == conv["id"]
    r = a.patch(f"/v1/conversations/{conv['id']}", json={"title": "Leave", "pinned": True})
    assert r.json()["title"] == "Leave" and r.json()["pinned"] is True
    msgs = a.get(f"/v1/conversations/{conv['id']}/messages").json()["data"]
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert a.delete(f"/v1/conversations/{conv['id']}").status_code == 204
    assert_error(a.get(f"/v1/conversations/{conv['id']}"), 404, "conversation_not_found")
    assert_error(a.delete(f"/v1/conversations/{conv['id']}"), 404)


def test_paging_newest_first_with_a_cursor_and_search(service: Service) -> None:
    a = as_user(service)
    ids = [a.post("/v1/conversations", json={"title": f"chat {n}"}).json()["id"] for n in range(7)]
    a.post(f"/v1/conversations/{ids[2]}/messages", json={"messages": turn("Where is the zebra manual?", "Shelf 3.")})
    seen, cursor = [], None
    while True:
        page = a.get("/v1/conversations", params={"limit": 3} | ({"cursor": cursor} if cursor else {})).json()
        seen += [c["id"] for c in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen[0] == ids[2]  # a new message makes it the newest
    assert sorted(seen) == sorted(ids) and len(seen) == 7
    found = a.get("/v1/conversations", params={"q": "ZEBRA"}).json()["data"]
    assert [c["id"] for c in found] == [ids[2]]
    assert [c["id"] for c in a.get("/v1/conversations", params={"q": "chat 5"}).json()["data"]] == [ids[5]]
    assert a.get("/v1/conversations", params={"q": "%"}).json()["data"] == []  # no wildcards from outside
    a.patch(f"/v1/conversations/{ids[0]}", json={"archived": True})
    assert ids[0] not in [c["id"] for c in a.get("/v1/conversations", params={"limit": 50}).json()["data"]]
    assert [c["id"] for c in a.get("/v1/conversations", params={"archived": "true"}).json()["data"]] == [ids[0]]


def test_a_user_never_reaches_another_users_conversation(service: Service) -> None:
    a, b = as_user(service), as_user(service)
    cid = a.post("/v1/conversations", json={"messages": turn("secret plan?", "It is...")}).json()["id"]
    for method, path, body in [
        ("GET", f"/v1/conversations/{cid}", None),
        ("PATCH", f"/v1/conversations/{cid}", {"title": "mine"}),
        ("DELETE", f"/v1/conversations/{cid}", None),
        ("GET", f"/v1/conversations/{cid}/messages", None),
        ("GET", f"/v1/conversations/{cid}/context", None),
        ("GET", f"/v1/conversations/{cid}/export", None),
        ("POST", f"/v1/conversations/{cid}/messages", {"messages": turn("q", "a")}),
        ("POST", f"/v1/conversations/{cid}/messages", {"messages": turn("q", "a"), "create": True}),
        ("POST", "/v1/chathistory/get", {"id": cid}),
        ("POST", "/v1/chathistory/delete", {"id": cid}),
        ("POST", "/v1/chathistory/create", {"id": cid, "data": {"messages": "hijack"}}),
        ("POST", "/v1/feedback/create", {"chat_id": cid, "feedback_data": {"is_thumbs_up": False}}),
    ]:
        assert_error(b.request(method, path, json=body), 404)
    assert b.get("/v1/conversations", params={"q": "secret"}).json()["data"] == []
    assert b.get("/v1/conversations/export").json()["conversations"] == []
    assert len(a.get(f"/v1/conversations/{cid}/messages").json()["data"]) == 2  # untouched


def test_opea_bodies_work_unchanged_and_the_body_user_is_ignored(service: Service) -> None:
    a, b = as_user(service), as_user(service)
    body = {"data": {"messages": "What is OPEA?", "user": "someone-else"}, "first_query": "What is OPEA?"}
    r = a.post("/v1/chathistory/create", json=body)
    assert r.status_code == 200, r.text
    cid = r.json()
    assert isinstance(cid, str)
    listed = a.post("/v1/chathistory/get", json={"user": "someone-else"}).json()
    assert [c["id"] for c in listed] == [cid] and listed[0]["first_query"] == "What is OPEA?"
    assert b.post("/v1/chathistory/get", json={"user": "someone-else"}).json() == []
    msgs = [{"role": "user", "content": "What is OPEA?"}, {"role": "assistant", "content": "A project."}]
    assert a.post("/v1/chathistory/create", json={"id": cid, "data": {"messages": msgs, "user": "x"}}).json() == cid
    got = a.post("/v1/chathistory/get", json={"user": "x", "id": cid}).json()
    assert got["data"]["messages"] == msgs
    assert a.post("/v1/chathistory/delete", json={"user": "x", "id": cid}).json() is True
    assert a.post("/v1/chathistory/get", json={"user": "x"}).json() == []


def test_context_keeps_the_newest_turns_within_the_budget(service: Service) -> None:
    a = as_user(service)
    cid = a.post("/v1/conversations", json={}).json()["id"]
    for n in range(10):
        a.post(f"/v1/conversations/{cid}/messages", json={"messages": turn(f"question {n} " + "x" * 36, f"answer {n}")})
    ctx = a.get(f"/v1/conversations/{cid}/context", params={"max_tokens": 40}).json()
    contents = [m["content"] for m in ctx["messages"]]
    assert contents[-1] == "answer 9" and contents[-2].startswith("question 9")
    assert ctx["dropped"] == 20 - len(contents) and ctx["dropped"] > 0
    everything = a.get(f"/v1/conversations/{cid}/context", params={"max_tokens": 100_000}).json()
    assert len(everything["messages"]) == 20 and everything["dropped"] == 0


def test_append_with_create_makes_the_conversation_once(service: Service) -> None:
    a = as_user(service)
    cid = str(uuid.uuid4())
    answer = {
        "sources": [{"id": "c1", "source": "doc.txt"}],
        "model": "m",
        "usage": {"total_tokens": 9},
        "latency_ms": 12,
        "cut_short": True,
    }
    r = a.post(
        f"/v1/conversations/{cid}/messages",
        json={"messages": turn("First question?", "Part", **answer), "create": True},
    )
    assert r.status_code == 201, r.text
    r = a.post(f"/v1/conversations/{cid}/messages", json={"messages": turn("Second?", "B"), "create": True})
    assert r.status_code == 201
    assert a.get(f"/v1/conversations/{cid}").json()["title"] == "First question?"
    msgs = a.get(f"/v1/conversations/{cid}/messages").json()["data"]
    assert len(msgs) == 4
    assert msgs[1]["sources"] == [{"id": "c1", "source": "doc.txt"}] and msgs[1]["cut_short"] is True
    assert msgs[1]["usage"] == {"total_tokens": 9} and msgs[1]["latency_ms"] == 12
    assert_error(a.post(f"/v1/conversations/{uuid.uuid4()}/messages", json={"messages": turn("q", "a")}), 404)


def test_export_and_import_json_and_ndjson(service: Service) -> None:
    a, b = as_user(service), as_user(service)
    for n in range(2):
        a.post("/v1/conversations", json={"title": f"t{n}", "messages": turn(f"q{n}", f"a{n}", model="m")})
    exported = a.get("/v1/conversations/export").json()
    assert exported["format"] == "chatqna.conversations" and len(exported["conversations"]) == 2
    r = b.post("/v1/conversations/import", json=exported)
    assert r.status_code == 201, r.text
    assert r.json()["conversations"] == 2 and r.json()["messages"] == 4
    nd = a.get("/v1/conversations/export", params={"format": "ndjson"})
    assert nd.headers["content-type"].startswith("application/x-ndjson") and len(nd.text.splitlines()) == 2
    r = b.post("/v1/conversations/import", content=nd.content, headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 201, r.text
    titles = sorted(c["title"] for c in b.get("/v1/conversations").json()["data"])
    assert titles == ["t0", "t0", "t1", "t1"]
    one = b.get(f"/v1/conversations/{r.json()['ids'][0]}/export", params={"format": "ndjson"}).text
    assert orjson.loads(one)["messages"][1]["model"] == "m"


def test_a_bad_import_stores_nothing(service: Service) -> None:
    a = as_user(service)
    good = {"title": "fine", "messages": turn("q", "a")}
    bad_role = {"title": "bad", "messages": [{"role": "wizard", "content": "x"}]}
    lines = b"\n".join(orjson.dumps(c) for c in (good, good, bad_role))
    r = a.post("/v1/conversations/import", content=lines, headers={"content-type": "application/x-ndjson"})
    assert_error(r, 400, "invalid_import")
    assert "line 3" in r.json()["error"]["message"]
    for content, ctype in [
        (b"{not json", "application/json"),
        (b'{"conversations": [{"title": NaN}]}', "application/json"),
        (b'{"something": 1}', "application/json"),
        (b'{"format": "other", "conversations": []}', "application/json"),
        (b"", "application/json"),
        (b"title,messages", "text/csv"),
        (orjson.dumps({"conversations": [{"title": "x" * 201}]}), "application/json"),
    ]:
        assert_error(a.post("/v1/conversations/import", content=content, headers={"content-type": ctype}), 400)
    too_many = orjson.dumps({"conversations": [good] * 6})
    r = a.post("/v1/conversations/import", content=too_many, headers={"content-type": "application/json"})
    assert_error(r, 413, "import_too_large")
    assert a.get("/v1/conversations").json()["data"] == []


def test_bad_input_is_a_4xx_in_the_envelope(service: Service) -> None:
    a = as_user(service)
    assert_error(a.get("/v1/conversations", params={"cursor": "not-a-cursor"}), 400, "invalid_cursor")
    assert_error(a.get("/v1/conversations", params={"cursor": "WyJ4IiwieSJd"}), 400, "invalid_cursor")  # ["x","y"]
    assert_error(a.post("/v1/conversations", json={"title": "x" * 201}), 400)
    assert_error(a.get("/v1/conversations/not-a-uuid"), 404)
    cid = a.post("/v1/conversations", json={}).json()["id"]
    assert_error(a.patch(f"/v1/conversations/{cid}", json={"title": "x" * 201}), 400)
    assert_error(a.patch(f"/v1/conversations/{cid}", json={"title": None}), 400)
    assert_error(a.patch(f"/v1/conversations/{cid}", json={"owner": "me"}), 400)
    assert_error(a.post("/v1/conversations", json={"id": cid}), 409, "conversation_exists")
    assert_error(a.post("/v1/conversations", json={"id": "nope"}), 400)
    assert_error(a.post(f"/v1/conversations/{cid}/messages", json={"messages": []}), 400)
    assert_error(a.post("/v1/chathistory/create", json={"data": {"messages": [{"role": "x", "content": 1}]}}), 400)
    assert_error(a.get(f"/v1/conversations/{cid}/messages", params={"cursor": orjson.dumps(1).decode()}), 400)


def test_feedback_on_an_answer_and_the_admin_report(service: Service) -> None:
    a, admin = as_user(service), as_user(service, "admin")
    sources = [{"id": "k1", "source": "policy.pdf", "page": 2}]
    cid = a.post("/v1/conversations", json={"messages": turn("How many days?", "Seven.", sources=sources)}).json()["id"]
    answer = a.get(f"/v1/conversations/{cid}/messages").json()["data"][1]
    r = a.post(
        f"/v1/conversations/{cid}/messages/{answer['id']}/feedback",
        json={"thumbs_up": False, "rating": 1, "comment": "wrong"},
    )
    assert r.status_code == 200, r.text
    assert_error(a.post(f"/v1/conversations/{cid}/messages/{answer['id']}/feedback", json={"rating": 6}), 400)
    assert_error(a.post(f"/v1/conversations/{cid}/messages/{answer['id']}/feedback", json={}), 400, "empty_feedback")
    user_msg = a.get(f"/v1/conversations/{cid}/messages").json()["data"][0]
    assert_error(a.post(f"/v1/conversations/{cid}/messages/{user_msg['id']}/feedback", json={"rating": 3}), 404)
    # OPEA's shape: the newest answer of the chat; again replaces
    r = a.post(
        "/v1/feedback/create",
        json={"chat_id": cid, "feedback_data": {"is_thumbs_up": False, "rating": 2, "comment": "still wrong"}},
    )
    assert r.status_code == 200, r.text
    got = a.post("/v1/feedback/get", json={"chat_id": cid}).json()
    assert len(got) == 1 and got[0]["rating"] == 2
    assert a.get(f"/v1/conversations/{cid}/messages").json()["data"][1]["feedback"]["comment"] == "still wrong"
    assert_error(a.get("/v1/admin/feedback"), 403, "admin_only")
    report = admin.get("/v1/admin/feedback", params={"thumbs_up": "false"}).json()["data"]
    mine = [f for f in report if f["conversation_id"] == cid]
    assert mine[0]["question"] == "How many days?" and mine[0]["answer"] == "Seven."
    assert mine[0]["sources"] == sources
    assert a.post("/v1/feedback/delete", json={"feedback_id": got[0]["feedback_id"]}).json() is True
    assert a.post("/v1/feedback/get", json={"chat_id": cid}).json() == []


def test_the_gateways_own_context_of_a_turn_in_flight_is_the_stores(service: Service) -> None:
    """While an answer is being stored the gateway computes the next context itself (megaservice.conversations.
    newest_within): for any budget it must be what the store answers once the write has landed."""
    from megaservice.conversations import newest_within
    from megaservice.protocol import Message

    a = as_user(service)
    texts = [("word " * n).strip() + f" {n}" for n in (3, 40, 1, 17, 90, 5, 2, 33, 8, 1)]
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
    cid = a.post("/v1/conversations", json={"messages": messages}).json()["id"]
    every = [Message(role=m["role"], content=m["content"]) for m in messages]
    for budget in (1, 2, 5, 12, 30, 60, 100, 1000):
        stored = a.get(f"/v1/conversations/{cid}/context", params={"max_tokens": budget}).json()["messages"]
        assert stored == [m.model_dump(include={"role", "content"}) for m in newest_within(every, budget)], budget


def test_a_write_through_one_replica_is_read_through_another_at_once(
    service: Service, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two replicas on one PostgreSQL, asynchronous commit on (the default): what one has answered 201 to, the
    other answers on the very next request (commits are visible at once; only their flush to disk is not awaited)."""
    env = {"DATABASE_URL": database_url, "CHATHISTORY_API_KEY": INTERNAL, "CHATHISTORY_ASYNC_COMMIT": "true"}
    other = start_service(
        "comps.chathistory", "CHATHISTORY_", env, name="chathistory-2", log_dir=tmp_path_factory.mktemp("ch2")
    )
    try:
        a = as_user(service)
        b = httpx.Client(base_url=other.url, headers=dict(a.headers), timeout=30)
        cid = a.post("/v1/conversations", json={"messages": turn("q0?", "a0.")}).json()["id"]
        for n in range(1, 21):  # alternate: write through one, read through the other at once
            writer, reader = (a, b) if n % 2 else (b, a)
            r = writer.post(f"/v1/conversations/{cid}/messages", json={"messages": turn(f"q{n}?", f"a{n}.")})
            assert r.status_code == 201, r.text
            ctx = reader.get(f"/v1/conversations/{cid}/context", params={"max_tokens": 100_000}).json()
            assert [m["content"] for m in ctx["messages"][-2:]] == [f"q{n}?", f"a{n}."]
        assert b.patch(f"/v1/conversations/{cid}", json={"title": "renamed"}).status_code == 200
        assert a.get(f"/v1/conversations/{cid}").json()["title"] == "renamed"
        assert a.get("/v1/conversations").json()["data"][0]["title"] == "renamed"
        assert b.delete(f"/v1/conversations/{cid}").status_code == 204
        assert_error(a.get(f"/v1/conversations/{cid}/context"), 404, "conversation_not_found")
    finally:
        other.stop()
