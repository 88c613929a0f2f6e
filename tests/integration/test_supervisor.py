"""`chatqna up`'s supervisor restarts a child that dies, with backoff, counting and logging each restart;
stopping it still stops everything (issue 12, defect 8)."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from comps.runtime.mesh import RESTART_MAX_S, Supervisor, restart_delay
from comps.runtime.process import ManagedProcess
from comps.runtime.settings import RuntimeSettings

pytestmark = pytest.mark.integration

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def supervised(tmp_path) -> Iterator[tuple[Supervisor, list[str]]]:
    lines: list[str] = []
    sup = Supervisor(RuntimeSettings(state_dir=tmp_path), out=lines.append)
    stop = threading.Event()
    watcher = threading.Thread(target=sup.watch, args=(stop, 0.05), daemon=True)
    sup.procs["svc"] = ManagedProcess("svc", SLEEPER, log_file=tmp_path / "svc.log").start()
    watcher.start()
    try:
        yield sup, lines
    finally:
        stop.set()
        watcher.join(30)
        assert not watcher.is_alive()
        sup.stop()
        assert not sup.procs["svc"].running()


def test_a_killed_child_is_restarted_and_counted(supervised: tuple[Supervisor, list[str]]) -> None:
    sup, lines = supervised
    for n in (1, 2):
        old = sup.procs["svc"].pid
        os.kill(old, signal.SIGKILL)
        wait_for(lambda n=n: sup.restarts.get("svc") == n and sup.procs["svc"].running(), f"restart {n}")
        assert sup.procs["svc"].pid != old
    assert any("svc exited with code -9; restarting it in" in line for line in lines)
    assert any("svc restarted (pid" in line and "restart 2)" in line for line in lines)


def test_backoff_doubles_and_is_capped() -> None:
    delays = [restart_delay(n) for n in range(1, 12)]
    assert delays[:3] == [0.5, 1.0, 2.0]
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert delays[-1] == RESTART_MAX_S


def test_a_crash_looping_child_is_retried_with_backoff_not_given_up(tmp_path) -> None:
    lines: list[str] = []
    sup = Supervisor(RuntimeSettings(state_dir=tmp_path), out=lines.append)
    sup.procs["bad"] = ManagedProcess("bad", [sys.executable, "-c", "raise SystemExit(3)"]).start()
    stop = threading.Event()
    watcher = threading.Thread(target=sup.watch, args=(stop, 0.05), daemon=True)
    watcher.start()
    try:
        wait_for(lambda: sup.restarts.get("bad", 0) >= 2, "two restarts")
    finally:
        stop.set()
        watcher.join(30)
        sup.stop()
    crashes = [line for line in lines if line.startswith("bad exited with code 3")]
    assert "restarting it in 0.5s (crash 1 in a row)" in crashes[0]
    assert "restarting it in 1.0s (crash 2 in a row)" in crashes[1]
