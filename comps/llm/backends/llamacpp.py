"""The default backend: a GGUF served in-process by llama.cpp with batched decoding (see engine.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from comps.core.errors import BadRequest, NotReady
from comps.core.http import HttpClient
from comps.core.settings import resolve_model_path
from comps.core.tasks import fatal
from comps.llm.backends import Event, Finished, Started
from comps.llm.chat_template import ChatTemplate, load_template_source, sidecar_template
from comps.llm.engine import Engine, SamplingParams, Sequence
from comps.llm.protocol import ChatCompletionRequest, ModelCard
from comps.llm.settings import LLMSettings

T = TypeVar("T")


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


@dataclass(frozen=True, slots=True)
class Prepared:
    tokens: list[int]
    params: SamplingParams


class LlamaCppBackend:
    name = "llama-cpp"

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        self.model_name = Path(settings.model).name
        self.engine: Engine | None = None
        self.template: ChatTemplate | None = None
        self.turn_stops: tuple[str, ...] = ()  # the chat template's end-of-turn markers: always stops

    async def warm_up(self, http: HttpClient) -> None:
        s = self.settings
        path = resolve_model_path(s.model, s.models_dir)
        self.engine = await asyncio.to_thread(
            Engine,
            path,
            n_ctx=s.n_ctx,
            n_batch=s.n_batch,
            parallel=s.parallel,
            n_threads=s.n_threads,
            n_gpu_layers=s.n_gpu_layers,
            use_extra_bufts=s.use_extra_bufts,
        )
        source = await asyncio.to_thread(
            load_template_source, s.chat_template or sidecar_template(path), self.engine.chat_template()
        )
        self.template = ChatTemplate(source, bos_token=self.engine.bos_token, eos_token=self.engine.eos_token)
        self.turn_stops = tuple(self.template.turn_stops())
        self.engine.on_death = lambda exc: fatal(f"the generation engine stopped: {type(exc).__name__}: {exc}")
        self.engine.start()

    async def check_ready(self) -> dict[str, Any]:
        engine = self.engine
        if engine is None or not engine.alive():
            raise NotReady(f"the generation engine is not running: {engine.error if engine else 'not loaded'}")
        return {
            "model": self.model_name,
            "file": str(engine.path),
            "quantisation": engine.quantisation,
            "n_ctx": engine.n_ctx,
            "parallel": engine.parallel,
            "n_batch": engine.n_batch,
            "n_threads": engine.n_threads,
            "n_gpu_layers": self.settings.n_gpu_layers,
            "slots_in_use": engine.slots_in_use,
        }

    async def close(self) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)

    async def models(self) -> list[ModelCard]:
        return [ModelCard(id=self.model_name)]

    async def prepare(self, request: ChatCompletionRequest) -> Prepared:
        assert self.engine is not None and self.template is not None
        if not self.engine.alive():
            raise NotReady(f"the generation engine is not running: {self.engine.error}")
        tokens = await asyncio.to_thread(self._prompt_tokens, request)
        n_ctx, n_prompt = self.engine.n_ctx, len(tokens)
        max_tokens = request.token_limit()
        if max_tokens is None:
            max_tokens = max(1, min(self.settings.default_max_tokens, n_ctx - n_prompt))
        if n_prompt + max_tokens > n_ctx:
            raise BadRequest(
                f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="messages",
                code="context_length_exceeded",
            )
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k or 0,
            seed=request.seed,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            repetition_penalty=_or(request.repetition_penalty, self.settings.repetition_penalty),
            stop=tuple(dict.fromkeys((*request.stop_list(), *self.turn_stops))),
            stop_on_repetition=_or(request.stop_on_repetition, self.settings.stop_on_repetition),
        )
        return Prepared(tokens, params)

    def _prompt_tokens(self, request: ChatCompletionRequest) -> list[int]:
        assert self.engine is not None and self.template is not None, "used before warm_up()"
        tokens = self.engine.tokenize(self.template.render(request.messages))
        if not tokens:
            raise BadRequest("the messages render to an empty prompt", param="messages")
        return tokens

    async def generate(self, prepared: Prepared) -> AsyncGenerator[Event, None]:
        assert self.engine is not None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event | Exception] = asyncio.Queue()

        def emit(event: Event | Exception) -> None:  # engine thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        seq = Sequence(prepared.tokens, prepared.params, emit)
        self.engine.submit(seq)
        finished = False
        try:
            yield Started(self.model_name)
            while True:
                event = await queue.get()
                if isinstance(event, Exception):
                    finished = True
                    raise event
                if isinstance(event, Finished):
                    finished = True
                yield event
                if finished:
                    return
        finally:
            if not finished:
                self.engine.cancel(seq)
