"""Child processes that the local runtime and the tests start: spawned in their own process group,
their output prefixed and forwarded, readiness awaited over HTTP, stopped with SIGTERM then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TypedDict

_HANDED_OUT_MAX = 8192  # ports remembered by `free_port` (a mesh asks for a few dozen)
_handed_out: set[int] = set()
_handing = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that this process has not handed out before:
    the kernel may offer a port again as soon as the probe closes, and two services given one port before either
    binds it would collide (seen: the embedding and LLM services of one mesh, both on the same port)."""
    with _handing:
        if len(_handed_out) >= _HANDED_OUT_MAX:
            _handed_out.clear()
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port: int = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


class UserArgs(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]


def as_user(user: str | None) -> UserArgs:
    """Popen arguments that run a child as ``user`` with that user's group only (not root's groups)."""
    if user is None:
        return {}
    import pwd

    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class ProcessFailed(RuntimeError):
    """A child process exited, or did not become ready in time; the message carries its last output."""


class ManagedProcess:
    """One child process with prefixed output, a readiness wait and a clean stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        sink: IO[str] | None = None,
        log_file: Path | None = None,
        prefix_width: int = 10,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = str(cwd) if cwd else None
        self.sink = sink if sink is not None else sys.stderr
        self.log_file = log_file
        self.user = user  # run as this system user (needs root)
        self.prefix = f"{name:<{prefix_width}}| "
        self.proc: subprocess.Popen[str] | None = None
        self.tail: list[str] = []
        self._pump: threading.Thread | None = None
        self._log: IO[str] | None = None

    def start(self) -> ManagedProcess:
        if self.log_file:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_file.open("a", encoding="utf-8")
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            start_new_session=True,
            **as_user(self.user),
        )
        self._pump = threading.Thread(target=self._forward, name=f"log-{self.name}", daemon=True)
        self._pump.start()
        return self

    def _forward(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.tail.append(line)
            del self.tail[:-200]
            if self._log:
                self._log.write(line)
                self._log.flush()
            try:
                self.sink.write(self.prefix + line)
                self.sink.flush()
            except (ValueError, OSError):  # sink closed (e.g. pytest capture ended)
                pass

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def last_output(self, lines: int = 40) -> str:
        return "".join(self.tail[-lines:])

    def wait_ready(self, check: Callable[[], bool], timeout_s: float, what: str = "ready") -> float:
        """Poll ``check`` until true; fail fast if the process dies. Returns seconds waited."""
        start = time.monotonic()
        while True:
            if not self.running():
                code = self.proc.returncode if self.proc else None
                raise ProcessFailed(f"{self.name} exited with code {code} before {what}:\n{self.last_output()}")
            if check():
                return time.monotonic() - start
            if time.monotonic() - start > timeout_s:
                raise ProcessFailed(f"{self.name} was not {what} after {timeout_s:g}s:\n{self.last_output()}")
            time.sleep(0.1)

    def wait_http_ready(self, url: str, timeout_s: float = 120.0) -> float:
        return self.wait_ready(lambda: http_status(url) == 200, timeout_s, what=f"ready at {url}")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout_s``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        _signal_group(self.proc.pid, signal.SIGKILL)  # stragglers of the group, if any
        if self._pump:
            self._pump.join(2)
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
