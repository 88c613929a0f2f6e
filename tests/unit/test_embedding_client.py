"""The embedding client: base64 vectors back in input order, and every malformed answer an `UpstreamError`."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import pytest

from comps.core.errors import UpstreamError, UpstreamUnavailable
from comps.core.http import HttpClient
from comps.embedding.client import EmbeddingClient

pytestmark = pytest.mark.unit


def b64(vector: list[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def answer(*embeddings: object, model: str = "m") -> dict[str, Any]:
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)]
    return {"object": "list", "data": data[::-1], "model": model, "usage": {"prompt_tokens": 2, "total_tokens": 2}}


class Fake:
    def __init__(self, body: object) -> None:
        self.body = body
        self.calls: list[tuple[str, str, Any, dict[str, str] | None]] = []

    async def request_json(self, method: str, url: str, *, json_body: Any = None, **kw: Any) -> object:
        self.calls.append((method, url, json_body, kw.get("headers")))
        return self.body


def embed(body: object, texts: list[str], **client: Any) -> tuple[np.ndarray, str]:
    c = EmbeddingClient("http://embedding/", timeout_s=1.0, **client)
    fake = Fake(body)
    result = asyncio.run(c.embed(fake, texts))  # type: ignore[arg-type]
    assert fake.calls[0][:3] == (
        "POST",
        "http://embedding/v1/embeddings",
        {"input": texts, "encoding_format": "base64", **({"model": client["model"]} if "model" in client else {})},
    )
    return result


def test_vectors_come_back_in_input_order_from_base64_or_floats() -> None:
    vectors, model = embed(answer(b64([1, 2]), [3.0, 4.0]), ["a", "b"], model="x", api_key="k")
    assert model == "m" and vectors.dtype == np.float32 and vectors.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    "body",
    [
        {"data": []},  # not the service's response model
        answer([1.0]),  # one vector for two inputs
        answer([1.0], [1.0, 2.0]),  # different dimensions
        answer([], []),  # empty vectors
        answer("not base64!", [1.0]),
        answer(b64([float("nan")]), [1.0]),
        ["not", "an", "object"],
    ],
)
def test_a_malformed_answer_is_an_upstream_error(body: object) -> None:
    with pytest.raises(UpstreamError, match="embedding answered without usable embeddings"):
        embed(body, ["a", "b"])


def test_not_configured_says_how_to_configure_it() -> None:
    c = EmbeddingClient(None, timeout_s=1.0, unconfigured="set X_EMBEDDING_URL")
    with pytest.raises(UpstreamUnavailable, match="set X_EMBEDDING_URL"):
        asyncio.run(c.embed(HttpClient(), ["a"]))
