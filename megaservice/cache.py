"""The answer cache: a deterministic answer, stored in Redis, replayed to the same question in milliseconds.

Correct above all. The key is a hash of everything that shapes an answer (`Key.of`): the normalised question and
the earlier turns that reach the LLM, the pipeline and every request knob (retrieval options, rerank, budgets,
caller passages, template), the collections searched (after access checks: a user's own private collection is in
their key, never in another user's) with their content versions (`comps.vectorstore.versions`, bumped in the
same transaction as each write: a cached answer is unreachable the moment its collection changes, on every
replica), the model, the prompt (registry id and version; the built-in template's hash), the generation
parameters and the gateway's defaults for them. Only deterministic requests are cached: temperature 0 (the
request's or, for a grounded answer, the gateway's default), or ``cache: true``; ``cache: false`` bypasses.

A hit is replayed as the same JSON, or the same ``chat.completion.chunk`` events ending with ``[DONE]``, as a
fresh answer, with ``"cached": true`` and the stored usage and sources. An entry that does not decode is a miss
and is removed. Redis slow or down: answered uncached (counted), never an error.

Redis keys (no collection name starts with ``_``): ``_cache:a:<key>`` the entries (with the TTL),
``_cache:order`` (sorted set, score = expiry time: the oldest go first when over ``max_entries``),
``_cache:sizes`` (bytes per entry), ``_cache:stats`` (hits, misses, evictions, bytes: shared by every replica),
``_cache:sem:<context>`` (semantic matching only: question embeddings of the entries sharing everything but the
question).

The versions are read where the vector store keeps them: with ``VECTORSTORE_BACKEND=redis`` in the same Redis,
inside the lookup's one round trip; with ``pgvector`` in PostgreSQL (`StoreVersions`, one query), just before it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import operator
import time
import unicodedata
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
from fastapi import APIRouter, Depends
from prometheus_client import Counter, Gauge
from pydantic import BaseModel
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from comps.identity.auth import admin_of
from comps.llm.protocol import completion_id
from comps.vectorstore.client import redis_errors
from comps.vectorstore.versions import version_key
from megaservice import prompt as prompt_text
from megaservice.protocol import ChatQnARequest
from megaservice.sse import StreamedAnswer

if TYPE_CHECKING:  # the store's modules (numpy, asyncpg) load only when one is configured
    from comps.vectorstore.versions import PgVersions

log = logging.getLogger("megaservice.cache")

KEY_SCHEMA = 1  # bump when the key's parts or the entry's shape change
# The built-in prompt: a change of its text is a new prompt version.
PROMPT_VERSION = hashlib.sha256(
    "\0".join((prompt_text.DEFAULT_TEMPLATE, prompt_text.NO_PASSAGES, str(prompt_text.CHARS_PER_TOKEN))).encode()
).hexdigest()[:16]
# Request fields that do not shape the answer (how it is delivered or kept), and those the key takes apart.
NOT_IN_KEY = frozenset(
    {"stream", "stream_options", "conversation_id", "store", "meta", "cache", "messages", "collection", "collections"}
)
PREFIX = "_cache:"
ENTRY = PREFIX + "a:"
ORDER = PREFIX + "order"
SIZES = PREFIX + "sizes"
STATS = PREFIX + "stats"
SEMANTIC = PREFIX + "sem:"
SEMANTIC_MAX = 1024  # questions compared per context; beyond, new ones are not indexed for paraphrases
DOWN_FOR_S = 5.0  # after a Redis failure, requests skip the cache this long

HITS = Counter("chatqna_gateway_cache_hits_total", "Answers served from the cache", ["match"])
MISSES = Counter("chatqna_gateway_cache_misses_total", "Cacheable requests answered fresh")
BYPASSED = Counter(
    "chatqna_gateway_cache_bypassed_total", "Requests not cached, by reason (cache_false, not_deterministic)", ["why"]
)
EVICTIONS = Counter("chatqna_gateway_cache_evictions_total", "Entries evicted to stay within max_entries")
CORRUPT = Counter("chatqna_gateway_cache_corrupt_total", "Entries that failed to decode (removed; served as a miss)")
ERRORS = Counter(
    "chatqna_gateway_cache_errors_total",
    "Failures of the cache's Redis or versions' store (answered uncached)",
    ["stage"],
)
BYTES = Gauge("chatqna_gateway_cache_bytes", "Bytes of cached answers (as of this replica's last write)")
ENTRIES = Gauge("chatqna_gateway_cache_entries", "Cached answers (as of this replica's last write)")

# Drops members (entry, size, order); returns the bytes freed. Used by the scripts below.
_DROP = """
local function drop(members)
  local freed = 0
  for _, m in ipairs(members) do
    freed = freed + tonumber(redis.call('HGET', KEYS[2], m) or '0')
    redis.call('HDEL', KEYS[2], m)
    redis.call('ZREM', KEYS[1], m)
    redis.call('DEL', ARGV[1] .. m)
  end
  return freed
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local freed = drop(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now))
"""
# KEYS: order, sizes, stats. ARGV: entry prefix, member, value, ttl_s, max_entries.
_STORE = (
    _DROP
    + """
