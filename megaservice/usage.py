"""Usage accounting: one record per answered request, written off the request's path.

A request's `Meter` collects what the gateway sees of it (user, API key, model, pipeline, tokens, time to first
token, total time, cache hit, status); its end appends one row to the `UsageRecorder`'s buffer in memory, which a
background task writes to PostgreSQL in batches every ``GATEWAY_USAGE_FLUSH_S`` (sooner when a batch is full). The
request never waits on the store: a store that is down or slow only keeps rows in the buffer (bounded by
``GATEWAY_USAGE_BUFFER``; beyond that the oldest are dropped and counted), and what is in memory is what a crash
can lose. The queries behind ``/v1/usage`` and ``/v1/admin/usage`` are here too.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from prometheus_client import Counter, Gauge
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    cast,
    func,
    insert,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from comps.sqlstore.db import Base, Database

log = logging.getLogger("megaservice.usage")

WRITTEN = Counter("chatqna_gateway_usage_records_written_total", "Usage records written to the store")
DROPPED = Counter(
    "chatqna_gateway_usage_records_dropped_total", "Usage records dropped because the buffer was full (store down)"
)
FAILED_WRITES = Counter("chatqna_gateway_usage_write_failures_total", "Batches of usage records the store refused")
BUFFERED = Gauge("chatqna_gateway_usage_records_buffered", "Usage records in memory, not yet written")

WRITE_TIMEOUT_S = 10.0
GroupBy = Literal["user", "api_key", "model", "day"]
Status = Literal["ok", "error", "cancelled"]


class UsageEvent(Base):
    """One answered request."""

    __tablename__ = "usage_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # the request's arrival
    user_id: Mapped[uuid.UUID] = mapped_column()  # not a foreign key: usage outlives a deleted user
    username: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[uuid.UUID | None] = mapped_column()  # the API key used, if one was
    model: Mapped[str] = mapped_column(String(200))
    pipeline: Mapped[str] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    ttft_ms: Mapped[float | None] = mapped_column(Float)  # streams only: arrival to the first content sent
    total_ms: Mapped[float] = mapped_column(Float)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))  # ok | error | cancelled
    http_status: Mapped[int] = mapped_column(SmallInteger)

    __table_args__ = (
        Index("ix_usage_events_at", "at"),
        Index("ix_usage_events_user_id_at", "user_id", "at"),
    )


@dataclass(slots=True)
class Meter:
    """What one request used; `end` (once) hands the record to the recorder."""

    recorder: UsageRecorder
    user_id: str
    username: str
    key_id: str | None
    model: str
    pipeline: str
    started: float = field(default_factory=time.perf_counter)
    wall: float = field(default_factory=time.time)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    cached: bool = False  # set by the answer cache on a hit
    ended: bool = False

    def usage(self, usage: object) -> None:
        """The LLM's usage (a ``Usage`` model, or the dict of a stream's usage chunk)."""
        if isinstance(usage, Mapping):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        else:
            prompt, completion = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        self.prompt_tokens = prompt if isinstance(prompt, int) else 0
        self.completion_tokens = completion if isinstance(completion, int) else 0

    def first_token(self, now: float) -> None:
        if self.ttft_s is None:
            self.ttft_s = now - self.started

    def end(self, status: Status, http_status: int = 200) -> None:
        if self.ended:
            return
        self.ended = True
        total = time.perf_counter() - self.started
        self.recorder.record(
            (self.wall, self.user_id, self.username, self.key_id, self.model, self.pipeline, self.prompt_tokens,
             self.completion_tokens, self.ttft_s, total, self.cached, status, http_status)
        )  # fmt: skip


_COLUMNS = ("at", "user_id", "username", "key_id", "model", "pipeline", "prompt_tokens", "completion_tokens",
            "ttft_ms", "total_ms", "cached", "status", "http_status")  # fmt: skip


def _row(record: tuple[Any, ...]) -> dict[str, Any]:
    row = dict(zip(_COLUMNS, record, strict=True))
    row["at"] = datetime.fromtimestamp(row["at"], UTC)
    row["ttft_ms"] = None if row["ttft_ms"] is None else row["ttft_ms"] * 1000
    row["total_ms"] *= 1000
    return row


class UsageRecorder:
    """The buffer of records in memory and the task that writes it (see the module doc)."""

    def __init__(self, *, flush_s: float, batch: int, buffer: int) -> None:
        self.flush_s = flush_s
        self.batch = batch
        self.buffer = buffer
        self.db: Database | None = None
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._pending: deque[tuple[Any, ...]] = deque()
        self._wake = asyncio.Event()

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def meter(self, principal: Any, model: str, pipeline: str) -> Meter:
        """A request's meter; ``principal``: the caller the gateway authenticated (``user_id``, ...)."""
        return Meter(self, principal.user_id, principal.username, principal.key_id, model, pipeline)

    def record(self, record: tuple[Any, ...]) -> None:
        if len(self._pending) >= self.buffer:
            self._pending.popleft()
            self.dropped += 1
            DROPPED.inc()
        self._pending.append(record)
        if len(self._pending) >= self.batch:
            self._wake.set()

    async def run(self) -> None:
        """The writer: a batch every ``flush_s``, or as soon as one is full; runs until cancelled."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> bool:
        """Write what is buffered, a batch at a time; False (rows kept) when the store fails."""
        while self._pending and self.db is not None:
            rows = [self._pending.popleft() for _ in range(min(self.batch, len(self._pending)))]
            try:
                async with asyncio.timeout(WRITE_TIMEOUT_S), self.db.session() as s:
                    await s.execute(insert(UsageEvent), [_row(r) for r in rows])
            except BaseException as exc:  # the store is down or refuses (or the writer stops): keep the rows
                room = self.buffer - len(self._pending)
                kept = rows[-room:] if room > 0 else []
                self.dropped += len(rows) - len(kept)
                DROPPED.inc(len(rows) - len(kept))
                self._pending.extendleft(reversed(kept))
                if not isinstance(exc, Exception):  # cancelled at shutdown: `close` writes them
                    raise
                FAILED_WRITES.inc()
                if self.last_error is None:
                    log.warning("usage records not written (kept in memory: %d): %s", len(self._pending), exc)
                self.last_error = f"{type(exc).__name__}: {exc}"
                BUFFERED.set(len(self._pending))
                return False
            self.written += len(rows)
            WRITTEN.inc(len(rows))
            if self.last_error is not None:
                log.info("usage records written again after: %s", self.last_error)
                self.last_error = None
        BUFFERED.set(len(self._pending))
        return True

    async def close(self) -> None:
        """Write what is left (once, bounded by the write timeout)."""
        await self.flush()

    def status(self) -> dict[str, Any]:
        return {"buffered": len(self._pending), "written": self.written, "dropped": self.dropped,
                "last_error": self.last_error}  # fmt: skip


# -- queries -----------------------------------------------------------------------------------------


def day_range(start: date, end: date) -> tuple[datetime, datetime]:
    """[start 00:00 UTC, the day after end 00:00 UTC)."""
    return datetime(start.year, start.month, start.day, tzinfo=UTC), datetime(
        end.year, end.month, end.day, tzinfo=UTC
    ) + timedelta(days=1)


_DAY = func.to_char(func.timezone("UTC", UsageEvent.at), "YYYY-MM-DD")


def _totals() -> list[Any]:
    e = UsageEvent
    return [
        func.count().label("requests"),
        func.coalesce(func.sum(e.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(e.completion_tokens), 0).label("completion_tokens"),
        func.count().filter(e.cached).label("cache_hits"),
        func.count().filter(e.status == "error").label("errors"),
    ]


async def own_usage(db: Database, user_id: str, start: date, end: date) -> list[dict[str, Any]]:
    """One user's usage by day and model."""
    lo, hi = day_range(start, end)
    e = UsageEvent
    query = (
        select(_DAY.label("day"), e.model, *_totals())
        .where(e.user_id == uuid.UUID(user_id), e.at >= lo, e.at < hi)
        .group_by(_DAY, e.model)
        .order_by(_DAY, e.model)
    )
    async with db.session() as s:
        return [_ints(dict(r._mapping)) for r in await s.execute(query)]


