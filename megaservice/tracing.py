"""What the gateway's spans say about the LLM work, for Arize Phoenix and any OpenTelemetry backend.

The gateway's request span is the pipeline (OpenInference kind CHAIN, with the user id); each hop's span
under it gets its kind (EMBEDDING, RETRIEVER, RERANKER, LLM) and what the hop did, in the OpenInference
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
from typing import Any

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
from starlette.requests import Request

from comps.embedding.protocol import EmbeddingRequest, EmbeddingResponse
from comps.llm.protocol import ChatCompletion, ChatCompletionRequest, Usage
from comps.reranker.protocol import RerankRequest, RerankResult
from comps.retriever.protocol import RetrievalRequest, RetrievalResponse, RetrievedDocument
from megaservice.adapters import Question

FIRST_TOKEN_EVENT = "First Token Stream Event"  # what OpenInference's own instrumentations record
TTFT_MS = "chatqna.time_to_first_token_ms"  # on the CHAIN span: from the request's arrival
_JSON = Mime.JSON.value
_TEXT = Mime.TEXT.value
# The request fields that are the LLM's invocation parameters, and their gen_ai.* names where one exists.
_PARAMS: dict[str, str | None] = {
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
    """Writes the attributes of the gateway's spans; ``content`` allows the text of prompts, answers and passages."""

    def __init__(self, content: bool) -> None:
        self.content = content

    # -- the pipeline (the gateway's request span) ---------------------------------------------------------

    def chain(self, span: Span, pipeline: str, q: Question, request: Request) -> None:
        """The request's span is the pipeline: its user, pipeline, collection and (with content) question."""
        if not span.is_recording():
            return
        span.set_attribute(A.OPENINFERENCE_SPAN_KIND, Kind.CHAIN.value)
        span.set_attribute(A.METADATA, _dumps({"pipeline": pipeline, "collection": q.request.collection}))
        principal = getattr(request.state, "principal", None)
        if principal is not None:
            span.set_attribute(A.USER_ID, principal.user_id)
        if self.content:
            question = next((m.text() for m in reversed(q.chat) if m.role == "user"), "")
            span.set_attribute(A.INPUT_VALUE, question)
            span.set_attribute(A.INPUT_MIME_TYPE, _TEXT)

    def chain_answer(self, span: Span, answer: ChatCompletion | str | None) -> None:
        if isinstance(answer, ChatCompletion):
            answer = answer.choices[0].message.content if answer.choices else None
        if self.content and answer is not None and span.is_recording():
            span.set_attribute(A.OUTPUT_VALUE, answer)
            span.set_attribute(A.OUTPUT_MIME_TYPE, _TEXT)

    # -- the hops (called by the graph with the hop's request, its answer or None when it failed, and the
    # -- upstream answers) -----------------------------------------------------------------------------------

    def embedding(
        self, span: Span, request: EmbeddingRequest, answer: EmbeddingResponse | None, _: Mapping[str, Any]
    ) -> None:
        span.set_attribute(A.OPENINFERENCE_SPAN_KIND, Kind.EMBEDDING.value)
        span.set_attribute(G.GEN_AI_OPERATION_NAME, "embeddings")
        if self.content:
            texts = [request.input] if isinstance(request.input, str) else request.input
            for i, text in enumerate(texts):
                span.set_attribute(f"{A.EMBEDDING_EMBEDDINGS}.{i}.{Emb.EMBEDDING_TEXT}", text)
        if answer is not None:
            span.set_attribute(A.EMBEDDING_MODEL_NAME, answer.model)
            span.set_attribute(G.GEN_AI_RESPONSE_MODEL, answer.model)
            span.set_attribute(G.GEN_AI_USAGE_INPUT_TOKENS, answer.usage.prompt_tokens)

    def retriever(
        self, span: Span, request: RetrievalRequest, answer: RetrievalResponse | None, _: Mapping[str, Any]
    ) -> None:
        span.set_attribute(A.OPENINFERENCE_SPAN_KIND, Kind.RETRIEVER.value)
        span.set_attribute(G.GEN_AI_OPERATION_NAME, "retrieval")
        meta = {"collection": request.collection, "search_type": request.search_type, "k": request.k}
        span.set_attribute(A.METADATA, _dumps(meta if answer is None else {**meta, "collection": answer.collection}))
        if self.content and request.text is not None:
            span.set_attribute(A.INPUT_VALUE, request.text)
            span.set_attribute(A.INPUT_MIME_TYPE, _TEXT)
        for i, doc in enumerate(answer.documents if answer is not None else ()):
            self._document(span, f"{A.RETRIEVAL_DOCUMENTS}.{i}", doc, doc.score)

    def reranker(
        self, span: Span, request: RerankRequest, answer: list[RerankResult] | None, upstream: Mapping[str, Any]
    ) -> None:
        span.set_attribute(A.OPENINFERENCE_SPAN_KIND, Kind.RERANKER.value)
        span.set_attribute(G.GEN_AI_OPERATION_NAME, "rerank")
        if request.top_n is not None:
            span.set_attribute(Rerank.RERANKER_TOP_K, request.top_n)
        if self.content:
            span.set_attribute(Rerank.RERANKER_QUERY, request.query)
        retrieved = upstream.get("retriever")
        docs: Sequence[RetrievedDocument] = retrieved.documents if isinstance(retrieved, RetrievalResponse) else ()
        if len(docs) != len(request.texts):  # not the retriever's documents: no ids to name
            return
        for i, doc in enumerate(docs):
            self._document(span, f"{Rerank.RERANKER_INPUT_DOCUMENTS}.{i}", doc, doc.score)
        for i, result in enumerate(answer or ()):
            if 0 <= result.index < len(docs):
                self._document(span, f"{Rerank.RERANKER_OUTPUT_DOCUMENTS}.{i}", docs[result.index], result.score)

    def _document(self, span: Span, prefix: str, doc: RetrievedDocument, score: float) -> None:
        span.set_attribute(f"{prefix}.{Doc.DOCUMENT_ID}", doc.id)
        span.set_attribute(f"{prefix}.{Doc.DOCUMENT_SCORE}", score)
        span.set_attribute(f"{prefix}.{Doc.DOCUMENT_METADATA}", _dumps(doc.metadata.model_dump()))
        if self.content:
            span.set_attribute(f"{prefix}.{Doc.DOCUMENT_CONTENT}", doc.text)

    def llm(
        self, span: Span, request: ChatCompletionRequest, answer: ChatCompletion | None, _: Mapping[str, Any]
    ) -> None:
        """A whole (non-streamed) answer."""
        self.llm_request(span, request)
        if answer is None:
            return
        choice = answer.choices[0] if answer.choices else None
        self.llm_answer(
            span,
            model=answer.model,
            response_id=answer.id,
            usage=answer.usage,
            text=choice.message.content if choice else None,
            finish_reason=choice.finish_reason if choice else None,
        )

    def llm_request(self, span: Span, request: ChatCompletionRequest) -> None:
        span.set_attribute(A.OPENINFERENCE_SPAN_KIND, Kind.LLM.value)
        span.set_attribute(G.GEN_AI_OPERATION_NAME, "chat")
        params = {}
        for name, gen_ai in _PARAMS.items():
            value = getattr(request, name)
            if value is not None and name in request.model_fields_set:
                params[name] = value
                if gen_ai:
                    span.set_attribute(gen_ai, [value] if isinstance(value, str) and name == "stop" else value)
        span.set_attribute(A.LLM_INVOCATION_PARAMETERS, _dumps(params))
        if request.model:
            span.set_attribute(A.LLM_REQUEST_MODEL_NAME, request.model)
        if not self.content:
            return
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        for i, m in enumerate(messages):
            span.set_attribute(f"{A.LLM_INPUT_MESSAGES}.{i}.{Msg.MESSAGE_ROLE}", m["role"])
            span.set_attribute(f"{A.LLM_INPUT_MESSAGES}.{i}.{Msg.MESSAGE_CONTENT}", m["content"])
        as_json = _dumps({"messages": messages})
        span.set_attribute(A.INPUT_VALUE, as_json)
        span.set_attribute(A.INPUT_MIME_TYPE, _JSON)
        span.set_attribute(
            G.GEN_AI_INPUT_MESSAGES,
            _dumps([{"role": m["role"], "parts": [{"type": "text", "content": m["content"]}]} for m in messages]),
        )

    def llm_answer(
        self,
        span: Span,
        *,
        model: str | None,
        response_id: str | None,
        usage: Usage | None,
        text: str | None,
        finish_reason: str | None,
    ) -> None:
        if model:
            span.set_attribute(A.LLM_MODEL_NAME, model)
            span.set_attribute(A.LLM_RESPONSE_MODEL_NAME, model)
            span.set_attribute(G.GEN_AI_RESPONSE_MODEL, model)
        if response_id:
            span.set_attribute(G.GEN_AI_RESPONSE_ID, response_id)
        if finish_reason:
            span.set_attribute(A.LLM_FINISH_REASON, finish_reason)
            span.set_attribute(G.GEN_AI_RESPONSE_FINISH_REASONS, [finish_reason])
        if usage is not None:
            span.set_attribute(A.LLM_TOKEN_COUNT_PROMPT, usage.prompt_tokens)
            span.set_attribute(A.LLM_TOKEN_COUNT_COMPLETION, usage.completion_tokens)
            span.set_attribute(A.LLM_TOKEN_COUNT_TOTAL, usage.total_tokens)
            span.set_attribute(G.GEN_AI_USAGE_INPUT_TOKENS, usage.prompt_tokens)
            span.set_attribute(G.GEN_AI_USAGE_OUTPUT_TOKENS, usage.completion_tokens)
            cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else None
            if cached is not None:
                span.set_attribute(A.LLM_TOKEN_COUNT_PROMPT_DETAILS_CACHE_READ, cached)
                span.set_attribute(G.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, cached)
        if self.content and text is not None:
            span.set_attribute(f"{A.LLM_OUTPUT_MESSAGES}.0.{Msg.MESSAGE_ROLE}", "assistant")
            span.set_attribute(f"{A.LLM_OUTPUT_MESSAGES}.0.{Msg.MESSAGE_CONTENT}", text)
            span.set_attribute(A.OUTPUT_VALUE, text)
            span.set_attribute(A.OUTPUT_MIME_TYPE, _TEXT)
            out = {"role": "assistant", "parts": [{"type": "text", "content": text}], "finish_reason": finish_reason}
            span.set_attribute(G.GEN_AI_OUTPUT_MESSAGES, _dumps([out]))

    def stream(
        self, llm: Span, request: ChatCompletionRequest, chain: Span, arrived: float, called: float
    ) -> StreamTrace | None:
        """The recorder of a streamed answer (its request described now), or None when nothing is recorded."""
        if not (llm.is_recording() or chain.is_recording()):
            return None
        if llm.is_recording():
            self.llm_request(llm, request)
        return StreamTrace(self, llm, chain, arrived, called)


