"""BM25, reciprocal rank fusion, the reranker's protocol and its ranking logic (fake backend)."""

from __future__ import annotations

import asyncio
import math

import pytest
from pydantic import ValidationError

from comps.core.errors import BadRequest
from comps.reranker.backends.lexical_fusion import bm25, fuse, rrf, terms
from comps.reranker.protocol import RerankingRequest, RerankRequest
from comps.reranker.service import RerankerService
from comps.reranker.settings import RerankerSettings

pytestmark = pytest.mark.unit


def test_terms_casefold_drop_stop_words_and_fold_plurals() -> None:
    assert terms("Who built the LIGHTHOUSES of Quenmoor, and glass?") == ["built", "lighthouse", "quenmoor", "glass"]
    assert terms("Straße \uff21\uff22\uff23") == ["strasse", "abc"]  # casefold + NFKC


def test_bm25_matches_the_formula() -> None:
    docs = [["a", "b"], ["a"], ["c"]]
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    avg = 4 / 3
    want = [
        idf * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 2 / avg)),
        idf * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 1 / avg)),
        0.0,
    ]
    assert bm25(["a", "a"], docs) == pytest.approx(want)  # a repeated query term counts once
    assert bm25(["z"], docs) == [0.0, 0.0, 0.0]
    assert bm25(["a"], []) == []


def test_rare_terms_weigh_more_and_shorter_documents_win_ties_in_frequency() -> None:
    docs = [terms("harbour kelp"), terms("harbour lighthouse"), terms("harbour market")]
    scores = bm25(terms("lighthouse harbour"), docs)
    assert scores[1] > scores[0] == scores[2] > 0


def test_rrf_sums_reciprocal_ranks() -> None:
    assert rrf([[0, 1, 2], [2, 0]], 3, 60) == pytest.approx([1 / 61 + 1 / 62, 1 / 62, 1 / 63 + 1 / 61])
    assert rrf([[1, 0]], 2, 1) == pytest.approx([1 / 3, 1 / 2])


def test_without_lexical_evidence_the_retrieval_order_stands() -> None:
    scores = fuse("zebra", ["one", "two", "three"], 60)
    assert scores == pytest.approx([1 / 61, 1 / 62, 1 / 63])


def test_lexical_evidence_lifts_a_lower_retrieved_passage() -> None:
    texts = [
        "Festival lanterns float down the river every spring.",  # retrieved first, shares no term
        "The old harbour of Quenmoor was rebuilt after the storm.",
        "Ilsa Varnek built the Quenmoor lighthouse in 1742.",
    ]
    scores = fuse("When did Ilsa Varnek build the Quenmoor lighthouse?", texts, 60)
    assert sorted(range(3), key=lambda i: -scores[i]) == [2, 1, 0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"query": "", "texts": ["a"]}, "must not be empty"),
        ({"query": "   ", "texts": ["a"]}, "must not be empty"),
        ({"query": "q", "texts": []}, "must not be an empty list"),
        ({"query": "q", "texts": ["a"], "top_n": 0}, "Input should be greater than or equal to 1"),
    ],
)
def test_rerank_request_refuses_empty_query_and_texts(body: dict, message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        RerankRequest(**body)
    assert exc.value.errors()[0]["msg"] == message


def test_reranking_request_refuses_empty_query_and_docs_and_keeps_extra_fields() -> None:
    with pytest.raises(ValidationError, match="must not be empty"):
        RerankingRequest(initial_query=" ", retrieved_docs=[{"text": "a"}])
    with pytest.raises(ValidationError, match="must not be an empty list"):
        RerankingRequest(initial_query="q", retrieved_docs=[])
    req = RerankingRequest(initial_query="q", retrieved_docs=[{"text": "a", "id": "doc-1"}])
    assert req.top_n == 1 and req.retrieved_docs[0].text == "a"


class FixedScores:
    name = "fixed"

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores
        self.calls: list[tuple[bool, bool]] = []

    async def score(self, query: str, texts: list[str], *, truncate: bool, raw: bool) -> list[float]:
        self.calls.append((truncate, raw))
        return self.scores[: len(texts)]


def test_results_are_sorted_best_first_ties_keep_order_and_cut_to_top_n() -> None:
    svc = RerankerService(RerankerSettings())
    backend = FixedScores([0.1, 0.9, 0.5, 0.9])
    req = RerankRequest(query="q", texts=["a", "b", "c", "d"], top_n=3, return_text=True, raw_scores=True)
    got = asyncio.run(svc.tei(backend, req))
    assert [(r.index, r.score, r.text) for r in got] == [(1, 0.9, "b"), (3, 0.9, "d"), (2, 0.5, "c")]
    assert backend.calls == [(True, True)]
    opea = asyncio.run(
        svc.opea(backend, RerankingRequest(initial_query="q", retrieved_docs=[{"text": "a"}, {"text": "b"}]))
    )
    assert opea.model_dump() == {"query": "q", "documents": [{"text": "b", "score": 0.9, "index": 1}]}


def test_too_many_texts_are_refused_before_scoring() -> None:
    backend = FixedScores([0.0] * 3)
    with pytest.raises(BadRequest) as exc:
        asyncio.run(
            RerankerService(RerankerSettings(max_texts=2)).tei(backend, RerankRequest(query="q", texts=["a"] * 3))
        )
    assert exc.value.message == "texts has 3 items, more than the limit of 2 per request"
    assert backend.calls == []
