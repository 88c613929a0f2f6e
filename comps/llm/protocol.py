"""The LLM service's contract: OpenAI chat completions (a strict subset) and the model list.

Requests are validated strictly: unknown fields, ``n`` > 1 and tools are refused with 400 in the
error envelope. Streaming answers are ``chat.completion.chunk`` server-sent events
(``data: {json}\\n\\n``): a first chunk with ``delta.role == "assistant"``, content chunks, a chunk
with ``finish_reason`` ("stop" | "length" | "repetition": a whole sentence came a second time and the
answer was ended before it), a usage chunk (``choices == []``) when
``stream_options.include_usage`` is set, then ``data: [DONE]``. A failure after the stream started
is sent as ``data: {"error": {"message", "type", "param", "code"}}`` followed by ``data: [DONE]``.

Context policy: prompt tokens + max_tokens must fit in the context window of one sequence (n_ctx),
else 400 (code ``context_length_exceeded``) naming both numbers. Without max_tokens a request gets
the service's default, capped by what the prompt leaves of n_ctx.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FinishReason = Literal["stop", "length", "repetition"]
MAX_STOP_CHARS = 256  # each stop string is searched for in the text held back: bounded work per token


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    """One part of a message's content; only text parts are supported."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined by newlines)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions``. ``temperature: 0`` means greedy decoding."""

    model: str | None = Field(default=None, description="Accepted; the answer names the model really used.")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Wins over max_tokens when both are set.")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, description="0 or unset: no top-k cut.")
    stop: str | list[str] | None = Field(
        default=None, description="Up to 16 strings of up to 256 characters; the text stops before them."
    )
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(
        default=None,
        gt=0.0,
        le=2.0,
        description="Divides the odds of tokens among the last 64 generated (llama.cpp's repeat penalty; "
        "vLLM's name); 1 = off. Unset: the service's LLM_REPETITION_PENALTY. Not sent to a remote LLM.",
    )
    stop_on_repetition: bool | None = Field(
        default=None,
        description='End the answer (finish_reason "repetition") before a whole sentence is said a second time. '
        "Unset: the service's LLM_STOP_ON_REPETITION. Not sent to a remote LLM.",
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    tools: list[Any] | None = None
    tool_choice: Any = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("tools", "tool_choice")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("tools are not supported by this service")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop strings")
        stops = [value] if isinstance(value, str) else value or []
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop string is longer than {MAX_STOP_CHARS} characters")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Prompt tokens read from the prompt cache instead of decoded.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    """The non-streaming answer: the real model name and true token counts."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One streamed event; the usage chunk has ``choices == []`` and ``usage`` set."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "chatqna"


class ModelList(BaseModel):
    """``GET /v1/models``: what this service serves."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
