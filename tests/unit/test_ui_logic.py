"""The chat UI's page logic without a browser: reading an answer's events, the request a question makes, how
errors read, token refresh, and the fallbacks for routes an older gateway lacks (httpx's MockTransport)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ui import state, stream
from ui.client import GatewayClient, GatewayDown, GatewayError, NotAvailable

pytestmark = pytest.mark.unit


def sse(*chunks: Any) -> list[str]:
    lines = []
    for chunk in chunks:
        lines += [f"data: {chunk if isinstance(chunk, str) else json.dumps(chunk)}", ""]
    return lines


def delta(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"delta": {"content": text}, "finish_reason": finish}]}


def test_an_answer_reads_as_meta_then_tokens_then_done() -> None:
    first = {**delta(""), "sources": [{"source": "a.txt", "page": 2, "text": "x"}], "conversation_id": "c1"}
    got = list(stream.events(sse(first, delta("Hel"), delta("lo", "stop"), "[DONE]")))
    assert got == [
        stream.Meta(sources=[{"source": "a.txt", "page": 2, "text": "x"}], conversation_id="c1"),
        stream.Token("Hel"),
        stream.Token("lo"),
        stream.Done("stop", None),
    ]


def test_an_error_event_mid_answer_is_a_failure() -> None:
    error = {"error": {"message": "llm is unreachable", "type": "upstream_error", "code": "llm"}}
    got = list(stream.events(sse(delta("a"), error, "[DONE]")))
    assert got[-1] == stream.Failure("llm is unreachable", "llm")


def test_a_stream_cut_without_done_still_ends_with_done() -> None:
    assert list(stream.events(sse(delta("a"))))[-1] == stream.Done(None, None)


def test_a_new_chat_asks_to_store_and_a_kept_one_sends_only_the_new_turn() -> None:
    options = state.Options(model="m", collection="docs", rerank=False, temperature=0.3)
    body = state.chat_request(state.Chat(), "q?", options)
    assert body["store"] is True and "conversation_id" not in body and body["messages"] == "q?"
    assert body["model"] == "m" and body["collection"] == "docs" and body["rerank"] is False
    assert body["temperature"] == 0.3 and "prompt" not in body and "max_tokens" not in body
    body = state.chat_request(state.Chat("c1"), "next?", state.Options())
    assert body["conversation_id"] == "c1" and "store" not in body and "rerank" not in body


def test_stored_messages_become_turns_with_ids_feedback_and_sources() -> None:
    chat = state.chat_from_messages(
        "c1",
        [
            {"id": "m0", "role": "system", "content": "be brief"},
            {"id": "m1", "role": "user", "content": "q"},
            {"id": "m2", "role": "assistant", "content": "a", "sources": [{"source": "s"}],
             "feedback": {"thumbs_up": False}, "cut_short": True},
        ],
    )  # fmt: skip
    assert [t.role for t in chat.turns] == ["user", "assistant"]
    answer = chat.turns[1]
    assert answer.message_id == "m2" and answer.feedback is False and answer.stopped and answer.sources


def test_labels_of_sources_jobs_and_models() -> None:
    assert state.source_label({"source": "h.pdf", "page": 3}) == "h.pdf, p. 3"
    assert state.source_label({"doc_id": "d1"}) == "d1"
    assert state.job_progress({"source": "a", "status": "running", "chunks_total": 4, "chunks_embedded": 1}) == (
        0.25,
        "a: 1/4 chunks embedded",
    )
    assert state.job_progress({"source": "a", "status": "succeeded", "chunks_total": 4})[0] == 1.0
    assert state.job_progress({"source": "a", "status": "failed", "error": "empty"})[1] == "a: failed: empty"
    assert state.model_label({"id": "m", "status": "unreachable"}) == "m (unreachable)"
    assert state.conversation_file_name("What? About: x", "0123456789") == "What--About--x-01234567.json"


def client_with(handler: Callable[[httpx.Request], httpx.Response]) -> GatewayClient:
    client = GatewayClient("http://gateway.test")
    client._http = httpx.Client(base_url="http://gateway.test", transport=httpx.MockTransport(handler))
    return client


def pair(access: str, refresh: str, expires_in: int = 900) -> dict[str, Any]:
    user = {"id": "u1", "username": "ann", "role": "user"}
    return {"access_token": access, "refresh_token": refresh, "expires_in": expires_in, "user": user}


def test_errors_read_as_the_gateways_message_with_what_to_do() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/auth/login":
            return httpx.Response(200, json=pair("a1", "r1"))
        body = {"error": {"message": "reranker is unreachable", "type": "upstream_error", "code": "reranker"}}
        return httpx.Response(503, json=body)

    client = client_with(handler)
    client.login("ann", "pw")
    with pytest.raises(GatewayError) as caught:
        client.collections()
    assert caught.value.message == "reranker is unreachable" and caught.value.status == 503
    assert "The reranker service is down or busy" in caught.value.hint
    assert "Traceback" not in str(caught.value)


def test_a_wrong_password_and_a_gateway_that_is_down() -> None:
    client = client_with(lambda r: httpx.Response(401, json={"error": {"message": "invalid credentials"}}))
    with pytest.raises(GatewayError, match="Wrong username or password"):
        client.login("ann", "bad")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(GatewayDown, match="not answering") as caught:
        client_with(refuse).login("ann", "pw")
    assert "reconnects by itself" in caught.value.hint


def test_an_expired_access_token_is_refreshed_and_a_401_retried_once() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        if request.url.path == "/v1/auth/login":
            return httpx.Response(200, json=pair("a1", "r1", expires_in=10))  # inside the refresh margin
        if request.url.path == "/v1/auth/refresh":
            assert json.loads(request.content) == {"refresh_token": "r1"}
            return httpx.Response(200, json=pair("a2", "r2"))
        return httpx.Response(200, json=[])

    client = client_with(handler)
    client.login("ann", "pw")
    assert client.collections() == []
    assert seen[1:] == [("/v1/auth/refresh", None), ("/v1/collections", "Bearer a2")]
    assert client.tokens is not None and client.tokens.refresh == "r2"
    client.tokens.expires_at = time.monotonic() + 900
    seen.clear()

    def expired(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        if request.url.path == "/v1/auth/refresh":
            return httpx.Response(200, json=pair("a3", "r3"))
        ok = request.headers.get("authorization") == "Bearer a3"
        return httpx.Response(200, json=[]) if ok else httpx.Response(401, json={"error": {"message": "expired"}})

    client._http = httpx.Client(base_url="http://gateway.test", transport=httpx.MockTransport(expired))
    assert client.collections() == []
    assert [p for p, _ in seen] == ["/v1/collections", "/v1/auth/refresh", "/v1/collections"]


def test_models_fall_back_to_the_plain_list_and_missing_admin_routes_are_not_available() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "smol", "object": "model"}]})
        return httpx.Response(404, json={"error": {"message": "Not Found", "type": "not_found_error"}})

    client = client_with(handler)
    assert client.models() == {"default": "smol", "models": [{"id": "smol", "status": "unknown", "reason": None}]}
    with pytest.raises(NotAvailable):
        client.cache_stats()


def test_a_missing_thing_is_not_mistaken_for_a_missing_route() -> None:
    body = {"error": {"message": "no job 'x'", "type": "not_found_error", "code": "job_not_found"}}
    client = client_with(lambda r: httpx.Response(404, json=body))
    with pytest.raises(GatewayError) as caught:
        client.job("x")
    assert not isinstance(caught.value, NotAvailable) and caught.value.message == "no job 'x'"
