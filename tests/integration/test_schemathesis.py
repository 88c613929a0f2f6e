"""Schemathesis (property-based requests generated from each service's own OpenAPI document) against real
service processes, with response conformance: no answer >= 500, every status, content type and body as the
document declares it, and every error in the one envelope (issue 12, "fuzzing every door").

Bounded: `MAX_EXAMPLES` generated requests per operation, no shrinking, so the whole file stays fast; a
failure prints the request to reproduce it (``curl``)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from comps.core.caller import Caller
from tests.integration.test_dataprep_crash import HeldEmbeddings
from tests.support.procs import Service, start_service
from tests.support.stubs import StubMesh

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 12
BOUNDED = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same requests every run: a failure here is a finding, not luck
    database=None,  # nothing written to .hypothesis/
)


UVICORN_REFUSAL = "Invalid HTTP request received."


def error_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx or 5xx answer is ``{"error": {"message", "type", "param", "code"}}``."""
    if response.status_code < 400:
        return None
    body = response.json()
    err = body.get("error") if isinstance(body, dict) else None
    assert isinstance(err, dict) and set(body) == {"error"} and set(err) == {"message", "type", "param", "code"}, (
        f"status {response.status_code}, not the error envelope: {response.text[:300]}"
    )
    assert isinstance(err["message"], str) and err["message"].strip(), f"envelope without a message: {err}"
    return True


def unless_refused_by_the_server(check: Any) -> Any:
    """``check``, but for a request that is not valid HTTP at all (a negative case can make a request line too long
    or a header no HTTP parser takes): uvicorn refuses it itself, in plain text, before any application sees it."""

    @functools.wraps(check)
    def checked(ctx: Any, response: Any, case: Any) -> bool | None:
        if response.status_code == 400 and response.text == UVICORN_REFUSAL:
            return None
        result: bool | None = check(ctx, response, case)
        return result

    return checked


CHECKS = [unless_refused_by_the_server(c) for c in (not_a_server_error, status_code_conformance,
          content_type_conformance, response_schema_conformance, error_envelope)]  # fmt: skip


def run_schema(
    svc: Service, headers: dict[str, str] | None = None, examples: int = MAX_EXAMPLES, exclude: str | None = None
) -> None:
    """Every operation of the service's OpenAPI document (but the paths ``exclude`` matches): `MAX_EXAMPLES`
    valid requests and as many invalid ones, each answer checked; the failures of all operations reported
    together."""
    schema = schemathesis.openapi.from_url(f"{svc.url}/openapi.json", headers=headers or {})
    if exclude:
        schema = schema.exclude(path_regex=exclude)
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(BOUNDED, max_examples=examples)
            def check(case: Any) -> None:
                case.call_and_validate(headers=headers, checks=CHECKS, timeout=120)

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid: an operation without parameters or body
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # a failed check: its report names the request
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:3000])
    assert operations > 0
    assert svc.process.running(), svc.process.last_output()
    assert not failures, f"{len(failures)} operations failed:\n\n" + "\n\n".join(failures)


# --------------------------------------------------------------------------------------------- services


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service("comps.reranker", "RERANKER_", {}, log_dir=tmp_path_factory.mktemp("reranker"))
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def embedding(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service("comps.embedding", "EMBEDDING_", {"EMBEDDING_DEVICE": "cpu"},
                        log_dir=tmp_path_factory.mktemp("embedding"))  # fmt: skip
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


# ------------------------------------------------------------------------------------------------- tests


def test_reranker(reranker: Service) -> None:
    run_schema(reranker)


def test_embedding(embedding: Service) -> None:
    run_schema(embedding)


def test_retriever(embedding: Service, redis_url: str, tmp_path: Path) -> None:
    env = {"REDIS_URL": redis_url, "INDEX_NAME": "schemathesis", "RETRIEVER_EMBEDDING_URL": embedding.url}
    retriever = start_service("comps.retriever", "RETRIEVER_", env, log_dir=tmp_path)
    try:
        run_schema(retriever)
    finally:
        retriever.stop()


def test_dataprep(dataprep: Service) -> None:
    run_schema(dataprep)


def test_gateway(dataprep: Service, tmp_path: Path) -> None:
    """The gateway over the stub services and the real dataprep, without chat history and prompt registry
    (unset: their routes are not mounted, and no request may reach a default port) and without PostgreSQL: the
    usage routes, which answer 503 "accounting is off" then, are left out (test_usage_admin.py has them)."""
    with StubMesh() as mesh:
        env = {**mesh.env(), "GATEWAY_DATAPREP_URL": dataprep.url, "GATEWAY_CHATHISTORY_URL": "",
               "GATEWAY_PROMPTS_URL": ""}  # fmt: skip
        gateway = start_service("megaservice", "GATEWAY_", env, name="gateway", log_dir=tmp_path)
        try:
            run_schema(gateway, exclude=r"^/v1/(admin/)?usage$")
        finally:
            gateway.stop()


def test_llm(tmp_path: Path) -> None:
    """Few examples: a generated request may ask for every token its small context leaves."""
    env = {"LLM_N_CTX": "256", "LLM_PARALLEL": "2", "LLM_DEFAULT_MAX_TOKENS": "4"}
    llm = start_service("comps.llm", "LLM_", env, log_dir=tmp_path)
    try:
        run_schema(llm, examples=4)
    finally:
        llm.stop()


@pytest.mark.parametrize(("module", "prefix"), [("comps.chathistory", "CHATHISTORY_"),
                                                ("comps.prompt_registry", "PROMPTS_")])  # fmt: skip
def test_stores(module: str, prefix: str, database_url: str, tmp_path: Path) -> None:
    key = "schemathesis-internal-token"
    svc = start_service(module, prefix, {"DATABASE_URL": database_url, f"{prefix}API_KEY": key}, log_dir=tmp_path)
    try:
        caller = Caller(str(uuid.uuid4()), "fuzz", "user")
        run_schema(svc, headers={"Authorization": f"Bearer {key}", **caller.headers()})
    finally:
        svc.stop()
