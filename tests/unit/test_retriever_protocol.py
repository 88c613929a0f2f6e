"""The retriever's request contract: OPEA's shape, aliases and the validation messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from comps.retriever.protocol import RetrievalRequest

pytestmark = pytest.mark.unit


def test_defaults() -> None:
    req = RetrievalRequest(text="q")
    assert (req.k, req.search_type, req.fetch_k) == (4, "similarity", 20)
    assert (req.lambda_mult, req.score_threshold) == (0.5, 0.2)
    assert req.collection is None and req.embedding is None and req.filters is None


def test_opea_embed_doc_is_accepted() -> None:
    body = {
        "id": "abc",
        "text": "what?",
        "embedding": [0.1, 0.2],
        "search_type": "mmr",
        "k": 3,
        "distance_threshold": None,
        "fetch_k": 30,
        "lambda_mult": 0.3,
        "score_threshold": 0.5,
        "constraints": None,
        "index_name": "opea-idx",
        "downstream_black_list": [],
    }
    req = RetrievalRequest.model_validate(body)
    assert (req.text, req.embedding, req.search_type, req.k, req.fetch_k, req.lambda_mult, req.collection) == (
        "what?",
        [0.1, 0.2],
        "mmr",
        3,
        30,
        0.3,
        "opea-idx",
    )


def test_input_alias_and_wrapped_embeddings() -> None:
    assert RetrievalRequest.model_validate({"input": "hi"}).text == "hi"
    openai = {"object": "list", "data": [{"index": 0, "embedding": [0.5, 0.5]}], "model": "m"}
    assert RetrievalRequest.model_validate({"embedding": openai}).embedding == [0.5, 0.5]
    assert RetrievalRequest.model_validate({"embedding": [[1.0, 2.0]]}).embedding == [1.0, 2.0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "give the query as text, embedding or both"),
        ({"text": "   "}, "give the query as text, embedding or both"),
        ({"embedding": [0.0, 0.0]}, "must not be all zeros"),
        ({"embedding": [1.0, float("nan")]}, "must contain finite numbers only"),
        ({"text": "q", "search_type": "similarity_distance_threshold"}, "needs distance_threshold"),
        ({"embedding": [1.0], "search_type": "hybrid"}, "search_type hybrid needs text"),
        ({"text": "q", "k": 0}, "greater than or equal to 1"),
        ({"text": "q", "k": 101}, "less than or equal to 100"),
        ({"text": "q", "lambda_mult": 1.5}, "less than or equal to 1"),
        ({"text": "q", "search_type": "knn"}, "'similarity', 'similarity_score_threshold'"),
        ({"text": "q", "filters": {"author": "x"}}, "Input should be 'source', 'doc_id', 'tags' or 'page'"),
    ],
)
def test_refused(body: dict, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        RetrievalRequest.model_validate(body)
    assert message in str(err.value)
