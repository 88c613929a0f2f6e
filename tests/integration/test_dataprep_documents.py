"""The vector store's write side (`comps.vectorstore.documents`) against a real Redis with search."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from redis.commands.search.query import Query

from comps.vectorstore import documents, schema
from comps.vectorstore.documents import Chunk, CollectionMissing, DocumentRecord

pytestmark = pytest.mark.integration

DIM = 4


def vec(i: float) -> np.ndarray:
    v = np.array([1.0, i, 0.5, -i], dtype=np.float32)
    return v / np.linalg.norm(v)


def record(doc_id: str = "d1", sha: str = "v1", **kw: object) -> DocumentRecord:
    return DocumentRecord(doc_id=doc_id, source=f"{doc_id}.txt", sha256=sha, **kw)  # type: ignore[arg-type]


def chunks(n: int, label: str) -> list[Chunk]:
    return [Chunk(f"{label} chunk {i}", vec(i), page=i + 1 if label == "pdf" else None) for i in range(n)]


async def keys(r, collection: str) -> set[str]:
    return {k.decode() async for k in r.scan_iter(match=f"{collection}:*", count=1000)}


async def snapshot(r, collection: str) -> dict[str, object]:
    state: dict[str, object] = {}
    for key in sorted(await keys(r, collection)):
        kind = await r.type(key)
        if kind == b"string":
            state[key] = await r.get(key)
        else:
            state[key] = await r.hgetall(key) if kind == b"hash" else sorted(await r.smembers(key))
    return state


async def indexed(r, collection: str) -> int:
    return int((await r.ft(collection).search(Query("*").paging(0, 0))).total)


def run(redis_url: str, test) -> None:
    """Run ``test(r, collection)`` on a fresh collection with its own client and event loop."""

    async def main() -> None:
        r = schema.connect(redis_url)
        collection = f"docs-{id(test)}"
        try:
            await documents.delete_all(r, collection)
            await schema.ensure_index(r, collection, DIM, model="toy")
            await test(r, collection)
        finally:
            await documents.delete_all(r, collection)
            await r.aclose()

    asyncio.run(main())


def test_replace_swaps_versions_and_keeps_the_index_consistent(redis_url: str) -> None:
    async def body(r, c: str) -> None:
        first = await documents.replace_document(r, c, record(), chunks(3, "old"))
        assert first.chunks == 3 and first.version >= 1
        old_keys = {schema.chunk_key(c, "d1", first.version, n) for n in range(3)}
        assert {k for k in await keys(r, c) if ":chunk:" in k} == old_keys
        second = await documents.replace_document(r, c, record(sha="v2"), chunks(2, "new"))
        assert second.version > first.version
        chunk_keys = {k for k in await keys(r, c) if ":chunk:" in k}
        assert chunk_keys == {schema.chunk_key(c, "d1", second.version, n) for n in range(2)}
        stored = await documents.get_document(r, c, "d1")
        assert stored == second and stored.sha256 == "v2"
        assert await r.smembers(schema.docs_key(c)) == {b"d1"}
        assert await indexed(r, c) == 2
        h = await r.hgetall(schema.chunk_key(c, "d1", second.version, 1))
        assert h[b"text"] == b"new chunk 1" and h[b"chunk"] == b"1" and h[b"source"] == b"d1.txt"
        assert b"page" not in h and np.allclose(np.frombuffer(h[b"embedding"], np.float32), vec(1))

    run(redis_url, body)


def test_failure_before_commit_removes_the_new_keys_and_keeps_the_old_version(redis_url: str) -> None:
    async def body(r, c: str) -> None:
        await documents.replace_document(r, c, record(), chunks(3, "pdf"))
        before = await snapshot(r, c)
        with pytest.raises(RuntimeError, match="boom"):
            async with documents.staged_version(r, c, "d1") as staged:
                await staged.write(chunks(5, "half"), source="d1.txt", tags="")
                assert len({k for k in await keys(r, c) if ":chunk:" in k}) == 3  # the new one is only staged
                assert len({k for k in await keys(r, c) if ":staged:" in k}) == 5
                raise RuntimeError("boom")
        after = await snapshot(r, c)
        counter = documents.seq_key(c)
        assert {k: v for k, v in after.items() if k != counter} == {
            k: v for k, v in before.items() if k != counter
        }  # only the version counter moved
        assert await indexed(r, c) == 3

        async with documents.staged_version(r, c, "d1") as staged:  # left without commit: discarded too
            await staged.write(chunks(2, "forgotten"), source="d1.txt", tags="")
        assert await indexed(r, c) == 3

    run(redis_url, body)


def test_taking_a_version_leaves_the_watched_meta_record_alone(redis_url: str) -> None:
    """Every commit WATCHes ``c:meta``: a writer taking a version number must not touch it, or writers of other
    documents abort each other's commits (8 concurrent writers used to fail "kept changing")."""

    async def body(r, c: str) -> None:
        meta = await r.hgetall(schema.meta_key(c))
        first, second = await documents.next_version(r, c), await documents.next_version(r, c)
        assert second == first + 1 and await r.hgetall(schema.meta_key(c)) == meta
        await r.hset(schema.meta_key(c), documents.VERSION_FIELD, 41)  # an older release's counter: continued
        await r.delete(documents.seq_key(c))
        assert await documents.next_version(r, c) == 42
        assert await documents.next_version(r, "no-such-collection") == -1

    run(redis_url, body)


