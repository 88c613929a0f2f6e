"""The malformed-request bombardment of test_robustness, on the two services that parse bodies by hand: the
gateway (its chat routes read the JSON themselves) and dataprep (its ingest form is streamed through a
multipart parser). Each runs as a real process: the gateway over the stub services, dataprep over the
embedded Redis and a stand-in embedding service. No answer may be a 500 or hang, every refusal is the error
envelope, and the service still answers a valid request afterwards (issue 12, "fuzzing every door")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from tests.integration.test_dataprep_crash import HeldEmbeddings
from tests.integration.test_robustness import TIMEOUT_S, problem, send
from tests.support.malformed import Case, cases, multipart_cases, post_paths
from tests.support.procs import Service, start_service
from tests.support.stubs import StubMesh

pytestmark = pytest.mark.integration

GATEWAY_VALID = {
    "/v1/chatqna": [{"messages": "What is the answer?", "max_tokens": 4}],
    "/v1/chat/completions": [{"messages": [{"role": "user", "content": "What is the answer?"}], "stream": True}],
}


def bombard(svc: Service, path: str, batch: list[Case]) -> tuple[int, list[str]]:
    failures: list[str] = []
    with httpx.Client(base_url=svc.url, timeout=TIMEOUT_S) as c:
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
    sent, failures = 0, []
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
    sent, failures = 0, []
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
