"""Any server that speaks TEI ``POST /rerank`` (``[{"index", "score"}]``), e.g. TEI or this service."""

from __future__ import annotations

import logging
from typing import Any

from comps.core.errors import ConfigError, NotReady, UpstreamError
from comps.core.http import HttpClient, bearer, wait_until_up
from comps.reranker.settings import RerankerSettings

log = logging.getLogger("comps.reranker.remote")

NODE = "remote-reranker"


class RemoteReranker:
    name = "remote"

    def __init__(self, settings: RerankerSettings) -> None:
        if not settings.remote_url:
            raise ConfigError("RERANKER_BACKEND=remote needs RERANKER_REMOTE_URL (the server's base URL)")
        self.settings = settings
        self.base_url = settings.remote_url.rstrip("/")
        self.model_name = self.base_url
        self.headers = bearer(settings.remote_api_key)
        self._http: HttpClient | None = None

    async def warm_up(self, http: HttpClient) -> None:
        self._http = http
        await wait_until_up(self._probe, what="the remote reranker", log=log)

    async def _probe(self) -> list[float]:
        return await self.score("ping", ["ping"], truncate=True, raw=False)

    async def check_ready(self) -> dict[str, Any]:
        try:
            await self._probe()
        except UpstreamError as exc:
            raise NotReady(f"remote reranker: {exc.message}") from exc
        return {"remote_url": self.base_url}

    async def close(self) -> None:
        self._http = None

    async def score(self, query: str, texts: list[str], *, truncate: bool, raw: bool) -> list[float]:
        if self._http is None:
            raise NotReady("the remote backend is not started")
        body = {"query": query, "texts": texts, "raw_scores": raw, "truncate": truncate, "return_text": False}
        answer = await self._http.request_json(
            "POST",
            f"{self.base_url}/rerank",
            node=NODE,
            timeout_s=self.settings.remote_timeout_s,
            json_body=body,
            headers=self.headers,
        )
        scores: list[float | None] = [None] * len(texts)
        try:
            for item in answer:
                index = int(item["index"])
                if not 0 <= index < len(texts):
                    raise ValueError(f"index {index} is out of range")
                scores[index] = float(item["score"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"{NODE} answered with an unexpected body: {exc!r}", node=NODE) from exc
        missing = [i for i, s in enumerate(scores) if s is None]
        if missing:
            raise UpstreamError(f"{NODE} gave no score for texts {missing[:10]}", node=NODE)
        return scores  # type: ignore[return-value]
