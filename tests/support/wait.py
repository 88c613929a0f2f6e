"""Waiting on an event (a condition becoming true) with a deadline, instead of sleeping a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.1


def wait_for(check: Callable[[], T], what: str, timeout_s: float = 120.0) -> T:
    """The first truthy value of ``check()``, asked every `POLL_S`; fails naming ``what`` after ``timeout_s``
    (a bound for a hang, not a speed target: keep it generous)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g}s waiting for {what}"
        time.sleep(POLL_S)
