"""The gateway's graph: declaration errors found at start-up (each naming what is valid), and the run order."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from megaservice.graph import Edge, Graph, GraphError, Node, Skip
from megaservice.pipelines import build_pipelines
from megaservice.settings import GatewaySettings

pytestmark = pytest.mark.unit


class Inp(BaseModel):
    text: str


class AReq(BaseModel):
    q: str


class AResp(BaseModel):
    a: int


class BReq(BaseModel):
    a: int


class BResp(BaseModel):
    b: int


class LReq(BaseModel):
    prompt: str


class LResp(BaseModel):
    answer: str


def a_node(name: str = "a") -> Node:
    return Node(name, "http://127.0.0.1:1", "/a", AReq, AResp, 1.0)


def b_node() -> Node:
    return Node("b", "http://127.0.0.1:2", "/b", BReq, BResp, 1.0)


def llm_node(name: str = "llm", streaming: bool = True) -> Node:
    return Node(name, "http://127.0.0.1:3", "/v1/chat/completions", LReq, LResp, 1.0, streaming=streaming)


def to_a(inp: Inp) -> AReq:
    return AReq(q=inp.text)


def to_b(inp: Inp, a: AResp) -> BReq:
    return BReq(a=a.a)


def to_llm(inp: Inp, b: BResp) -> LReq:
    return LReq(prompt=f"{inp.text} {b.b}")


def chain() -> Graph:
    return Graph("g", Inp, [a_node(), b_node(), llm_node()], [Edge("a", to_a), Edge("b", to_b), Edge("llm", to_llm)])


def test_a_valid_chain_is_ordered_and_ends_in_the_streaming_node() -> None:
    graph = chain()
    assert graph.order == ("a", "b", "llm")
    assert graph.terminal.name == "llm"


def test_a_cycle_is_refused_and_named() -> None:
    def a_from_b(inp: Inp, b: BResp) -> AReq:
        return AReq(q=str(b.b))

    with pytest.raises(GraphError) as err:
        Graph("g", Inp, [a_node(), b_node(), llm_node()], [Edge("a", a_from_b), Edge("b", to_b), Edge("llm", to_llm)])
    assert "cycle a -> b -> a" in str(err.value)


def test_an_edge_into_an_unknown_node_lists_the_nodes() -> None:
    with pytest.raises(GraphError) as err:
        Graph("g", Inp, [a_node(), b_node(), llm_node()], [Edge("a", to_a), Edge("bb", to_b), Edge("llm", to_llm)])
    assert str(err.value) == "graph g: an edge goes into 'bb', which is not a node; nodes are: a, b, llm"


def test_an_adapter_reading_an_unknown_node_lists_the_nodes() -> None:
    def to_llm_typo(inp: Inp, bee: BResp) -> LReq:
        return LReq(prompt="")

    with pytest.raises(GraphError) as err:
        Graph("g", Inp, [a_node(), b_node(), llm_node()], [Edge("a", to_a), Edge("b", to_b), Edge("llm", to_llm_typo)])
    assert "parameter 'bee' names no node" in str(err.value)
    assert str(err.value).endswith("nodes: a, b, llm")


def test_two_terminal_nodes_are_refused() -> None:
    def to_llm_from_a(inp: Inp, a: AResp) -> LReq:
        return LReq(prompt="")

    with pytest.raises(GraphError) as err:
        Graph(
            "g", Inp, [a_node(), b_node(), llm_node()], [Edge("a", to_a), Edge("b", to_b), Edge("llm", to_llm_from_a)]
        )
    assert "2 nodes end the graph (b, llm)" in str(err.value)


def test_the_terminal_must_be_the_streaming_node() -> None:
    with pytest.raises(GraphError) as err:
        Graph(
            "g",
            Inp,
            [a_node(), b_node(), llm_node(streaming=False)],
            [Edge("a", to_a), Edge("b", to_b), Edge("llm", to_llm)],
        )
    assert "the terminal node 'llm' is not a streaming node; streaming nodes are: (none)" in str(err.value)


def test_only_the_terminal_may_stream() -> None:
    streaming_a = Node("a", "http://127.0.0.1:1", "/a", AReq, AResp, 1.0, streaming=True)
    with pytest.raises(GraphError) as err:
        Graph("g", Inp, [streaming_a, b_node(), llm_node()], [Edge("a", to_a), Edge("b", to_b), Edge("llm", to_llm)])
    assert "only the terminal node 'llm' may stream, not a" in str(err.value)


def test_an_adapter_whose_parameter_type_does_not_match_the_node_answer_is_refused() -> None:
    def to_b_wrong(inp: Inp, a: BResp) -> BReq:
        return BReq(a=0)

    with pytest.raises(GraphError) as err:
        Graph("g", Inp, [a_node(), b_node(), llm_node()], [Edge("a", to_a), Edge("b", to_b_wrong), Edge("llm", to_llm)])
    assert str(err.value) == (
        "graph g: adapter 'to_b_wrong' into 'b': parameter 'a' is BResp, but node 'a' answers AResp"
    )


def test_an_adapter_returning_another_request_type_is_refused() -> None:
    def to_b_returns_a(inp: Inp, a: AResp) -> AReq:
        return AReq(q="")

    with pytest.raises(GraphError) as err:
        Graph(
            "g",
            Inp,
            [a_node(), b_node(), llm_node()],
            [Edge("a", to_a), Edge("b", to_b_returns_a), Edge("llm", to_llm)],
        )
    assert "returns AReq, but node 'b' takes BReq (or BReq | Skip)" in str(err.value)


def test_an_adapter_must_take_the_graph_input_first() -> None:
    def to_a_no_input(a: AResp) -> AReq:
        return AReq(q="")

    with pytest.raises(GraphError) as err:
        Graph("g", Inp, [a_node(), llm_node()], [Edge("a", to_a_no_input), Edge("llm", lambda inp: None)])
    assert "first parameter 'a' is AResp, but the graph input is Inp" in str(err.value)


def test_an_unannotated_adapter_is_refused() -> None:
    with pytest.raises(GraphError) as err:
        Graph("g", Inp, [llm_node()], [Edge("llm", lambda inp: None)])
    assert "parameter 'inp' has no type annotation" in str(err.value)


def test_every_node_needs_an_edge_and_only_one() -> None:
    with pytest.raises(GraphError) as err:
        Graph("g", Inp, [a_node(), b_node(), llm_node()], [Edge("a", to_a), Edge("llm", to_llm)])
    assert "no edge builds the request of b; edges exist into: a, llm" in str(err.value)
    with pytest.raises(GraphError) as err:
        Graph("g", Inp, [a_node(), llm_node()], [Edge("a", to_a), Edge("a", to_a), Edge("llm", to_llm)])
    assert "node 'a' has two edges" in str(err.value)


def test_duplicate_node_names_are_refused() -> None:
    with pytest.raises(GraphError, match="two nodes are named 'a'"):
        Graph("g", Inp, [a_node(), a_node(), llm_node()], [])


def test_an_adapter_may_skip_its_node() -> None:
    def maybe_b(inp: Inp, a: AResp) -> BReq | Skip[BResp]:
        return Skip(BResp(b=0)) if a.a == 0 else BReq(a=a.a)

    graph = Graph(
        "g", Inp, [a_node(), b_node(), llm_node()], [Edge("a", to_a), Edge("b", maybe_b), Edge("llm", to_llm)]
    )
    assert graph.order == ("a", "b", "llm")


def test_independent_nodes_run_concurrently(monkeypatch: pytest.MonkeyPatch) -> None:
    # a and b both read only the input; llm reads both: a and b must overlap.
    def b_from_input(inp: Inp) -> BReq:
        return BReq(a=1)

    def to_llm_both(inp: Inp, a: AResp, b: BResp) -> LReq:
        return LReq(prompt=f"{a.a}{b.b}")

    graph = Graph(
        "g", Inp, [a_node(), b_node(), llm_node()], [Edge("a", to_a), Edge("b", b_from_input), Edge("llm", to_llm_both)]
    )
    running: list[str] = []
    overlap: list[set[str]] = []

    async def fake_send(http: object, step: object, request: BaseModel, upstream: object = None) -> BaseModel:
        name = step.node.name  # type: ignore[attr-defined]
        running.append(name)
        overlap.append(set(running))
        await asyncio.sleep(0.05)
        running.remove(name)
        return AResp(a=7) if name == "a" else BResp(b=8)

    monkeypatch.setattr(graph, "_send", fake_send)
    answers, request = asyncio.run(graph.prepare(None, Inp(text="x")))  # type: ignore[arg-type]
    assert {"a", "b"} in overlap
    assert request == LReq(prompt="78")
    assert answers == {"a": AResp(a=7), "b": BResp(b=8)}


def test_the_chatqna_pipelines_validate() -> None:
    pipelines = build_pipelines(GatewaySettings(auth_enabled=False))
    assert pipelines["rag-rerank"].graph.order == ("embedding", "retriever", "reranker", "llm")
    assert pipelines["rag"].graph.order == ("embedding", "retriever", "llm")
    assert pipelines["llm-only"].graph.order == ("llm",)
