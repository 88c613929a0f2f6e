"""Any embedding server that speaks TEI ``POST /embed`` or OpenAI ``POST /v1/embeddings``.

TEI is asked for raw vectors (``normalize: false``, the service normalizes) and its token count is read
from the ``x-compute-tokens`` header TEI sends; an OpenAI server's vectors and ``usage`` are taken as
they come (OpenAI servers have no truncate switch: the remote decides).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from comps.core.errors import ConfigError, NotReady, UpstreamError
from comps.core.http import HttpClient, bearer, read_json, wait_until_up
from comps.embedding.backends import Embedded
from comps.embedding.settings import EmbeddingSettings

log = logging.getLogger("comps.embedding.remote")

NODE = "remote-embedding"


class RemoteEmbedder:
    name = "remote"

    def __init__(self, settings: EmbeddingSettings) -> None:
        if not settings.remote_url:
            raise ConfigError("EMBEDDING_BACKEND=remote needs EMBEDDING_REMOTE_URL (the server's base URL)")
        self.settings = settings
        self.base_url = settings.remote_url.rstrip("/")
        self.model_name = settings.remote_model or self.base_url
        self.dimension = 0
        self.headers = bearer(settings.remote_api_key)
        self._http: HttpClient | None = None

    async def warm_up(self, http: HttpClient) -> None:
        self._http = http
        probe = await wait_until_up(
            lambda: self.embed(["ping"], truncate=True),
            what="the remote embedding server",
            log=log,
        )
        self.dimension = int(probe.vectors.shape[1])

    async def check_ready(self) -> dict[str, Any]:
        try:
            await self.embed(["ping"], truncate=True)
        except UpstreamError as exc:
            raise NotReady(f"remote embedding server: {exc.message}") from exc
        return self.describe()

    def tokenizer_json(self) -> str | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "dimension": self.dimension,
            "max_seq_length": None,  # the remote enforces its own
            "device": "remote",
            "remote_url": self.base_url,
            "remote_api": self.settings.remote_api,
        }

    async def close(self) -> None:
        self._http = None

    async def embed(self, texts: list[str], *, truncate: bool) -> Embedded:
        if self._http is None:
            raise NotReady("the remote backend is not started")
        try:
            if self.settings.remote_api == "tei":
                vectors, tokens = await self._tei(self._http, texts, truncate)
            else:
                vectors, tokens = await self._openai(self._http, texts)
            array = np.asarray(vectors, dtype=np.float32)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a malformed answer is the remote's fault
            raise UpstreamError(f"{NODE} answered with an unexpected body: {exc!r}", node=NODE) from exc
        if array.ndim != 2 or array.shape[0] != len(texts) or array.shape[1] == 0:
            raise UpstreamError(f"{NODE} answered vectors of shape {array.shape} for {len(texts)} inputs", node=NODE)
        return Embedded(array, tokens)

    async def _tei(self, http: HttpClient, texts: list[str], truncate: bool) -> tuple[Any, int]:
        body = {"inputs": texts, "normalize": False, "truncate": truncate}
        async with http.stream(
            "POST",
            f"{self.base_url}/embed",
            node=NODE,
            timeout_s=self.settings.remote_timeout_s,
            json_body=body,
            headers=self.headers,
        ) as resp:
            answer = await read_json(resp, NODE)
            return answer, int(resp.headers.get("x-compute-tokens", "0"))

    async def _openai(self, http: HttpClient, texts: list[str]) -> tuple[Any, int]:
        body: dict[str, Any] = {"input": texts, "encoding_format": "float"}
        if self.settings.remote_model:
            body["model"] = self.settings.remote_model
        answer = await http.request_json(
            "POST",
            f"{self.base_url}/v1/embeddings",
            node=NODE,
            timeout_s=self.settings.remote_timeout_s,
            json_body=body,
            headers=self.headers,
        )
        data = sorted(answer["data"], key=lambda d: d["index"])
        return [d["embedding"] for d in data], int((answer.get("usage") or {}).get("prompt_tokens", 0))
