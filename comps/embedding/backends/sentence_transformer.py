"""A local sentence-transformers model, fed by the dynamic batcher from one dedicated thread."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from comps.core.errors import BadRequest, NotReady
from comps.core.http import HttpClient
from comps.core.torch_models import model_folder, prepare_torch
from comps.embedding.backends import Embedded
from comps.embedding.batching import Batcher
from comps.embedding.settings import EmbeddingSettings


@dataclass(frozen=True)
class _Request:
    texts: list[str]
    truncate: bool


class SentenceTransformerEmbedder:
    name = "sentence-transformers"

    def __init__(self, settings: EmbeddingSettings) -> None:
        self.settings = settings
        self.path = model_folder(settings.model, settings.models_dir, "EMBEDDING_MODEL")
        self.model_name = self.path.name
        self.dimension = 0
        self.max_seq_length = 0
        self.device = "unloaded"
        self._model: Any = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="embedding-model")
        self._batcher: Batcher[_Request, Embedded] | None = None

    async def warm_up(self, http: HttpClient) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)
        self._batcher = Batcher(
            self._run_batch,
            self._executor,
            max_batch_size=self.settings.max_batch_size,
            max_wait_s=self.settings.max_wait_ms / 1000,
            max_queue=self.settings.max_queue,
        )
        self._batcher.start()

    def _load(self) -> None:
        self.device = prepare_torch(self.settings.device, self.settings.num_threads)
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
        dimension = model.get_embedding_dimension()
        if not dimension or not model.max_seq_length:
            raise RuntimeError(f"{self.path} does not say its embedding dimension and max_seq_length")
        model.encode(["warm-up"], show_progress_bar=False)
        self._model, self.dimension, self.max_seq_length = model, dimension, model.max_seq_length

    async def check_ready(self) -> dict[str, Any]:
        if self._batcher is None:
            raise NotReady("the model is not loaded")
        self._batcher.check()
        return self.describe()

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "dimension": self.dimension,
            "max_seq_length": self.max_seq_length,
            "device": self.device,
        }

    def tokenizer_json(self) -> str | None:
        fast = getattr(self._model.tokenizer, "backend_tokenizer", None) if self._model is not None else None
        return fast.to_str() if fast is not None else None

    async def embed(self, texts: list[str], *, truncate: bool) -> Embedded:
        if self._batcher is None:
            raise NotReady("the model is not loaded")
        return await self._batcher.submit(_Request(texts, truncate), len(texts))

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _run_batch(self, requests: list[_Request]) -> list[Embedded | Exception]:
        """In the model thread: count tokens, refuse what is too long, embed the rest in one call."""
        limit = self.max_seq_length
        lengths = iter(self._token_counts([t for r in requests for t in r.texts]))
        checked: list[tuple[int, int, int] | Exception] = []  # (inputs, tokens, truncated) or the request's error
        texts: list[str] = []
        for req in requests:
            counts = [next(lengths) for _ in req.texts]
            over = next((i for i, n in enumerate(counts) if n > limit), None)
            if over is not None and not req.truncate:
                checked.append(
                    BadRequest(
                        f"input {over} has {counts[over]} tokens, more than the model's limit of {limit}; "
                        "shorten it or allow truncation",
                        code="input_too_long",
                    )
                )
                continue
            checked.append((len(req.texts), sum(min(n, limit) for n in counts), sum(n > limit for n in counts)))
            texts.extend(req.texts)
        vectors = (
            self._model.encode(
                texts, batch_size=self.settings.max_batch_size, convert_to_numpy=True, show_progress_bar=False
            )
            if texts
            else None
        )
        results: list[Embedded | Exception] = []
        start = 0
        for item in checked:
            if isinstance(item, Exception):
                results.append(item)
                continue
            count, tokens, truncated = item
            assert vectors is not None  # this item's texts were encoded
            results.append(Embedded(vectors[start : start + count], tokens, truncated))
            start += count
        return results

    def _token_counts(self, texts: list[str]) -> list[int]:
        ids = self._model.tokenizer(
            texts,
            add_special_tokens=True,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )["input_ids"]
        return [len(x) for x in ids]
