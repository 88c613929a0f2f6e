"""LLM-aware traces: the gateway (a real process over the stub services) exports its spans over OTLP/HTTP to a
real collector (tests/support/otlp.py) that the test reads back, as Phoenix would receive them.

One RAG question gives one trace: the request's span is the pipeline (OpenInference CHAIN, with the user id)
and the hops under it are EMBEDDING, RETRIEVER, RERANKER and LLM spans with their models, documents, scores
and token counts (the reply's own ``usage``). Text (question, prompt, passages, answer) is in the spans only
with OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import httpx
import pytest

from comps.identity.service import ANONYMOUS
from tests.support.otlp import OtlpCollector, Span
from tests.support.procs import Service, start_service
from tests.support.stubs import DOCS, TOKENS, StubMesh

pytestmark = pytest.mark.integration

QUESTION = "What does the stub know about Zorblax?"
HOPS = {"embedding": "EMBEDDING", "retriever": "RETRIEVER", "reranker": "RERANKER", "llm": "LLM"}


@pytest.fixture(scope="module")
def mesh() -> Iterator[StubMesh]:
    with StubMesh() as m:
        yield m


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpCollector]:
    with OtlpCollector() as c:
        yield c


def _gateway(mesh: StubMesh, collector: OtlpCollector, content: bool, logs: pytest.TempPathFactory) -> Service:
    env = {
        **mesh.env(),
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": str(content).lower(),
    }
    name = f"gateway-content-{'on' if content else 'off'}"
    return start_service("megaservice", "GATEWAY_", env, name=name, log_dir=logs.mktemp(name), timeout_s=60)


@pytest.fixture(scope="module")
def private(mesh: StubMesh, collector: OtlpCollector, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = _gateway(mesh, collector, False, tmp_path_factory)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def verbose(mesh: StubMesh, collector: OtlpCollector, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = _gateway(mesh, collector, True, tmp_path_factory)
    yield svc
    svc.stop()


def ask(gateway: Service, collector: OtlpCollector, body: dict) -> tuple[httpx.Response, Span, dict[str, Span]]:
    """One question under a trace id of our own; returns the reply, the CHAIN span and its children by hop."""
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    reply = httpx.post(f"{gateway.url}/v1/chatqna", json=body, headers=headers, timeout=20)
    assert reply.status_code == 200, reply.text

    def chain(spans: list[Span]) -> Span | None:
        return next((s for s in spans if s.trace_id == trace_id and s.kind == "CHAIN"), None)

    root = collector.wait_for(chain)
    spans = collector.trace(trace_id)
    assert [s for s in spans if s.kind == "CHAIN"] == [root]
    children = {s.name.removeprefix("node "): s for s in spans if s.parent_id == root.span_id}
    assert {name: s.kind for name, s in children.items()} == HOPS
    return reply, root, children


def documents(span: Span, prefix: str) -> list[dict[str, object]]:
    """The flattened OpenInference documents under ``prefix`` (``retrieval.documents.0.document.id``, ...)."""
    out: dict[int, dict[str, object]] = {}
    for key, value in span.attributes.items():
        if key.startswith(prefix + "."):
            index, _, name = key[len(prefix) + 1 :].partition(".document.")
            out.setdefault(int(index), {})[name] = value
    return [out[i] for i in sorted(out)]


def test_one_question_is_a_chain_of_embedding_retriever_reranker_and_llm_spans(
    private: Service, collector: OtlpCollector
) -> None:
    reply, root, hops = ask(private, collector, {"messages": QUESTION, "max_tokens": 50, "seed": 3})
    body = reply.json()
    assert root.service == "gateway" and root.name == "POST /v1/chatqna"
    assert root.attributes["user.id"] == ANONYMOUS.user_id
    assert json.loads(root.attributes["metadata"]) == {"pipeline": "rag-rerank", "collection": "rag-redis"}

    emb = hops["embedding"].attributes
    assert emb["embedding.model_name"] == "stub-embedding" and emb["gen_ai.operation.name"] == "embeddings"

    # The retriever's span lists what it returned; the sources are among them, with the same ids and metadata.
    retrieved = documents(hops["retriever"], "retrieval.documents")
    assert [d["id"] for d in retrieved] == [d["id"] for d in DOCS]
    assert [d["score"] for d in retrieved] == [d["score"] for d in DOCS]
    assert json.loads(str(retrieved[3]["metadata"]))["source"] == "doc3.txt"
    sources = body["sources"]
    assert {s["id"] for s in sources} <= {d["id"] for d in retrieved}

    # The reranker's span: what went in, what came out (exactly the sources, in order, with their scores).
    rr = hops["reranker"]
    assert [d["id"] for d in documents(rr, "reranker.input_documents")] == [d["id"] for d in DOCS]
    kept = documents(rr, "reranker.output_documents")
    assert [(d["id"], d["score"]) for d in kept] == [(s["id"], s["score"]) for s in sources]
    assert rr.attributes["reranker.top_k"] == 3
    assert rr.attributes["reranker.model_name"] == rr.attributes["gen_ai.response.model"] == "stub-reranker"

    # The LLM's span: model, parameters and the reply's own token counts.
    llm = hops["llm"].attributes
    usage = body["usage"]
    assert llm["llm.model_name"] == body["model"] == "stub-llm"
    assert (llm["llm.token_count.prompt"], llm["llm.token_count.completion"], llm["llm.token_count.total"]) == (
        usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"],
    )  # fmt: skip
    assert (llm["gen_ai.usage.input_tokens"], llm["gen_ai.usage.output_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"],
    )  # fmt: skip
    params = json.loads(llm["llm.invocation_parameters"])
    assert {k: params[k] for k in ("max_tokens", "seed", "temperature")} == {
        "max_tokens": 50,
        "seed": 3,
        "temperature": 0.0,
    }
    assert params["stop"] == ["\nQuestion:", "\nPassages:"]  # the RAG defaults the gateway adds
    assert llm["gen_ai.request.max_tokens"] == 50 and llm["gen_ai.response.finish_reasons"] == ["stop"]
    # Readiness probes and metrics scrapes (the test's own wait for the gateway was one) make no traces.
    assert not [s.name for s in collector.spans if s.name.endswith(("/v1/ready", "/v1/health_check", "/metrics"))]


def _texts_of_a_question(body: dict) -> list[str]:
    answer = body["choices"][0]["message"]["content"] if "choices" in body else "".join(TOKENS)
    return [QUESTION, "Zorblax", answer, "Answer the question", *(d["text"] for d in DOCS)]


@pytest.mark.parametrize("stream", [False, True])
def test_without_the_content_setting_no_question_prompt_passage_or_answer_text_is_in_any_span(
    private: Service, collector: OtlpCollector, stream: bool
) -> None:
    reply, root, hops = ask(private, collector, {"messages": QUESTION, "stream": stream})
    everything = [t for span in collector.trace(root.trace_id) for t in span.texts()]
    for text in _texts_of_a_question(reply.json() if not stream else {}):
        leaked = [t for t in everything if text in t]
        assert not leaked, f"{text!r} is in a span: {leaked[0][:200]!r}"
    # ... while ids, scores and counts are there: a stream's too, though this client did not ask for its usage
    assert hops["llm"].attributes["llm.token_count.completion"] == len(TOKENS)
    assert documents(hops["retriever"], "retrieval.documents")[0]["id"] == DOCS[0]["id"]
    if stream:
        assert '"choices":[]' not in reply.text.replace(" ", "")  # the usage chunk it did not ask for is not sent


def test_with_the_content_setting_the_spans_carry_question_prompt_passages_and_answer(
    verbose: Service, collector: OtlpCollector
) -> None:
    reply, root, hops = ask(
        verbose, collector, {"messages": QUESTION, "stream": True, "stream_options": {"include_usage": True}}
    )
    events = [json.loads(line[6:]) for line in reply.text.split("\n\n") if line.startswith("data: {")]
    usage = events[-1]["usage"]
    answer = "".join(TOKENS)
    assert root.attributes["input.value"] == QUESTION and root.attributes["output.value"] == answer
    assert root.attributes["chatqna.time_to_first_token_ms"] > 0

    assert hops["embedding"].attributes["embedding.embeddings.0.embedding.text"] == QUESTION
    assert hops["retriever"].attributes["input.value"] == QUESTION
    retrieved = documents(hops["retriever"], "retrieval.documents")
    assert [d["content"] for d in retrieved] == [d["text"] for d in DOCS]
    assert hops["reranker"].attributes["reranker.query"] == QUESTION

    llm = hops["llm"]
    a = llm.attributes
    assert a["llm.input_messages.0.message.role"] == "user"
    prompt = a["llm.input_messages.0.message.content"]
    assert DOCS[3]["text"] in prompt and prompt.endswith(f"Question: {QUESTION}")
    assert a["llm.output_messages.0.message.content"] == a["output.value"] == answer
    assert json.loads(a["gen_ai.output.messages"])[0]["parts"][0]["content"] == answer
    assert (a["llm.token_count.prompt"], a["llm.token_count.completion"], a["llm.token_count.total"]) == (
        usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"],
    )  # fmt: skip
    assert a["gen_ai.request.stream"] is True and a["gen_ai.response.time_to_first_chunk"] > 0
    assert [name for name, _ in llm.events] == ["First Token Stream Event"]


def test_a_failing_hop_is_an_error_span_of_its_kind(private: Service, collector: OtlpCollector, mesh: StubMesh) -> None:
    mesh.knobs["reranker"].status = 500
    try:
        trace_id = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        reply = httpx.post(f"{private.url}/v1/chatqna", json={"messages": QUESTION}, headers=headers, timeout=20)
        assert reply.status_code == 502
    finally:
        mesh.stubs.reset()
    chain = collector.wait_for(
        lambda spans: next((s for s in spans if s.trace_id == trace_id and s.kind == "CHAIN"), None)
    )
    assert chain.status_code == 2 and chain.attributes["http.status_code"] == 502
    failed = next(s for s in collector.trace(trace_id) if s.name == "node reranker")
    assert failed.kind == "RERANKER" and failed.status_code == 2 and failed.attributes["error.type"] == "UpstreamError"
