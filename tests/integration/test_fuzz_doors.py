"""The malformed-request bombardment of test_robustness, on the services it does not cover: the gateway (its
chat routes read the JSON themselves), dataprep (its ingest form is streamed through a multipart parser), and
chathistory and the prompt registry (every POST route, OPEA's included, called as the gateway calls them: the
internal token and a user). Each runs as a real process: the gateway over the stub services, dataprep over the
embedded Redis and a stand-in embedding service, the other two on a real PostgreSQL. No answer may be a 500 or
hang, every refusal is the error envelope, and the service still answers a valid request afterwards (issue 12,
"fuzzing every door")."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from comps.chathistory.protocol import Export
from comps.core.caller import Caller
from tests.integration.test_dataprep_crash import HeldEmbeddings
from tests.integration.test_robustness import TIMEOUT_S, problem, send
from tests.support.malformed import Case, body_cases, cases, field_cases, multipart_cases, post_paths
from tests.support.procs import Service, start_service
from tests.support.stubs import StubMesh

pytestmark = pytest.mark.integration

GATEWAY_VALID = {
    "/v1/chatqna": [{"messages": "What is the answer?", "max_tokens": 4}],
    "/v1/chat/completions": [{"messages": [{"role": "user", "content": "What is the answer?"}], "stream": True}],
}


INTERNAL = secrets.token_urlsafe(32)
IMPORT = "/v1/conversations/import"
TURN = [{"role": "user", "content": "What is the answer?"}, {"role": "assistant", "content": "Forty-two."}]


def bombard(svc: Service, path: str, batch: list[Case], headers: dict[str, str] | None = None) -> tuple[int, list[str]]:
    failures: list[str] = []
    with httpx.Client(base_url=svc.url, timeout=TIMEOUT_S, headers=headers) as c:
        for case in batch:
            started = time.monotonic()
            try:
                resp = send(c, path, case)
            except httpx.TimeoutException:
                failures.append(f"{path} {case.name}: no answer within {TIMEOUT_S:g}s")
                continue
            except httpx.TransportError as exc:
                failures.append(f"{path} {case.name}: {type(exc).__name__}: {exc}")
                continue
            if (why := problem(case, resp)) is not None:
                failures.append(f"{path} {case.name} ({time.monotonic() - started:.1f}s): {why}")
    assert svc.process.running(), svc.process.last_output()
    return len(batch), failures


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with StubMesh() as mesh:
        env = {**mesh.env(), "GATEWAY_CACHE_ENABLED": "true", "REDIS_URL": redis_url}  # each request builds a key
        svc = start_service("megaservice", "GATEWAY_", env, name="gateway",
                            log_dir=tmp_path_factory.mktemp("gateway"))  # fmt: skip
        yield svc
        svc.stop()


@pytest.fixture(scope="module")
def dataprep(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    embeddings = HeldEmbeddings().start()
    embeddings.release()
    env = {"REDIS_URL": redis_url, "DATAPREP_EMBEDDING_URL": embeddings.url, "DATAPREP_WORKERS": "2",
           "DATAPREP_MAX_FILE_BYTES": "200000"}  # fmt: skip
    svc = start_service("comps.dataprep", "DATAPREP_", env, log_dir=tmp_path_factory.mktemp("dataprep"))
    yield svc
    svc.stop()
    embeddings.stop()


def test_gateway_chat_routes_survive_malformed_requests(gateway: Service) -> None:
    openapi = httpx.get(f"{gateway.url}/openapi.json", timeout=10).json()
    assert set(GATEWAY_VALID) <= set(post_paths(openapi))
    sent, failures = 0, list[str]()
    for path, bodies in GATEWAY_VALID.items():
        for valid in bodies:
            assert httpx.post(f"{gateway.url}{path}", json=valid, timeout=TIMEOUT_S).status_code == 200
            batch = cases(openapi, path, valid)
            n, bad = bombard(gateway, path, batch)
            sent, failures = sent + n, failures + bad
    assert sent > 100
    assert not failures, f"{len(failures)} of {sent} answers wrong:\n" + "\n".join(failures)
    assert httpx.post(f"{gateway.url}/v1/chatqna", json=GATEWAY_VALID["/v1/chatqna"][0], timeout=30).status_code == 200


def test_dataprep_survives_malformed_requests(dataprep: Service) -> None:
    openapi = httpx.get(f"{dataprep.url}/openapi.json", timeout=10).json()
    json_valid = {
        "/v1/dataprep/get": {"collection": "fuzz"},
        "/v1/dataprep/delete": {"file_path": "nothing.txt", "collection": "fuzz"},
    }
    assert set(post_paths(openapi)) == set(json_valid)
    sent, failures = 0, list[str]()
    for path, valid in json_valid.items():
        batch = cases(openapi, path, valid)
        if path == "/v1/dataprep/get":  # its body is optional (OPEA lists files without one): none or null is valid
            batch = [replace(c, must_fail=False) if c.name in ("empty body", "top-level null") else c for c in batch]
        n, bad = bombard(dataprep, path, batch)
        sent, failures = sent + n, failures + bad
    n, bad = bombard(dataprep, "/v1/dataprep/ingest", multipart_cases())
    sent, failures = sent + n, failures + bad
    assert sent > 100
    assert not failures, f"{len(failures)} of {sent} answers wrong:\n" + "\n".join(failures)
    ok = httpx.post(f"{dataprep.url}/v1/dataprep/ingest", files=[("files", ("a.txt", b"fine text"))],
                    data={"collection": "fuzz"}, timeout=30)  # fmt: skip
    assert ok.status_code == 202, ok.text


@pytest.fixture(scope="module")
def conversation_stores(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    env = {"DATABASE_URL": database_url, "CHATHISTORY_API_KEY": INTERNAL, "PROMPTS_API_KEY": INTERNAL}
    started: dict[str, Service] = {}
    try:
        for module, prefix in (("comps.chathistory", "CHATHISTORY_"), ("comps.prompt_registry", "PROMPTS_")):
            logs = tmp_path_factory.mktemp(prefix.lower())
            started[module] = start_service(module, prefix, env, log_dir=logs, timeout_s=120)
        yield started
    finally:
        for svc in started.values():
            svc.stop()


def _bombard_all(
    svc: Service, headers: dict[str, str], valid: dict[str, dict[str, Any]], ids: dict[str, str] | None = None
) -> None:
    """Every POST route with a JSON body, from a valid body of each (path templates filled in)."""
    openapi = httpx.get(f"{svc.url}/openapi.json", headers=headers, timeout=10).json()
    by_hand = {IMPORT: Export} if IMPORT in valid else {}  # routes that read their body themselves
    assert set(post_paths(openapi)) | set(by_hand) == set(valid), "a POST route without a valid body here: add one"
    sent, failures = 0, list[str]()
    for path, body in valid.items():
        if path in by_hand:
            schema = by_hand[path].model_json_schema(ref_template="#/components/schemas/{model}")
            spec = {"components": {"schemas": schema.pop("$defs", {})}}
            batch = list(body_cases(body)) + list(field_cases(spec, schema, body))
            # a bare list of conversations is an import too
            batch = [replace(c, must_fail=False) if c.name == "top-level list" else c for c in batch]
        else:
            batch = cases(openapi, path, body)
        n, bad = bombard(svc, path.format(**(ids or {})), batch, headers)
        sent, failures = sent + n, failures + bad
    assert sent > 200
    assert not failures, f"{len(failures)} of {sent} answers wrong:\n" + "\n".join(failures)


def test_chathistory_survives_malformed_requests(conversation_stores: dict[str, Service]) -> None:
    svc = conversation_stores["comps.chathistory"]
    headers = {"Authorization": f"Bearer {INTERNAL}", **Caller(str(uuid.uuid4()), "fuzz", "user").headers()}
    with httpx.Client(base_url=svc.url, headers=headers, timeout=30) as c:
        cid = c.post("/v1/conversations", json={"messages": TURN}).json()["id"]
        doomed = c.post("/v1/conversations", json={"title": "to delete"}).json()["id"]
        answer = c.get(f"/v1/conversations/{cid}/messages").json()["data"][1]["id"]
        valid: dict[str, dict[str, Any]] = {
            "/v1/conversations": {"title": "fuzz", "pinned": True, "messages": TURN},
            IMPORT: {"conversations": [{"title": "imported", "messages": TURN}]},
            "/v1/conversations/{conversation_id}/messages": {"messages": TURN, "title": "more"},
            "/v1/conversations/{conversation_id}/messages/{message_id}/feedback": {
                "thumbs_up": False, "rating": 2, "comment": "wrong",
            },
            "/v1/chathistory/create": {"data": {"messages": "Hello?", "user": "x"}, "first_query": "Hello?"},
            "/v1/chathistory/get": {"user": "x", "id": cid},
            "/v1/chathistory/delete": {"user": "x", "id": doomed},
            "/v1/feedback/create": {"chat_id": cid, "feedback_data": {"is_thumbs_up": True, "rating": 5}},
            "/v1/feedback/get": {"chat_id": cid},
            "/v1/feedback/delete": {"feedback_id": str(uuid.uuid4())},
        }  # fmt: skip
        _bombard_all(svc, headers, valid, {"conversation_id": cid, "message_id": answer})
        # still answering, and what was there is intact
        assert [m["role"] for m in c.get(f"/v1/conversations/{cid}/messages").json()["data"]][:2] == [
            "user",
            "assistant",
        ]
        assert c.post("/v1/conversations", json={"messages": TURN}).status_code == 201


def test_the_prompt_registry_survives_malformed_requests(conversation_stores: dict[str, Service]) -> None:
    svc = conversation_stores["comps.prompt_registry"]
    headers = {"Authorization": f"Bearer {INTERNAL}", **Caller(str(uuid.uuid4()), "fuzz", "admin").headers()}
    with httpx.Client(base_url=svc.url, headers=headers, timeout=30) as c:
        made = c.post("/v1/prompts", json={"name": "fuzz-base", "kind": "rag", "text": "{context} {question}"})
        assert made.status_code == 201, made.text
        valid: dict[str, dict[str, Any]] = {
            "/v1/prompts": {"name": "fuzz", "kind": "system", "text": "Be brief.", "shared": True},
            "/v1/prompt/create": {"prompt_text": "Answer in French.", "user": "x"},
            "/v1/prompt/get": {"user": "x", "prompt_text": "French"},
            "/v1/prompt/delete": {"user": "x", "prompt_id": str(uuid.uuid4())},
        }
        _bombard_all(svc, headers, valid)
        assert c.get("/v1/prompts/fuzz-base").json()["text"] == "{context} {question}"
