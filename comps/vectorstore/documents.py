"""The write side of the vector store: whole documents in, whole documents out, never half of one.

A document's chunks are the keys ``c:chunk:<doc_id>:<version>:<n>`` (see `schema`); its record
``c:doc:<doc_id>`` says which version is current and how many chunks it has. `replace_document`:

1. takes a version number no other writer of the collection will ever get (the counter ``c:seq``);
2. writes the new version's chunks, pipelined in batches, as STAGED keys ``c:staged:<doc_id>:<version>:<n>``:
   outside the index's ``c:chunk:`` prefix, so no search sees them, and with a TTL (`STAGED_TTL_S`), so a
   crash while writing leaves nothing behind for long;
3. in ONE MULTI/EXEC transaction, WATCHing the record, ``c:meta`` and the staged keys (which must all
   still exist): deletes the old version's chunk keys, RENAMEs each staged key to its chunk key (and
   drops its TTL), writes the new record, adds the id to ``c:docs``. A reader sees the old version or the
   new one, never both. A concurrent writer of the same document makes EXEC fail; the transaction is then
   retried on the newer record (last writer wins);
4. on any failure before EXEC succeeds, deletes the staged keys: the old version stays intact.

`sweep_orphans` (run by dataprep at start-up) deletes chunk keys of versions that are not current, which
only a crash of an older release, one that wrote chunks under the indexed prefix before committing, leaves.

Each of these writes bumps the collection's content version (`versions`) in its own transaction, so the
answers cached under the old version are unreachable the moment the write is visible.

The collection must exist (`schema.ensure_index`) before writing; `delete_all` removes ``c:meta`` first,
so a write racing with it fails and cleans up instead of leaving keys of a deleted collection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields, replace

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ResponseError, WatchError

from comps.vectorstore import schema
from comps.vectorstore.versions import bump

log = logging.getLogger("comps.vectorstore.documents")

WRITE_BATCH = 500  # chunk keys per pipeline round trip
STAGED_TTL_S = 6 * 3600  # a staged version that never gets committed (its writer crashed) expires
COMMIT_RETRIES = 10
VERSION_FIELD = "next_version"  # in c:meta: where releases before the c:seq key kept the counter

# The collection's next document version, if the collection (its meta record) exists. The counter is a key of its
# own (``c:seq``), not a field of ``c:meta``: every commit WATCHes ``c:meta`` (to fail if the collection is
# deleted), so bumping a counter there made concurrent writers of different documents abort each other's commits
# until one gave up ("kept changing under 10 commit attempts" with 8 writers). It starts from the old field.
_NEXT_VERSION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], redis.call('HGET', KEYS[1], ARGV[1]) or 0)
end
return redis.call('INCR', KEYS[2])
"""


def seq_key(collection: str) -> str:
    return f"{collection}:seq"


async def next_version(r: aioredis.Redis, collection: str) -> int:
    """A version number no other writer of the collection gets; -1 if the collection does not exist."""
    return int(await r.eval(_NEXT_VERSION, 2, schema.meta_key(collection), seq_key(collection), VERSION_FIELD))


class CollectionMissing(RuntimeError):
    """The collection has no meta record: it was never created, or was deleted while writing."""


@dataclass(frozen=True)
class Chunk:
    """One chunk to store: its text, its vector, and where it came from (page 1-based; None: no pages)."""

    text: str
    embedding: np.ndarray | Sequence[float]
    page: int | None = None