local member, value, ttl, max = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
freed = freed + tonumber(redis.call('HGET', KEYS[2], member) or '0')
redis.call('SET', ARGV[1] .. member, value, 'EX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, member)
redis.call('HSET', KEYS[2], member, #value)
local evicted = 0
local over = redis.call('ZCARD', KEYS[1]) - max
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], over)
  local victims = {}
  for i = 1, #popped, 2 do victims[#victims + 1] = popped[i] end
  freed = freed + drop(victims)
  evicted = #victims
  redis.call('HINCRBY', KEYS[3], 'evictions', evicted)
end
local bytes = redis.call('HINCRBY', KEYS[3], 'bytes', #value - freed)
return {evicted, bytes, redis.call('ZCARD', KEYS[1])}
"""
)
# One round trip: reads the collections' content versions (Redis store: their keys; another store: read before,
# given as ARGV[5..]), makes the key (as `Key.at` does), gets the entry and counts a hit (a miss too with
# ARGV[4] == "1"; semantic matching counts its own).
# KEYS: stats, the version keys. ARGV: entry prefix, key base, question, count misses, the versions read before.
# Returns {context, digest, entry or nil}.
_LOOKUP = """
local parts = {ARGV[2]}
for i = 2, #KEYS do parts[#parts + 1] = redis.call('GET', KEYS[i]) or '0' end
for i = 5, #ARGV do parts[#parts + 1] = ARGV[i] end
local context = redis.sha1hex(table.concat(parts, ':'))
local digest = redis.sha1hex(context .. ':' .. ARGV[3])
local value = redis.call('GET', ARGV[1] .. digest)
if value then redis.call('HINCRBY', KEYS[1], 'hits', 1)
elseif ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'misses', 1) end
return {context, digest, value or false}
"""
# KEYS: order, sizes, stats. ARGV: entry prefix, member, "1" when `_LOOKUP` counted it a hit (it is a miss).
# Removes one entry (it failed to decode).
_REMOVE = (
    _DROP
    + """
freed = freed + drop({ARGV[2]})
redis.call('HINCRBY', KEYS[3], 'bytes', -freed)
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[3], 'hits', -1)
  redis.call('HINCRBY', KEYS[3], 'misses', 1)
end
return 1
"""
)
# KEYS: order, sizes, stats. ARGV: entry prefix. Drops what expired; returns {entries, bytes}.
_PRUNE = (
    _DROP
    + """
local bytes = redis.call('HINCRBY', KEYS[3], 'bytes', -freed)
return {redis.call('ZCARD', KEYS[1]), bytes}
"""
)
# KEYS: order, sizes, stats. ARGV: entry prefix. Drops every entry; returns how many were live.
_FLUSH = (
    _DROP
    + """
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
drop(members)
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[3], 'bytes', 0)
return #members
"""
)


def normalise(text: str) -> str:
    """The question as compared: Unicode NFC, runs of whitespace as one space, no leading or trailing space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


