"""The gateway's pure logic: request model, pipeline choice, multi-turn retrieval query, prompt, adapters,
SSE parsing, settings (with OPEA's variable names)."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from comps.core.errors import ConfigError, UpstreamError
from comps.core.settings import load_settings
from comps.embedding.protocol import EmbeddingResponse
from comps.reranker.protocol import RerankResult
from comps.retriever.protocol import RetrievalResponse
from megaservice import adapters as a
from megaservice.graph import BadAnswer, Skip
from megaservice.prompt import DEFAULT_TEMPLATE, NO_PASSAGES, Passage, rag_messages, retrieval_query
from megaservice.protocol import ChatQnARequest, Message
from megaservice.settings import GatewaySettings
from megaservice.sse import DONE, data_of, error_event, event, event_blocks

pytestmark = pytest.mark.unit


def req(**kw: object) -> ChatQnARequest:
    return ChatQnARequest.model_validate({"messages": "What is Zorblax?", **kw})


def msgs(*turns: tuple[str, str]) -> list[Message]:
    return [Message(role=role, content=text) for role, text in turns]  # type: ignore[arg-type]


# -- request model ----------------------------------------------------------------------------------


def test_defaults_follow_openai_and_opea_but_rerank_ten_and_keep_three_passages() -> None:
    r = req()
    assert (r.stream, r.k, r.fetch_k, r.score_threshold, r.lambda_mult, r.search_type) == (
        False,
        10,
        20,
        0.2,
        0.5,
        "similarity",
    )
    assert r.top_n == 3
    assert r.chat() == [Message(role="user", content="What is Zorblax?")]


def test_the_frontend_seed_shape_is_accepted() -> None:
    r = ChatQnARequest.model_validate(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
            "context": ["first passage", {"text": "second", "source": "b.txt"}],
            "meta": {"auth_token": ""},
        }
    )
    q = a.Question.of(r, retrieves=True)
    assert [(p.id, p.source, p.text) for p in q.given] == [
        ("context-0", "request", "first passage"),
        ("context-1", "b.txt", "second"),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "messages: must contain at least one message"),
        ({"messages": "  "}, "messages: must not be empty"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages: must contain a user message with text"),
        ({"messages": "q", "k": 0}, "k: Input should be greater than or equal to 1"),
        (
            {"messages": "q", "chat_template": "{question} only"},
            "chat_template: must contain both {context} and {question}",
        ),
        (
            {"messages": "q", "search_type": "similarity_distance_threshold"},
            "search_type similarity_distance_threshold needs distance_threshold",
        ),
        ({"messages": "q", "pipeline": "llm-only", "retrieval": True}, "pipeline llm-only contradicts retrieval=true"),
        ({"messages": "q", "filters": {"colour": "red"}}, "filters.colour"),
        ({"messages": "q", "n": 2}, "n: only n=1 is supported"),
        ({"messages": "q", "tools": [{"type": "function"}]}, "tools: tools are not supported by this gateway"),
    ],
)
def test_bad_fields_are_refused_with_the_reason(body: dict, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        ChatQnARequest.model_validate(body)
    first = err.value.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    assert message in (f"{loc}: {first['msg']}" if loc else first["msg"])


@pytest.mark.parametrize(
    ("default", "fields", "expected"),
    [
        ("rag-rerank", {}, "rag-rerank"),
        ("rag-rerank", {"rerank": False}, "rag"),
        ("rag-rerank", {"retrieval": False}, "llm-only"),
        ("rag", {}, "rag"),
        ("rag", {"rerank": True}, "rag-rerank"),
        ("llm-only", {}, "llm-only"),
        ("llm-only", {"retrieval": True}, "rag-rerank"),
        ("llm-only", {"retrieval": True, "rerank": False}, "rag"),
        ("rag-rerank", {"pipeline": "rag"}, "rag"),
        ("llm-only", {"pipeline": "rag-rerank", "rerank": True}, "rag-rerank"),
    ],
)
def test_the_pipeline_is_the_deployment_default_narrowed_by_the_request(
    default: str, fields: dict, expected: str
) -> None:
    assert req(**fields).pipeline_for(default) == expected


# -- retrieval query (multi-turn) -------------------------------------------------------------------


def test_a_single_turn_is_the_query() -> None:
    assert retrieval_query(msgs(("system", "be brief"), ("user", "What is the capital of France?"))) == (
        "What is the capital of France?"
    )


def test_a_short_follow_up_gets_the_previous_user_turn() -> None:
    chat = msgs(("user", "What is the capital of France?"), ("assistant", "Paris."), ("user", "And its population?"))
    assert retrieval_query(chat) == "What is the capital of France?\nAnd its population?"


def test_a_pointing_word_makes_a_long_turn_a_follow_up() -> None:
    chat = msgs(
        ("user", "Tell me about the Zorblax reactor."),
        ("assistant", "..."),
        ("user", "How much power does it produce at full load in winter?"),
    )
    assert retrieval_query(chat).startswith("Tell me about the Zorblax reactor.\n")


def test_a_self_contained_turn_stands_alone() -> None:
    chat = msgs(
        ("user", "What is the capital of France?"),
        ("assistant", "Paris."),
        ("user", "Which river flows through Budapest in Hungary?"),
    )
    assert retrieval_query(chat) == "Which river flows through Budapest in Hungary?"


# -- prompt -----------------------------------------------------------------------------------------


def test_the_rag_prompt_numbers_the_passages_and_keeps_the_history() -> None:
    chat = msgs(("system", "Be brief."), ("user", "Who made it?"), ("assistant", "A team."), ("user", "When was that?"))
    passages = [
        Passage(id="1", text=" Built in 1999. ", source="a.txt", page=3),
        Passage(id="2", text="By Ada.", source=None),
    ]
    out = rag_messages(chat, passages, None)
    assert [m.role for m in out] == ["system", "user", "assistant", "user"]
    assert [m.content for m in out[:3]] == ["Be brief.", "Who made it?", "A team."]
    assert out[3].content == DEFAULT_TEMPLATE.format(
        context="[1] a.txt, p. 3\nBuilt in 1999.\n\n[2] unknown\nBy Ada.", question="When was that?"
    )
    assert "do not contain the answer, say that you do not know" in out[3].content


def test_a_custom_template_is_filled_once_and_passage_text_is_not_reinterpreted() -> None:
    chat = msgs(("user", "Q?"))
    out = rag_messages(
        chat, [Passage(id="1", text="has {question} inside", source="s")], "C: {context} | Q: {question}"
    )
    assert out[0].content == "C: [1] s\nhas {question} inside | Q: Q?"


def test_no_passages_are_said_to_be_missing() -> None:
    assert NO_PASSAGES in rag_messages(msgs(("user", "Q?")), [], None)[0].content


# -- adapters ---------------------------------------------------------------------------------------

DOCS = RetrievalResponse.model_validate(
    {
        "query": "q",
        "collection": "c",
        "search_type": "similarity",
        "documents": [
            {
                "id": f"c:chunk:d{i}:1:0",
                "text": f"text {i}",
                "score": 0.9 - i / 10,
                "metadata": {"source": f"d{i}.txt", "doc_id": f"d{i}", "page": i, "chunk": 0, "tags": []},
            }
            for i in range(4)
        ],
    }
)


def test_the_retrieval_request_carries_the_vector_and_every_knob() -> None:
    emb = EmbeddingResponse.model_validate(
        {
            "data": [{"index": 0, "embedding": [0.1, 0.2]}],
            "model": "m",
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }
    )
    q = a.Question.of(
        req(k=7, search_type="mmr", fetch_k=30, lambda_mult=0.3, collection="kb", filters={"tags": ["x"]}),
        retrieves=True,
    )
    r = a.retrieve(q, emb)
    sent = r.__pydantic_serializer__.to_json(r, exclude_unset=True, exclude_none=True)
    assert json.loads(sent) == {
        "text": "What is Zorblax?",
        "embedding": [0.1, 0.2],
        "collection": "kb",
        "k": 7,
        "search_type": "mmr",
        "fetch_k": 30,
        "lambda_mult": 0.3,
        "score_threshold": 0.2,
        "filters": {"tags": ["x"]},
    }


def test_an_embedding_answer_without_one_vector_is_a_bad_answer() -> None:
    emb = EmbeddingResponse.model_validate({"data": [], "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1}})
    with pytest.raises(BadAnswer) as err:
        a.retrieve(a.Question.of(req(), retrieves=True), emb)
    assert err.value.node == "embedding" and err.value.status_code == 502


def test_rerank_is_skipped_when_nothing_was_retrieved() -> None:
    empty = RetrievalResponse(query="q", collection="c", search_type="similarity", documents=[])
    assert a.rerank(a.Question.of(req(), retrieves=True), empty) == Skip([])
    sent = a.rerank(a.Question.of(req(top_n=2), retrieves=True), DOCS)
    assert (sent.query, sent.texts, sent.top_n) == ("What is Zorblax?", ["text 0", "text 1", "text 2", "text 3"], 2)


def test_reranked_passages_follow_the_reranker_after_the_callers_own() -> None:
    q = a.Question.of(req(context=["mine"]), retrieves=True)
    ranked = [RerankResult(index=2, score=0.8), RerankResult(index=0, score=0.5), RerankResult(index=1, score=0.1)]
    passages = a.reranked_passages(q, DOCS, ranked)
    assert [(p.id, p.score) for p in passages] == [
        ("context-0", None),
        ("c:chunk:d2:1:0", 0.8),
        ("c:chunk:d0:1:0", 0.5),
        ("c:chunk:d1:1:0", 0.1),
    ]
    assert passages[1].source == "d2.txt" and passages[1].page == 2
    with pytest.raises(BadAnswer, match="reranker answered index 9 for 4 texts"):
        a.reranked_passages(q, DOCS, [RerankResult(index=9, score=1.0)])


def test_the_llm_request_forwards_only_what_the_client_set() -> None:
    q = a.Question.of(
        req(temperature=0, max_tokens=20, seed=3, stream=True, stream_options={"include_usage": True}), retrieves=True
    )
    llm = a.ask_retrieved(q, DOCS)
    sent = llm.model_dump(exclude_unset=True, exclude_none=True)
    assert set(sent) == {"messages", "temperature", "max_tokens", "seed", "stream", "stream_options"}
    assert sent["temperature"] == 0 and sent["stream_options"] == {"include_usage": True}
    assert "[4] d3.txt, p. 3\ntext 3" in sent["messages"][-1]["content"]


def test_llm_only_passes_the_conversation_unchanged_unless_the_caller_gave_passages() -> None:
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "2+2?"},
    ]
    plain = a.ask_directly(a.Question.of(req(messages=chat), retrieves=False))
    assert [m.content for m in plain.messages] == ["hi", "yo", "2+2?"]
    given = a.ask_directly(a.Question.of(req(messages=chat, context=["four"]), retrieves=False))
    assert given.messages[-1].content.startswith("Answer the question using only the passages below.")
    assert "[1] request\nfour" in given.messages[-1].content


# -- SSE --------------------------------------------------------------------------------------------


class _Reads:
    """Stands in for aiohttp's StreamReader: `readany` returns one network read at a time."""

    def __init__(self, *reads: bytes) -> None:
        self.reads = list(reads)

    async def readany(self) -> bytes:
        return self.reads.pop(0) if self.reads else b""