def test_two_writers_of_one_document_leave_exactly_the_last_version(redis_url: str) -> None:
    async def body(r, c: str) -> None:
        async with documents.staged_version(r, c, "d1") as a, documents.staged_version(r, c, "d1") as b:
            assert a.version != b.version
            await a.write(chunks(2, "a"), source="d1.txt", tags="")
            await b.write(chunks(4, "b"), source="d1.txt", tags="")
            await a.commit(record(sha="a"))
            await b.commit(record(sha="b"))
            assert b.replaced is not None and b.replaced.sha256 == "a"
        assert (await documents.get_document(r, c, "d1")).sha256 == "b"
        assert {k for k in await keys(r, c) if ":chunk:" in k} == {
            schema.chunk_key(c, "d1", b.version, n) for n in range(4)
        }

    run(redis_url, body)


def test_deleting_the_collection_during_a_write_fails_it_cleanly(redis_url: str) -> None:
    async def body(r, c: str) -> None:
        with pytest.raises(CollectionMissing, match="was deleted while writing"):
            async with documents.staged_version(r, c, "d1") as staged:
                await staged.write(chunks(3, "x"), source="d1.txt", tags="")
                assert await documents.delete_all(r, c) == 0
                await staged.commit(record())
        assert await keys(r, c) == set()
        with pytest.raises(CollectionMissing, match="does not exist"):
            await documents.replace_document(r, c, record(), chunks(1, "x"))

    run(redis_url, body)


def test_list_get_delete_and_delete_all(redis_url: str) -> None:
    async def body(r, c: str) -> None:
        for doc_id in ("b", "a", "c"):
            await documents.replace_document(r, c, record(doc_id, tags="t1,t2"), chunks(2, doc_id))
        listed = await documents.list_documents(r, c)
        assert [d.doc_id for d in listed] == ["a", "b", "c"] and listed[0].tags == "t1,t2"
        deleted = await documents.delete_document(r, c, "b")
        assert deleted is not None and deleted.doc_id == "b"
        assert await documents.delete_document(r, c, "b") is None
        assert await documents.get_document(r, c, "b") is None
        assert not any(":chunk:b:" in k for k in await keys(r, c))
        assert await indexed(r, c) == 4
        assert await documents.delete_all(r, c) == 2
        assert await keys(r, c) == set()
        assert c.encode() not in await r.execute_command("FT._LIST")

    run(redis_url, body)


