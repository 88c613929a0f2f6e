"""One suite, both vector stores (`comps.vectorstore.protocol`): a real Redis with search and a real PostgreSQL
with pgvector. Writes, atomic replacement, deletes, every search type, filters, content versions; and both
stores answering the same on the same data."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from comps.core.errors import BadRequest
from comps.vectorstore.documents import Chunk, CollectionMissing, DocumentRecord
from comps.vectorstore.protocol import BACKENDS, VectorStore
from comps.vectorstore.search import Hit, Query
from comps.vectorstore.stores import make_store

pytestmark = pytest.mark.integration

DIM = 8
Body = Callable[[VectorStore, str], Awaitable[None]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def urls(redis_url: str, database_url: str) -> dict[str, str]:
    return {"redis_url": redis_url, "database_url": database_url}


def run(backend: str, urls: dict[str, str], body: Body, collection: str = "suite") -> None:
    """``body(store, collection)`` on a fresh collection of a freshly opened store, in its own event loop."""

    async def main() -> None:
        store = make_store(backend, **urls)
        await store.open()
        try:
            await store.delete_all(collection)
            await store.ensure_collection(collection, DIM, model="toy")
            await body(store, collection)
        finally:
            await store.delete_all(collection)
            await store.close()

    asyncio.run(main())


# ------------------------------------------------------------------------------------------- test data

RNG = np.random.default_rng(7)
VECTORS = RNG.normal(size=(24, DIM)).astype(np.float32)
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


def record(doc_id: str, sha: str = "v1", source: str | None = None, tags: str = "") -> DocumentRecord:
    return DocumentRecord(
        doc_id=doc_id, source=source or f"{doc_id}.pdf", sha256=sha, tags=tags, size_bytes=10, updated_at=1.5
    )


def doc_chunks(d: int, n: int = 8) -> list[Chunk]:
    """Document ``d``'s chunks: distinct vectors, one rare word each (``zulu<d><i>``), pages 1, 1, 2, 2, ..."""
    return [
        Chunk(f"{WORDS[i % len(WORDS)]} report zulu{d}{i} section {i}", VECTORS[d * n + i], page=i // 2 + 1)
        for i in range(n)
    ]


async def load_corpus(store: VectorStore, c: str) -> None:
    await store.replace_document(c, record("a", tags="Finance, Q1"), doc_chunks(0))
    await store.replace_document(c, record("b", tags="legal"), doc_chunks(1))
    await store.replace_document(c, record("c", source="Notes.TXT", tags="finance"), doc_chunks(2))


def exact(query: np.ndarray, allowed: Callable[[int], bool] = lambda i: True) -> list[tuple[str, int, float]]:
    """Brute-force cosine ranking of the corpus: (doc_id, chunk, score), best first."""
    v = VECTORS / np.linalg.norm(VECTORS, axis=1, keepdims=True)
    q = query / np.linalg.norm(query)
    sims = v @ q
    order = [i for i in np.argsort(-sims) if allowed(int(i))]
    return [("abc"[i // 8], int(i % 8), float(sims[i])) for i in order]


def ids(hits: list[Hit]) -> list[tuple[str, int]]:
    return [(h.doc_id, h.chunk) for h in hits]


QUERY = (VECTORS[3] + 0.3 * VECTORS[12]).astype(np.float32)


# ------------------------------------------------------------------------------------------------ writes


def test_replace_reads_back_and_swaps_versions(backend: str, urls: dict[str, str]) -> None:
    async def body(store: VectorStore, c: str) -> None:
        first = await store.replace_document(c, record("d1"), doc_chunks(0, 3))
        assert first.chunks == 3 and first.version >= 1
        assert await store.get_document(c, "d1") == first
        chunks = await store.document_chunks(c, first)
        assert [ch.text for ch in chunks] == [ch.text for ch in doc_chunks(0, 3)]
        assert [ch.page for ch in chunks] == [1, 1, 2]
        np.testing.assert_allclose(np.stack([np.asarray(ch.embedding) for ch in chunks]), VECTORS[:3], rtol=1e-6)
        second = await store.replace_document(c, record("d1", sha="v2"), doc_chunks(1, 2))
        assert second.version > first.version and second.chunks == 2
        assert await store.get_document(c, "d1") == second
        hits = await store.search(c, Query(vector=VECTORS[8], k=10))
        assert (hits[0].doc_id, hits[0].chunk, hits[0].text) == ("d1", 0, doc_chunks(1, 2)[0].text)
        assert len(hits) == 2  # the old version's chunks are gone
        await store.replace_document(c, record("d0", source="A.txt"), doc_chunks(2, 1))
        assert [d.doc_id for d in await store.list_documents(c)] == ["d0", "d1"]
        (summary,) = [s for s in await store.collections() if s.name == c]
        assert (summary.dim, summary.chunks, summary.documents, summary.model) == (DIM, 3, 2, "toy")
        assert await store.collection_info(c) is not None

    run(backend, urls, body)


def test_replacement_is_atomic_for_readers(backend: str, urls: dict[str, str]) -> None:
    """While one document is replaced again and again (3 chunks "old", then 5 chunks "new"), every search sees
    one whole version: never a mix, never none."""

    async def body(store: VectorStore, c: str) -> None:
        versions = {
            "old": [Chunk(f"old {i}", VECTORS[i], None) for i in range(3)],
            "new": [Chunk(f"new {i}", VECTORS[i + 3], None) for i in range(5)],
        }
        await store.replace_document(c, record("d"), versions["old"])
        done = asyncio.Event()
        seen: set[tuple[str, ...]] = set()

        async def writer() -> None:
            for round_ in range(12):
                label = "new" if round_ % 2 == 0 else "old"
                await store.replace_document(c, record("d", sha=label), versions[label])
            done.set()

        async def reader() -> None:
            while not done.is_set():
                hits = await store.search(c, Query(vector=VECTORS[0], k=10, filters={"doc_id": "d"}))
                seen.add(tuple(sorted(h.text for h in hits)))

        await asyncio.gather(writer(), reader(), reader())
        wholes = {tuple(sorted(ch.text for ch in v)) for v in versions.values()}
        assert seen and seen <= wholes, seen - wholes

    run(backend, urls, body)


def test_concurrent_writers_of_one_document_leave_one_whole_version(backend: str, urls: dict[str, str]) -> None:
    async def body(store: VectorStore, c: str) -> None:
        sizes = [2, 5, 3, 4]
        await asyncio.gather(
            *(store.replace_document(c, record("d", sha=f"s{n}"), doc_chunks(0, n)[:n]) for n in sizes)
        )
        stored = await store.get_document(c, "d")
        assert stored is not None and stored.chunks == int(stored.sha256[1:])
        hits = await store.search(c, Query(vector=VECTORS[0], k=20))
        assert len(hits) == stored.chunks and {h.key.rsplit(":", 2)[1] for h in hits} == {str(stored.version)}

    run(backend, urls, body)


def test_many_writers_of_different_documents_all_commit(backend: str, urls: dict[str, str]) -> None:
    """As dataprep's workers write: 8 at once, each its own documents (Redis once aborted them all but one)."""

    async def body(store: VectorStore, c: str) -> None:
        async def writer(w: int) -> None:
            for d in range(6):
                await store.replace_document(c, record(f"w{w}d{d}"), doc_chunks(d % 3, 8))

        await asyncio.gather(*(writer(w) for w in range(8)))
        assert len(await store.list_documents(c)) == 48
        assert len(await store.search(c, Query(vector=VECTORS[0], k=500))) == 384

    run(backend, urls, body)


def test_deletes(backend: str, urls: dict[str, str]) -> None:
    async def body(store: VectorStore, c: str) -> None:
        await load_corpus(store, c)
        gone = await store.delete_document(c, "b")
        assert gone is not None and gone.doc_id == "b"
        assert await store.delete_document(c, "b") is None
        assert await store.get_document(c, "b") is None
        hits = await store.search(c, Query(vector=QUERY, k=30))
        assert {h.doc_id for h in hits} == {"a", "c"} and len(hits) == 16
        assert await store.delete_all(c) == 2
        assert await store.search(c, Query(vector=QUERY, k=5)) == []
        assert await store.list_documents(c) == []
        with pytest.raises(CollectionMissing):
            await store.replace_document(c, record("a"), doc_chunks(0))
        assert await store.delete_all(c) == 0

    run(backend, urls, body)


def test_dimensions_are_checked(backend: str, urls: dict[str, str]) -> None:
    async def body(store: VectorStore, c: str) -> None:
        await store.ensure_collection(c, DIM, model="toy")  # again: fine
        with pytest.raises(BadRequest) as err:
            await store.ensure_collection(c, DIM + 1, model="other")
        assert err.value.code == "dimension_mismatch"
        with pytest.raises(BadRequest):
            await store.search(c, Query(vector=np.ones(DIM + 1)))
        assert await store.search("never-made", Query(vector=np.ones(DIM))) == []

    run(backend, urls, body)


# ----------------------------------------------------------------------------------------------- searches


def test_every_search_type(backend: str, urls: dict[str, str]) -> None:
    async def body(store: VectorStore, c: str) -> None:
        await load_corpus(store, c)
        truth = exact(QUERY)
        hits = await store.search(c, Query(vector=QUERY, k=5))
        assert ids(hits) == [(d, n) for d, n, _ in truth[:5]]
        np.testing.assert_allclose([h.score for h in hits], [s for *_, s in truth[:5]], atol=1e-5)
        first = hits[0]
        assert first.source.endswith((".pdf", ".TXT")) and first.page == first.chunk // 2 + 1

        threshold = truth[2][2] - 1e-4
        hits = await store.search(c, Query(vector=QUERY, k=5, search_type="similarity_score_threshold",
                                           score_threshold=threshold))  # fmt: skip
        assert ids(hits) == [(d, n) for d, n, _ in truth[:3]]

        radius = 1.0 - truth[3][2] + 1e-4
        hits = await store.search(c, Query(vector=QUERY, k=10, search_type="similarity_distance_threshold",
                                           distance_threshold=radius))  # fmt: skip
        assert ids(hits) == [(d, n) for d, n, _ in truth[:4]]
        hits = await store.search(c, Query(vector=QUERY, k=2, search_type="similarity_distance_threshold",
                                           distance_threshold=radius))  # fmt: skip
        assert ids(hits) == [(d, n) for d, n, _ in truth[:2]]
        with pytest.raises(BadRequest):
            await store.search(c, Query(vector=QUERY, search_type="similarity_distance_threshold"))

        hits = await store.search(c, Query(vector=QUERY, k=4, fetch_k=10, search_type="mmr", lambda_mult=0.3))
        from comps.vectorstore.search import mmr

        pool = truth[:10]
        picked = mmr(QUERY, np.stack([VECTORS["abc".index(d) * 8 + n] for d, n, _ in pool]), 4, 0.3)
        assert ids(hits) == [pool[i][:2] for i in picked]

        # hybrid: the one chunk with the rare word "zulu17" (doc b, chunk 7) is far from the vector, yet fused
        # into the top results; the vector's best stays first or second. ("is the" once crashed RediSearch.)
        hits = await store.search(c, Query(vector=QUERY, text="where is the zulu17?", k=4, fetch_k=10,
                                           search_type="hybrid"))  # fmt: skip
        assert ("b", 7) in ids(hits)[:2] and truth[0][:2] in ids(hits)[:2]
        assert hits[0].score == pytest.approx(1 / 61 + (1 / 61 if ids(hits)[0] == ("b", 7) else 0), abs=0.02)
        with pytest.raises(BadRequest):
            await store.search(c, Query(vector=QUERY, search_type="nope"))  # type: ignore[arg-type]

    run(backend, urls, body)


def test_filters(backend: str, urls: dict[str, str]) -> None:
    async def body(store: VectorStore, c: str) -> None:
        await load_corpus(store, c)

        async def found(filters: dict[str, object], search_type: str = "similarity") -> list[tuple[str, int]]:
            q = Query(vector=QUERY, text="report", k=30, fetch_k=30, filters=filters, search_type=search_type)  # type: ignore[arg-type]
            return ids(await store.search(c, q))

        def expect(allowed: Callable[[int], bool]) -> list[tuple[str, int]]:
            return [(d, n) for d, n, _ in exact(QUERY, allowed)]

        assert await found({"doc_id": "b"}) == expect(lambda i: i // 8 == 1)
        assert await found({"source": "notes.txt"}) == expect(lambda i: i // 8 == 2)  # case-insensitive
        assert await found({"source": ["a.pdf", "b.pdf"]}) == expect(lambda i: i // 8 < 2)
        assert await found({"tags": "finance"}) == expect(lambda i: i // 8 in (0, 2))
        assert await found({"tags": ["q1", "legal"]}) == expect(lambda i: i // 8 < 2)
        assert await found({"page": 2}) == expect(lambda i: i % 8 in (2, 3))
        assert await found({"page": [1, 4], "doc_id": "c"}) == expect(lambda i: i // 8 == 2 and i % 8 in (0, 1, 6, 7))
        assert await found({"tags": "nothing"}) == []
        for kind in ("mmr", "hybrid", "similarity_score_threshold"):
            assert {d for d, _ in await found({"doc_id": "c"}, kind)} == {"c"}
        with pytest.raises(BadRequest):
            await found({"colour": "red"})
        with pytest.raises(BadRequest):
            await found({"page": "two"})

    run(backend, urls, body)


def test_both_stores_answer_the_same(urls: dict[str, str]) -> None:
    """The same corpus in both stores, the same queries of every type: the same hits, the same scores."""

    async def main() -> None:
        stores = [make_store(b, **urls) for b in BACKENDS]
        for store in stores:
            await store.open()
            await store.delete_all("same")
            await store.ensure_collection("same", DIM, model="toy")
            await load_corpus(store, "same")
        try:
            for i in range(6):
                vector = VECTORS[i * 4] + 0.5 * VECTORS[(i * 7 + 3) % 24]
                queries = [
                    Query(vector=vector, k=6),
                    Query(vector=vector, k=6, search_type="similarity_score_threshold", score_threshold=0.3),
                    Query(vector=vector, k=6, search_type="similarity_distance_threshold", distance_threshold=0.8),
                    Query(vector=vector, k=4, fetch_k=12, search_type="mmr", lambda_mult=0.5),
                    Query(vector=vector, k=5, fetch_k=12, search_type="hybrid", text=f"zulu{i}{i} and zulu2{i}"),
                    Query(vector=vector, k=6, filters={"tags": "finance", "page": [1, 2]}),
                ]
                for q in queries:
                    redis_hits, pg_hits = [await s.search("same", q) for s in stores]
                    assert ids(redis_hits) == ids(pg_hits), q
                    np.testing.assert_allclose([h.score for h in redis_hits], [h.score for h in pg_hits], atol=1e-5)
                    strip = [[dataclasses.replace(h, key="", score=0) for h in hits] for hits in (redis_hits, pg_hits)]
                    assert strip[0] == strip[1]
        finally:
            for store in stores:
                await store.delete_all("same")
                await store.close()

    asyncio.run(main())


# ----------------------------------------------------------------------------------------------- versions


def test_content_versions_count_every_write_and_outlive_the_collection(backend: str, urls: dict[str, str]) -> None:
    if backend == "redis":
        pytest.importorskip("comps.vectorstore.versions", reason="the Redis counter comes with the answer cache")

    async def body(store: VectorStore, c: str) -> None:
        start = (await store.content_versions([c]))[c]
        assert await store.content_versions(["never-written-x"]) == {"never-written-x": 0}
        await store.replace_document(c, record("a"), doc_chunks(0, 2))
        await store.replace_document(c, record("a", sha="v2"), doc_chunks(0, 3))
        await store.delete_document(c, "a")
        assert (await store.content_versions([c]))[c] == start + 3
        await store.delete_all(c)
        after = await store.content_versions([c, "never-written-x"])
        assert after == {c: start + 4, "never-written-x": 0}
        await store.ensure_collection(c, DIM, model="toy")
        await store.replace_document(c, record("a"), doc_chunks(0, 1))
        assert (await store.content_versions([c]))[c] == start + 5

    run(backend, urls, body, collection="versioned")
