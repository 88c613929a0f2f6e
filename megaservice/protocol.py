"""The gateway's contract: ``POST /v1/chatqna`` (also ``POST /v1/chat/completions``).

A request is an OpenAI chat request plus OPEA's retrieval knobs, a ``collection``, metadata ``filters``
and a choice of pipeline; the simpler shape that existing frontends send
(``{"messages", "stream", "context", "meta"}``) is the same model with fewer fields. Unknown fields
are ignored (frontends send extras); bad values of known fields get a 400 naming the field.

Answers are OpenAI's: a ``chat.completion`` (model and usage from the LLM), or ``chat.completion.chunk``
events ending with ``data: [DONE]``. Each carries ``sources`` (top level; on the first chunk when
streaming): the passages given to the LLM, best first. OpenAI clients ignore the extra field. With
``conversation_id`` or ``store: true`` they also carry ``conversation_id`` and ``conversation_saved``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from comps.llm.protocol import MAX_STOP_CHARS, ChatCompletion, ChatMessage, StreamOptions
from comps.prompt_registry.protocol import NAME_PATTERN as PROMPT_NAME_PATTERN
from comps.retriever.protocol import RetrievalOptions

PipelineName = Literal["rag-rerank", "rag", "llm-only"]
PIPELINES: tuple[str, ...] = ("rag-rerank", "rag", "llm-only")


class Message(ChatMessage):
    """One chat turn, as the LLM's contract has it, but tolerant of extra fields frontends send.
    Text parts are joined with newlines; tool and function roles are refused."""

    model_config = ConfigDict(extra="ignore")


class ContextPassage(BaseModel):
    """A passage the caller supplies (OPEA frontends' ``context``); used before any retrieved one."""

    model_config = ConfigDict(extra="ignore")

    text: str = Field(min_length=1, max_length=20_000)
    source: str | None = None


class ChatQnARequest(RetrievalOptions):
    """An OpenAI chat request with the retriever's options (`RetrievalOptions`, forwarded as they are).
    Every retrieval field has OPEA's default except ``k`` (10, so the reranker has more to choose from than it
    keeps) and ``top_n`` (3, so more than one passage reaches the LLM)."""

    # NaN and infinities are refused in every number (the chat routes parse their body themselves, without the
    # kit's strict-JSON check).
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    # -- OpenAI chat fields (forwarded to the LLM) --
    messages: str | list[Message] = Field(description="The conversation, or the question as a plain string.")
    model: str | None = Field(default=None, description="Forwarded; the answer names the model that really ran.")
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="0 means greedy decoding.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0, description="1 = off (llama.cpp's).")
    stop_on_repetition: bool | None = Field(default=None, description="End the answer before a sentence repeats.")
    stream: bool = Field(default=False, description="Stream chat.completion.chunk events (false, as in OpenAI).")
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, description="Only 1 is supported.")
    tools: list[Any] | None = Field(default=None, description="Not supported; refused when given.")

    # -- Retrieval: the retriever's options are inherited (RetrievalOptions); the gateway adds --
    k: int = Field(
        default=10,
        ge=1,
        le=100,
        description="Passages retrieved: the reranker's candidates (OPEA's 4 left the right passage out of reach; "
        "benchmarks/eval/RESULTS.md).",
    )
    top_n: int = Field(default=3, ge=1, le=100, description="Passages the reranker keeps.")
    passage_tokens: int | None = Field(
        default=None, ge=16, le=100_000, description="Most tokens of passages in the prompt; default: the gateway's."
    )
    rerank_min_score: float | None = Field(
        default=None, description="Reranked passages scored below this are left out; default: the gateway's."
    )
    chat_template: str | None = Field(
        default=None, max_length=20_000, description="Prompt for the last turn, with {context} and {question}."
    )

    # -- Which pipeline --
    pipeline: PipelineName | None = Field(default=None, description="Default: the gateway's GATEWAY_PIPELINE.")
    retrieval: bool | None = Field(default=None, description="false: answer without retrieval (llm-only).")
    rerank: bool | None = Field(default=None, description="false: skip the reranker (rag).")

    # -- Conversations (megaservice/conversations.py) --
    conversation_id: str | None = Field(
        default=None, max_length=64, description="Continue this stored conversation: send only the new turn."
    )
    store: bool = Field(default=False, description="Without conversation_id: keep this exchange as a new conversation.")
    question_rewrite: Literal["heuristic", "condense"] | None = Field(
        default=None, description="How a follow-up becomes the search query; default: GATEWAY_QUESTION_REWRITE."
    )
    cache: bool | None = Field(
        default=None,
        description="false: never from or into the answer cache; true: cached even when not greedy (temperature "
        "> 0); default: cached when deterministic (temperature 0).",
    )
    prompt: str | None = Field(
        default=None,
        pattern=PROMPT_NAME_PATTERN,
        description="A prompt of the registry (name or id) instead of chat_template.",
    )

    # -- OPEA frontends' shape --
    context: list[str | ContextPassage] | None = Field(
        default=None, max_length=50, description="Caller-provided passages, added before the retrieved ones."
    )
    meta: dict[str, Any] | None = Field(default=None, description="Accepted and ignored (OPEA UI's auth_token).")

    @field_validator("messages")
    @classmethod
    def _has_user_turn(cls, value: str | list[Message]) -> str | list[Message]:
        if isinstance(value, str):
            if not value.strip():
                raise PydanticCustomError("empty_question", "must not be empty")
            return value
        if not value:
            raise PydanticCustomError("empty_messages", "must contain at least one message")
        if not any(m.role == "user" and m.text().strip() for m in value):
            raise PydanticCustomError("no_user_turn", "must contain a user message with text")
        return value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise PydanticCustomError("one_choice", "only n=1 is supported")
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise PydanticCustomError("no_tools", "tools are not supported by this gateway")
        return value

    @field_validator("chat_template")
    @classmethod
    def _template_slots(cls, value: str | None) -> str | None:
        if value is not None and ("{context}" not in value or "{question}" not in value):
            raise PydanticCustomError("template_slots", "must contain both {context} and {question}")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise PydanticCustomError("too_many_stops", "at most 16 stop strings")
        if any(len(s) > MAX_STOP_CHARS for s in ([value] if isinstance(value, str) else value or [])):
            raise PydanticCustomError("stop_too_long", f"a stop string is longer than {MAX_STOP_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ChatQnARequest:
        if self.pipeline is not None:
            implied = _implied_pipeline(self.pipeline, self.retrieval, self.rerank)
            if implied != self.pipeline:
                said = ", ".join(
                    f"{name}={str(value).lower()}"
                    for name, value in (("retrieval", self.retrieval), ("rerank", self.rerank))
                    if value is not None
                )
                raise PydanticCustomError("pipeline_conflict", f"pipeline {self.pipeline} contradicts {said}")
        return self

    def chat(self) -> list[Message]:
        """The conversation as messages (a plain string is one user turn)."""
        if isinstance(self.messages, str):
            return [Message(role="user", content=self.messages)]
        return self.messages

    def pipeline_for(self, default: str) -> str:
        """The pipeline this request runs: ``pipeline`` if given, else the default narrowed by the switches."""
        return self.pipeline or _implied_pipeline(default, self.retrieval, self.rerank)


def _implied_pipeline(base: str, retrieval: bool | None, rerank: bool | None) -> str:
    """``retrieval: false`` means llm-only; with retrieval on, ``rerank`` picks rag-rerank or rag."""
    if retrieval is False or (base == "llm-only" and not retrieval):
        return "llm-only"
    if rerank is None:
        return "rag-rerank" if base == "llm-only" else base
    return "rag-rerank" if rerank else "rag"


class Source(BaseModel):
    """A passage given to the LLM: where it came from and how well it matched."""

    id: str = Field(description="The chunk's key in the store, or context-<n> for a caller's passage.")
    source: str | None = Field(description="File name or URL of the document.")
    doc_id: str | None = None
    page: int | None = None
    score: float | None = Field(description="Reranker score, else retrieval score; none for caller passages.")
    text: str = Field(description="The start of the passage.")


class ChatQnACompletion(ChatCompletion):
    """The non-streaming answer: the LLM's completion (real model, true usage) plus its sources."""

    sources: list[Source]
    cached: bool = Field(
        default=False, description="Served from the answer cache (a stream says it on its first chunk)."
    )
