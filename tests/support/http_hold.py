"""An HTTP relay on 127.0.0.1 in front of one service that records each request it passes and can hold the next
request that matches (until the test lets it go): a slow write, made by the test, with no hook in the product."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import aiohttp
from aiohttp import web

from comps.runtime.process import free_port

Match = Callable[[str, str], bool]  # (method, path) -> held?


class HoldingProxy:
    def __init__(self, target_url: str) -> None:
        self.target = target_url.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request, in order of arrival
        self._changed = threading.Condition()
        self._hold: Match | None = None
        self._held = threading.Event()  # the held request has arrived
        self._release = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="holding-proxy", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> HoldingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        self._release.set()
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def hold_next(self, match: Match) -> None:
        """Hold the next request that matches until `release` (later ones pass)."""
        self._held.clear()
        self._release.clear()
        self._hold = match

    def wait_held(self, timeout_s: float = 30.0) -> None:
        assert self._held.wait(timeout_s), "the request to hold never came"

    def release(self) -> None:
        self._release.set()

    def wait_seen(self, match: Match, *, after: int = 0, timeout_s: float = 30.0) -> None:
        """Until a request that matches has arrived (after the first ``after`` requests)."""
        with self._changed:
            came = self._changed.wait_for(lambda: any(match(m, p) for m, p in self.seen[after:]), timeout_s)
            assert came, "the request never came"

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        with self._changed:
            self.seen.append((request.method, request.path))
            self._changed.notify_all()
        if self._hold is not None and self._hold(request.method, request.path):
            self._hold = None
            self._held.set()
            await asyncio.to_thread(self._release.wait)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        assert self._session is not None
        async with self._session.request(
            request.method, self.target + request.path_qs, data=body or None, headers=headers
        ) as resp:
            content = await resp.read()
            kept = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type",)}
            return web.Response(body=content, status=resp.status, headers=kept)
