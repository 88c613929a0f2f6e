"""What the gateway's spans say about the LLM work, for Arize Phoenix and any OpenTelemetry backend.

The gateway's request span is the pipeline (OpenInference kind CHAIN, with the user and conversation ids);
each hop's span under it gets its kind (EMBEDDING, RETRIEVER, RERANKER, LLM) and what the hop did, in the OpenInference
semantic conventions (names from the ``openinference-semantic-conventions`` package) and, where they say the
same, the OpenTelemetry GenAI ones (``gen_ai.*``): model names, invocation parameters, token counts (the
LLM's own ``usage``, the numbers the reply carries), the documents retrieved and reranked with their ids,
scores and metadata, and the time to the first token (an attribute and a ``First Token Stream Event``).

Text (prompts, answers, passages, the question) goes into spans only with ``trace_content``
(``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``); ids, scores, models and counts always do.
Nothing here runs for a span that is not recorded (no exporter configured).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from openinference.semconv.trace import DocumentAttributes as Doc
from openinference.semconv.trace import EmbeddingAttributes as Emb
from openinference.semconv.trace import MessageAttributes as Msg
from openinference.semconv.trace import OpenInferenceMimeTypeValues as Mime
from openinference.semconv.trace import OpenInferenceSpanKindValues as Kind
from openinference.semconv.trace import RerankerAttributes as Rerank
from openinference.semconv.trace import SpanAttributes as A
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as G
from opentelemetry.trace import Span
from opentelemetry.util.types import AttributeValue
from pydantic import BaseModel
from starlette.requests import Request

from comps.embedding.protocol import EmbeddingRequest, EmbeddingResponse
from comps.llm.protocol import ChatCompletion, ChatCompletionRequest, Usage
from comps.reranker.protocol import RerankRequest, RerankResult
from comps.retriever.protocol import RetrievalRequest, RetrievalResponse, RetrievedDocument
from megaservice.adapters import Question

if TYPE_CHECKING:
    from megaservice.cache import Lookup

FIRST_TOKEN_EVENT = "First Token Stream Event"  # what OpenInference's own instrumentations record
TTFT_MS = "chatqna.time_to_first_token_ms"  # on the CHAIN span: from the request's arrival
# On the CHAIN span of a request the answer cache looked up: whether it held the answer (a hit makes no hop spans)
# and how it was found (`megaservice.cache.Lookup.match`: exact, semantic). OpenInference has no name for these.
CACHE_HIT = "chatqna.cache.hit"
CACHE_MATCH = "chatqna.cache.match"
# Enum values read once (an enum's ``.value`` is a Python call).
_JSON = Mime.JSON.value
_TEXT = Mime.TEXT.value
_CHAIN, _EMBEDDING, _RETRIEVER, _RERANKER, _LLM = (
    k.value for k in (Kind.CHAIN, Kind.EMBEDDING, Kind.RETRIEVER, Kind.RERANKER, Kind.LLM)
)
# The request fields that are the LLM's invocation parameters, and their gen_ai.* names where one exists.
_PARAMS: dict[str, str] = {
    "model": G.GEN_AI_REQUEST_MODEL,
    "max_tokens": G.GEN_AI_REQUEST_MAX_TOKENS,
    "max_completion_tokens": G.GEN_AI_REQUEST_MAX_TOKENS,
    "temperature": G.GEN_AI_REQUEST_TEMPERATURE,
    "top_p": G.GEN_AI_REQUEST_TOP_P,
    "top_k": G.GEN_AI_REQUEST_TOP_K,
    "presence_penalty": G.GEN_AI_REQUEST_PRESENCE_PENALTY,
    "frequency_penalty": G.GEN_AI_REQUEST_FREQUENCY_PENALTY,
    "seed": G.GEN_AI_REQUEST_SEED,
    "stop": G.GEN_AI_REQUEST_STOP_SEQUENCES,
    "stream": G.GEN_AI_REQUEST_STREAM,
}


class Tracing:
    """Writes the attributes of the gateway's spans; ``content`` allows the text of prompts, answers and passages.

    Each span's attributes are gathered in a dict and set at once: every attribute costs the exporter time
    (encoding), so what another span already says (a reranked document's metadata) is said once."""

    def __init__(self, content: bool) -> None:
        self.content = content

    # -- the pipeline (the gateway's request span) ---------------------------------------------------------

    def chain(
        self,
        span: Span,
        pipeline: str,
        q: Question,
        request: Request,
        conversation: str | None,
        look: Lookup | None = None,
    ) -> None:
        """The request's span is the pipeline: its user, conversation, pipeline, collection, the answer cache's
        outcome (when it was asked) and (with content) question."""
        if not span.is_recording():
            return
        attrs: dict[str, AttributeValue] = {
            A.OPENINFERENCE_SPAN_KIND: _CHAIN,
            A.METADATA: _dumps({"pipeline": pipeline, **_scope(q.request.collection, q.request.collections)}),
        }
        principal = getattr(request.state, "principal", None)
        if principal is not None:
            attrs[A.USER_ID] = principal.user_id
        if conversation is not None:  # Phoenix groups a conversation's traces as a session
            attrs[A.SESSION_ID] = attrs[G.GEN_AI_CONVERSATION_ID] = conversation
        if look is not None:
            match = look.match
            attrs[CACHE_HIT] = match is not None
            if match is not None:
                attrs[CACHE_MATCH] = match
        if self.content:
            attrs[A.INPUT_VALUE] = next((m.text() for m in reversed(q.chat) if m.role == "user"), "")
            attrs[A.INPUT_MIME_TYPE] = _TEXT
        span.set_attributes(attrs)

    def chain_answer(self, span: Span, answer: ChatCompletion | str | None) -> None:
        if isinstance(answer, ChatCompletion):
            answer = answer.choices[0].message.content if answer.choices else None
        if self.content and answer is not None and span.is_recording():
            span.set_attributes({A.OUTPUT_VALUE: answer, A.OUTPUT_MIME_TYPE: _TEXT})

    # -- the hops (called by the graph with the hop's request, its answer or None when it failed, and the
    # -- upstream answers) -----------------------------------------------------------------------------------

    def embedding(
        self,
        span: Span,
        request: EmbeddingRequest,
        answer: EmbeddingResponse | None,
        _: Mapping[str, Any],
        _model: str | None = None,
    ) -> None:
        attrs: dict[str, AttributeValue] = {
            A.OPENINFERENCE_SPAN_KIND: _EMBEDDING,
            G.GEN_AI_OPERATION_NAME: "embeddings",
        }
        if self.content:
            texts = [request.input] if isinstance(request.input, str) else request.input
            for i, text in enumerate(texts):
                attrs[f"{A.EMBEDDING_EMBEDDINGS}.{i}.{Emb.EMBEDDING_TEXT}"] = text
        if answer is not None:
            attrs[A.EMBEDDING_MODEL_NAME] = attrs[G.GEN_AI_RESPONSE_MODEL] = answer.model
            attrs[G.GEN_AI_USAGE_INPUT_TOKENS] = answer.usage.prompt_tokens
        span.set_attributes(attrs)

    def retriever(
        self,
        span: Span,
        request: RetrievalRequest,
        answer: RetrievalResponse | None,
        _: Mapping[str, Any],
        _model: str | None = None,
    ) -> None:
        meta = {**_scope(request.collection, request.collections), "search_type": request.search_type, "k": request.k}
        attrs: dict[str, AttributeValue] = {
            A.OPENINFERENCE_SPAN_KIND: _RETRIEVER,
            G.GEN_AI_OPERATION_NAME: "retrieval",
            A.METADATA: _dumps(meta),
        }
        if self.content and request.text is not None:
            attrs[A.INPUT_VALUE] = request.text
            attrs[A.INPUT_MIME_TYPE] = _TEXT
        docs = answer.documents if answer is not None else []
        for keys, doc in zip(_document_keys(A.RETRIEVAL_DOCUMENTS, len(docs)), docs, strict=False):
            self._document(attrs, keys, doc, doc.score)
            metadata = doc.metadata
            attrs[keys[3]] = metadata.__pydantic_serializer__.to_json(metadata, exclude_defaults=True).decode()
        span.set_attributes(attrs)

    def reranker(
        self,
        span: Span,
        request: RerankRequest,
        answer: list[RerankResult] | None,
        upstream: Mapping[str, Any],
        model: str | None = None,
    ) -> None:
        """The model and the documents in and out by id and score (their metadata is on the retriever's span)."""
        attrs: dict[str, AttributeValue] = {
            A.OPENINFERENCE_SPAN_KIND: _RERANKER,
            G.GEN_AI_OPERATION_NAME: "rerank",
        }
        if model:
            attrs[Rerank.RERANKER_MODEL_NAME] = attrs[G.GEN_AI_RESPONSE_MODEL] = model
        if request.top_n is not None:
            attrs[Rerank.RERANKER_TOP_K] = request.top_n
        if self.content:
            attrs[Rerank.RERANKER_QUERY] = request.query
        retrieved = upstream.get("retriever")
        docs: Sequence[RetrievedDocument] = retrieved.documents if isinstance(retrieved, RetrievalResponse) else ()
        if len(docs) == len(request.texts):  # else not the retriever's documents: no ids to name
            for keys, doc in zip(_document_keys(Rerank.RERANKER_INPUT_DOCUMENTS, len(docs)), docs, strict=False):
                self._document(attrs, keys, doc, doc.score)
            results = answer or []
            for keys, result in zip(
                _document_keys(Rerank.RERANKER_OUTPUT_DOCUMENTS, len(results)), results, strict=False
            ):
                if 0 <= result.index < len(docs):
                    self._document(attrs, keys, docs[result.index], result.score)
        span.set_attributes(attrs)

    def _document(
        self, attrs: dict[str, AttributeValue], keys: tuple[str, ...], doc: RetrievedDocument, score: float
    ) -> None:
        attrs[keys[0]] = doc.id
        attrs[keys[1]] = score
        if self.content:
            attrs[keys[2]] = doc.text

    def llm(
        self,
        span: Span,
        request: ChatCompletionRequest,
        answer: ChatCompletion | None,
        _: Mapping[str, Any],
        _model: str | None = None,
    ) -> None:
        """A whole (non-streamed) answer."""
        attrs = self.llm_request(request)
        if answer is not None:
            choice = answer.choices[0] if answer.choices else None
            self.llm_answer(
                attrs,
                model=answer.model,
                usage=answer.usage,
                text=choice.message.content if choice else None,
                finish_reason=choice.finish_reason if choice else None,
            )
        span.set_attributes(attrs)

    def llm_request(self, request: ChatCompletionRequest) -> dict[str, AttributeValue]:
        attrs: dict[str, AttributeValue] = {A.OPENINFERENCE_SPAN_KIND: _LLM, G.GEN_AI_OPERATION_NAME: "chat"}
        params = {}
        for name in request.model_fields_set & _PARAMS.keys():
            value = getattr(request, name)
            if value is not None:
                params[name] = value
                attrs[_PARAMS[name]] = [value] if name == "stop" and isinstance(value, str) else value
        attrs[A.LLM_INVOCATION_PARAMETERS] = _dumps(params)
        if not self.content:
            return attrs
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        for i, m in enumerate(messages):
            attrs[f"{A.LLM_INPUT_MESSAGES}.{i}.{Msg.MESSAGE_ROLE}"] = m["role"]
            attrs[f"{A.LLM_INPUT_MESSAGES}.{i}.{Msg.MESSAGE_CONTENT}"] = m["content"]
        attrs[A.INPUT_VALUE] = _dumps({"messages": messages})
        attrs[A.INPUT_MIME_TYPE] = _JSON
        attrs[G.GEN_AI_INPUT_MESSAGES] = _dumps(
            [{"role": m["role"], "parts": [{"type": "text", "content": m["content"]}]} for m in messages]
        )
        return attrs

    def llm_answer(
        self,
        attrs: dict[str, AttributeValue],
        *,
        model: str | None,
        usage: Usage | None,
        text: str | None,
        finish_reason: str | None,
    ) -> None:
        if model:
            attrs[A.LLM_MODEL_NAME] = attrs[G.GEN_AI_RESPONSE_MODEL] = model
        if finish_reason:
            attrs[G.GEN_AI_RESPONSE_FINISH_REASONS] = [finish_reason]
        if usage is not None:
            attrs[A.LLM_TOKEN_COUNT_PROMPT] = attrs[G.GEN_AI_USAGE_INPUT_TOKENS] = usage.prompt_tokens
            attrs[A.LLM_TOKEN_COUNT_COMPLETION] = attrs[G.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.completion_tokens
            attrs[A.LLM_TOKEN_COUNT_TOTAL] = usage.total_tokens
            if usage.prompt_tokens_details is not None:
                cached = usage.prompt_tokens_details.cached_tokens
                attrs[A.LLM_TOKEN_COUNT_PROMPT_DETAILS_CACHE_READ] = attrs[G.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = (
                    cached
                )
        if self.content and text is not None:
            attrs[f"{A.LLM_OUTPUT_MESSAGES}.0.{Msg.MESSAGE_ROLE}"] = "assistant"
            attrs[f"{A.LLM_OUTPUT_MESSAGES}.0.{Msg.MESSAGE_CONTENT}"] = text
            attrs[A.OUTPUT_VALUE] = text
            attrs[A.OUTPUT_MIME_TYPE] = _TEXT
            out = {"role": "assistant", "parts": [{"type": "text", "content": text}], "finish_reason": finish_reason}
            attrs[G.GEN_AI_OUTPUT_MESSAGES] = _dumps([out])

    def stream(self, llm: Span, request: BaseModel, chain: Span, arrived: float, called: float) -> StreamTrace | None:
        """The recorder of a streamed answer, or None when nothing is recorded."""
        if not (llm.is_recording() or chain.is_recording()):
            return None
        attrs = self.llm_request(request) if isinstance(request, ChatCompletionRequest) else {}
        return StreamTrace(self, llm, attrs, chain, arrived, called)


class StreamTrace:
    """Reads a streamed answer's events as they pass (only those it needs when no text is kept) and
    writes the answer's model, usage, finish reason, text and time to first token at its end."""

    def __init__(
        self, tracing: Tracing, llm: Span, attrs: dict[str, AttributeValue], chain: Span, arrived: float, called: float
    ) -> None:
        self.tracing = tracing
        self.llm = llm
        self.attrs = attrs
        self.chain = chain
        self.arrived = arrived
        self.called = called
        self.model: str | None = None
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.parts: list[str] = []

    def first_token(self, now: float) -> None:
        self.llm.add_event(FIRST_TOKEN_EVENT)
        self.attrs[G.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = now - self.called
        self.chain.set_attribute(TTFT_MS, round((now - self.arrived) * 1000, 3))

    def event(self, data: bytes, chunk: object = None) -> None:
        """One event's data; ``chunk`` is it already parsed, when the relay did."""
        if chunk is None:
            if not (
                self.tracing.content
                or self.model is None
                or data.find(b'"usage"') != -1  # (``find``: see `megaservice.sse.event_blocks`)
                or data.find(b'"finish_reason":"') != -1
            ):
                return
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                return
        if not isinstance(chunk, dict):
            return
        self.model = self.model or chunk.get("model")
        if isinstance(chunk.get("usage"), dict):
            self.usage = Usage.model_validate(chunk["usage"])
        for choice in chunk.get("choices") or ():
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            if self.tracing.content and (content := (choice.get("delta") or {}).get("content")):
                self.parts.append(content)

    def end(self) -> None:
        text = "".join(self.parts) if self.tracing.content else None
        self.tracing.llm_answer(
            self.attrs, model=self.model, usage=self.usage, text=text, finish_reason=self.finish_reason
        )
        self.llm.set_attributes(self.attrs)
        self.tracing.chain_answer(self.chain, text)


_keys_of: dict[str, list[tuple[str, str, str, str]]] = {}


def _document_keys(documents: str, n: int) -> list[tuple[str, str, str, str]]:
    """The attribute names of (at least) the first ``n`` of a span's ``documents``, each document's id, score,
    content and metadata (made once)."""
    keys = _keys_of.get(documents)
    if keys is None or len(keys) < n:
        prefixes = [f"{documents}.{i}." for i in range(max(n, 16))]
        keys = _keys_of[documents] = [
            (p + Doc.DOCUMENT_ID, p + Doc.DOCUMENT_SCORE, p + Doc.DOCUMENT_CONTENT, p + Doc.DOCUMENT_METADATA)
            for p in prefixes
        ]
    return keys


def _scope(collection: str | None, collections: list[str] | None) -> dict[str, object]:
    return {"collections": collections} if collections else {"collection": collection}


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()
