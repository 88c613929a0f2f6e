"""ChatQnA end to end on the real mesh: embedded Redis and PostgreSQL, the five services with their default models,
and the gateway with accounts on, all started by the runtime's Supervisor on free ports. A corpus of made-up
facts (no model could know them) is ingested through the gateway (the one public door) with the first admin's
token; questions go through the gateway with the official `openai` client and an API key. The last tests kill
services, so they run last (file order).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from comps.runtime.mesh import Supervisor
from tests.support.procs import local_mesh
from tests.support.sse import sse_data

pytestmark = pytest.mark.e2e

CORPUS = {
    "zorblax.txt": "The Zorblax-7 reactor in Quellmoor was commissioned on 14 March 2031 by the engineer Idris "
    "Vantablack. Its coolant is liquid gallium and it produces 420 megawatts.",
    "pelmora.md": "# Pelmora\n\nPelmora is an island in the Sea of Oresk. Its official fruit is the snow-peach and "
    "its capital is Tarvenholt, a town of 9,000 people.",
    "kettle.txt": "The Brindle kettle boils 1.7 litres of water in four minutes and switches itself off when empty.",
}
QUESTION = "Who commissioned the Zorblax-7 reactor in Quellmoor?"
ADMIN = ("e2e-admin", "e2e-" + uuid.uuid4().hex)


@pytest.fixture(scope="module")
def sup(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    with local_mesh(models_dir, tmp_path_factory.mktemp("state"), ADMIN) as supervisor:
        yield supervisor


@pytest.fixture(scope="module")
def gateway(sup: Supervisor) -> str:
    assert sup.mesh is not None
    return sup.mesh.url("gateway")


@pytest.fixture(scope="module")
def auth(gateway: str) -> dict[str, str]:
    """The first admin's bearer header (the admin was made by the runtime from CHATQNA_ADMIN_*)."""
    r = httpx.post(f"{gateway}/v1/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]}, timeout=30)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture(scope="module")
def api_key(gateway: str, auth: dict[str, str]) -> str:
    r = httpx.post(f"{gateway}/v1/auth/keys", json={"name": "e2e"}, headers=auth, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["key"]


@pytest.fixture(scope="module")
def collection(gateway: str, auth: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The corpus, ingested through the gateway into a collection of its own."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    folder = tmp_path_factory.mktemp("corpus")
    files = []
    for fname, text in CORPUS.items():
        (folder / fname).write_text(text)
        files.append(("files", (fname, (folder / fname).read_bytes(), "text/plain")))
    r = httpx.post(f"{gateway}/v1/dataprep/ingest", files=files, data={"collection": name}, headers=auth, timeout=30)
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 120
    for ref in r.json()["jobs"]:
        while True:
            job = httpx.get(f"{gateway}/v1/dataprep/jobs/{ref['job_id']}", headers=auth, timeout=10).json()
            if job["status"] in ("succeeded", "failed", "skipped"):
                assert job["status"] == "succeeded", job
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
    return name


@pytest.fixture
def oai(gateway: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=api_key, max_retries=0, timeout=120)


def llm_metric(sup: Supervisor, name: str) -> float:
    assert sup.mesh is not None
    text = httpx.get(f"{sup.mesh.url('llm')}/metrics", timeout=5).text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def test_the_gateway_is_ready_and_lists_the_llm(gateway: str, oai: openai.OpenAI) -> None:
    ready = httpx.get(f"{gateway}/v1/ready", timeout=10).json()
    assert ready["pipeline"] == "rag-rerank" and set(ready["services"]) == {"embedding", "retriever", "reranker", "llm"}
    listed = oai.models.list().data  # one LLM: listed under the gateway's name, with the file it runs as its root
    assert [(m.id, m.model_extra["root"], m.model_extra["status"]) for m in listed] == [
        ("chatqna", "SmolLM2-135M-Instruct.Q4_1.gguf", "ready")
    ]


def test_an_answer_names_its_source_first(oai: openai.OpenAI, collection: str) -> None:
    done = oai.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=48,
        extra_body={"collection": collection},
    )
    sources = done.model_extra["sources"]
    assert sources[0]["source"] == "zorblax.txt" and "Idris Vantablack" in sources[0]["text"]
    assert 1 <= len(sources) <= 3 and all(s["score"] is not None for s in sources)
    assert done.model == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert done.usage is not None and done.usage.prompt_tokens > 40 and done.usage.completion_tokens > 0
    assert done.choices[0].message.content.strip()


def test_a_streamed_answer_is_exact_openai_sse_with_sources_on_the_first_chunk(
    auth: dict[str, str], oai: openai.OpenAI, gateway: str, collection: str
) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="any",
            messages=[{"role": "user", "content": "What is the official fruit of Pelmora?"}],
            temperature=0,
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"collection": collection},
        )
    )
    assert chunks[0].model_extra["sources"][0]["source"] == "pelmora.md"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    body = {
        "messages": "What is the official fruit of Pelmora?",
        "stream": True,
        "max_tokens": 16,
        "collection": collection,
    }
    with httpx.stream("POST", f"{gateway}/v1/chatqna", headers=auth, json=body, timeout=120) as r:
        assert r.status_code == 200
        events = sse_data(r.read().decode())
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert all(p["object"] == "chat.completion.chunk" for p in parsed)
    assert parsed[0]["sources"][0]["source"] == "pelmora.md"
    assert parsed[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    ("fields", "n_sources"),
    [
        ({"rerank": False}, 3),
        ({"pipeline": "rag"}, 3),
        ({"retrieval": False}, 0),
        ({"pipeline": "rag-rerank", "top_n": 1}, 1),
    ],
)
def test_each_variant_answers(
    auth: dict[str, str], gateway: str, collection: str, fields: dict, n_sources: int
) -> None:
    body = {"messages": QUESTION, "max_tokens": 16, "collection": collection, "k": 3, **fields}
    r = httpx.post(f"{gateway}/v1/chatqna", headers=auth, json=body, timeout=120)
    assert r.status_code == 200, r.text
    sources = r.json()["sources"]
    assert len(sources) == n_sources
    if n_sources:
        assert sources[0]["source"] == "zorblax.txt"


