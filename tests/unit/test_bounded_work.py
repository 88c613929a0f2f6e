"""Every queue and every read has a bound (issue 12, defect 6): the reranker's queue answers 429 past
its bound like embedding and LLM; upstream answers and stop strings are capped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from pydantic import ValidationError

from comps.core.errors import Overloaded, UpstreamError
from comps.core.http import HttpClient
from comps.llm.protocol import MAX_STOP_CHARS, ChatCompletionRequest
from comps.reranker.service import RerankerService
from comps.reranker.settings import RerankerSettings

pytestmark = pytest.mark.unit


class GatedReranker:
    """Scores only when the gate opens, so requests pile up deterministically."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def score(self, query: str, texts: list[str], *, truncate: bool, raw: bool) -> list[float]:
        self.entered.set()
        await self.gate.wait()
        return [float(len(t)) for t in texts]


def test_reranker_queue_is_bounded_with_retry_after() -> None:
    async def run() -> tuple[Overloaded, list[list[tuple[int, float]]], int]:
        service = RerankerService(RerankerSettings(max_queue=10, max_texts=8))
        backend = GatedReranker()

        def call(n: int) -> asyncio.Task[list[tuple[int, float]]]:
            texts = ["x" * (i + 1) for i in range(n)]
            return asyncio.create_task(
                service.ranked(backend, "q", texts, top_n=None, raw=False, truncate=True, param="texts")
            )

        first = call(6)
        await backend.entered.wait()
        second = call(4)  # 10 in all: still within the bound
        for _ in range(5):
            await asyncio.sleep(0)
        with pytest.raises(Overloaded) as err:
            await service.ranked(backend, "q", ["y"], top_n=None, raw=False, truncate=True, param="texts")
        backend.gate.set()
        done = await asyncio.gather(first, second)
        return err.value, done, service.queued

    err, done, left = asyncio.run(run())
    assert err.status_code == 429 and int(err.headers["Retry-After"]) >= 1
    assert [len(d) for d in done] == [6, 4]
    assert left == 0


def test_one_request_larger_than_the_queue_still_runs_when_idle() -> None:
    async def run() -> int:
        service = RerankerService(RerankerSettings(max_queue=2, max_texts=8))
        backend = GatedReranker()
        backend.gate.set()
        ranked = await service.ranked(backend, "q", ["a", "b", "c"], top_n=None, raw=False, truncate=True, param="t")
        return len(ranked)

    assert asyncio.run(run()) == 3


async def _serve(handler: object) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("chunked", [False, True])
def test_upstream_json_answers_are_capped(chunked: bool) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=b"[" + b"1," * 5000 + b"1]", content_type="application/json")
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"[")
        for _ in range(100):
            await resp.write(b"1," * 100)
        await resp.write(b"1]")
        return resp

    async def run() -> str:
        http = HttpClient()
        await http.start()
        try:
            async for url in _serve(big):
                with pytest.raises(UpstreamError) as err:
                    await http.request_json("GET", url, node="big", timeout_s=30, max_bytes=1000)
                assert await http.request_json("GET", url, node="big", timeout_s=30) is not None
                return err.value.message
        finally:
            await http.close()
        raise AssertionError("not served")

    message = asyncio.run(run())
    assert message.startswith("big answered") and "limit of 1000" in message


def test_stop_strings_are_capped() -> None:
    ok = {"messages": [{"role": "user", "content": "x"}], "stop": ["a" * MAX_STOP_CHARS]}
    assert ChatCompletionRequest.model_validate(ok).stop_list() == ["a" * MAX_STOP_CHARS]
    for stop in ("a" * (MAX_STOP_CHARS + 1), ["b", "a" * (MAX_STOP_CHARS + 1)]):
        with pytest.raises(ValidationError, match=f"longer than {MAX_STOP_CHARS} characters"):
            ChatCompletionRequest.model_validate({**ok, "stop": stop})
