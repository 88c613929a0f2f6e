"""Long-lived background work that cannot die unseen.

`TaskGroup.spawn` runs a task under supervision: when it raises (or returns, which a long-lived task
must not), the death is logged and counted (``chatqna_background_task_deaths_total``), readiness shows
it (`TaskGroup.check` raises `NotReady` while it is down), and the task is restarted after a short
backoff; a ``critical`` task is not restarted: the process exits instead (`fatal`), so that whatever
supervises the process (``chatqna up``, Docker's restart policy, Kubernetes) starts a fresh one.

`fatal` is also how a worker thread that owns the process's one resource (the LLM engine) reports its
own death: liveness turns 503 at once and, under `comps.core.app.serve`, the server drains its requests
and the process exits with `FATAL_EXIT_CODE`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge

from comps.core.errors import NotReady

log = logging.getLogger("comps.tasks")

FATAL_EXIT_CODE = 70  # EX_SOFTWARE
RESTART_BASE_S = 0.1
RESTART_MAX_S = 5.0

DEATHS = Counter("chatqna_background_task_deaths_total", "Supervised background tasks that died", ["task"])
DOWN = Gauge("chatqna_background_tasks_down", "Supervised background tasks dead right now (1) or running (0)", ["task"])


class _Fatal:
    """The process-wide verdict (one process, one service): why it cannot serve, and whether to exit then."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reason: str | None = None
        self.exit = False


_FATAL = _Fatal()


def fatal(reason: str) -> None:
    """The process cannot serve any more: liveness fails from now on and, under `serve`, the process stops
    (SIGTERM to itself: in-flight requests drain) and exits with `FATAL_EXIT_CODE`. Thread-safe; the
    first reason wins."""
    with _FATAL.lock:
        if _FATAL.reason is not None:
            return
        _FATAL.reason = reason
    log.critical("fatal: %s; the process exits so that its supervisor restarts it", reason)
    if _FATAL.exit:
        os.kill(os.getpid(), signal.SIGTERM)


def fatal_reason() -> str | None:
    return _FATAL.reason


def exit_on_fatal() -> None:
    """Called by `serve`: from now on `fatal` stops the process (never in tests that host apps in-process)."""
    _FATAL.exit = True


class TaskGroup:
    """The supervised background tasks of one component (see the module doc)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.down: dict[str, str] = {}  # task -> why it is down now
        self.deaths: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def spawn(
        self, name: str, run: Callable[[], Awaitable[None]], *, critical: bool = False, once: bool = False
    ) -> None:
        """Run ``run()`` under supervision until `stop`; ``critical``: its death ends the process; ``once``:
        a task that is done when it returns (only an exception is a death)."""
        DOWN.labels(name).set(0)
        self._tasks.append(asyncio.create_task(self._supervise(name, run, critical, once), name=name))

    def check(self) -> None:
        """`NotReady` naming every task that is down."""
        if self.down:
            dead = "; ".join(f"{name}: {why}" for name, why in self.down.items())
            raise NotReady(f"{self.owner} background task down ({dead})")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]], critical: bool, once: bool) -> None:
        delay = RESTART_BASE_S
        while True:
            try:
                await run()
                if once:
                    return
                why = "it returned"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
                log.error("background task %s died: %s", name, why, exc_info=exc)
            DEATHS.labels(name).inc()
            DOWN.labels(name).set(1)
            self.deaths[name] = self.deaths.get(name, 0) + 1
            self.down[name] = why
            if critical:
                fatal(f"background task {name} died: {why}")
                return
            log.warning("restarting background task %s in %.1fs", name, delay)
            await asyncio.sleep(delay)
            delay = min(RESTART_MAX_S, delay * 2)
            del self.down[name]
            DOWN.labels(name).set(0)