class StreamTrace:
    """Reads a streamed answer's events as they pass (only those it needs when no text is kept) and
    writes the answer's model, usage, finish reason, text and time to first token at its end."""

    def __init__(self, tracing: Tracing, llm: Span, chain: Span, arrived: float, called: float) -> None:
        self.tracing = tracing
        self.llm = llm
        self.chain = chain
        self.arrived = arrived
        self.called = called
        self.model: str | None = None
        self.response_id: str | None = None
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.parts: list[str] = []

    def first_token(self, now: float) -> None:
        self.llm.add_event(FIRST_TOKEN_EVENT)
        self.llm.set_attribute(G.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, now - self.called)
        self.chain.set_attribute(TTFT_MS, round((now - self.arrived) * 1000, 3))

    def event(self, data: bytes, chunk: object = None) -> None:
        """One event's data; ``chunk`` is it already parsed, when the relay did."""
        if chunk is None:
            if not (self.tracing.content or self.model is None or b'"usage"' in data or b'"finish_reason":"' in data):
                return
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                return
        if not isinstance(chunk, dict):
            return
        self.model = self.model or chunk.get("model")
        self.response_id = self.response_id or chunk.get("id")
        if isinstance(chunk.get("usage"), dict):
            self.usage = Usage.model_validate(chunk["usage"])
        for choice in chunk.get("choices") or ():
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            if self.tracing.content and (content := (choice.get("delta") or {}).get("content")):
                self.parts.append(content)

    def end(self) -> None:
        text = "".join(self.parts) if self.tracing.content else None
        self.tracing.llm_answer(
            self.llm,
            model=self.model,
            response_id=self.response_id,
            usage=self.usage,
            text=text,
            finish_reason=self.finish_reason,
        )
        self.tracing.chain_answer(self.chain, text)


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()
