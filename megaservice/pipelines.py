"""ChatQnA's graph variants, declared as data from the settings and validated at start-up.

=========== =========================================== ==============================================
rag-rerank  embedding -> retriever -> reranker -> llm  k passages retrieved, the reranker keeps top_n
rag         embedding -> retriever -> llm              the k retrieved passages go to the LLM
llm-only    llm                                        no retrieval; caller ``context`` is still used
=========== =========================================== ==============================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from comps.embedding.protocol import EmbeddingRequest, EmbeddingResponse
from comps.llm.protocol import ChatCompletion, ChatCompletionRequest
from comps.reranker.protocol import RerankRequest, RerankResult
from comps.retriever.protocol import RetrievalRequest, RetrievalResponse
from megaservice import adapters as a
from megaservice.graph import Edge, Graph, Node
from megaservice.prompt import Passage
from megaservice.settings import GatewaySettings
from megaservice.tracing import Tracing


@dataclass(frozen=True)
class Pipeline:
    """A graph, and the reader of its answers that names the passages the LLM got (the sources)."""

    name: str
    graph: Graph
    passages: Callable[[a.Question, Mapping[str, Any]], list[Passage]]


def nodes(s: GatewaySettings, llm_url: str | None = None) -> dict[str, Node]:
    """The services of the graphs; ``llm_url``: the LLM of one model (default: GATEWAY_LLM_URL)."""
    t = Tracing(s.trace_content)
    return {
        "embedding": Node(
            "embedding",
            s.embedding_url,
            "/v1/embeddings",
            EmbeddingRequest,
            EmbeddingResponse,
            s.embedding_timeout_s,
            describe=t.embedding,
        ),
        "retriever": Node(
            "retriever",
            s.retriever_url,
            "/v1/retrieval",
            RetrievalRequest,
            RetrievalResponse,
            s.retriever_timeout_s,
            describe=t.retriever,
        ),
        "reranker": Node(
            "reranker",
            s.reranker_url,
            "/rerank",
            RerankRequest,
            list[RerankResult],
            s.reranker_timeout_s,
            describe=t.reranker,
        ),
        "llm": Node(
            "llm",
            llm_url or s.llm_url,
            "/v1/chat/completions",
            ChatCompletionRequest,
            ChatCompletion,
            s.llm_timeout_s,
            read_timeout_s=s.llm_read_timeout_s,
            streaming=True,
            describe=t.llm,
        ),
    }


def build_pipelines(s: GatewaySettings, llm_url: str | None = None) -> dict[str, Pipeline]:
    n = nodes(s, llm_url)

    def pipeline(name: str, used: list[str], edges: list[Edge], passages: Callable[..., list[Passage]]) -> Pipeline:
        graph = Graph(name, a.Question, [n[u] for u in used], edges)
        return Pipeline(name, graph, graph.reader(passages))

    return {
        "rag-rerank": pipeline(
            "rag-rerank",
            ["embedding", "retriever", "reranker", "llm"],
            [
                Edge("embedding", a.embed_query),
                Edge("retriever", a.retrieve),
                Edge("reranker", a.rerank),
                Edge("llm", a.ask_reranked),
            ],
            a.reranked_passages,
        ),
        "rag": pipeline(
            "rag",
            ["embedding", "retriever", "llm"],
            [Edge("embedding", a.embed_query), Edge("retriever", a.retrieve), Edge("llm", a.ask_retrieved)],
            a.retrieved_passages,
        ),
        "llm-only": pipeline("llm-only", ["llm"], [Edge("llm", a.ask_directly)], a.given_passages),
    }
