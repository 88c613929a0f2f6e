"""Signed-in browser sessions, kept in this UI process so that a page reload stays signed in.

The browser holds only an opaque random id (a cookie); the gateway's tokens stay here, never in the page.
A session unused for ``ttl_s`` is forgotten; a UI restart signs everyone out.
"""

from __future__ import annotations

import secrets
import threading
import time

from ui.client import GatewayClient

COOKIE = "chatqna_ui_session"


class Sessions:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._by_id: dict[str, tuple[GatewayClient, float]] = {}

    def add(self, client: GatewayClient) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._sweep()
            self._by_id[sid] = (client, time.monotonic())
        return sid

    def get(self, sid: str | None) -> GatewayClient | None:
        if not sid:
            return None
        with self._lock:
            self._sweep()
            found = self._by_id.get(sid)
            if found is None:
                return None
            self._by_id[sid] = (found[0], time.monotonic())
            return found[0]

    def drop(self, sid: str | None) -> None:
        with self._lock:
            found = self._by_id.pop(sid or "", None)
        if found is not None:
            found[0].logout()
            found[0].close()

    def _sweep(self) -> None:
        now = time.monotonic()
        for sid in [s for s, (_, seen) in self._by_id.items() if now - seen > self.ttl_s]:
            self._by_id.pop(sid)[0].close()