def test_a_follow_up_question_finds_the_right_document(auth: dict[str, str], gateway: str, collection: str) -> None:
    messages = [
        {"role": "user", "content": "Tell me about the island of Pelmora."},
        {"role": "assistant", "content": "Pelmora is an island in the Sea of Oresk."},
        {"role": "user", "content": "What is its capital?"},
    ]
    r = httpx.post(
        f"{gateway}/v1/chatqna",
        headers=auth,
        json={"messages": messages, "max_tokens": 16, "collection": collection},
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["sources"][0]["source"] == "pelmora.md"


def ingest(gateway: str, auth: dict[str, str], collection: str, files: dict[str, str]) -> None:
    """Ingest ``files`` (name -> text) through the gateway and wait for every job's success."""
    upload = [("files", (name, text.encode(), "text/plain")) for name, text in files.items()]
    r = httpx.post(
        f"{gateway}/v1/dataprep/ingest", files=upload, data={"collection": collection}, headers=auth, timeout=30
    )
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 120
    for ref in r.json()["jobs"]:
        while (job := httpx.get(f"{gateway}/v1/dataprep/jobs/{ref['job_id']}", headers=auth, timeout=10).json())[
            "status"
        ] not in ("succeeded", "failed", "skipped"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["status"] == "succeeded", job


def test_a_repeated_question_is_cached_until_its_document_changes(auth: dict[str, str], gateway: str) -> None:
    name = f"cache-{uuid.uuid4().hex[:8]}"
    ingest(gateway, auth, name, {"lighthouse.txt": "The keeper of the Velloran lighthouse is Orsolya Dremm."})
    body = {"messages": "Who is the keeper of the Velloran lighthouse?", "collection": name, "max_tokens": 24}
    fresh = httpx.post(f"{gateway}/v1/chatqna", headers=auth, json=body, timeout=120).json()
    assert fresh["cached"] is False and "Orsolya Dremm" in fresh["sources"][0]["text"]
    hit = httpx.post(f"{gateway}/v1/chatqna", headers=auth, json=body, timeout=120).json()
    assert hit["cached"] is True and hit["choices"] == fresh["choices"] and hit["usage"] == fresh["usage"]
    ingest(gateway, auth, name, {"lighthouse.txt": "The keeper of the Velloran lighthouse is Bertil Quennow."})
    # the job's success is the moment: the next ask is a miss, answered from the new text
    changed = httpx.post(f"{gateway}/v1/chatqna", headers=auth, json=body, timeout=120).json()
    assert changed["cached"] is False and "Bertil Quennow" in changed["sources"][0]["text"]
    assert all("Orsolya" not in s["text"] for s in changed["sources"])


def test_bad_fields_get_the_error_envelope(auth: dict[str, str], gateway: str) -> None:
    r = httpx.post(f"{gateway}/v1/chatqna", headers=auth, json={"messages": "q", "top_n": 0}, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "top_n: Input should be greater than or equal to 1"


def test_a_client_leaving_stops_the_generation(auth: dict[str, str], sup: Supervisor, gateway: str) -> None:
    story = {
        "messages": "Write a very long story about a dragon who learns to cook.",
        "retrieval": False,
        "temperature": 0,
    }
    # Greedy decoding: this prompt runs to the token limit (so a short count below is the client's doing).
    full = httpx.post(f"{gateway}/v1/chatqna", headers=auth, json={**story, "max_tokens": 120}, timeout=120).json()
    assert full["choices"][0]["finish_reason"] == "length"
    before = llm_metric(sup, "chatqna_llm_generated_tokens_total")
    with httpx.stream(
        "POST", f"{gateway}/v1/chatqna", headers=auth, json={**story, "stream": True, "max_tokens": 400}, timeout=60
    ) as r:
        for line in r.iter_lines():  # leaving this loop closes the connection
            if '"content":"' in line and '"content":""' not in line:
                assert llm_metric(sup, "chatqna_llm_active_sequences") == 1.0
                break
    deadline = time.monotonic() + 10
    while llm_metric(sup, "chatqna_llm_active_sequences") != 0.0:
        assert time.monotonic() < deadline, "the LLM kept generating for a client that had gone"
        time.sleep(0.05)
    assert llm_metric(sup, "chatqna_llm_generated_tokens_total") - before < 60


def test_internal_services_refuse_calls_without_the_mesh_token(sup: Supervisor, api_key: str) -> None:
    assert sup.mesh is not None
    for name, path in (("retriever", "/v1/retrieval"), ("dataprep", "/v1/dataprep/get"), ("llm", "/v1/models")):
        for headers in ({}, {"Authorization": f"Bearer {api_key}"}):  # a user's own key is no mesh token either
            r = httpx.request(
                "GET" if path == "/v1/models" else "POST",
                sup.mesh.url(name) + path,
                json={"text": "x"},
                headers=headers,
                timeout=10,
            )
            assert r.status_code == 401, (name, r.text)


def test_a_killed_reranker_is_a_503_naming_it(
    auth: dict[str, str], sup: Supervisor, gateway: str, collection: str
) -> None:
    os.killpg(sup.procs["reranker"].pid, signal.SIGKILL)
    sup.procs["reranker"].proc.wait(10)  # type: ignore[union-attr]
    r = httpx.post(
        f"{gateway}/v1/chatqna", headers=auth, json={"messages": QUESTION, "collection": collection}, timeout=30
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "reranker"
    assert "reranker is unreachable" in r.json()["error"]["message"]
    ready = httpx.get(f"{gateway}/v1/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["error"]["message"].startswith("not ready: reranker (")
    ok = httpx.post(
        f"{gateway}/v1/chatqna",
        headers=auth,
        json={"messages": QUESTION, "collection": collection, "rerank": False, "max_tokens": 8},
        timeout=120,
    )
    assert ok.status_code == 200


def test_an_llm_killed_mid_stream_ends_the_stream_with_an_error_event(
    auth: dict[str, str], sup: Supervisor, gateway: str
) -> None:
    body = {
        "messages": "Write a very long story about a dragon who learns to cook.",
        "retrieval": False,
        "stream": True,
        "max_tokens": 400,
    }
    with httpx.stream("POST", f"{gateway}/v1/chatqna", headers=auth, json=body, timeout=60) as r:
        lines = r.iter_lines()
        for line in lines:
            if '"content":"' in line and '"content":""' not in line:
                break
        os.killpg(sup.procs["llm"].pid, signal.SIGKILL)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2][len("data: ") :])["error"]
    assert error["code"] == "llm" and error["type"] == "upstream_error"
