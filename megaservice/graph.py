"""A typed DAG of remote services, declared as data and validated when it is built.

- A `Node` is one remote service call: base URL, endpoint, request and response types, timeouts.
- An `Edge` builds a node's request with one small adapter function. The adapter's first parameter is
  the graph's input; each further parameter is named after an upstream node and receives that node's
  (typed) answer. So the edges of the graph are the adapters' parameters, and every hop's types are
  checked at start-up against the nodes' models, not discovered at run time.
- Exactly one node ends the graph: the streaming terminal (the LLM). `Graph.prepare` runs every other
  node (each as soon as its inputs are there, independent ones concurrently) and returns the
  terminal's request; the caller then sends it as a stream or not (`Graph.call_terminal`,
  `Graph.open_stream`).

Every hop is timed (histogram per node), counted when it fails (per node and kind), traced (a span per
node under the request's span, described by the node's ``describe`` hook: `megaservice.tracing`) and its status
checked by the kit's HttpClient: a failure is an `UpstreamError` naming the node (503 unreachable/not ready,
504 timeout, 502 bad answer, the upstream's own 4xx passed through).
"""

from __future__ import annotations

import asyncio
import inspect
import time
import types
import typing
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiohttp
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, TypeAdapter, ValidationError

from comps.core.errors import ConfigError, ServiceError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from comps.core.http import MODEL_HEADER, HttpClient
from comps.core.observability import tracer

T = TypeVar("T")

