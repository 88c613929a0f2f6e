"""The answer cache's key: every part that shapes an answer changes it; what only delivers it does not."""

from __future__ import annotations

from typing import Any

import pytest

from megaservice.cache import Answer, Key, deterministic, normalise
from megaservice.protocol import ChatQnARequest

BASE: dict[str, Any] = {"messages": "What is the Zorblax project?", "collection": "docs"}
PARTS: dict[str, Any] = {
    "pipeline": "rag-rerank",
    "question_rewrite": "heuristic",
    "collections": ["docs"],
    "prompt": None,
    "defaults": {"rag": {"temperature": 0.0}, "snippet": 300},
}


def key(body: dict[str, Any] | None = None, versions: tuple[int, ...] = (3,), **parts: Any) -> Key:
    return Key.of(ChatQnARequest.model_validate({**BASE, **(body or {})}), **{**PARTS, **parts}).at(versions)


@pytest.mark.parametrize(
    "change",
    [
        {"k": 5},
        {"fetch_k": 30},
        {"search_type": "mmr"},
        {"score_threshold": 0.5},
        {"lambda_mult": 0.2},
        {"filters": {"source": "a.txt"}},
        {"top_n": 2},
        {"passage_tokens": 100},
        {"rerank_min_score": 0.1},
        {"chat_template": "Q: {question} C: {context}"},
        {"rerank": False},
        {"model": "other"},
        {"max_tokens": 10},
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"top_k": 3},
        {"seed": 7},
        {"stop": ["\n"]},
        {"repetition_penalty": 1.3},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 0.5},
        {"stop_on_repetition": False},
        {"question_rewrite": "condense"},
        {"context": ["a passage the caller gives"]},
        {"messages": "What is the Zorblax project??"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": BASE["messages"]}]},
        {
            "messages": [
                {"role": "user", "content": "Earlier?"},
                {"role": "assistant", "content": "Earlier answer."},
                {"role": "user", "content": BASE["messages"]},
            ]
        },
    ],
)
def test_each_request_knob_changes_the_key(change: dict[str, Any]) -> None:
    assert key(change).digest != key().digest


@pytest.mark.parametrize(
    "parts",
    [
        {"pipeline": "rag"},
        {"question_rewrite": "condense"},
        {"versions": (4,)},
        {"collections": ["other"]},
        {"collections": ["docs", "mine"], "versions": (3, 0)},
        {"prompt": ("p1", 1)},
        {"defaults": {"rag": {"temperature": 0.0}, "snippet": 100}},
    ],
)
def test_each_gateway_part_changes_the_key(parts: dict[str, Any]) -> None:
    assert key(**parts).digest != key().digest
    assert key(prompt=("p1", 2)).digest != key(prompt=("p1", 1)).digest


@pytest.mark.parametrize(
    "same",
    [
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"conversation_id": "c1"},
        {"store": True},
        {"meta": {"x": 1}},
        {"cache": True},
        {"messages": "  What is the   Zorblax project?\n"},
        {"messages": [{"role": "user", "content": "What is the Zorblax project?"}]},
    ],
)
def test_delivery_and_whitespace_do_not_change_the_key(same: dict[str, Any]) -> None:
    assert key(same).digest == key().digest


def test_an_earlier_turn_changes_the_context_but_not_the_question() -> None:
    turns = [{"role": "user", "content": "Earlier?"}, {"role": "assistant", "content": "A."}]
    a = key({"messages": [*turns, {"role": "user", "content": BASE["messages"]}]})
    assert a.question == key().question == "What is the Zorblax project?" and a.context != key().context
    paraphrase = key({"messages": "Tell me about the Zorblax project."})
    assert paraphrase.context == key().context and paraphrase.digest != key().digest


def test_normalise_and_determinism() -> None:
    assert normalise(" a\t b\n\nc ") == "a b c"
    assert normalise("e\u0301") == "\u00e9"
    req = ChatQnARequest.model_validate(BASE)
    assert deterministic(req, grounded=True, rag_temperature=0.0)
    assert not deterministic(req, grounded=False, rag_temperature=0.0)  # llm-only: the LLM's own default
    assert not deterministic(req, grounded=True, rag_temperature=None)
    hot = ChatQnARequest.model_validate({**BASE, "temperature": 0.7})
    assert not deterministic(hot, grounded=True, rag_temperature=0.0)
    assert deterministic(
        ChatQnARequest.model_validate({**BASE, "temperature": 0}), grounded=False, rag_temperature=None
    )


def test_an_answer_round_trips_and_garbage_does_not_decode() -> None:
    a = Answer("m", "text", "stop", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}, [{"id": "x"}])
    assert Answer.decode(a.encode()) == a
    for raw in (b"", b"\xff\xfe", b"[]", b"{}", b'{"schema": 1}', a.encode().replace(b'"text"', b"5")):
        with pytest.raises(ValueError):
            Answer.decode(raw)


def test_huge_integers_make_a_key() -> None:  # orjson stops at 64 bits; a request may carry more
    assert key({"seed": 10**30}).digest != key({"seed": -(10**30)}).digest != key().digest
