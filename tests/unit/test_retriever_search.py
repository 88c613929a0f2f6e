"""The query logic of comps.vectorstore.search that needs no Redis: filters, BM25 terms, MMR, RRF, replies."""

from __future__ import annotations

import numpy as np
import pytest

from comps.core.errors import BadRequest
from comps.vectorstore.search import MAX_TEXT_TERMS, RRF_K, _hit, _rows, build_filter, mmr, rrf, text_terms

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (None, ""),
        ({}, ""),
        ({"source": "a.pdf"}, r"@source:{a\.pdf}"),
        ({"source": "Staff Handbook (2031).pdf"}, r"@source:{Staff\ Handbook\ \(2031\)\.pdf}"),
        ({"doc_id": ["d-1", "d|2"]}, r"@doc_id:{d\-1 | d\|2}"),
        ({"tags": "hr"}, "@tags:{hr}"),
        ({"page": 3}, "(@page:[3 3])"),
        ({"page": [5, "2", 2.0]}, "(@page:[2 2] | @page:[5 5])"),
        ({"doc_id": 12}, "@doc_id:{12}"),
        # keys are AND-ed in a fixed order, whatever order they came in
        ({"page": 1, "tags": ["a", "b"], "source": "s"}, "@source:{s} @tags:{a | b} (@page:[1 1])"),
    ],
)
def test_build_filter(filters: dict | None, expected: str) -> None:
    assert build_filter(filters) == expected


def test_filter_injection_is_escaped() -> None:
    # a value trying to close the tag braces and add its own clause stays one literal tag value
    assert build_filter({"source": "x} | @doc_id:{y"}) == r"@source:{x\}\ \|\ \@doc_id\:\{y}"


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (
            {"author": "me", "color": "x"},
            "unknown filter key(s) 'author', 'color'; valid keys: source, doc_id, tags, page",
        ),
        ({"tags": []}, "filter 'tags' is an empty list"),
        ({"source": "  "}, "filter 'source' has an empty or invalid value '  '"),
        ({"doc_id": ["ok", "a\x00b"]}, "filter 'doc_id' has an empty or invalid value 'a\\x00b'"),
        ({"page": "two"}, "filter 'page' must be a whole number, got 'two'"),
        ({"page": 2.5}, "filter 'page' must be a whole number, got 2.5"),
        ({"page": [1, True]}, "filter 'page' must be a whole number, got True"),
    ],
)
def test_build_filter_refuses(filters: dict, message: str) -> None:
    with pytest.raises(BadRequest) as err:
        build_filter(filters)
    assert err.value.message == message
    assert err.value.param.startswith("filters")


# ----------------------------------------------------------------------------------------- BM25 terms


def test_text_terms_drop_punctuation_dedupe_and_escape() -> None:
    assert text_terms("Which gadget is KV-5093? (kv 5093!) item_3 -@{x}") == [
        "which",
        "gadget",
        "kv",
        "5093",
        r"item\_3",
        "x",
    ]
    assert text_terms("Grüße, café!") == ["grüße", "café"]
    assert text_terms("?!  ...") == []
    assert text_terms(None) == []
    assert text_terms("Is the answer in it?") == ["answer"]  # stop words: RediSearch breaks on them (STOPWORDS)


def test_text_terms_are_capped() -> None:
    words = " ".join(f"w{i}" for i in range(100))
    assert text_terms(words) == [f"w{i}" for i in range(MAX_TEXT_TERMS)]


# ------------------------------------------------------------------------------------------------- MMR


def test_mmr_lambda_one_is_relevance_order() -> None:
    q = np.array([1.0, 0.0, 0.0])
    cands = np.array([[0.6, 0.8, 0.0], [0.99, 0.1, 0.0], [0.8, 0.0, 0.6], [0.0, 1.0, 0.0]])
    assert mmr(q, cands, 4, 1.0) == [1, 2, 0, 3]


