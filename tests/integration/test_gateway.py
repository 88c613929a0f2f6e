"""The gateway as a real process (``python -m megaservice``) over stub services on 127.0.0.1.

The stubs (tests/support/stubs.py) speak the services' contracts and inject faults: a service down,
failing, slow, an LLM stream breaking off, a 400 or 429 from the LLM. Each failure must reach the
client as the right status naming the node (or, once streaming, as an SSE error event then [DONE]).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from comps.runtime.process import free_port
from tests.support.procs import Service, start_service
from tests.support.sse import sse_data
from tests.support.stubs import DOCS, TOKENS, StubMesh

pytestmark = pytest.mark.integration

QUESTION = "What does the stub know about Zorblax?"


@pytest.fixture(scope="module")
def mesh() -> Iterator[StubMesh]:
    with StubMesh() as m:
        yield m


@pytest.fixture(scope="module")
def gateway(mesh: StubMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    env = {**mesh.env(), "GATEWAY_RETRIEVER_TIMEOUT_S": "1", "GATEWAY_LLM_READ_TIMEOUT_S": "2"}
    svc = start_service(
        "megaservice", "GATEWAY_", env, name="gateway", log_dir=tmp_path_factory.mktemp("gw"), timeout_s=60
    )
    yield svc
    svc.stop()


@pytest.fixture(autouse=True)
def fresh_stubs(mesh: StubMesh) -> None:
    mesh.stubs.reset()


@pytest.fixture
def client(gateway: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=20) as c:
        yield c


@pytest.fixture
def oai(gateway: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=20)


def assert_error(resp: httpx.Response, status: int, code: str | None, contains: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code
    assert contains in err["message"], err["message"]
    return err


# -- answers ----------------------------------------------------------------------------------------


def test_a_non_streamed_answer_is_the_llms_completion_with_its_sources(client: httpx.Client, mesh: StubMesh) -> None:
    r = client.post("/v1/chatqna", json={"messages": QUESTION})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "stub-llm"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "".join(TOKENS)}
    assert body["usage"]["completion_tokens"] == len(TOKENS) and body["usage"]["total_tokens"] == 11 + len(TOKENS)
    # The stub reranker ranks the 4 retrieved texts in reverse; top_n=3 keeps docs 3, 2, 1.
    assert [s["id"] for s in body["sources"]] == [DOCS[3]["id"], DOCS[2]["id"], DOCS[1]["id"]]
    assert body["sources"][0] == {
        "id": DOCS[3]["id"],
        "source": "doc3.txt",
        "doc_id": "doc3",
        "page": None,
        "score": 0.99,
        "text": DOCS[3]["text"],
    }
    # What each hop was sent.
    assert mesh.seen["embedding"] == [{"input": QUESTION}]
    retrieval = mesh.seen["retriever"][0]
    assert retrieval["text"] == QUESTION and len(retrieval["embedding"]) == 384 and retrieval["k"] == 10
    assert mesh.seen["reranker"] == [{"query": QUESTION, "texts": [d["text"] for d in DOCS], "top_n": 3}]
    llm = mesh.seen["llm"][0]
    # nothing the client did not set, not even stream; only the gateway's defaults for RAG answers
    assert {k: v for k, v in llm.items() if k != "messages"} == {
        "temperature": 0.0, "max_tokens": 192, "repetition_penalty": 1.1, "stop": ["\nQuestion:", "\nPassages:"],
    }  # fmt: skip
    prompt = llm["messages"][0]["content"]
    assert prompt.index(DOCS[3]["text"]) < prompt.index(DOCS[2]["text"]) < prompt.index(DOCS[1]["text"])
    assert DOCS[0]["text"] not in prompt and prompt.endswith(f"Question: {QUESTION}")


def test_the_openai_client_works_with_only_a_base_url_change(oai: openai.OpenAI, mesh: StubMesh) -> None:
    done = oai.chat.completions.create(
        model="anything", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=50, seed=7
    )
    assert done.choices[0].message.content == "".join(TOKENS)
    assert done.model == "stub-llm" and done.usage is not None and done.usage.prompt_tokens == 11
    assert [s["id"] for s in done.model_extra["sources"]] == [DOCS[3]["id"], DOCS[2]["id"], DOCS[1]["id"]]
    sent = mesh.seen["llm"][0]
    assert (sent["model"], sent["temperature"], sent["max_tokens"], sent["seed"]) == ("anything", 0, 50, 7)
    # one LLM: listed under the gateway's one model name, with what its service runs and its status
    listed = oai.models.list().data
    assert [(m.id, m.model_extra["root"], m.model_extra["status"]) for m in listed] == [
        ("chatqna", "stub-llm", "ready")
    ]


def test_a_stream_is_real_chat_completion_chunks_with_sources_first(oai: openai.OpenAI, client: httpx.Client) -> None:
    stream = oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": QUESTION}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [s["id"] for s in chunks[0].model_extra["sources"]] == [DOCS[3]["id"], DOCS[2]["id"], DOCS[1]["id"]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(TOKENS)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert (
        chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(TOKENS)
    )
    # The wire format, exactly: data events, the last one [DONE], nothing after it.
    with client.stream("POST", "/v1/chatqna", json={"messages": QUESTION, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_data(r.read().decode())
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    parsed = [json.loads(e) for e in events[:-1]]
    assert all(p["object"] == "chat.completion.chunk" and p["model"] == "stub-llm" for p in parsed)
    assert "sources" in parsed[0] and not any("sources" in p for p in parsed[1:])


def test_the_frontend_seed_shape_adds_the_callers_passages(client: httpx.Client, mesh: StubMesh) -> None:
    r = client.post(
        "/v1/chatqna",
        json={
            "messages": [{"role": "user", "content": QUESTION}],
            "stream": False,
            "context": ["The caller says Zorblax is blue.", {"text": "And square.", "source": "notes.md"}],
            "meta": {"auth_token": ""},
        },
    )
    assert r.status_code == 200
    sources = r.json()["sources"]
    assert [(s["id"], s["source"], s["score"]) for s in sources[:2]] == [
        ("context-0", "request", None),
        ("context-1", "notes.md", None),
    ]
    assert len(sources) == 5
    prompt = mesh.seen["llm"][0]["messages"][-1]["content"]
    assert "[1] request\nThe caller says Zorblax is blue." in prompt
    assert "[2] notes.md\nAnd square." in prompt


@pytest.mark.parametrize(
    ("fields", "called", "n_sources"),
    [
        ({"rerank": False}, ["embedding", "retriever", "llm"], 4),
        ({"pipeline": "rag"}, ["embedding", "retriever", "llm"], 4),
        ({"retrieval": False}, ["llm"], 0),
        ({"pipeline": "llm-only"}, ["llm"], 0),
    ],
)
def test_each_variant_calls_only_its_services(
    client: httpx.Client, mesh: StubMesh, fields: dict, called: list[str], n_sources: int
) -> None:
    r = client.post("/v1/chatqna", json={"messages": QUESTION, **fields})
    assert r.status_code == 200, r.text
    assert [name for name, seen in mesh.seen.items() if seen] == called
    assert len(r.json()["sources"]) == n_sources
    if n_sources == 0:
        assert mesh.seen["llm"][0]["messages"] == [{"role": "user", "content": QUESTION}]


def test_nothing_retrieved_skips_the_reranker_and_says_so_to_the_llm(client: httpx.Client, mesh: StubMesh) -> None:
    mesh.knobs["retriever"].documents = []
    r = client.post("/v1/chatqna", json={"messages": QUESTION, "collection": "empty-one"})
    assert r.status_code == 200 and r.json()["sources"] == []
    assert mesh.seen["retriever"][0]["collection"] == "empty-one"
    assert mesh.seen["reranker"] == []
    assert "(no passages were found)" in mesh.seen["llm"][0]["messages"][0]["content"]


def test_a_follow_up_searches_with_the_previous_turn_and_the_llm_gets_the_history(
    client: httpx.Client, mesh: StubMesh
) -> None:
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who built the Zorblax reactor?"},
        {"role": "assistant", "content": "Ada's team."},
        {"role": "user", "content": "When was it finished?"},
    ]
    assert client.post("/v1/chatqna", json={"messages": history}).status_code == 200
    assert mesh.seen["embedding"][0]["input"] == "Who built the Zorblax reactor?\nWhen was it finished?"
    sent = mesh.seen["llm"][0]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "Who built the Zorblax reactor?" and sent[3]["content"].endswith(
        "Question: When was it finished?"
    )


# -- failures before the answer starts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "contains"),
    [
        ({"messages": "q", "k": 0}, "k", "k: Input should be greater than or equal to 1"),
        ({"messages": []}, "messages", "messages: must contain at least one message"),
        ({"messages": "q", "temperature": 3}, "temperature", "temperature: Input should be less than or equal to 2"),
        ({"messages": "q", "search_type": "nearest"}, "search_type", "search_type: Input should be 'similarity'"),
        ({"messages": "q", "chat_template": "no slots"}, "chat_template", "must contain both {context} and {question}"),
    ],
)
def test_bad_fields_get_a_400_envelope_naming_the_field(
    client: httpx.Client, mesh: StubMesh, body: dict, param: str, contains: str
) -> None:
    err = assert_error(client.post("/v1/chatqna", json=body), 400, "invalid_value", contains)
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert not any(mesh.seen.values())


def test_a_body_that_is_not_json_gets_a_400(client: httpx.Client) -> None:
    r = client.post("/v1/chatqna", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(r, 400, "invalid_value", "request body is not valid JSON")


@pytest.mark.parametrize("node", ["embedding", "retriever", "reranker", "llm"])
def test_a_failing_hop_is_a_502_naming_it(client: httpx.Client, mesh: StubMesh, node: str) -> None:
    mesh.knobs[node].status = 500
    mesh.knobs[node].message = f"{node} exploded"
    err = assert_error(
        client.post("/v1/chatqna", json={"messages": QUESTION}), 502, node, f"{node} answered HTTP 500: {node} exploded"
    )
    assert err["type"] == "upstream_error"


def test_a_service_saying_it_is_unavailable_is_a_503_naming_it(client: httpx.Client, mesh: StubMesh) -> None:
    mesh.knobs["reranker"].status = 503
    assert_error(client.post("/v1/chatqna", json={"messages": QUESTION}), 503, "reranker", "reranker answered HTTP 503")


def test_a_slow_service_past_its_timeout_is_a_504_naming_it(client: httpx.Client, mesh: StubMesh) -> None:
    mesh.knobs["retriever"].delay_s = 1.6  # the gateway gives the retriever 1 s here
    started = time.monotonic()
    assert_error(
        client.post("/v1/chatqna", json={"messages": QUESTION}), 504, "retriever", "retriever did not answer within 1s"
    )
    assert time.monotonic() - started < 1.5
    assert mesh.seen["reranker"] == [] and mesh.seen["llm"] == []


def test_an_llm_400_is_passed_through_as_the_clients_error(client: httpx.Client, mesh: StubMesh) -> None:
    mesh.knobs["llm"].status = 400
    mesh.knobs["llm"].message = "prompt (5000 tokens) + max_tokens (512) exceed the context window (4096)"
    for stream in (False, True):
        err = assert_error(
            client.post("/v1/chatqna", json={"messages": QUESTION, "stream": stream}),
            400,
            "llm",
            "exceed the context window (4096)",
        )
        assert err["type"] == "invalid_request_error"


def test_a_full_llm_queue_is_a_429_with_retry_after(client: httpx.Client, mesh: StubMesh) -> None:
    mesh.knobs["llm"].status = 429
    mesh.knobs["llm"].retry_after = "7"
    r = client.post("/v1/chatqna", json={"messages": QUESTION})
    assert_error(r, 429, "llm", "llm answered HTTP 429")
    assert r.headers["retry-after"] == "7"


def test_an_answer_that_breaks_the_contract_is_a_502(client: httpx.Client, mesh: StubMesh) -> None:
    mesh.knobs["retriever"].documents = [{"id": "x", "text": "no metadata", "score": 1.0}]
    assert_error(
        client.post("/v1/chatqna", json={"messages": QUESTION}),
        502,
        "retriever",
        "retriever answered with an unexpected body: documents.0.metadata: Field required",
    )


# -- failures during a stream -----------------------------------------------------------------------


def test_an_llm_error_mid_stream_is_an_error_event_then_done(client: httpx.Client, mesh: StubMesh) -> None:
    mesh.knobs["llm"].fail_after = 2
    r = client.post("/v1/chatqna", json={"messages": QUESTION, "stream": True})
    assert r.status_code == 200
    events = sse_data(r.text)
    assert [json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:3]] == TOKENS[:2]
    assert json.loads(events[3])["error"]["message"] == "stub generation failed"
    assert events[4:] == ["[DONE]"]


def test_a_stream_that_breaks_off_ends_with_an_error_event_naming_the_llm(client: httpx.Client, mesh: StubMesh) -> None:
    mesh.knobs["llm"].cut_after = 3
    events = sse_data(client.post("/v1/chatqna", json={"messages": QUESTION, "stream": True}).text)
    assert len(events) == 1 + 3 + 2
    err = json.loads(events[-2])["error"]
    assert err["code"] == "llm" and err["type"] == "upstream_error"
    assert events[-1] == "[DONE]"


def test_a_stalled_stream_ends_with_a_timeout_event(client: httpx.Client, mesh: StubMesh) -> None:
    mesh.knobs["llm"].chunk_delay_s = 3  # the gateway allows 2 s of silence here
    mesh.knobs["llm"].tokens = ["a", "b"]
    started = time.monotonic()
    events = sse_data(client.post("/v1/chatqna", json={"messages": QUESTION, "stream": True}).text)
    assert time.monotonic() - started < 2.9
    err = json.loads(events[-2])["error"]
    assert (err["code"], err["type"]) == ("llm", "upstream_timeout")
    assert events[-1] == "[DONE]"


# -- cancellation -----------------------------------------------------------------------------------


def test_a_client_leaving_a_stream_stops_the_llm_generation(gateway: Service, mesh: StubMesh) -> None:
    mesh.knobs["llm"].chunk_delay_s = 0.2
    mesh.knobs["llm"].tokens = [f" t{i}" for i in range(100)]
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        with c.stream("POST", "/v1/chatqna", json={"messages": QUESTION, "stream": True}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
    assert mesh.stubs.llm_aborted.wait(5), "the LLM stub never saw its stream closed"


def test_a_client_leaving_before_the_answer_cancels_the_llm_call(gateway: Service, mesh: StubMesh) -> None:
    mesh.knobs["llm"].delay_s = 5
    with httpx.Client(base_url=gateway.url, timeout=0.5) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/v1/chatqna", json={"messages": QUESTION})
    assert mesh.stubs.llm_aborted.wait(3), "the LLM stub kept working for a client that had gone"


def test_a_slow_llm_first_byte_does_not_stall_other_requests(gateway: Service, mesh: StubMesh) -> None:
    slow: dict[str, httpx.Response] = {}

    def slow_request() -> None:
        slow["resp"] = httpx.post(
            f"{gateway.url}/v1/chatqna", json={"messages": QUESTION + " [slow-first-byte]", "stream": True}, timeout=60
        )

    thread = threading.Thread(target=slow_request)
    thread.start()
    try:
        assert mesh.stubs.slow_held.wait(30), "the slow request never reached the LLM stub"
        with httpx.Client(base_url=gateway.url, timeout=30) as c:
            for _ in range(5):  # answered while the slow one is still held
                assert c.post("/v1/chatqna", json={"messages": QUESTION, "stream": True}).status_code == 200
        assert "resp" not in slow
    finally:
        mesh.stubs.slow_release.set()
        thread.join(60)
    assert slow["resp"].status_code == 200


# -- readiness, metrics, auth -----------------------------------------------------------------------


def test_readiness_follows_the_services_of_the_graph(client: httpx.Client, mesh: StubMesh) -> None:
    assert client.get("/v1/ready").json()["services"] == {
        n: mesh.url(n) for n in ("embedding", "retriever", "reranker", "llm")
    }
    mesh.knobs["retriever"].ready = False
    mesh.knobs["llm"].ready = False
    r = client.get("/v1/ready")
    err = assert_error(
        r, 503, None, "not ready: retriever, llm (retriever answered HTTP 503: retriever stub is warming up"
    )
    assert err["type"] == "service_unavailable"
    mesh.knobs["retriever"].ready = True
    mesh.knobs["llm"].ready = True
    assert client.get("/v1/ready").status_code == 200


def test_a_service_down_before_the_request_is_a_503_naming_it(mesh: StubMesh, tmp_path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**mesh.env(), "GATEWAY_RERANKER_URL": dead}
    # wait for liveness only: readiness is expected to say 503 while the reranker is down
    svc = start_service(
        "megaservice", "GATEWAY_", env, name="gateway-dead", wait="health", log_dir=tmp_path, timeout_s=60
    )
    try:
        r = httpx.get(f"{svc.url}/v1/ready", timeout=10)
        assert_error(r, 503, None, f"not ready: reranker (reranker is unreachable at {dead}/v1/ready")
        r = httpx.post(f"{svc.url}/v1/chatqna", json={"messages": QUESTION}, timeout=10)
        assert_error(r, 503, "reranker", f"reranker is unreachable at {dead}/rerank")
        assert (
            httpx.post(f"{svc.url}/v1/chatqna", json={"messages": QUESTION, "rerank": False}, timeout=10).status_code
            == 200
        )
    finally:
        svc.stop()


def test_metrics_count_hops_errors_and_time_to_first_token(client: httpx.Client, mesh: StubMesh) -> None:
    client.post("/v1/chatqna", json={"messages": QUESTION, "stream": True})
    mesh.knobs["embedding"].status = 500
    client.post("/v1/chatqna", json={"messages": QUESTION})
    text = client.get("/metrics").text
    for node in ("embedding", "retriever", "reranker", "llm"):
        assert f'chatqna_gateway_node_duration_seconds_count{{node="{node}"}}' in text
    assert 'chatqna_gateway_node_errors_total{kind="upstream_error",node="embedding"}' in text
    assert 'chatqna_gateway_time_to_first_token_seconds_count{pipeline="rag-rerank"}' in text
    assert "chatqna_gateway_llm_time_to_first_token_seconds_count" in text
    assert 'chatqna_gateway_requests_total{mode="stream",pipeline="rag-rerank"}' in text


def test_the_api_key_guards_the_chat_routes(mesh: StubMesh, tmp_path) -> None:
    svc = start_service(
        "megaservice",
        "GATEWAY_",
        {**mesh.env(), "GATEWAY_API_KEY": "s3cret"},
        name="gateway-auth",
        log_dir=tmp_path,
        timeout_s=60,
    )
    try:
        r = httpx.post(f"{svc.url}/v1/chatqna", json={"messages": QUESTION}, timeout=10)
        assert_error(r, 401, None, "missing or invalid bearer token")
        ok = httpx.post(
            f"{svc.url}/v1/chatqna", json={"messages": QUESTION}, timeout=10, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
        assert httpx.get(f"{svc.url}/v1/ready", timeout=10).status_code == 200
    finally:
        svc.stop()
