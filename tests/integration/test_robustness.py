"""Bad input never gets a 500 or a hang: every finished service, as a real process, bombarded with malformed
requests generated from its own OpenAPI document (see tests/support/malformed.py).

For every POST endpoint and every case: the answer comes within `TIMEOUT_S`, its status is below 500, a
non-2xx answer is the error envelope ``{"error": {"message", "type", "param", "code"}}``, and requests that
cannot be valid (broken bodies, missing required fields, wrong types, lone surrogates, NaN) get a 4xx.
Afterwards the service is still alive, still ready, and answers a valid request as it did before.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request

from comps.core.errors import install_error_handlers
from comps.runtime.process import free_port
from comps.vectorstore import documents, schema
from tests.support.malformed import Case, cases, post_paths
from tests.support.procs import Service, start_service
from tests.support.tiny_models import build_tiny_cross_encoder

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
DIM = 384
COLLECTION = "robust-kb"
PASSAGES = [
    "The pump carries a two year warranty on parts and labour.",
    "Invoices are due thirty days after delivery.",
    "The office is closed on public holidays.",
]
QUERY = "How long is the warranty on the pump?"


# --------------------------------------------------------------------------------------------- services


@dataclass
class Target:
    svc: Service
    valid: dict[str, list[dict]]  # path -> valid bodies, each the start of its own malformed cases
    check: Callable[[httpx.Client], object]  # asserts a valid request is answered right; returns what it got


@pytest.fixture(scope="module")
def embedding(models_dir, tmp_path_factory) -> Iterator[Service]:
    svc = start_service(
        "comps.embedding", "EMBEDDING_", {"EMBEDDING_DEVICE": "cpu"}, log_dir=tmp_path_factory.mktemp("embedding")
    )
    yield svc
    svc.stop()


def check_embedding(c: httpx.Client) -> object:
    texts = [QUERY, *PASSAGES]
    resp = c.post("/v1/embeddings", json={"input": texts})
    assert resp.status_code == 200, resp.text
    v = np.array([d["embedding"] for d in resp.json()["data"]])
    assert v.shape == (len(texts), DIM)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    sims = v[1:] @ v[0]
    assert sims.argmax() == 0 and sims[0] > sims[1:].max() + 0.1  # the warranty passage is nearest the question
    return np.round(sims, 3).tolist()


def check_lexical(c: httpx.Client) -> object:
    resp = c.post("/rerank", json={"query": QUERY, "texts": PASSAGES[::-1]})
    assert resp.status_code == 200, resp.text
    assert resp.json()[0]["index"] == 2  # the warranty passage, last in the list, ranks first
    return resp.json()


def check_cross_encoder(c: httpx.Client) -> object:
    """The tiny random cross-encoder ranks nothing meaningfully: its scores must only stay the same."""
    resp = c.post("/rerank", json={"query": QUERY, "texts": PASSAGES})
    assert resp.status_code == 200, resp.text
    assert sorted(r["index"] for r in resp.json()) == [0, 1, 2]
    return [(r["index"], round(r["score"], 4)) for r in resp.json()]


def check_retriever(c: httpx.Client) -> object:
    resp = c.post("/v1/retrieval", json={"text": QUERY, "k": 2})
    assert resp.status_code == 200, resp.text
    texts = [d["text"] for d in resp.json()["documents"]]
    assert texts[:1] == [PASSAGES[0]]
    return texts


def check_llm(c: httpx.Client) -> object:
    question = "What is the capital of France? Answer in one word."
    resp = c.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}], "max_tokens": 16, "temperature": 0},
    )
    assert resp.status_code == 200, resp.text
    answer = resp.json()["choices"][0]["message"]["content"]
    assert "Paris" in answer, answer
    return answer  # greedy: the same text before and after the bombardment


@pytest.fixture(scope="module")
def targets(models_dir, redis_url, embedding, tmp_path_factory) -> Iterator[dict[str, Target]]:
    """Each service started once; the retriever searches a small collection embedded by the real model."""
    started: list[Service] = []

    def start(module: str, prefix: str, env: dict[str, str], name: str) -> Service:
        svc = start_service(module, prefix, env, name=name, log_dir=tmp_path_factory.mktemp(name))
        started.append(svc)
        return svc

    try:
        with httpx.Client(base_url=embedding.url, timeout=60) as c:
            resp = c.post("/v1/embeddings", json={"input": [QUERY, *PASSAGES]})
            assert resp.status_code == 200, resp.text
            query_vector, *vectors = [d["embedding"] for d in resp.json()["data"]]
        asyncio.run(_write_collection(redis_url, vectors))
        tiny = build_tiny_cross_encoder(models_dir, tmp_path_factory.mktemp("tiny-cross-encoder"))
        lexical = start("comps.reranker", "RERANKER_", {}, "reranker-lex")
        cross = start(
            "comps.reranker", "RERANKER_", {"RERANKER_MODEL": str(tiny), "RERANKER_DEVICE": "cpu"}, "reranker-ce"
        )
        retriever = start(
            "comps.retriever",
            "RETRIEVER_",
            {"REDIS_URL": redis_url, "INDEX_NAME": COLLECTION, "RETRIEVER_EMBEDDING_URL": embedding.url},
            "retriever",
        )
        llm = start(
            "comps.llm", "LLM_", {"LLM_N_CTX": "1024", "LLM_PARALLEL": "2", "LLM_DEFAULT_MAX_TOKENS": "4"}, "llm"
        )
        rerank = {
            "/rerank": [{"query": QUERY, "texts": PASSAGES}],
            "/v1/reranking": [{"initial_query": QUERY, "retrieved_docs": [{"text": t} for t in PASSAGES]}],
        }
        yield {
            "embedding": Target(
                embedding, {"/v1/embeddings": [{"input": "hello world"}], "/embed": [{"inputs": "hi"}]}, check_embedding
            ),
            "reranker-lexical": Target(lexical, rerank, check_lexical),
            "reranker-cross-encoder": Target(cross, rerank, check_cross_encoder),
            "retriever": Target(
                retriever,
                {
                    "/v1/retrieval": [
                        {"text": QUERY, "k": 2},  # text only: the retriever asks the embedding service
                        {"text": QUERY, "search_type": "hybrid", "k": 2, "filters": {"source": "faq.txt", "page": 1}},
                        {"embedding": query_vector, "search_type": "mmr", "k": 2, "fetch_k": 3},
                    ]
                },
                check_retriever,
            ),
            "llm": Target(
                llm,
                {
                    "/v1/chat/completions": [
                        {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2, "temperature": 0}
                    ]
                },
                check_llm,
            ),
        }
    finally:
        for svc in reversed(started):
            svc.stop()


async def _write_collection(url: str, vectors: list[list[float]]) -> None:
    r = schema.connect(url)
    try:
        await documents.delete_all(r, COLLECTION)
        await schema.ensure_index(r, COLLECTION, DIM, model="all-MiniLM-L6-v2")
        record = documents.DocumentRecord(doc_id="faq", source="faq.txt", sha256="0" * 64)
        chunks = [documents.Chunk(t, np.array(v, dtype=np.float32)) for t, v in zip(PASSAGES, vectors, strict=True)]
        await documents.replace_document(r, COLLECTION, record, chunks)
    finally:
        await r.aclose()


# ------------------------------------------------------------------------------------------------ checks


def problem(case: Case, resp: httpx.Response) -> str | None:
    """What is wrong with the answer to ``case`` (None: nothing)."""
    if resp.status_code >= 500:
        return f"status {resp.status_code}: {resp.text[:300]}"
    if 200 <= resp.status_code < 300:
        if case.must_fail:
            return f"status {resp.status_code} for a request that cannot be valid: {resp.text[:200]}"
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            return None if resp.text.rstrip().endswith("data: [DONE]") else f"stream without [DONE]: {resp.text[-200:]}"
        try:
            resp.json()
        except ValueError:
            return f"2xx answer is not JSON: {resp.text[:200]}"
        return None
    return envelope_problem(resp)


def envelope_problem(resp: httpx.Response) -> str | None:
    try:
        body = resp.json()
    except ValueError:
        return f"status {resp.status_code} without a JSON body: {resp.text[:200]!r}"
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict) or set(body) != {"error"} or set(err) != {"message", "type", "param", "code"}:
        return f"status {resp.status_code}, not the error envelope: {resp.text[:300]}"
    if not (isinstance(err["message"], str) and err["message"].strip() and isinstance(err["type"], str)):
        return f"status {resp.status_code}, envelope without a message or type: {err}"
    if not all(err[k] is None or isinstance(err[k], str) for k in ("param", "code")):
        return f"status {resp.status_code}, param/code neither a string nor null: {err}"
    return None


def send(c: httpx.Client, path: str, case: Case) -> httpx.Response:
    headers = {"content-type": case.content_type} if case.content_type is not None else {}
    request = c.build_request("POST", path, content=case.body, headers=headers)
    if case.content_type is None:
        request.headers.pop("content-type", None)
    return c.send(request)


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", ["embedding", "reranker-lexical", "reranker-cross-encoder", "retriever", "llm"])
def test_malformed_requests_get_a_4xx_envelope(targets: dict[str, Target], name: str) -> None:
    target = targets[name]
    failures: list[str] = []
    sent = 0
    with httpx.Client(base_url=target.svc.url, timeout=TIMEOUT_S) as c:
        openapi = c.get("/openapi.json").json()
        paths = post_paths(openapi)
        assert paths and set(paths) == set(target.valid), f"POST endpoints {paths}: give each a valid body"
        before = target.check(c)
        for path in paths:
            for n, valid in enumerate(target.valid[path]):
                resp = c.post(path, json=valid)
                assert resp.status_code == 200, f"valid body {n} of {path} is refused: {resp.text}"
                for case in cases(openapi, path, valid):
                    where = f"{path} (body {n}) {case.name}"
                    started = time.monotonic()
                    try:
                        resp = send(c, path, case)
                    except httpx.TimeoutException:
                        failures.append(f"{where}: no answer within {TIMEOUT_S:g}s")
                        continue
                    except httpx.TransportError as exc:
                        failures.append(f"{where}: {type(exc).__name__}: {exc}")
                        assert target.svc.process.running(), "\n".join(failures) + target.svc.process.last_output()
                        continue
                    sent += 1
                    if (why := problem(case, resp)) is not None:
                        failures.append(f"{where} ({time.monotonic() - started:.1f}s): {why}")
        assert sent > 100
        assert not failures, f"{len(failures)} of {sent} answers wrong:\n" + "\n".join(failures)
        assert target.svc.process.running()
        assert c.get("/v1/ready").status_code == 200
        assert target.check(c) == before


JSON_TYPE = "application/json"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b'{"query": "q", "texts": ["a"]', JSON_TYPE, 400, "request body is not valid JSON: Expecting"),
        (b"", JSON_TYPE, 400, "request body is required: a JSON object"),
        (b'{"query": "q", "texts": ["a"]}', "text/plain", 415, "request body must be JSON sent with Content-Type"),
        (b'{"query": "q", "texts": ["a"]}', None, 415, "request body must be JSON sent with Content-Type"),
        (b'[{"query": "q", "texts": ["a"]}]', JSON_TYPE, 400, "request body must be a JSON object, not an array"),
        (b"null", JSON_TYPE, 400, "request body must be a JSON object, not null"),
        (b'{"query": "q", "texts": ["a"], "top_n": NaN}', JSON_TYPE, 400, "NaN and Infinity are not JSON numbers"),
        (b'{"query": "q\\ud800", "texts": ["a"]}', JSON_TYPE, 400, "lone surrogate \\ud800 in a string"),
        (b"[" * 10_000 + b"]" * 10_000, JSON_TYPE, 400, "request body is not valid JSON: nested too deeply"),
        (b'{"query": "\xc3\x28", "texts": ["a"]}', JSON_TYPE, 400, "request body is not valid JSON: 'utf-8' codec"),
        (b'{"query": "q", "texts": "a"}', JSON_TYPE, 400, "texts: Input should be a valid list"),
    ],
)
def test_body_errors_say_what_is_wrong(
    targets: dict[str, Target], body: bytes, content_type: str | None, status: int, message: str
) -> None:
    """The kit's messages for a broken body as a whole (here on the reranker; every service shares them)."""
    case = Case("table", body, content_type=content_type)
    with httpx.Client(base_url=targets["reranker-lexical"].svc.url, timeout=TIMEOUT_S) as c:
        resp = send(c, "/rerank", case)
    assert resp.status_code == status, resp.text
    assert envelope_problem(resp) is None
    assert message in resp.json()["error"]["message"], resp.text


def test_a_500_does_not_break_the_next_request_on_the_connection() -> None:
    """An unexpected exception answers the 500 envelope and keeps the keep-alive connection usable.

    Starlette's catch-all re-raises after answering and uvicorn then closed the connection unannounced: the
    client's next request on it (a POST cannot be retried) failed with "connection reset" about half the time."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    @app.post("/ok")
    async def ok(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=TIMEOUT_S) as c:
            for _ in range(20):
                resp = c.get("/boom")
                assert resp.status_code == 500 and envelope_problem(resp) is None
                assert "secret" not in resp.text
                assert c.post("/ok", content=b"x" * 100_000).json() == {"bytes": 100_000}
    finally:
        server.should_exit = True
        thread.join(10)