def test_mmr_low_lambda_skips_near_duplicates() -> None:
    q = np.array([1.0, 0.0])
    a = np.array([0.95, 0.31])  # most relevant
    a_dup = np.array([0.94, 0.34])  # nearly the same direction as a
    other = np.array([0.8, -0.6])  # less relevant, different
    cands = np.stack([a, a_dup, other])
    assert mmr(q, cands, 2, 0.9) == [0, 1]  # relevance dominates: the duplicate comes second
    assert mmr(q, cands, 2, 0.3) == [0, 2]  # diversity dominates: the different one comes second


def test_mmr_hand_computed_gain() -> None:
    # second pick maximises lambda*rel - (1-lambda)*max_sim_to_chosen; checked by hand for lambda=0.5
    q = np.array([1.0, 0.0])
    cands = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, -0.8]])
    # rel = [1, .8, .6]; sim to pick 0 = [1, .8, .6]; gains: c1 = .4-.4 = 0, c2 = .3-.3 = 0 -> tie, first wins
    assert mmr(q, cands, 2, 0.5) == [0, 1]
    # scaled candidates give the same answer (cosine, not dot product)
    assert mmr(q * 3, cands * np.array([[2.0], [0.5], [7.0]]), 3, 0.5) == [0, 1, 2]


def test_mmr_edges() -> None:
    q = np.array([1.0, 0.0])
    assert mmr(q, np.zeros((0, 2)), 3, 0.5) == []
    assert mmr(q, np.array([[1.0, 0.0], [0.0, 1.0]]), 5, 0.5) == [0, 1]  # k > candidates


# ------------------------------------------------------------------------------------------------- RRF


def test_rrf_scores_and_order() -> None:
    fused = rrf([["a", "b", "c"], ["c", "d"]])
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / (RRF_K + 1))
    assert scores["b"] == pytest.approx(1 / (RRF_K + 2))
    assert scores["c"] == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 1))
    assert scores["d"] == pytest.approx(1 / (RRF_K + 2))
    assert [item for item, _ in fused] == ["c", "a", "b", "d"]  # b and d tie: same best rank, b's list first


def test_rrf_constant_and_empty() -> None:
    assert rrf([["x"]], k=0) == [("x", 1.0)]
    assert rrf([[], []]) == []


# --------------------------------------------------------------------------------------- reply parsing

_FIELDS = {
    b"text": b"hello",
    b"source": b"a.pdf",
    b"doc_id": b"d1",
    b"tags": b"x, y z,",
    b"page": b"3",
    b"chunk": b"7",
    b"vector_distance": b"0.25",
}


def test_rows_parse_resp2_and_resp3_alike() -> None:
    flat = [k for kv in _FIELDS.items() for k in kv]
    resp2 = [2, b"c:chunk:d1:1:7", flat, b"c:chunk:d1:1:8", [b"text", b"x", b"vector_distance", b"1"]]
    resp3 = {
        b"total_results": 2,
        b"results": [
            {b"id": b"c:chunk:d1:1:7", b"extra_attributes": dict(_FIELDS), b"values": []},
            {b"id": b"c:chunk:d1:1:8", b"extra_attributes": {b"text": b"x", b"vector_distance": b"1"}, b"values": []},
        ],
    }
    assert _rows(resp2) == _rows(resp3)
    hits = [_hit(row) for row in _rows(resp3)]
    assert hits[0].key == "c:chunk:d1:1:7"
    assert (hits[0].text, hits[0].source, hits[0].doc_id, hits[0].page, hits[0].chunk) == ("hello", "a.pdf", "d1", 3, 7)
    assert hits[0].tags == ("x", "y z")
    assert hits[0].score == pytest.approx(0.75)
    assert (hits[1].page, hits[1].chunk, hits[1].tags, hits[1].score) == (None, 0, (), 0.0)
    assert _rows([0]) == [] and _rows({b"total_results": 0, b"results": []}) == []
