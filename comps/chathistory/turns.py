"""Chat turns in flight: read-your-writes across gateway replicas.

A gateway marks a turn when it begins (the call that reads the conversation's context marks it too), renews the
mark while the answer runs, and the write of the answer clears it (a request that fails or is cancelled before
any write releases it). A read of that conversation's context or messages waits while a mark of another turn
holds, so the next request sees the previous turn even when another gateway replica is still writing it. The
marks are rows of ``pending_turns`` (migration 0007, shared by every chathistory replica); a cleared mark is
announced with NOTIFY ``chat_turns`` (payload: the conversation id), which wakes the waiting reads of every
replica; a mark nobody clears (its gateway died) holds only until its lease ends.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

log = logging.getLogger("comps.chathistory.turns")

CHANNEL = "chat_turns"  # in the SQL of the clears too (here and APPEND_SQL)

# Seconds until the latest lease of another turn in flight of conversation $1 (owner $2) ends; NULL: none.
# $3: the reading turn's own id (NULL for a plain read).
BLOCKED_SQL = """
SELECT extract(epoch FROM max(p.expires_at) - clock_timestamp())::float8
FROM pending_turns p
WHERE p.conversation_id = $1 AND p.user_id = $2 AND p.expires_at > clock_timestamp()
  AND p.turn_id IS DISTINCT FROM $3
"""

# Mark (or renew) turn $3 of conversation $1 for owner $2 for $4 seconds, when $2 owns the conversation or no
# conversation has that id yet (the first turn of a new one, written by the answer). Expired marks of it go.
MARK_SQL = """
WITH gone AS (
    DELETE FROM pending_turns WHERE conversation_id = $1 AND expires_at <= clock_timestamp()
)
INSERT INTO pending_turns (turn_id, conversation_id, user_id, expires_at)
SELECT $3, $1, $2, clock_timestamp() + make_interval(secs => $4)
WHERE EXISTS (SELECT 1 FROM conversations c WHERE c.id = $1 AND c.user_id = $2)
   OR NOT EXISTS (SELECT 1 FROM conversations c WHERE c.id = $1)
ON CONFLICT (turn_id) DO UPDATE SET expires_at = EXCLUDED.expires_at
    WHERE pending_turns.user_id = EXCLUDED.user_id AND pending_turns.conversation_id = EXCLUDED.conversation_id
"""

# Release turn $1 of owner $2 (no write will come); the waiting reads wake.
RELEASE_SQL = """
WITH cleared AS (
    DELETE FROM pending_turns WHERE turn_id = $1 AND user_id = $2 RETURNING conversation_id
)
SELECT count(pg_notify('chat_turns', conversation_id::text)) FROM cleared
"""


class TurnWaits:
    """The reads waiting for a conversation's turn in flight, woken by NOTIFY on one listening connection (opened
    the first time a read has to wait)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: asyncpg.Connection | None = None
        self.waiting: dict[uuid.UUID, set[asyncio.Future[None]]] = {}
        self._lock = asyncio.Lock()

    def listening(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()

    async def listen(self) -> None:
        """Open the listening connection (again, if it was lost)."""
        async with self._lock:
            if self.listening():
                return
            conn = await asyncpg.connect(self.dsn)
            await conn.add_listener(CHANNEL, self._notified)
            self.conn = conn

    @contextmanager
    def expect(self, conversation_id: uuid.UUID) -> Iterator[asyncio.Future[None]]:
        """A future done when a turn of the conversation is cleared; register it BEFORE reading the marks, so that a
        clear committed after that read is never missed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        futures = self.waiting.setdefault(conversation_id, set())
        futures.add(fut)
        try:
            yield fut
        finally:
            futures.discard(fut)
            if not futures:
                self.waiting.pop(conversation_id, None)

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            cid = uuid.UUID(payload)
        except ValueError:
            return
        for fut in self.waiting.get(cid, ()):
            if not fut.done():
                fut.set_result(None)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None