@dataclass(frozen=True, slots=True)
class Key:
    """An answer's key. ``base`` hashes every part but the question and the collections' content versions, which
    are read in the same round trip as the entry (`_LOOKUP`); ``context`` adds the versions (semantic matching
    compares questions within one context only), ``digest`` the question too."""

    base: str
    question: str
    collections: tuple[str, ...]
    context: str = ""
    digest: str = ""

    @classmethod
    def of(
        cls,
        req: ChatQnARequest,
        *,
        pipeline: str,
        question_rewrite: str,
        collections: Sequence[str],
        prompt: tuple[str, int] | None,
        defaults: dict[str, Any],
    ) -> Key:
        chat = req.chat()
        last = max((i for i, m in enumerate(chat) if m.role == "user" and m.text().strip()), default=len(chat) - 1)
        question = normalise(chat[last].text())
        # pydantic's JSON of the request (orjson refuses integers beyond 64 bits, which a request may hold)
        knobs = req.__pydantic_serializer__.to_json(req, exclude=set(NOT_IN_KEY))
        parts = {
            "schema": KEY_SCHEMA,
            "prompt_version": PROMPT_VERSION,
            "defaults": defaults,
            "pipeline": pipeline,
            "question_rewrite": req.question_rewrite or question_rewrite,
            "collections": list(collections),
            "turns": [[m.role, normalise(m.text())] for i, m in enumerate(chat) if i != last],
            "at": last,  # where the question is among the turns
            "prompt": prompt,
        }
        base = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS) + b"\0" + knobs).hexdigest()
        return cls(base, question, tuple(collections))

    def at(self, versions: Sequence[int | str]) -> Key:
        """This key at these content versions (of `collections`, in order): what `_LOOKUP` computes in Redis."""
        context = hashlib.sha1(":".join([self.base, *map(str, versions)]).encode()).hexdigest()  # noqa: S324
        digest = hashlib.sha1(f"{context}:{self.question}".encode()).hexdigest()  # noqa: S324 (not for secrecy)
        return dataclasses.replace(self, context=context, digest=digest)


@dataclass(slots=True)
class Answer:
    """What is stored of an answer, enough to replay it as JSON or as a stream."""

    model: str
    content: str
    finish_reason: str
    usage: dict[str, Any] | None
    sources: list[dict[str, Any]]
    question: str = ""

    def encode(self) -> bytes:
        return orjson.dumps({"schema": KEY_SCHEMA, **{f: getattr(self, f) for f in self.__slots__}})

    @classmethod
    def decode(cls, raw: bytes) -> Answer:
        """The stored answer; ValueError if it is not one (any shape error)."""
        try:
            d = orjson.loads(raw)
            usage, sources = d["usage"], d["sources"]
            ok = (
                d.get("schema") == KEY_SCHEMA
                and all(isinstance(d[f], str) for f in ("model", "content", "finish_reason", "question"))
                and (usage is None or isinstance(usage, dict))
                and isinstance(sources, list)
                and all(isinstance(s, dict) for s in sources)
            )
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a cached answer: {exc}") from None
        if not ok:
            raise ValueError("not a cached answer: unexpected shape")
        return cls(d["model"], d["content"], d["finish_reason"], usage, sources, d["question"])

    def completion(self, extras: dict[str, Any]) -> dict[str, Any]:
        """The reply as a fresh ``chat.completion`` would be, marked cached."""
        return {
            "id": completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.content},
                    "finish_reason": self.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": self.usage,
            "sources": self.sources,
            "cached": True,
            **extras,
        }

    def events(self, extras: dict[str, Any], *, include_usage: bool) -> bytes:
        """The reply as the events of a fresh stream (role, content, finish, usage if asked, ``[DONE]``)."""
        head = {"id": completion_id(), "object": "chat.completion.chunk", "created": int(time.time())}
        head["model"] = self.model

        def chunk(delta: dict[str, str], finish: str | None = None, **more: Any) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return b"data: " + orjson.dumps({**head, "choices": [choice], **more}) + b"\n\n"

        out = [chunk({"role": "assistant", "content": ""}, sources=self.sources, cached=True, **extras)]
        if self.content:
            out.append(chunk({"content": self.content}))
        out.append(chunk({}, self.finish_reason))
        if include_usage and self.usage is not None:
            out.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": self.usage}) + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)