def _blocks(*reads: bytes) -> list[list[bytes]]:
    async def collect() -> list[list[bytes]]:
        return [b async for b in event_blocks(_Reads(*reads))]  # type: ignore[arg-type]

    return asyncio.run(collect())


def test_events_are_passed_on_per_read_and_split_across_reads_are_joined() -> None:
    assert _blocks(b'data: {"a":1}\n\ndata: {"b"', b":2}\n\n", b"data: [DONE]\n\n") == [
        [b'data: {"a":1}'],
        [b'data: {"b":2}'],
        [b"data: [DONE]"],
    ]
    assert _blocks(b"data: 1\n\ndata: 2\n\ndata: 3\n\n") == [[b"data: 1", b"data: 2", b"data: 3"]]


def test_crlf_line_ends_are_read_even_when_split_between_reads() -> None:
    assert _blocks(b"data: x\r\n\r", b"\ndata: y\r\n\r\n") == [[b"data: x", b"data: y"]]


def test_an_unterminated_last_event_is_still_delivered() -> None:
    assert _blocks(b"data: tail") == [[b"data: tail"]]


def test_event_data_joins_data_lines_and_skips_comments() -> None:
    assert data_of(b'data: {"a":1}') == b'{"a":1}'
    assert data_of(b"data:{}") == b"{}"
    assert data_of(b"event: x\ndata: one\ndata:two") == b"one\ntwo"
    assert data_of(b": keep-alive") is None


