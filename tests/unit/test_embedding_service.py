"""Embedding protocol validation and the service's limits and answer shapes, with a fake backend."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
from pydantic import ValidationError

from comps.core.errors import BadRequest
from comps.embedding.backends import Embedded
from comps.embedding.protocol import EmbeddingRequest, EmbedRequest
from comps.embedding.service import EmbeddingService
from comps.embedding.settings import EmbeddingSettings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "must not be an empty string"),
        ([], "must not be an empty list"),
        ([1, 2, 3], "token-id arrays are not supported; send text"),
        ([[1, 2], [3]], "token-id arrays are not supported; send text"),
        (["a", 3], "item 1 must be a string, not int"),
        (["a", "b", ""], "item 2 is an empty string"),
        (7, "must be a string or a list of strings"),
        ({"text": "a"}, "must be a string or a list of strings"),
    ],
)
def test_bad_inputs_are_refused_with_a_reason(value: object, message: str) -> None:
    for model, field in ((EmbeddingRequest, "input"), (EmbedRequest, "inputs")):
        with pytest.raises(ValidationError) as exc:
            model(**{field: value})
        (err,) = exc.value.errors()
        assert err["msg"] == message and err["loc"] == (field,)


class FakeEmbedder:
    name = "fake"
    model_name = "fake-model"
    dimension = 3

    def __init__(self) -> None:
        self.truncate_seen: list[bool] = []

    async def embed(self, texts: list[str], *, truncate: bool) -> Embedded:
        self.truncate_seen.append(truncate)
        vectors = np.array([[float(len(t)), 0.0, 4.0 * len(t) / 3] for t in texts], dtype=np.float32)
        return Embedded(vectors, tokens=sum(len(t) for t in texts))


def service(**kw: object) -> EmbeddingService:
    return EmbeddingService(EmbeddingSettings(**kw))


def test_openai_answer_has_the_openai_shape_normalized_vectors_and_usage() -> None:
    resp = asyncio.run(service().openai(FakeEmbedder(), EmbeddingRequest(input=["abc", "de"])))
    body = resp.model_dump()
    assert body["object"] == "list" and body["model"] == "fake-model"
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    assert np.allclose(body["data"][0]["embedding"], [0.6, 0.0, 0.8], atol=1e-6)


def test_base64_is_little_endian_float32_of_the_same_vector() -> None:
    svc, backend = service(), FakeEmbedder()
    floats = asyncio.run(svc.openai(backend, EmbeddingRequest(input="abc")))
    b64 = asyncio.run(svc.openai(backend, EmbeddingRequest(input="abc", encoding_format="base64")))
    decoded = np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4")
    assert decoded.tolist() == pytest.approx(floats.data[0].embedding, abs=0)


def test_dimensions_other_than_the_models_are_refused() -> None:
    with pytest.raises(BadRequest) as exc:
        asyncio.run(service().openai(FakeEmbedder(), EmbeddingRequest(input="a", dimensions=2)))
    assert exc.value.param == "dimensions"
    assert exc.value.message == "dimensions=2 is not supported: fake-model gives 3-dimensional embeddings only"
    ok = asyncio.run(service().openai(FakeEmbedder(), EmbeddingRequest(input="a", dimensions=3)))
    assert len(ok.data[0].embedding) == 3


def test_too_many_inputs_are_refused_before_the_backend_runs() -> None:
    backend = FakeEmbedder()
    with pytest.raises(BadRequest) as exc:
        asyncio.run(service(max_inputs=2).tei(backend, EmbedRequest(inputs=["a", "b", "c"])))
    assert exc.value.message == "inputs has 3 items, more than the limit of 2 per request"
    assert backend.truncate_seen == []


def test_tei_normalize_false_keeps_raw_vectors_and_truncate_defaults_to_the_setting() -> None:
    backend = FakeEmbedder()
    raw = asyncio.run(service(truncate=False).tei(backend, EmbedRequest(inputs="abc", normalize=False)))
    assert raw.vectors[0].tolist() == pytest.approx([3.0, 0.0, 4.0])
    asyncio.run(service(truncate=False).tei(backend, EmbedRequest(inputs="abc", truncate=True)))
    assert backend.truncate_seen == [False, True]