@dataclass(slots=True)
class Lookup:
    """One cacheable request: its key, and the stored answer on a hit (None: a miss, to be filled)."""

    key: Key
    answer: Answer | None = None
    vector: array[float] | None = None  # the question's unit embedding (semantic matching), stored with the answer

    @property
    def match(self) -> str | None:
        """How the stored answer was found: ``exact`` (the same normalised question) or ``semantic`` (a paraphrase,
        by its embedding); None on a miss."""
        if self.answer is None:
            return None
        return "exact" if self.vector is None else "semantic"


class Capture(StreamedAnswer):
    """A streamed answer as it passes, to be stored under ``lookup`` when it ends well."""

    def __init__(self, lookup: Lookup) -> None:
        super().__init__()
        self.lookup = lookup


Embed = Callable[[str], Awaitable[list[float]]]


class StoreVersions:
    """The collections' content versions where the vector store keeps them outside the cache's Redis (pgvector:
    in PostgreSQL, bumped in each write's transaction): one query per lookup, then the entry by the versioned key.
    Without one, the versions are read in Redis, in the lookup's own round trip."""

    def __init__(self, store: PgVersions, *, timeout_s: float) -> None:
        self.store = store
        self.name = store.name
        self.timeout_s = timeout_s
        self.opened = False

    async def open(self) -> None:
        await self.store.open()
        self.opened = True

    async def close(self) -> None:
        await self.store.close()

    async def __call__(self, collections: Sequence[str]) -> list[int]:
        """The versions of ``collections``, in order."""
        versions = await asyncio.wait_for(self.store.content_versions(collections), self.timeout_s)
        return [versions[c] for c in collections]