def test_sse_encoding() -> None:
    assert event(b'{"x":1}') == b'data: {"x":1}\n\n'
    assert DONE == b"data: [DONE]\n\n"
    assert error_event(UpstreamError("llm broke", node="llm")) == (
        b'data: {"error":{"message":"llm broke","type":"upstream_error","param":null,"code":"llm"}}\n\n'
    )


# -- settings ---------------------------------------------------------------------------------------


def test_opea_variable_names_fill_what_gateway_names_leave_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDING_SERVER_HOST_IP", "10.0.0.5")
    monkeypatch.setenv("EMBEDDING_SERVER_PORT", "6006")
    monkeypatch.setenv("LLM_SERVER_HOST_IP", "llm-host")
    monkeypatch.setenv("RERANK_SERVER_PORT", "8808")
    monkeypatch.setenv("MEGA_SERVICE_PORT", "9999")
    monkeypatch.setenv("GATEWAY_LLM_URL", "http://explicit:1234")
    monkeypatch.setenv("GATEWAY_AUTH_ENABLED", "false")
    s = GatewaySettings()
    assert s.embedding_url == "http://10.0.0.5:6006"
    assert s.reranker_url == "http://127.0.0.1:8808"
    assert s.llm_url == "http://explicit:1234"
    assert s.retriever_url == "http://127.0.0.1:7000"
    assert s.port == 9999
    monkeypatch.setenv("GATEWAY_PORT", "8001")
    assert GatewaySettings().port == 8001


