"""OPEA's stock UIs against the gateway (a real process over stubs) with GATEWAY_OPEA_COMPAT on, and the same
requests with it off (today's behaviour): OPEA's stream line format byte for byte, OPEA's dataprep shapes,
and /v1/chat/completions staying OpenAI's in both."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support.procs import Service, start_service
from tests.support.sse import sse_data
from tests.support.stubs import TOKENS, StubMesh

pytestmark = pytest.mark.integration

QUESTION = "What does the stub know about Zorblax?"
# Non-ASCII, quotes, a backslash and a newline: repr() of their UTF-8 bytes, as OPEA's UIs parse them.
TRICKY = ["Caf", "é", " 日本", " it's", ' "q"', "\n", "\\", " ok"]
TRICKY_WIRE = (
    b"data: b'Caf'\n\n"
    b"data: b'\\xc3\\xa9'\n\n"
    b"data: b' \\xe6\\x97\\xa5\\xe6\\x9c\\xac'\n\n"
    b'data: b" it\'s"\n\n'
    b"data: b' \"q\"'\n\n"
    b"data: b'\\n'\n\n"
    b"data: b'\\\\'\n\n"
    b"data: b' ok'\n\n"
    b"data: [DONE]\n\n"
)


@pytest.fixture(scope="module")
def mesh() -> Iterator[StubMesh]:
    with StubMesh(only=("embedding", "retriever", "reranker", "llm", "dataprep")) as m:
        yield m


def _gateway(mesh: StubMesh, tmp: pytest.TempPathFactory, name: str, **env: str) -> Iterator[Service]:
    svc = start_service(
        "megaservice", "GATEWAY_", {**mesh.env(), **env}, name=name, log_dir=tmp.mktemp(name), timeout_s=60
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def opea(mesh: StubMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    for svc in _gateway(mesh, tmp_path_factory, "gw-opea", GATEWAY_OPEA_COMPAT="true"):
        with httpx.Client(base_url=svc.url, timeout=20) as c:
            yield c


@pytest.fixture(scope="module")
def plain(mesh: StubMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    for svc in _gateway(mesh, tmp_path_factory, "gw-plain"):
        with httpx.Client(base_url=svc.url, timeout=20) as c:
            yield c


@pytest.fixture(autouse=True)
def fresh_stubs(mesh: StubMesh) -> None:
    mesh.stubs.reset()


def test_chatqna_streams_by_default_in_opeas_line_format_byte_for_byte(opea: httpx.Client, mesh: StubMesh) -> None:
    mesh.knobs["llm"].tokens = list(TRICKY)
    with opea.stream("POST", "/v1/chatqna", json={"messages": QUESTION}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        wire = r.read()
    assert wire == TRICKY_WIRE
    assert mesh.seen["llm"][0]["stream"] is True
    # What OPEA's UIs do with each line gives the answer back, non-ASCII included.
    tokens = [line[6:] for line in wire.split(b"\n\n") if line.startswith(b"data: b")]
    assert "".join(eval(t).decode() for t in tokens) == "".join(TRICKY)  # noqa: S307 - our own test bytes


def test_a_history_array_streams_too_and_reaches_the_llm(opea: httpx.Client, mesh: StubMesh) -> None:
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who made Zorblax?"},
        {"role": "assistant", "content": "The stub did."},
        {"role": "user", "content": QUESTION},
    ]
    with opea.stream("POST", "/v1/chatqna", json={"messages": history, "max_tokens": 64}) as r:
        events = sse_data(r.read().decode())
    assert events[-1] == "[DONE]" and events[:-1] == [repr(t.encode()) for t in TOKENS]
    sent = mesh.seen["llm"][0]["messages"]
    assert sent[0]["content"].startswith("Be brief.") or any(m["content"] == "Be brief." for m in sent)
    assert any(m["content"] == "The stub did." for m in sent) and QUESTION in sent[-1]["content"]


def test_stream_false_and_chat_completions_stay_openai(opea: httpx.Client) -> None:
    done = opea.post("/v1/chatqna", json={"messages": QUESTION, "stream": False}).json()
    assert done["object"] == "chat.completion" and done["choices"][0]["message"]["content"] == "".join(TOKENS)
    assert opea.post("/v1/chat/completions", json={"messages": QUESTION}).json()["object"] == "chat.completion"
    with opea.stream("POST", "/v1/chat/completions", json={"messages": QUESTION, "stream": True}) as r:
        events = sse_data(r.read().decode())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks) and "sources" in chunks[0]


def test_an_error_before_the_stream_is_the_envelope(opea: httpx.Client, mesh: StubMesh) -> None:
    mesh.knobs["llm"].status = 503
    r = opea.post("/v1/chatqna", json={"messages": QUESTION})
    assert r.status_code == 503 and r.json()["error"]["message"]
    assert opea.post("/v1/chatqna", json={"messages": ""}).json()["error"]["param"]


def test_off_by_default_chatqna_answers_openai_json_and_chunks(plain: httpx.Client, mesh: StubMesh) -> None:
    done = plain.post("/v1/chatqna", json={"messages": QUESTION})
    assert done.headers["content-type"] == "application/json" and done.json()["object"] == "chat.completion"
    assert "stream" not in mesh.seen["llm"][0]
    with plain.stream("POST", "/v1/chatqna", json={"messages": QUESTION, "stream": True}) as r:
        events = sse_data(r.read().decode())
    assert json.loads(events[0])["object"] == "chat.completion.chunk" and events[-1] == "[DONE]"


def test_dataprep_answers_in_opeas_shapes(opea: httpx.Client, mesh: StubMesh) -> None:
    r = opea.post(
        "/v1/dataprep/ingest",
        files=[("files", ("notes.txt", b"Zorblax notes", "text/plain"))],
        data={"link_list": json.dumps(["https://example.com/zorblax.html"])},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == 200 and body["message"] == "Data preparation succeeded"
    assert [(j["source"], j["status"]) for j in body["jobs"]] == [
        ("notes.txt", "succeeded"),
        ("https://example.com/zorblax.html", "succeeded"),
    ]
    files = opea.post("/v1/dataprep/get", json={}).json()
    assert sorted(f["name"] for f in files) == ["https://example.com/zorblax.html", "notes.txt"]
    assert all(f["type"] == "File" and f["children"] == [] and f["parent"] == "" for f in files)
    assert set(files[0]) == {"name", "id", "type", "parent", "children"}
    notes = next(f for f in files if f["name"] == "notes.txt")
    assert opea.post("/v1/dataprep/delete", json={"file_path": notes["id"]}).json() == {"status": True, "deleted": 1}
    assert [f["name"] for f in opea.post("/v1/dataprep/get").json()] == ["https://example.com/zorblax.html"]


def test_an_ingest_that_fails_says_why_in_the_body(opea: httpx.Client) -> None:
    r = opea.post("/v1/dataprep/ingest", files=[("files", ("broken.pdf", b"%PDF-", "application/pdf"))])
    body = r.json()
    assert body["status"] == 500 and "broken.pdf: stub: could not parse" in body["message"]
    assert opea.post("/v1/dataprep/get").json() == []
    # bad input stays the envelope
    bad = opea.post("/v1/dataprep/delete", json={})
    assert bad.status_code == 400 and bad.json()["error"]["param"]


def test_off_by_default_dataprep_answers_its_own_shapes(plain: httpx.Client) -> None:
    r = plain.post("/v1/dataprep/ingest", files=[("files", ("notes.txt", b"Zorblax notes", "text/plain"))])
    assert r.status_code == 202 and r.json() == {
        "jobs": [{"job_id": "job-0", "source": "notes.txt", "status": "queued"}]
    }
    assert plain.post("/v1/dataprep/get").json() == []  # the stub's job has not finished: nobody looked
    assert plain.post("/v1/dataprep/delete", json={"file_path": "all"}).json() == {"deleted": 0}


def test_health_needs_no_credentials(opea: httpx.Client, plain: httpx.Client) -> None:
    for client in (opea, plain):
        assert client.get("/health").json() == {"status": "ok"}
