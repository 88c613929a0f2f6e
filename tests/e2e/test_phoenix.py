"""What Arize Phoenix shows for one question: a real Phoenix (its PyPI package, ``arize-phoenix``) started by the
test on 127.0.0.1, the gateway over the stub services exporting to it, and Phoenix's REST API read back.

Phoenix lives in its own virtualenv (its dependencies, a few hundred MB, are not ours): ``make phoenix`` makes
``.state/phoenix-venv``; ``CHATQNA_PHOENIX`` may name another ``phoenix`` executable. The test is opt-in (the
``phoenix`` marker: ``pytest -m phoenix tests/e2e/test_phoenix.py``), deselected otherwise; opted in without
Phoenix it fails saying how to install it. tests/integration/test_tracing.py checks the same spans against an
OTLP collector always.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from comps.runtime.process import ManagedProcess, free_port
from tests.support.procs import REPO, Service, start_service
from tests.support.stubs import DOCS, TOKENS, StubMesh
from tests.support.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.phoenix]

QUESTION = "What does the stub know about Zorblax?"


def phoenix_executable() -> Path | None:
    given = os.environ.get("CHATQNA_PHOENIX")
    path = Path(given) if given else REPO / ".state" / "phoenix-venv" / "bin" / "phoenix"
    return path if path.exists() else None


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = phoenix_executable()
    if exe is None:
        pytest.fail("Arize Phoenix is not installed: `make phoenix` installs and serves it, or set CHATQNA_PHOENIX")
    work = tmp_path_factory.mktemp("phoenix")
    port = free_port()
    env = {
        "PHOENIX_WORKING_DIR": str(work),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    proc = ManagedProcess("phoenix", [str(exe), "serve"], env=env, cwd=work, log_file=work / "phoenix.log")
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http_ready(url + "/healthz", 180)
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def gateway(phoenix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, StubMesh]]:
    with StubMesh() as mesh:
        env = {**mesh.env(), "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix, "OTEL_BSP_SCHEDULE_DELAY": "50"}
        svc = start_service("megaservice", "GATEWAY_", env, name="gateway", log_dir=tmp_path_factory.mktemp("gw"))
        try:
            yield svc, mesh
        finally:
            svc.stop()


def test_phoenix_shows_a_chain_with_embedding_retriever_reranker_and_llm_spans(
    phoenix: str, gateway: tuple[Service, StubMesh]
) -> None:
    svc, _ = gateway
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    reply = httpx.post(
        f"{svc.url}/v1/chatqna", json={"messages": QUESTION, "max_tokens": 50}, headers=headers, timeout=20
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()

    def spans() -> list[dict]:
        got = httpx.get(f"{phoenix}/v1/projects/default/spans", params={"limit": 100}, timeout=10).json()["data"]
        return [s for s in got if s["context"]["trace_id"] == trace_id]

    # Phoenix stores what it receives in the background and signals nothing: ask until the trace is whole.
    found = wait_for(lambda: got if len(got := spans()) >= 5 else None, "the whole trace in Phoenix", 60)
    by_kind = {s["span_kind"]: s for s in found}
    print("\nPhoenix, one question:")
    for s in sorted(found, key=lambda s: s["start_time"]):
        counts = {k.rsplit(".", 1)[1]: v for k, v in s["attributes"].items() if k.startswith("llm.token_count.")}
        print(f"  {s['span_kind']:<9} {s['name']:<18} parent={s['parent_id']} {counts or ''}")
    assert sorted(by_kind) == ["CHAIN", "EMBEDDING", "LLM", "RERANKER", "RETRIEVER"], [s["name"] for s in found]
    chain = by_kind["CHAIN"]
    assert all(s["parent_id"] == chain["context"]["span_id"] for k, s in by_kind.items() if k != "CHAIN")

    llm = by_kind["LLM"]["attributes"]
    usage = body["usage"]
    assert llm["llm.model_name"] == body["model"]
    assert (llm["llm.token_count.prompt"], llm["llm.token_count.completion"], llm["llm.token_count.total"]) == (
        usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"],
    )  # fmt: skip
    retrieved = by_kind["RETRIEVER"]["attributes"]
    ids = {v for k, v in retrieved.items() if k.startswith("retrieval.documents.") and k.endswith(".document.id")}
    assert {s["id"] for s in body["sources"]} <= ids
    assert by_kind["RERANKER"]["attributes"]["reranker.model_name"] == "stub-reranker"
    assert by_kind["EMBEDDING"]["attributes"]["embedding.model_name"] == "stub-embedding"
    # Content is off by default: no question, passage or answer text reached Phoenix.
    dumped = str(found)
    for text in [QUESTION, "".join(TOKENS), *(d["text"] for d in DOCS)]:
        assert text not in dumped
