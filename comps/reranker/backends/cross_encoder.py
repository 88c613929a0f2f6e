"""A local sentence-transformers CrossEncoder (one output label), run in one dedicated thread."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from comps.core.errors import BadRequest, ConfigError, NotReady
from comps.core.http import HttpClient
from comps.core.torch_models import model_folder, prepare_torch
from comps.reranker.settings import RerankerSettings


class CrossEncoderReranker:
    name = "cross-encoder"

    def __init__(self, settings: RerankerSettings) -> None:
        if not settings.model:
            raise ConfigError("RERANKER_BACKEND=cross-encoder needs RERANKER_MODEL (a model folder or path)")
        self.settings = settings
        self.path = model_folder(settings.model, settings.models_dir, "RERANKER_MODEL")
        self.model_name = self.path.name
        self.device = "unloaded"
        self.max_seq_length = 0
        self._model: Any = None
        self._identity: Any = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="reranker-model")

    async def warm_up(self, http: HttpClient) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        self.device = prepare_torch(self.settings.device, self.settings.num_threads)
        import torch
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(str(self.path), device=self.device, local_files_only=True)
        if model.num_labels != 1:
            raise RuntimeError(f"{self.path} has {model.num_labels} output labels; a reranker needs exactly 1")
        model.predict([("warm-up", "warm-up")], show_progress_bar=False)
        self._identity = torch.nn.Identity()
        self.max_seq_length = model.max_seq_length
        self._model = model

    async def check_ready(self) -> dict[str, Any]:
        if self._model is None:
            raise NotReady("the model is not loaded")
        return {"model": self.path.name, "device": self.device, "max_seq_length": self.max_seq_length}

    async def score(self, query: str, texts: list[str], *, truncate: bool, raw: bool) -> list[float]:
        if self._model is None:
            raise NotReady("the model is not loaded")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._predict, query, texts, truncate, raw
        )

    def _predict(self, query: str, texts: list[str], truncate: bool, raw: bool) -> list[float]:
        if not truncate:
            limit = self.max_seq_length
            encoded = self._model.tokenizer([query] * len(texts), texts, verbose=False)
            lengths = [len(ids) for ids in encoded["input_ids"]]
            over = next((i for i, n in enumerate(lengths) if n > limit), None)
            if over is not None:
                raise BadRequest(
                    f"text {over} with the query has {lengths[over]} tokens, more than the model's limit of "
                    f"{limit}; shorten it or allow truncation",
                    code="input_too_long",
                )
        scores = self._model.predict(
            [(query, text) for text in texts],
            batch_size=self.settings.batch_size,
            activation_fn=self._identity if raw else None,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return [float(s) for s in scores]

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
