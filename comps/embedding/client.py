"""The one client of the embedding service's OpenAI API (``POST /v1/embeddings``), for the services that call it
(the retriever for text-only queries, dataprep for chunks).

Vectors travel as base64 float32 (a quarter of the JSON floats' size); the answer is checked against the
service's own `EmbeddingResponse`, then for one finite, non-empty vector of one dimension per input, in order.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from pydantic import SecretStr, ValidationError

from comps.core.errors import UpstreamError, UpstreamUnavailable
from comps.core.http import HttpClient, bearer
from comps.embedding.protocol import EmbeddingResponse

NODE = "embedding"
READY_TIMEOUT_S = 2.0  # below the gateway's readiness probe of the caller (GATEWAY_READY_TIMEOUT_S)


class EmbeddingClient:
    """Calls the embedding service at ``url``; ``url`` None means not configured, and ``unconfigured`` says how
    to configure it (the caller's variable)."""

    def __init__(
        self,
        url: str | None,
        *,
        timeout_s: float,
        api_key: SecretStr | str | None = None,
        model: str | None = None,
        unconfigured: str = "the embedding service is not configured",
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self.timeout_s = timeout_s
        self.model = model
        self.headers = bearer(api_key)
        self.unconfigured = unconfigured

    def base(self) -> str:
        """The service's base URL; `UpstreamUnavailable` when it is not configured."""
        if self.url is None:
            raise UpstreamUnavailable(self.unconfigured, node=NODE)
        return self.url

    async def embed(self, http: HttpClient, texts: list[str]) -> tuple[np.ndarray, str]:
        """One float32 row per text, in order, and the model that made them."""
        body: dict[str, Any] = {"input": texts, "encoding_format": "base64"}
        if self.model:
            body["model"] = self.model
        answer = await http.request_json(
            "POST",
            f"{self.base()}/v1/embeddings",
            node=NODE,
            timeout_s=self.timeout_s,
            json_body=body,
            headers=self.headers,
        )
        try:
            return vectors_of(EmbeddingResponse.model_validate(answer), len(texts))
        except (ValidationError, ValueError) as exc:
            # status 200: it did answer (a failure with no status is one of the connection)
            raise UpstreamError(f"embedding answered without usable embeddings: {exc}", node=NODE, status=200) from None

    async def ready(self, http: HttpClient) -> dict[str, Any]:
        """The service's readiness details; `UpstreamError` (with the reason) when it is not ready."""
        details = await http.request_json(
            "GET", f"{self.base()}/v1/ready", node=NODE, timeout_s=READY_TIMEOUT_S, headers=self.headers
        )
        return details if isinstance(details, dict) else {}

    async def tokenizer(self, http: HttpClient) -> dict[str, Any]:
        """``GET /v1/tokenizer``: the model's ``max_seq_length`` and its ``tokenizer`` (a ``tokenizer.json``
        document); `UpstreamError` with ``upstream_status`` 404 when the service does not know them."""
        answer = await http.request_json(
            "GET", f"{self.base()}/v1/tokenizer", node=NODE, timeout_s=self.timeout_s, headers=self.headers
        )
        if not isinstance(answer, dict):
            raise UpstreamError("embedding answered /v1/tokenizer without an object", node=NODE)
        return answer


def vectors_of(answer: EmbeddingResponse, inputs: int) -> tuple[np.ndarray, str]:
    """The answer's vectors as float32 rows in input order, and its model; `ValueError` saying what is wrong."""
    data = sorted(answer.data, key=lambda d: d.index)
    if [d.index for d in data] != list(range(inputs)):
        raise ValueError(f"{len(data)} embeddings with indexes that do not match {inputs} inputs")
    rows = [_row(d.embedding) for d in data]
    if len({r.size for r in rows}) != 1 or rows[0].size == 0:
        raise ValueError("embeddings of different or zero lengths")
    vectors = np.vstack(rows)
    if not np.isfinite(vectors).all():
        raise ValueError("non-finite numbers in the embeddings")
    return vectors, answer.model


def _row(value: list[float] | str) -> np.ndarray:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value, validate=True), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)
