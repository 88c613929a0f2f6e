"""One shared aiohttp session per process for calls to other services, with explicit timeouts.

Errors are mapped here, once, to the kit's upstream exceptions naming the service that failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
from pydantic import SecretStr

from comps.core.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from comps.core.observability import outgoing_headers

T = TypeVar("T")

MAX_JSON_BYTES = 64 * 1024 * 1024  # most bytes of one JSON answer read into memory (a full embedding batch fits)
ERROR_BODY_BYTES = 8192  # what is read of an upstream error answer
MODEL_HEADER = "x-chatqna-model"  # names the model that made an answer whose body cannot (TEI's /rerank list)
KEEPALIVE_S = 15  # an idle pooled connection is closed by the client after this; servers keep theirs longer


class HttpClient:
    """Owns the process's aiohttp session; created in the app's lifespan, closed with it."""

    def __init__(self, *, connect_timeout_s: float = 5.0, pool_size: int = 512) -> None:
        self.default_headers: dict[str, str] = {}  # sent with every call (e.g. the mesh's internal token)
        self._connect_timeout_s = connect_timeout_s
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, limit_per_host=self._pool_size, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE_S
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout_s),
                json_serialize=lambda o: json.dumps(o, ensure_ascii=False),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("HttpClient used before start()")
        return self._session

    async def request_json(
        self,
        method: str,
        url: str,
        *,
        node: str,
        timeout_s: float,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        max_bytes: int = MAX_JSON_BYTES,
    ) -> Any:
        """Send one request and return the decoded JSON body (at most ``max_bytes``); any failure names
        ``node``."""
        async with self.stream(
            method, url, node=node, timeout_s=timeout_s, json_body=json_body, headers=headers, content=content
        ) as resp:
            try:
                return await asyncio.wait_for(read_json(resp, node, max_bytes), timeout_s)
            except TimeoutError as exc:
                raise UpstreamTimeout(f"{node} did not finish its answer within {timeout_s:g}s", node=node) from exc

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        node: str,
        timeout_s: float,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        read_timeout_s: float | None = None,
        content: bytes | aiohttp.FormData | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a request whose 2xx response the caller reads (e.g. a stream).

        ``timeout_s`` bounds the time until the response headers; ``read_timeout_s`` bounds each
        read after that (default: the same). ``content`` is a JSON body already encoded (instead of
        ``json_body``), for callers that serialize with pydantic or orjson, or a multipart form (streamed).
        """
        hdrs = outgoing_headers({**self.default_headers, **headers} if headers else self.default_headers)
        if isinstance(content, bytes):
            hdrs.setdefault("Content-Type", "application/json")
        timeout = aiohttp.ClientTimeout(
            total=None, connect=min(self._connect_timeout_s, timeout_s), sock_read=read_timeout_s or timeout_s
        )
        try:
            async with asyncio.timeout(timeout_s):  # unlike wait_for, no extra task per call
                resp = await self.session.request(
                    method, url, json=json_body, data=content, headers=hdrs, timeout=timeout
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{node} did not answer within {timeout_s:g}s", node=node) from exc
        except aiohttp.ClientConnectionError as exc:
            raise UpstreamUnavailable(f"{node} is unreachable at {url}: {exc}", node=node) from exc
        try:
            if resp.status >= 400:
                raise await _upstream_status_error(resp, node)
            yield resp
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"{node} stalled for more than {read_timeout_s or timeout_s:g}s", node=node) from exc
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamError(f"{node} broke off its answer: {exc}", node=node) from exc
        except aiohttp.ClientConnectionError as exc:
            raise UpstreamError(f"{node} dropped the connection: {exc}", node=node) from exc
        finally:
            resp.release()


async def read_json(resp: aiohttp.ClientResponse, node: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The decoded JSON body; `UpstreamError` when it is not JSON, or as soon as it is known to be over
    ``max_bytes`` (nothing more is read into memory)."""
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise UpstreamError(f"{node} answered {resp.content_length} bytes, over the limit of {max_bytes}", node=node)
    body = bytearray()
    async for block in resp.content.iter_any():
        body += block
        if len(body) > max_bytes:
            raise UpstreamError(f"{node} answered more than the limit of {max_bytes} bytes", node=node)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UpstreamError(f"{node} answered with a body that is not JSON: {exc}", node=node) from exc


async def _upstream_status_error(resp: aiohttp.ClientResponse, node: str) -> UpstreamError:
    text = (await resp.content.read(ERROR_BODY_BYTES)).decode(errors="replace")[:2000]
    detail = text
    try:
        body = json.loads(text)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            detail = body["error"].get("message", text)
        elif isinstance(body, dict) and "detail" in body:
            detail = str(body["detail"])
    except json.JSONDecodeError:
        pass
    message = f"{node} answered HTTP {resp.status}: {detail}"
    if resp.status == 429:
        # Overloaded downstream: the caller should retry later, so say 429 and pass Retry-After on.
        busy = UpstreamUnavailable(
            message, node=node, status=429, headers={"Retry-After": resp.headers.get("Retry-After", "1")}
        )
        busy.status_code = 429
        busy.error_type = "rate_limit_error"
        return busy
    if resp.status in (502, 503):
        return UpstreamUnavailable(message, node=node, status=resp.status)
    if resp.status == 504:
        return UpstreamTimeout(message, node=node, status=resp.status)
    err = UpstreamError(message, node=node, status=resp.status)
    if 400 <= resp.status < 500:
        # The caller's request was refused downstream (e.g. a prompt over the context window):
        # that is the client's error, passed through with its status, not a 502.
        err.status_code = resp.status
        err.error_type = "invalid_request_error"
    return err


def bearer(key: SecretStr | str | None) -> dict[str, str]:
    """The ``Authorization`` header for an API key, or no header when there is none."""
    if isinstance(key, SecretStr):
        key = key.get_secret_value()
    return {"Authorization": f"Bearer {key}"} if key else {}


WARM_UP_WAIT_S = 300.0  # how long a remote backend's warm-up keeps asking a server that is not up yet


async def wait_until_up(
    probe: Callable[[], Awaitable[T]], *, what: str, log: logging.Logger, wait_s: float = WARM_UP_WAIT_S
) -> T:
    """Call ``probe`` until it stops failing with `UpstreamUnavailable`/`UpstreamTimeout` (an upstream that is
    still starting), for at most ``wait_s`` seconds; other errors, and the last one, are raised."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await probe()
        except (UpstreamUnavailable, UpstreamTimeout) as exc:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for %s: %s", what, exc.message)
            await asyncio.sleep(1.0)


async def sse_data(resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event of a response, as it arrives (multi-line data joined by newlines)."""
    lines: list[str] = []
    async for raw in resp.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[6:] if line.startswith("data: ") else line[5:])
    if lines:
        yield "\n".join(lines)
