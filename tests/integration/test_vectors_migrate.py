"""`chatqna vectors migrate`: a collection copied from Redis to pgvector and back, vectors included (nothing is
re-embedded: the hits and scores stay the same), resumed after an interruption."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from typer.testing import CliRunner

from comps.runtime.cli import app
from comps.vectorstore.documents import Chunk, DocumentRecord
from comps.vectorstore.migrate import MigrationReport, copy_collection
from comps.vectorstore.protocol import VectorStore
from comps.vectorstore.search import Hit, Query
from comps.vectorstore.stores import make_store

pytestmark = pytest.mark.integration

DIM = 6
C = "moving"
RNG = np.random.default_rng(3)
VECTORS = RNG.normal(size=(12, DIM)).astype(np.float32)


class Interrupted(Exception):
    pass


def docs() -> list[tuple[DocumentRecord, list[Chunk]]]:
    return [
        (
            DocumentRecord(
                doc_id=f"d{d}",
                source=f"file{d}.pdf",
                sha256=f"s{d}",
                tags="x,y",
                model="toy",
                updated_at=100.0 + d,
                size_bytes=42,
            ),
            [Chunk(f"doc {d} part {i}", VECTORS[d * 4 + i], page=i + 1 if d else None) for i in range(4)],
        )
        for d in range(3)
    ]


async def answers(store: VectorStore) -> list[list[tuple[str, int, str, int | None, float]]]:
    def strip(hits: list[Hit]) -> list[tuple[str, int, str, int | None, float]]:
        return [(h.doc_id, h.chunk, h.text, h.page, round(h.score, 5)) for h in hits]

    return [strip(await store.search(C, Query(vector=v, k=5, text="part 2", search_type=t)))
            for v in VECTORS[::3] for t in ("similarity", "hybrid", "mmr")]  # fmt: skip


def test_a_collection_moves_both_ways_and_resumes(redis_url: str, database_url: str) -> None:
    async def main() -> None:
        redis, pg = make_store("redis", redis_url=redis_url), make_store("pgvector", database_url=database_url)
        for store in (redis, pg):
            await store.open()
            await store.delete_all(C)
        try:
            await redis.ensure_collection(C, DIM, model="toy")
            for record, chunks in docs():
                await redis.replace_document(C, record, chunks)
            before = await answers(redis)

            def stop_after_two(report: MigrationReport, record: DocumentRecord) -> None:
                if report.copied == 2:
                    raise Interrupted

            with pytest.raises(Interrupted):
                await copy_collection(redis, pg, C, progress=stop_after_two)
            assert len(await pg.list_documents(C)) == 2  # each document committed whole: the checkpoint
            report = await copy_collection(redis, pg, C)
            assert (report.documents, report.copied, report.skipped, report.chunks) == (3, 1, 2, 4)
            assert await answers(pg) == before
            copied = await pg.get_document(C, "d1")
            assert copied is not None and (copied.sha256, copied.tags, copied.updated_at) == ("s1", "x,y", 101.0)
            info = await pg.collection_info(C)
            assert info is not None and (info.dim, info.model) == (DIM, "toy")

            await redis.delete_all(C)  # and back
            report = await copy_collection(pg, redis, C)
            assert (report.copied, report.skipped) == (3, 0)
            assert await answers(redis) == before
            assert (await copy_collection(pg, redis, C)).skipped == 3
        finally:
            for store in (redis, pg):
                await store.delete_all(C)
                await store.close()

    asyncio.run(main())


def test_the_command_copies_with_a_progress_bar(redis_url: str, database_url: str) -> None:
    async def seed() -> None:
        redis = make_store("redis", redis_url=redis_url)
        await redis.open()
        await redis.delete_all(C)
        await redis.ensure_collection(C, DIM, model="toy")
        for record, chunks in docs():
            await redis.replace_document(C, record, chunks)
        await redis.close()

    asyncio.run(seed())
    argv = ["vectors", "migrate", "--collection", C, "--redis-url", redis_url, "--database-url", database_url]
    result = CliRunner().invoke(app, [*argv, "--from", "redis", "--to", "pgvector"])
    assert result.exit_code == 0, result.output
    assert "3 documents (12 chunks) copied from redis to pgvector, 0 already there" in result.output
    assert "3/3" in result.output  # the bar's last state
    result = CliRunner().invoke(app, [*argv, "--from", "pgvector", "--to", "redis"])
    assert result.exit_code == 0 and "0 documents (0 chunks) copied from pgvector to redis, 3 already there" in (
        result.output
    )
    result = CliRunner().invoke(app, [*argv, "--from", "redis", "--to", "redis"])
    assert result.exit_code != 0
    bad = CliRunner().invoke(app, [*argv[:3], "nope", *argv[4:], "--from", "pgvector", "--to", "redis"])
    assert bad.exit_code == 1 and "does not exist" in bad.output