class AnswerCache:
    def __init__(
        self,
        redis_url: str,
        *,
        ttl_s: int,
        max_entries: int,
        timeout_s: float,
        semantic: bool = False,
        threshold: float = 0.97,
        embed: Embed | None = None,
        versions: StoreVersions | None = None,
    ) -> None:
        self.r = aioredis.from_url(
            redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.semantic = semantic and embed is not None
        self.threshold = threshold
        self.embed = embed
        self.versions = versions
        self.down_until = 0.0
        self._lookup = self.r.register_script(_LOOKUP)
        self._store = self.r.register_script(_STORE)
        self._remove = self.r.register_script(_REMOVE)
        self._prune = self.r.register_script(_PRUNE)
        self._flush = self.r.register_script(_FLUSH)

    async def open(self) -> None:
        """Open the versions' store, if they have their own (at the gateway's warm-up); a store that does not open
        (after the kit's warm-up wait) leaves every cacheable request answered uncached (counted) until a restart,
        never the gateway down."""
        if self.versions is None:
            return
        try:
            await self.versions.open()
        except Exception as exc:  # the store's failure only costs the cache
            self._failed("open", exc)

    async def close(self) -> None:
        await self.r.aclose()
        if self.versions is not None:
            await self.versions.close()

    def status(self) -> dict[str, Any]:
        """What the admin API shows, without a round trip: where the versions are read, and whether the last
        failure (of Redis or the versions' store) is recent enough that requests skip the cache."""
        reachable = time.monotonic() >= self.down_until and (self.versions is None or self.versions.opened)
        return {
            "status": "up" if reachable else "down",
            "enabled": True,
            "versions": "redis" if self.versions is None else self.versions.name,
            "reachable": reachable,
            "semantic": self.semantic,
        }

    def _failed(self, stage: str, exc: BaseException) -> None:
        ERRORS.labels(stage).inc()
        if time.monotonic() >= self.down_until:
            log.warning("answer cache: %s failed: %r; answering uncached for %gs", stage, exc, DOWN_FOR_S)
        self.down_until = time.monotonic() + DOWN_FOR_S

    # -- the request path ---------------------------------------------------------------------------

    @staticmethod
    def wanted(req: ChatQnARequest, deterministic: bool) -> bool:
        """Whether the request is cached: ``cache: true``, or deterministic unless ``cache: false``."""
        return req.cache is True or (req.cache is None and deterministic)

    async def lookup(
        self, req: ChatQnARequest, *, collections: Sequence[str], deterministic: bool, **key_parts: Any
    ) -> Lookup | None:
        """The request's key and, on a hit, its stored answer; None when the request is not cached."""
        if not self.wanted(req, deterministic):
            BYPASSED.labels("cache_false" if req.cache is False else "not_deterministic").inc()
            return None
        if time.monotonic() < self.down_until:
            return None
        key = Key.of(req, collections=collections, **key_parts)
        version_keys = list(map(version_key, key.collections))
        read: list[int] = []
        if self.versions is not None:
            try:
                read, version_keys = await self.versions(key.collections), []
            except Exception as exc:  # the versions' store failing only costs the cache
                self._failed("versions", exc)
                return None
        try:
            context, digest, raw = await self._lookup(
                keys=[STATS, *version_keys], args=[ENTRY, key.base, key.question, "0" if self.semantic else "1", *read]
            )
        except (RedisError, OSError) as exc:
            self._failed("lookup", exc)
            return None
        found = Lookup(dataclasses.replace(key, context=context.decode(), digest=digest.decode()))
        if raw is not None:
            found.answer = await self._decoded(found.key.digest, raw, counted=True)
        if found.answer is None and self.semantic:
            await self._paraphrase(found)
        if found.match is not None:
            HITS.labels(found.match).inc()
        else:
            MISSES.inc()
        return found

    async def _decoded(self, member: str, raw: bytes, *, counted: bool = False) -> Answer | None:
        try:
            return Answer.decode(raw)
        except ValueError as exc:
            CORRUPT.inc()
            log.warning("answer cache: entry %s removed, it does not decode: %s", member[:12], exc)
            try:
                await self._remove(keys=[ORDER, SIZES, STATS], args=[ENTRY, member, "1" if counted else "0"])
            except (RedisError, OSError) as err:
                self._failed("remove", err)
            return None

    async def _paraphrase(self, found: Lookup) -> None:
        """Semantic matching: the stored answer of the most similar question in the same context, if similar
        enough. The embedding service down: exact matching only."""
        assert self.embed is not None
        try:
            await self._semantic_match(found)
            await self.r.hincrby(STATS, "hits" if found.answer is not None else "misses", 1)
        except (RedisError, OSError) as exc:
            self._failed("semantic", exc)

    async def _semantic_match(self, found: Lookup) -> None:
        assert self.embed is not None
        try:
            vector = await self.embed(found.key.question)
        except Exception as exc:  # the embedding service's failure only costs the paraphrase match
            log.warning("answer cache: no embedding for semantic matching: %s", exc)
            return
        norm = math.sqrt(math.fsum(x * x for x in vector))
        if not norm:
            return
        found.vector = unit = array("f", (x / norm for x in vector))
        size = len(unit) * unit.itemsize
        best, score = b"", -1.0
        for member, raw in (await self.r.hgetall(SEMANTIC + found.key.context)).items():
            if len(raw) == size:  # plain Python (the gateway carries no numpy): ~10 us a question of 384 floats
                similarity = sum(map(operator.mul, array("f", raw), unit))
                if similarity > score:
                    best, score = member, similarity
        if score < self.threshold:
            return
        member = best.decode()
        raw = await self.r.get(ENTRY + member)
        if raw is None:  # evicted or expired: forget its question too
            await self.r.hdel(SEMANTIC + found.key.context, member)
            return
        found.answer = await self._decoded(member, raw)

    async def store(self, found: Lookup, answer: Answer) -> None:
        """Keep a fresh answer (a failure is counted and logged, never raised)."""
        answer.question = found.key.question
        member = found.key.digest
        try:
            evicted, size, entries = await self._store(
                keys=[ORDER, SIZES, STATS], args=[ENTRY, member, answer.encode(), self.ttl_s, self.max_entries]
            )
            if found.vector is not None:
                sem = SEMANTIC + found.key.context
                async with self.r.pipeline(transaction=False) as pipe:
                    pipe.hlen(sem)
                    pipe.expire(sem, self.ttl_s)
                    held, _ = await pipe.execute()
                if held < SEMANTIC_MAX:
                    await self.r.hset(sem, member, found.vector.tobytes())
        except (RedisError, OSError) as exc:
            self._failed("store", exc)
            return
        if evicted:
            EVICTIONS.inc(evicted)
        BYTES.set(size)
        ENTRIES.set(entries)

    # -- administration -----------------------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        entries, size = await self._prune(keys=[ORDER, SIZES, STATS], args=[ENTRY])
        hits, misses, evictions = (int(v or 0) for v in await self.r.hmget(STATS, ["hits", "misses", "evictions"]))
        return {
            "entries": int(entries),
            "bytes": int(size),
            "hits": hits,
            "misses": misses,
            "evictions": evictions,
            "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0,
        }

    async def flush(self) -> int:
        flushed = int(await self._flush(keys=[ORDER, SIZES, STATS], args=[ENTRY]))
        batch = [key async for key in self.r.scan_iter(match=SEMANTIC + "*", count=1000)]
        for start in range(0, len(batch), 1000):
            await self.r.delete(*batch[start : start + 1000])
        BYTES.set(0)
        ENTRIES.set(0)
        return flushed


def deterministic(req: ChatQnARequest, *, grounded: bool, rag_temperature: float | None) -> bool:
    """Whether the request decodes greedily: temperature 0, its own or (for an answer grounded in passages, where
    it sets none) the gateway's default."""
    temperature = req.temperature if req.temperature is not None else rag_temperature if grounded else None
    return temperature == 0


# -- admin routes -------------------------------------------------------------------------------------


class CacheStats(BaseModel):
    enabled: bool
    entries: int
    bytes: int
    hits: int
    misses: int
    evictions: int
    hit_rate: float
    ttl_s: int
    max_entries: int
    semantic: bool


class Flushed(BaseModel):
    flushed: int


def build_router(cache: AnswerCache | None, *, ttl_s: int, max_entries: int, semantic: bool) -> APIRouter:
    router = APIRouter(tags=["admin"], dependencies=[Depends(admin_of)])

    @router.get("/v1/admin/cache/stats", response_model=CacheStats)
    async def cache_stats() -> CacheStats:
        """The answer cache's entries, bytes, hits, misses and evictions (every replica's), and its settings."""
        settings = {"ttl_s": ttl_s, "max_entries": max_entries, "semantic": semantic}
        if cache is None:
            zero = dict.fromkeys(("entries", "bytes", "hits", "misses", "evictions"), 0)
            return CacheStats(enabled=False, hit_rate=0.0, **zero, **settings)
        with redis_errors("the answer cache"):
            return CacheStats(enabled=True, **(await cache.stats()), **settings)

    @router.post("/v1/admin/cache/flush", response_model=Flushed)
    async def cache_flush() -> Flushed:
        """Drop every cached answer (the statistics stay); says how many there were."""
        if cache is None:
            return Flushed(flushed=0)
        with redis_errors("the answer cache"):
            return Flushed(flushed=await cache.flush())

    return router