def test_record_round_trips_through_the_hash() -> None:
    rec = DocumentRecord(
        doc_id="x",
        source="s.pdf",
        sha256="h",
        version=7,
        chunks=3,
        tags="a,b",
        content_type="pdf",
        size_bytes=10,
        chunk_size=1500,
        chunk_overlap=100,
        model="m",
        updated_at=1.25,
    )
    raw = {k.encode(): str(v).encode() for k, v in rec.to_hash().items()}
    assert DocumentRecord.from_hash(raw) == rec


def test_a_write_whose_keys_vanished_is_not_committed(redis_url: str) -> None:
    """The collection deleted and created again while a version was being written: the commit must not
    point the record at chunk keys that the deletion removed."""

    async def body(r, c: str) -> None:
        with pytest.raises(CollectionMissing, match="was deleted while writing"):
            async with documents.staged_version(r, c, "d1") as staged:
                await staged.write(chunks(3, "x"), source="d1.txt", tags="")
                await documents.delete_all(r, c)
                await schema.ensure_index(r, c, DIM, model="toy")
                await staged.commit(record())
        assert await documents.get_document(r, c, "d1") is None
        assert {k for k in await keys(r, c) if ":chunk:" in k} == set()

    run(redis_url, body)


async def searched_texts(r, c: str) -> set[str]:
    found = await r.ft(c).search(Query("*").return_fields(schema.TEXT).paging(0, 100))
    return {doc.text for doc in found.docs}


def test_readers_see_the_old_version_or_the_new_one_never_both(redis_url: str) -> None:
    """Issue 12, defect 3: while a new version is written (before its commit) a search sees only the old
    version; right after the commit only the new one."""

    async def body(r, c: str) -> None:
        await documents.replace_document(r, c, record(), chunks(3, "old"))
        old = {f"old chunk {i}" for i in range(3)}
        async with documents.staged_version(r, c, "d1") as staged:
            await staged.write(chunks(5, "new"), source="d1.txt", tags="")
            assert await searched_texts(r, c) == old  # written, not committed: not searchable
            assert await indexed(r, c) == 3
            await staged.commit(record(sha="v2"))
            assert await searched_texts(r, c) == {f"new chunk {i}" for i in range(5)}
        assert await r.ttl(schema.chunk_key(c, "d1", staged.version, 0)) == -1  # committed chunks never expire

    run(redis_url, body)


def test_a_crash_before_the_commit_leaves_no_searchable_orphan(redis_url: str) -> None:
    """A writer that dies between writing and committing (no discard runs) leaves nothing searchable, and
    what it staged expires; chunks an older release left under the indexed prefix are swept at start-up."""

    async def body(r, c: str) -> None:
        await documents.replace_document(r, c, record(), chunks(2, "old"))
        version = await documents.next_version(r, c)
        crashed = documents.StagedVersion(r, c, "d1", version)
        await crashed.write(chunks(4, "crashed"), source="d1.txt", tags="")  # then the process dies
        assert await searched_texts(r, c) == {"old chunk 0", "old chunk 1"}
        staged = [k for k in await keys(r, c) if ":staged:" in k]
        ttls = [await r.ttl(k) for k in staged]
        assert len(staged) == 4 and all(0 < t <= documents.STAGED_TTL_S for t in ttls)
        # What a crash of the previous release left: chunks of an uncommitted version under the index prefix.
        for n in range(3):
            await r.hset(schema.chunk_key(c, "d1", version + 7, n), mapping={schema.TEXT: "orphan", schema.DOC_ID: "d1",
                         schema.EMBEDDING: schema.vector_bytes(vec(n))})  # fmt: skip
        await r.hset(schema.chunk_key(c, "gone", 1, 0), mapping={schema.TEXT: "orphan of a deleted document"})
        assert "orphan" in await searched_texts(r, c)
        assert await documents.sweep_orphans(r) == 4
        assert await searched_texts(r, c) == {"old chunk 0", "old chunk 1"}
        assert await documents.sweep_orphans(r) == 0

    run(redis_url, body)