def test_gateway_settings_defaults_and_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("EMBEDDING_SERVER_HOST_IP", "EMBEDDING_SERVER_PORT", "MEGA_SERVICE_PORT", "GATEWAY_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GATEWAY_PIPELINE", "rag")
    monkeypatch.setenv("GATEWAY_API_KEY", "s3cret")
    monkeypatch.setenv("GATEWAY_AUTH_ENABLED", "false")  # one shared token: only without accounts
    s = GatewaySettings()
    assert (s.port, s.pipeline, s.service_name) == (8888, "rag", "gateway")
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret"
    monkeypatch.setenv("GATEWAY_PIPELINE", "everything")
    with pytest.raises(ValidationError, match="rag-rerank"):
        GatewaySettings()


def test_the_gateway_imports_only_the_services_contracts() -> None:
    """The gateway image carries no backend: importing it must not pull torch, llama.cpp, numpy (redis: the answer
    cache's client)."""
    import subprocess
    import sys

    code = (
        "import sys, megaservice.router, megaservice.__main__; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'llama_cpp', 'numpy', 'sentence_transformers', 'transformers'} "
        "or (m.startswith('comps.') and '.backends' in m and m != 'comps.core.backends')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_rag_answers_get_the_gateway_defaults_unless_the_request_sets_them() -> None:
    docs = [a.Passage(id="1", text="x", source="s")]
    rag = a.RagDefaults(temperature=0.0, max_tokens=192, repetition_penalty=1.1, stop=("\nQuestion:",))
    greedy = a.chat_request(a.Question.of(req(), retrieves=True, rag=rag), docs)
    assert (greedy.temperature, greedy.max_tokens, greedy.repetition_penalty, greedy.stop) == (
        0.0, 192, 1.1, ["\nQuestion:"],
    )  # fmt: skip
    body = req(temperature=0.7, max_completion_tokens=9, repetition_penalty=1.0, stop=[], stop_on_repetition=False)
    chosen = a.chat_request(a.Question.of(body, retrieves=True, rag=rag), docs)
    assert (chosen.temperature, chosen.max_tokens, chosen.max_completion_tokens) == (0.7, None, 9)
    assert (chosen.repetition_penalty, chosen.stop, chosen.stop_on_repetition) == (1.0, [], False)
    plain = a.chat_request(a.Question.of(req(), retrieves=False, rag=rag), [])
    assert (plain.temperature, plain.max_tokens, plain.stop) == (1.0, None, None)  # the LLM's own defaults


def test_the_prompt_budget_keeps_the_best_passages_that_fit() -> None:
    from megaservice.prompt import estimate_tokens, within_budget

    p = [a.Passage(id=str(i), text=f"Sentence {i} is here. " * 20, source="s") for i in range(4)]  # 100 tokens each
    assert estimate_tokens(p[0].text) == 100
    assert [x.id for x in within_budget(p, 220)] == ["0", "1"]  # 20 left: too little for a third
    assert [x.id for x in within_budget(p, 300)] == ["0", "1", "2"]
    cut = within_budget(p, 250)  # 50 left: the third is cut at a sentence end
    assert [x.id for x in cut] == ["0", "1", "2"] and cut[2].text.endswith("is here.") and len(cut[2].text) <= 200
    first = within_budget(p, 20)  # the best passage always goes, cut to the budget
    assert [x.id for x in first] == ["0"] and len(first[0].text) <= 80


def test_the_relevance_floor_and_the_budget_apply_to_reranked_passages() -> None:
    ranked = [RerankResult(index=2, score=0.8), RerankResult(index=0, score=0.05), RerankResult(index=1, score=0.01)]
    floor = a.Question.of(req(), retrieves=True, rag=a.RagDefaults(rerank_min_score=0.1))
    assert [p.id for p in a.reranked_passages(floor, DOCS, ranked)] == ["c:chunk:d2:1:0"]
    low = [RerankResult(index=1, score=0.01)]  # the best one always goes
    assert [p.id for p in a.reranked_passages(floor, DOCS, low)] == ["c:chunk:d1:1:0"]
    asked = a.Question.of(req(rerank_min_score=0.02), retrieves=True, rag=a.RagDefaults(rerank_min_score=0.1))
    assert len(a.reranked_passages(asked, DOCS, ranked)) == 2
    long = [a.Passage(id=str(i), text="word " * 100, source="s") for i in range(3)]  # 125 tokens each
    assert len(a.Question.of(req(), retrieves=True, rag=a.RagDefaults(passage_tokens=400)).budgeted(long)) == 3
    assert (
        len(
            a.Question.of(req(passage_tokens=130), retrieves=True, rag=a.RagDefaults(passage_tokens=400)).budgeted(long)
        )
        == 1
    )
    assert len(a.Question.of(req(), retrieves=True).budgeted(long)) == 3  # no budget set anywhere


@pytest.mark.parametrize("var", ["MEGA_SERVICE_PORT", "GATEWAY_PORT"])
def test_a_bad_port_is_reported_under_the_variable_that_set_it(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    for name in ("MEGA_SERVICE_PORT", "GATEWAY_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GATEWAY_AUTH_ENABLED", "false")
    monkeypatch.setenv(var, "eighty")
    with pytest.raises(ConfigError, match=f"{var}='eighty'"):
        load_settings(GatewaySettings)