NODE_LATENCY = Histogram(
    "chatqna_gateway_node_duration_seconds",
    "Time of one hop: request sent to answer read (for a stream: to its response headers)",
    ["node"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
NODE_ERRORS = Counter(
    "chatqna_gateway_node_errors_total",
    "Failed hops by node and kind (unavailable, timeout, upstream_error, client_error, bad_answer, stream_error)",
    ["node", "kind"],
)


class GraphError(ConfigError):
    """The graph declaration is invalid; the message says what is wrong and what would be valid."""


@dataclass(frozen=True)
class Skip(Generic[T]):
    """Returned by an adapter instead of a request: do not call the node; ``output`` stands for its answer."""

    output: T


@dataclass(frozen=True)
class Node:
    """One remote service call."""

    name: str
    url: str
    endpoint: str
    request: type[BaseModel]
    response: Any  # a pydantic model, or a type pydantic validates (e.g. list[RerankResult])
    timeout_s: float
    read_timeout_s: float | None = None  # streaming only: longest wait between two events
    streaming: bool = False
    ready_path: str = "/v1/ready"
    # Called with the hop's span (when recorded), request, validated answer (None: failed), upstream answers
    # and the model the answer's `MODEL_HEADER` names (None: not said).
    describe: Callable[[Span, Any, Any, Mapping[str, Any], str | None], None] | None = field(
        default=None, compare=False
    )

    @property
    def target(self) -> str:
        return self.url.rstrip("/") + self.endpoint


@dataclass(frozen=True)
class Edge:
    """Builds the request of node ``into`` from the graph's input and upstream answers (see module doc)."""

    into: str
    adapter: Callable[..., Any]


@dataclass(frozen=True)
class _Step:
    node: Node
    adapter: Callable[..., Any]
    sources: tuple[str, ...]  # upstream nodes, in the adapter's parameter order
    answer: TypeAdapter[Any] = field(compare=False)
    latency: Any = field(compare=False)  # this node's child of NODE_LATENCY


class BadAnswer(UpstreamError):
    """A service answered 2xx with a body that does not match its node's response model."""


class Graph:
    """A validated DAG; build once at start-up, run once per request."""

    def __init__(self, name: str, input_type: type, nodes: Sequence[Node], edges: Sequence[Edge]) -> None:
        self.name = name
        self.input_type = input_type
        self.nodes: dict[str, Node] = {}
        for node in nodes:
            if node.name in self.nodes:
                raise GraphError(f"graph {name}: two nodes are named {node.name!r}; node names must be unique")
            self.nodes[node.name] = node
        self._steps = self._bind(edges)
        self.order = self._topological()
        self.terminal = self._terminal()
        self._prefix = [self._steps[n] for n in self.order if n != self.terminal.name]
        # A chain (each node reads only the one before it) runs inline: nothing could overlap.
        self._chain = all(
            step.sources == ((self._prefix[i - 1].node.name,) if i else ()) for i, step in enumerate(self._prefix)
        )

    # -- validation ---------------------------------------------------------------------------------

    def _bind(self, edges: Sequence[Edge]) -> dict[str, _Step]:
        steps: dict[str, _Step] = {}
        for edge in edges:
            if edge.into not in self.nodes:
                raise GraphError(
                    f"graph {self.name}: an edge goes into {edge.into!r}, which is not a node; "
                    f"nodes are: {self._valid()}"
                )
            if edge.into in steps:
                raise GraphError(f"graph {self.name}: node {edge.into!r} has two edges; give each node one adapter")
            node = self.nodes[edge.into]
            where = f"graph {self.name}: adapter {_fn_name(edge.adapter)} into {node.name!r}"
            sources, hints = self._check_params(edge.adapter, where, node.name)
            returned = hints.get("return")
            if not _returns(returned, node.request):
                raise GraphError(
                    f"{where}: returns {_name(returned)}, but node {node.name!r} takes {_name(node.request)} "
                    f"(or {_name(node.request)} | Skip)"
                )
            steps[edge.into] = _Step(
                node, edge.adapter, sources, TypeAdapter(node.response), NODE_LATENCY.labels(node.name)
            )
        missing = [n for n in self.nodes if n not in steps]
        if missing:
            raise GraphError(
                f"graph {self.name}: no edge builds the request of {', '.join(missing)}; "
                f"edges exist into: {', '.join(steps) or '(none)'}"
            )
        return steps

    def _check_params(
        self, fn: Callable[..., Any], where: str, into: str | None = None
    ) -> tuple[tuple[str, ...], dict[str, Any]]:
        """The upstream nodes ``fn`` reads; its first parameter must be the graph input, the others
        named after nodes and annotated with their response types."""
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:  # an annotation that does not resolve
            raise GraphError(f"{where}: its annotations do not resolve: {exc}") from None
        params = list(inspect.signature(fn).parameters.values())
        if not params:
            raise GraphError(
                f"{where}: takes no parameters; the first must be the graph input ({_name(self.input_type)})"
            )
        for p in params:
            if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                raise GraphError(f"{where}: parameter {p.name!r} must be a plain positional parameter")
            if p.name not in hints:
                raise GraphError(f"{where}: parameter {p.name!r} has no type annotation")
        first = params[0]
        if hints[first.name] is not self.input_type:
            raise GraphError(
                f"{where}: first parameter {first.name!r} is {_name(hints[first.name])}, "
                f"but the graph input is {_name(self.input_type)}"
            )
        sources = []
        for p in params[1:]:
            if p.name not in self.nodes:
                raise GraphError(
                    f"{where}: parameter {p.name!r} names no node; the parameters after the input must be "
                    f"named after nodes: {self._valid()}"
                )
            if p.name == into:
                raise GraphError(f"{where}: reads its own node's answer (cycle {into} -> {into})")
            want = self.nodes[p.name].response
            if hints[p.name] != want:
                raise GraphError(
                    f"{where}: parameter {p.name!r} is {_name(hints[p.name])}, "
                    f"but node {p.name!r} answers {_name(want)}"
                )
            sources.append(p.name)
        return tuple(sources), hints

    def _valid(self) -> str:
        return ", ".join(self.nodes) or "(none)"

    def _topological(self) -> tuple[str, ...]:
        order: list[str] = []
        state: dict[str, int] = {}  # 1: on the current path, 2: done

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = path[path.index(name) :]
                raise GraphError(f"graph {self.name}: cycle {' -> '.join(cycle)}; a graph must be acyclic")
            state[name] = 1
            for src in self._steps[name].sources:
                visit(src, [*path, src])
            state[name] = 2
            order.append(name)

        for name in self.nodes:
            visit(name, [name])
        return tuple(order)

    def _terminal(self) -> Node:
        consumed = {src for step in self._steps.values() for src in step.sources}
        ends = [n for n in self.nodes if n not in consumed]
        streaming = [n.name for n in self.nodes.values() if n.streaming]
        if len(ends) != 1:
            raise GraphError(
                f"graph {self.name}: {len(ends)} nodes end the graph ({', '.join(ends) or 'none'}); exactly one "
                f"streaming node must end it and every other node must feed an adapter"
            )
        end = self.nodes[ends[0]]
        if not end.streaming:
            raise GraphError(
                f"graph {self.name}: the terminal node {end.name!r} is not a streaming node; "
                f"streaming nodes are: {', '.join(streaming) or '(none)'}"
            )
        if len(streaming) > 1:
            others = ", ".join(n for n in streaming if n != end.name)
            raise GraphError(f"graph {self.name}: only the terminal node {end.name!r} may stream, not {others}")
        return end

    # -- running ------------------------------------------------------------------------------------

    def reader(self, fn: Callable[..., T]) -> Callable[[Any, Mapping[str, Any]], T]:
        """Check ``fn`` like an adapter (input first, then nodes' answers by name); return a caller
        ``(input, answers) -> fn(input, *answers it names)``."""
        sources, _ = self._check_params(fn, f"graph {self.name}: {_fn_name(fn)}")
        return lambda inp, answers: fn(inp, *(answers[s] for s in sources))

    async def prepare(self, http: HttpClient, inp: Any) -> tuple[dict[str, Any], BaseModel]:
        """Run every node but the terminal; returns their answers and the terminal's request."""
        answers = await self.run_prefix(http, inp)
        return answers, self.terminal_request(inp, answers)

    async def run_prefix(self, http: HttpClient, inp: Any) -> dict[str, Any]:
        """Run every node but the terminal; returns their answers."""
        if self._chain:
            answers: dict[str, Any] = {}
            for step in self._prefix:
                answers[step.node.name] = await self._step(http, step, inp, answers)
            return answers
        return await self._run_concurrently(http, inp)

    def terminal_request(self, inp: Any, answers: Mapping[str, Any]) -> Any:
        """The terminal's request from the input and the other nodes' answers."""
        return self._build(self._steps[self.terminal.name], inp, answers)

    @staticmethod
    def _build(step: _Step, inp: Any, answers: Mapping[str, Any]) -> Any:
        try:
            return step.adapter(inp, *(answers[s] for s in step.sources))
        except ValidationError as exc:  # an adapter bug, not the client's nor the service's fault
            raise ServiceError(
                f"the request for {step.node.name} could not be built: {_first_error(exc)}", code=step.node.name
            ) from None

    async def _run_concurrently(self, http: HttpClient, inp: Any) -> dict[str, Any]:
        """Each node starts as soon as the nodes it reads have answered."""
        tasks: dict[str, asyncio.Task[Any]] = {}

        async def run(step: _Step) -> Any:
            answers = {src: await tasks[src] for src in step.sources}
            return await self._step(http, step, inp, answers)

        for step in self._prefix:  # topological order: a task's inputs exist before it runs
            tasks[step.node.name] = asyncio.create_task(run(step), name=f"node-{step.node.name}")
        try:
            await asyncio.gather(*tasks.values())
        except BaseException:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            raise
        return {name: task.result() for name, task in tasks.items()}

    async def _step(self, http: HttpClient, step: _Step, inp: Any, answers: Mapping[str, Any]) -> Any:
        request = self._build(step, inp, answers)
        if isinstance(request, Skip):
            return request.output
        return await self._send(http, step, request, answers)

    async def call_terminal(self, http: HttpClient, request: BaseModel) -> Any:
        """Send the terminal's request without streaming; returns its validated answer."""
        return await self._send(http, self._steps[self.terminal.name], request)

    async def _send(
        self, http: HttpClient, step: _Step, request: BaseModel, upstream: Mapping[str, Any] | None = None
    ) -> Any:
        node = step.node
        body = request.__pydantic_serializer__.to_json(request, exclude_unset=True, exclude_none=True)
        started = time.perf_counter()
        with tracer().start_as_current_span(f"node {node.name}") as span:
            try:
                try:
                    async with asyncio.timeout(node.timeout_s):  # the whole hop, answer body included
                        async with http.stream(
                            "POST", node.target, node=node.name, timeout_s=node.timeout_s, content=body
                        ) as resp:
                            raw = await resp.read()
                            model = resp.headers.get(MODEL_HEADER)
                except TimeoutError:
                    raise UpstreamTimeout(
                        f"{node.name} did not answer within {node.timeout_s:g}s", node=node.name
                    ) from None
                try:
                    answer = step.answer.validate_json(raw)
                except ValidationError as exc:
                    raise BadAnswer(
                        f"{node.name} answered with an unexpected body: {_first_error(exc)}", node=node.name
                    ) from None
                if node.describe is not None and span.is_recording():
                    node.describe(span, request, answer, upstream or {}, model)
                return answer
            except ServiceError as exc:
                count_error(node.name, exc)
                _mark_failed(span, exc)
                if node.describe is not None and span.is_recording():
                    node.describe(span, request, None, upstream or {}, None)
                raise
            finally:
                step.latency.observe(time.perf_counter() - started)

    @asynccontextmanager
    async def open_stream(
        self, http: HttpClient, request: BaseModel
    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, Span]]:
        """Open the terminal's stream; its status is checked (errors raised) before the caller reads it.
        Yields the response and the hop's span (ended when the block ends: the caller describes the answer).

        The block may end in another task than it began (a streaming response), so the node's span is
        made current only while the request is sent. Leaving the block before the stream's end closes
        the connection, which aborts the generation upstream."""
        node = self.terminal
        body = request.__pydantic_serializer__.to_json(request, exclude_unset=True, exclude_none=True)
        span = tracer().start_span(f"node {node.name}")
        started = time.perf_counter()
        try:
            async with AsyncExitStack() as stack:
                with trace.use_span(span, end_on_exit=False):
                    resp = await stack.enter_async_context(
                        http.stream(
                            "POST",
                            node.target,
                            node=node.name,
                            timeout_s=node.timeout_s,
                            read_timeout_s=node.read_timeout_s,
                            content=body,
                        )
                    )
                self._steps[node.name].latency.observe(time.perf_counter() - started)
                try:
                    yield resp, span
                finally:
                    if not resp.content.at_eof():
                        resp.close()  # a half-read stream is not pooled: closing it stops the generation
        except ServiceError as exc:
            count_error(node.name, exc)
            _mark_failed(span, exc)
            raise
        finally:
            span.end()


def _mark_failed(span: Span, exc: ServiceError) -> None:
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, exc.message))


def count_error(node: str, exc: ServiceError) -> None:
    NODE_ERRORS.labels(node, error_kind(exc)).inc()


def error_kind(exc: ServiceError) -> str:
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamUnavailable):
        return "unavailable"
    if isinstance(exc, BadAnswer):
        return "bad_answer"
    if 400 <= exc.status_code < 500:
        return "client_error"
    return "upstream_error"


def _returns(annotation: Any, request: type) -> bool:
    """``request``, or ``request | Skip`` (Skip possibly parametrized)."""
    if annotation is request:
        return True
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return False
    args = typing.get_args(annotation)
    return len(args) == 2 and request in args and any(a is Skip or typing.get_origin(a) is Skip for a in args)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
    return f"{loc}: {err.get('msg')}"


def _fn_name(fn: Callable[..., Any]) -> str:
    return repr(getattr(fn, "__name__", fn))


def _name(tp: Any) -> str:
    if tp is None:
        return "no annotation"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("megaservice.graph.", "")