@dataclass(frozen=True)
class DocumentRecord:
    """What ``c:doc:<doc_id>`` holds. ``tags`` is the comma-joined tag list as stored on every chunk."""

    doc_id: str
    source: str
    sha256: str
    version: int = 0
    chunks: int = 0
    tags: str = ""
    content_type: str = ""
    size_bytes: int = 0
    chunk_size: int = 0
    chunk_overlap: int = 0
    chunk_unit: str = "chars"  # of chunk_size and chunk_overlap: chars or tokens (of the embedding model)
    model: str = ""
    updated_at: float = field(default_factory=time.time)

    def to_hash(self) -> dict[str, str | int | float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> DocumentRecord:
        values = {k.decode(): v.decode() for k, v in raw.items()}
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            if f.name not in values:
                continue
            value = values[f.name]
            kwargs[f.name] = int(value) if f.type == "int" else float(value) if f.type == "float" else value
        return cls(**kwargs)  # type: ignore[arg-type]

    def chunk_keys(self, collection: str) -> list[str]:
        return [schema.chunk_key(collection, self.doc_id, self.version, n) for n in range(self.chunks)]


async def get_document(r: aioredis.Redis, collection: str, doc_id: str) -> DocumentRecord | None:
    raw = await r.hgetall(schema.doc_key(collection, doc_id))
    return DocumentRecord.from_hash(raw) if raw else None


async def list_documents(r: aioredis.Redis, collection: str) -> list[DocumentRecord]:
    """Every document of the collection, sorted by source."""
    ids = sorted(m.decode() for m in await r.smembers(schema.docs_key(collection)))
    if not ids:
        return []
    async with r.pipeline(transaction=False) as pipe:
        for doc_id in ids:
            pipe.hgetall(schema.doc_key(collection, doc_id))
        raws = await pipe.execute()
    return sorted((DocumentRecord.from_hash(raw) for raw in raws if raw), key=lambda d: (d.source, d.doc_id))


def staged_key(collection: str, doc_id: str, version: int, n: int) -> str:
    """Where chunk ``n`` of a version waits for its commit: not under the index's prefix."""
    return f"{collection}:staged:{doc_id}:{version}:{n}"


class StagedVersion:
    """A new version's chunks, staged (not searchable) and not yet current. `commit` makes it current
    atomically."""

    def __init__(self, r: aioredis.Redis, collection: str, doc_id: str, version: int) -> None:
        self.r = r
        self.collection = collection
        self.doc_id = doc_id
        self.version = version
        self.keys: list[str] = []
        self.committed = False
        self.replaced: DocumentRecord | None = None
        self._exec_sent = False  # EXEC may have run even if its answer never came (cancelled, connection lost)

    async def write(self, chunks: Sequence[Chunk], *, source: str, tags: str) -> None:
        base = len(self.keys)
        for start in range(0, len(chunks), WRITE_BATCH):
            async with self.r.pipeline(transaction=False) as pipe:
                for offset, chunk in enumerate(chunks[start : start + WRITE_BATCH]):
                    n = base + start + offset
                    key = staged_key(self.collection, self.doc_id, self.version, n)
                    mapping: dict[str, object] = {
                        schema.TEXT: chunk.text,
                        schema.EMBEDDING: schema.vector_bytes(chunk.embedding),
                        schema.SOURCE: source,
                        schema.DOC_ID: self.doc_id,
                        schema.TAGS: tags,
                        schema.CHUNK: n,
                    }
                    if chunk.page is not None:
                        mapping[schema.PAGE] = chunk.page
                    pipe.hset(key, mapping=mapping)
                    pipe.expire(key, STAGED_TTL_S)
                    self.keys.append(key)  # before execute: a partly applied batch is cleaned up too
                await pipe.execute()

    async def commit(self, record: DocumentRecord) -> DocumentRecord:
        """Make this version current in one transaction; returns the stored record (``replaced`` is set to
        the record it replaced, None for a new document)."""
        doc_key = schema.doc_key(self.collection, record.doc_id)
        meta_key = schema.meta_key(self.collection)
        record = replace(record, version=self.version, chunks=len(self.keys))
        for _ in range(COMMIT_RETRIES):
            async with self.r.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(doc_key, meta_key, *self.keys)
                    raw_old = await pipe.hgetall(doc_key)
                    intact = not self.keys or await pipe.exists(*self.keys) == len(self.keys)
                    if not intact or not await pipe.exists(meta_key):
                        raise CollectionMissing(f"collection {self.collection!r} was deleted while writing")
                    old = DocumentRecord.from_hash(raw_old) if raw_old else None
                    pipe.multi()
                    if old is not None and old.version != self.version:
                        stale = old.chunk_keys(self.collection)
                        for start in range(0, len(stale), WRITE_BATCH * 10):
                            pipe.delete(*stale[start : start + WRITE_BATCH * 10])
                    for n, staged in enumerate(self.keys):
                        final = schema.chunk_key(self.collection, record.doc_id, self.version, n)
                        pipe.rename(staged, final)
                        pipe.persist(final)
                    pipe.delete(doc_key)
                    pipe.hset(doc_key, mapping=record.to_hash())
                    pipe.sadd(schema.docs_key(self.collection), record.doc_id)
                    bump(pipe, self.collection)  # what a search finds changed: cached answers of it are stale
                    self._exec_sent = True
                    await pipe.execute()
                except WatchError:
                    continue
            self.committed = True
            self.replaced = old
            return record
        raise RuntimeError(f"document {record.doc_id} kept changing under {COMMIT_RETRIES} commit attempts")

    async def discard(self) -> None:
        """Delete this version's keys, unless it did become current (best effort: a failure is logged,
        the keys stay unreferenced)."""
        try:
            if self._exec_sent:
                current = await self.r.hget(schema.doc_key(self.collection, self.doc_id), "version")
                if current is not None and int(current) == self.version:
                    self.committed = True
                    return
            for start in range(0, len(self.keys), WRITE_BATCH * 10):
                await self.r.delete(*self.keys[start : start + WRITE_BATCH * 10])
            self.keys.clear()
        except Exception as exc:  # the original failure matters more than this one
            log.error("could not delete %d partial chunk keys of %s: %s", len(self.keys), self.doc_id, exc)


@asynccontextmanager
async def staged_version(r: aioredis.Redis, collection: str, doc_id: str) -> AsyncIterator[StagedVersion]:
    """A fresh version of ``doc_id``: written inside the block, committed by the caller; any exception
    (or leaving the block without `commit`) deletes what was written."""
    version = await next_version(r, collection)
    if version < 0:
        raise CollectionMissing(f"collection {collection!r} does not exist; create it with ensure_index first")
    staged = StagedVersion(r, collection, doc_id, version)
    try:
        yield staged
    finally:
        if not staged.committed:
            await staged.discard()


async def replace_document(
    r: aioredis.Redis, collection: str, record: DocumentRecord, chunks: Sequence[Chunk]
) -> DocumentRecord:
    """Store ``chunks`` as the new current version of ``record.doc_id`` (see the module doc); returns the
    stored record (with its version and chunk count)."""
    async with staged_version(r, collection, record.doc_id) as staged:
        await staged.write(chunks, source=record.source, tags=record.tags)
        return await staged.commit(record)


async def delete_document(r: aioredis.Redis, collection: str, doc_id: str) -> DocumentRecord | None:
    """Delete a document's chunks, record and id in one transaction; returns what was deleted (None: none)."""
    doc_key = schema.doc_key(collection, doc_id)
    for _ in range(COMMIT_RETRIES):
        async with r.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(doc_key)
                raw = await pipe.hgetall(doc_key)
                old = DocumentRecord.from_hash(raw) if raw else None
                pipe.multi()
                if old is not None:
                    keys = old.chunk_keys(collection)
                    for start in range(0, len(keys), WRITE_BATCH * 10):
                        pipe.delete(*keys[start : start + WRITE_BATCH * 10])
                    pipe.delete(doc_key)
                    bump(pipe, collection)
                pipe.srem(schema.docs_key(collection), doc_id)
                await pipe.execute()
            except WatchError:
                continue
        return old
    raise RuntimeError(f"document {doc_id} kept changing under {COMMIT_RETRIES} delete attempts")


async def delete_all(r: aioredis.Redis, collection: str) -> int:
    """Delete the collection: its meta record first (in-flight writes then fail and clean up), the
    index (without DD), then every chunk and document key by scan. Returns the number of documents."""
    count = int(await r.scard(schema.docs_key(collection)))
    await r.delete(schema.meta_key(collection), seq_key(collection))
    try:
        await r.ft(collection).dropindex(delete_documents=False)
    except ResponseError as exc:
        if "unknown index" not in str(exc).lower() and "no such index" not in str(exc).lower():
            raise
    for pattern in (f"{schema.chunk_prefix(collection)}*", f"{collection}:staged:*", f"{collection}:doc:*"):
        batch: list[bytes] = []
        async for key in r.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await r.delete(*batch)
                batch.clear()
        if batch:
            await r.delete(*batch)
    # Bumped at the end, with the last delete: an answer built while the chunks were going away is unreachable too.
    await _delete_and_bump(r, collection, schema.docs_key(collection))
    return count


async def _delete_and_bump(r: aioredis.Redis, collection: str, *keys: str) -> None:
    async with r.pipeline(transaction=True) as pipe:
        pipe.delete(*keys)
        bump(pipe, collection)
        await pipe.execute()


async def sweep_orphans(r: aioredis.Redis) -> int:
    """Delete every chunk key (of any collection) whose version is not its document's current one; returns
    how many. Safe while others write: a chunk key only appears in the commit that makes its version
    current, so one found with another current version (or no record) was left by a crash."""
    found: dict[tuple[str, str], list[tuple[bytes, int]]] = {}
    async for key in r.scan_iter(match="*:chunk:*", count=1000):
        collection, _, rest = key.decode().partition(":chunk:")
        parts = rest.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        found.setdefault((collection, parts[0]), []).append((key, int(parts[1])))
    if not found:
        return 0
    docs = list(found)
    async with r.pipeline(transaction=False) as pipe:
        for collection, doc_id in docs:
            pipe.hget(schema.doc_key(collection, doc_id), "version")
        versions = await pipe.execute()
    orphans = [
        key
        for doc, current in zip(docs, versions, strict=True)
        for key, version in found[doc]
        if current is None or int(current) != version
    ]
    for start in range(0, len(orphans), WRITE_BATCH * 10):
        await r.delete(*orphans[start : start + WRITE_BATCH * 10])
    if orphans:
        log.warning("deleted %d orphan chunks (of versions never committed or replaced)", len(orphans))
    return len(orphans)
