"""Query text -> vector through the embedding service (OpenAI ``POST /v1/embeddings``), and its readiness."""

from __future__ import annotations

import math

from comps.core.errors import UpstreamError, UpstreamUnavailable
from comps.core.http import HttpClient, bearer

NODE = "embedding"
READY_TIMEOUT_S = 2.0


class QueryEmbedder:
    def __init__(self, url: str | None, *, timeout_s: float, api_key: str | None = None) -> None:
        self.url = url.rstrip("/") if url else None
        self.timeout_s = timeout_s
        self.headers = bearer(api_key)

    async def embed(self, http: HttpClient, text: str) -> list[float]:
        if self.url is None:
            raise UpstreamUnavailable(
                "embedding service is not configured (RETRIEVER_EMBEDDING_URL): send the query's embedding "
                "with the request, or configure the service",
                node=NODE,
            )
        body = await http.request_json(
            "POST", f"{self.url}/v1/embeddings", node=NODE, timeout_s=self.timeout_s,
            json_body={"input": text}, headers=self.headers,
        )  # fmt: skip
        try:
            vector = body["data"][0]["embedding"]
            if not vector or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in vector):
                raise ValueError("not a non-empty list of finite numbers")
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise UpstreamError(f"embedding answered without a usable data[0].embedding: {exc}", node=NODE) from exc
        return [float(x) for x in vector]

    async def status(self, http: HttpClient) -> str:
        """``ready``, ``not configured``, or why not: for readiness details (never raises)."""
        if self.url is None:
            return "not configured"
        try:
            await http.request_json(
                "GET", f"{self.url}/v1/ready", node=NODE, timeout_s=READY_TIMEOUT_S, headers=self.headers
            )
        except UpstreamError as exc:
            return f"unavailable: {exc.message}"
        return "ready"