async def usage_by(db: Database, group_by: GroupBy, start: date, end: date) -> list[dict[str, Any]]:
    """Everyone's usage grouped by user, API key, model or day, with the median times."""
    lo, hi = day_range(start, end)
    e = UsageEvent
    key: Any = {
        "user": cast(e.user_id, String),
        "api_key": func.coalesce(cast(e.key_id, String), "none"),
        "model": e.model,
        "day": _DAY,
    }[group_by]
    extra = [func.max(e.username).label("username")] if group_by == "user" else []
    query = (
        select(
            key.label("key"),
            *extra,
            *_totals(),
            func.percentile_cont(0.5).within_group(e.ttft_ms).label("ttft_ms_p50"),
            func.percentile_cont(0.5).within_group(e.total_ms).label("total_ms_p50"),
        )
        .where(e.at >= lo, e.at < hi)
        .group_by(key)
        .order_by(key)
    )
    async with db.session() as s:
        return [_ints(dict(r._mapping)) for r in await s.execute(query)]


def _ints(row: dict[str, Any]) -> dict[str, Any]:
    for name in ("requests", "prompt_tokens", "completion_tokens", "cache_hits", "errors"):
        row[name] = int(row[name])
    for name in ("ttft_ms_p50", "total_ms_p50"):
        if row.get(name) is not None:
            row[name] = round(float(row[name]), 3)
    return row
