"""A Redis restart costs the services nothing but the restart itself: a pooled connection that the restart
closed is replaced and the command retried, instead of failing one request per stale connection (found by
the fault suite: the first retrievals after Redis came back answered 503)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from comps.runtime.process import free_port
from comps.runtime.redis_server import EmbeddedRedis
from comps.vectorstore import schema

pytestmark = pytest.mark.integration


def test_pooled_connections_survive_a_redis_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", free_port()).start()
    try:

        async def main() -> list[bytes | None]:
            r = schema.connect(server.url)
            try:
                await r.set("k", b"v")
                # Several pooled connections, all of which the restart will close.
                await asyncio.gather(*(r.get("k") for _ in range(8)))
                os.killpg(server.process.pid, signal.SIGKILL)
                server.process.stop()
                server.start()
                return list(await asyncio.gather(*(r.get("k") for _ in range(8))))
            finally:
                await r.aclose()

        assert asyncio.run(main()) == [b"v"] * 8  # the append-only file kept the key, too
    finally:
        server.stop()
