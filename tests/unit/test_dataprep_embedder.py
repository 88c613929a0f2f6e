"""The embedding pool: requests of similar-length chunks across jobs, results back in order, progress,
and one job's bad input not failing another job (a fake HTTP client stands in for the service)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from comps.core.errors import UpstreamError
from comps.dataprep.embedder import SIMILAR, ChunkEmbedder
from comps.dataprep.settings import DataprepSettings

pytestmark = pytest.mark.unit


class FakeEmbeddings:
    """Answers like /v1/embeddings: the vector of a text is [its length, its first letter's code]."""

    def __init__(self, refuse: str | None = None) -> None:
        self.requests: list[list[str]] = []
        self.refuse = refuse

    async def request_json(self, method: str, url: str, *, node: str, timeout_s: float, json_body, headers):
        texts = json_body["input"]
        self.requests.append(texts)
        await asyncio.sleep(0.001)
        if self.refuse and any(self.refuse in t for t in texts):
            raise UpstreamError("embedding answered HTTP 400: input too long", node=node, status=400)
        data = [{"index": i, "embedding": [float(len(t)), float(ord(t[0]))]} for i, t in enumerate(texts)]
        return {
            "data": data[::-1],
            "model": "fake",
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }  # any order: indexes say which is which


def embedder(**settings: object) -> ChunkEmbedder:
    return ChunkEmbedder(DataprepSettings(embedding_url="http://embedding", **settings))  # type: ignore[arg-type]


def test_jobs_share_requests_of_similar_lengths_and_get_their_own_vectors() -> None:
    async def main() -> None:
        fake = FakeEmbeddings()
        emb = embedder(embedding_batch_size=4, embedding_concurrency=1)
        emb.start(fake)  # type: ignore[arg-type]
        done: dict[str, int] = {"a": 0, "b": 0}

        def progress(job: str):
            async def report(n: int) -> None:
                done[job] += n

            return report

        a = ["a" * n for n in (100, 10, 98, 12, 99)]
        b = ["b" * n for n in (11, 97, 13)]
        (va, ma), (vb, mb) = await asyncio.gather(emb.embed(a, progress("a")), emb.embed(b, progress("b")))
        await emb.close()
        assert ma == mb == "fake" and done == {"a": 5, "b": 3}
        assert np.array_equal(va, [[len(t), ord("a")] for t in a]) and np.array_equal(
            vb, [[len(t), ord("b")] for t in b]
        )
        assert sorted(len(t) for r in fake.requests for t in r) == sorted(len(t) for t in a + b)
        for request in fake.requests:
            lengths = [len(t) for t in request]
            assert len(request) <= 4 and min(lengths) >= SIMILAR * max(lengths), lengths
        assert any({t[0] for t in r} == {"a", "b"} for r in fake.requests)  # chunks of both jobs in one request

    asyncio.run(main())


def test_a_client_error_fails_only_the_job_that_caused_it() -> None:
    async def main() -> None:
        fake = FakeEmbeddings(refuse="BAD")
        emb = embedder(embedding_batch_size=8, embedding_concurrency=1)
        emb.start(fake)  # type: ignore[arg-type]

        async def nothing(_: int) -> None:
            return None

        bad, good = await asyncio.gather(
            emb.embed(["xBAD" + "x" * 46, "y" * 50], nothing), emb.embed(["z" * 49], nothing), return_exceptions=True
        )
        await emb.close()
        assert isinstance(bad, UpstreamError) and bad.message == "embedding answered HTTP 400: input too long"
        assert not isinstance(good, BaseException) and good[0].tolist() == [[49.0, float(ord("z"))]]
        assert [len(r) for r in fake.requests] == [3, 2, 1]  # together, then each job alone

    asyncio.run(main())


def test_a_service_failure_fails_every_job_in_the_request() -> None:
    async def main() -> None:
        class Down:
            async def request_json(self, *args: object, **kw: object) -> None:
                raise UpstreamError("embedding is unreachable at http://embedding: refused", node="embedding")

        emb = embedder()
        emb.start(Down())  # type: ignore[arg-type]

        async def nothing(_: int) -> None:
            return None

        results = await asyncio.gather(emb.embed(["a"], nothing), emb.embed(["b"], nothing), return_exceptions=True)
        await emb.close()
        assert [r.message for r in results] == ["embedding is unreachable at http://embedding: refused"] * 2  # type: ignore[union-attr]

    asyncio.run(main())
