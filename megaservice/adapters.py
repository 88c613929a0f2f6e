"""The edges of ChatQnA's graphs: one small typed function per hop, and the passages each variant uses.

Each adapter takes the request's `Question` and, by parameter name, the answers of the nodes it reads
(``embedding``, ``retriever``, ``reranker``), and returns the next node's request; the graph checks these
annotations against the nodes' models at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from comps.embedding.protocol import EmbeddingRequest, EmbeddingResponse
from comps.llm.protocol import ChatCompletionRequest, StreamOptions
from comps.reranker.protocol import RerankRequest, RerankResult
from comps.retriever.protocol import RetrievalRequest, RetrievalResponse, RetrievedDocument
from megaservice.graph import BadAnswer, Skip
from megaservice.prompt import Passage, plain_messages, rag_messages, retrieval_query, within_budget
from megaservice.protocol import ChatQnARequest, ContextPassage, Message
from megaservice.settings import GatewaySettings

# The request fields passed to the LLM as they are, when set.
_LLM_FIELDS = (
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "presence_penalty",
    "frequency_penalty",
    "stop",
    "seed",
    "repetition_penalty",
    "stop_on_repetition",
)


@dataclass(frozen=True, slots=True)
class RagDefaults:
    """What an answer grounded in passages gets where the request says nothing (the gateway's settings);
    left as ``None``, the LLM's own default applies."""

    temperature: float | None = None
    max_tokens: int | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    passage_tokens: int | None = None  # None: no budget
    rerank_min_score: float | None = None

    @classmethod
    def of(cls, settings: GatewaySettings) -> RagDefaults:
        return cls(
            temperature=settings.rag_temperature,
            max_tokens=settings.rag_max_tokens,
            repetition_penalty=settings.rag_repetition_penalty,
            stop=tuple(settings.rag_stop),
            passage_tokens=settings.passage_tokens,
            rerank_min_score=settings.rerank_min_score,
        )


@dataclass(frozen=True, slots=True)
class Question:
    """The graph's input: the request, its conversation, the retrieval query and the caller's passages."""

    request: ChatQnARequest
    chat: list[Message]
    query: str
    given: list[Passage]  # the request's ``context``
    retrieves: bool  # False for llm-only
    rag: RagDefaults = RagDefaults()  # used for a RAG answer where the request says nothing

    @classmethod
    def of(cls, request: ChatQnARequest, *, retrieves: bool, rag: RagDefaults | None = None) -> Question:
        chat = request.chat()
        return cls(request, chat, retrieval_query(chat), caller_passages(request.context), retrieves,
                   rag or RagDefaults())  # fmt: skip

    def budgeted(self, passages: list[Passage]) -> list[Passage]:
        """The passages that fit the prompt's budget (the request's, else the gateway's), best first."""
        budget = self.request.passage_tokens or self.rag.passage_tokens
        return within_budget(passages, budget) if budget else passages


def caller_passages(context: list[str | ContextPassage] | None) -> list[Passage]:
    passages = []
    for n, item in enumerate(context or ()):
        text, source = (item, None) if isinstance(item, str) else (item.text, item.source)
        if text.strip():
            passages.append(Passage(id=f"context-{n}", text=text, source=source or "request"))
    return passages


# -- adapters ---------------------------------------------------------------------------------------


def embed_query(q: Question) -> EmbeddingRequest:
    return EmbeddingRequest(input=q.query)


def retrieve(q: Question, embedding: EmbeddingResponse) -> RetrievalRequest:
    data = embedding.data
    if len(data) != 1 or not isinstance(data[0].embedding, list):
        raise BadAnswer("embedding answered without exactly one float vector", node="embedding")
    # Built without validation: every value is already validated (the options are the retriever's own, checked
    # in the request; the vector comes from a validated answer), and re-checking 384 floats in Python costs more.
    return RetrievalRequest.model_construct(text=q.query, embedding=data[0].embedding, **q.request.retrieval_options())


def rerank(q: Question, retriever: RetrievalResponse) -> RerankRequest | Skip[list[RerankResult]]:
    if not retriever.documents:
        return Skip([])
    return RerankRequest(query=q.query, texts=[d.text for d in retriever.documents], top_n=q.request.top_n)


def ask_reranked(q: Question, retriever: RetrievalResponse, reranker: list[RerankResult]) -> ChatCompletionRequest:
    return chat_request(q, reranked_passages(q, retriever, reranker))


def ask_retrieved(q: Question, retriever: RetrievalResponse) -> ChatCompletionRequest:
    return chat_request(q, retrieved_passages(q, retriever))


def ask_directly(q: Question) -> ChatCompletionRequest:
    return chat_request(q, given_passages(q))


# -- passages (what each variant hands the LLM, and reports as sources) -----------------------------


def reranked_passages(q: Question, retriever: RetrievalResponse, reranker: list[RerankResult]) -> list[Passage]:
    """The reranker's best ``top_n``, less those under the relevance floor (never the best one)."""
    docs = retriever.documents
    floor = _first(q.request.rerank_min_score, q.rag.rerank_min_score)
    kept: list[Passage] = []
    for result in reranker[: q.request.top_n]:
        if not 0 <= result.index < len(docs):
            raise BadAnswer(f"reranker answered index {result.index} for {len(docs)} texts", node="reranker")
        if kept and floor is not None and result.score < floor:
            break  # best first: the rest are lower still
        kept.append(_passage(docs[result.index], result.score))
    return q.budgeted(q.given + kept)


def retrieved_passages(q: Question, retriever: RetrievalResponse) -> list[Passage]:
    return q.budgeted(q.given + [_passage(d, d.score) for d in retriever.documents])


def given_passages(q: Question) -> list[Passage]:
    return q.budgeted(q.given)


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _passage(doc: RetrievedDocument, score: float) -> Passage:
    m = doc.metadata
    return Passage(id=doc.id, text=doc.text, source=m.source, doc_id=m.doc_id, page=m.page, score=score)


def chat_request(q: Question, passages: list[Passage]) -> ChatCompletionRequest:
    """The LLM request: the RAG prompt when anything was retrieved or given, else the plain conversation."""
    r = q.request
    rag = q.retrieves or passages
    fields = {name: value for name in _LLM_FIELDS if (value := getattr(r, name)) is not None}
    if rag:
        d = q.rag
        defaults = {"temperature": d.temperature, "repetition_penalty": d.repetition_penalty,
                    "stop": list(d.stop) or None}  # fmt: skip
        if r.max_tokens is None and r.max_completion_tokens is None:
            defaults["max_tokens"] = d.max_tokens
        for name, value in defaults.items():
            if name not in fields and value is not None:
                fields[name] = value
    if r.stream:
        fields["stream"] = True
        # Always: the trace records the answer's usage; the relay drops it unless the client asked for it.
        fields["stream_options"] = StreamOptions(include_usage=True)
    messages = rag_messages(q.chat, passages, r.chat_template) if rag else plain_messages(q.chat)
    return ChatCompletionRequest(messages=messages, **fields)
