"""Dataprep's job status in PostgreSQL (``VECTORSTORE_BACKEND=pgvector``): kept across processes, open jobs found
again for resuming, the newest listed first, finished ones beyond ``DATAPREP_JOBS_KEPT`` and expired ones gone."""

from __future__ import annotations

import asyncio

import pytest

from comps.core.settings import load_settings
from comps.dataprep.backends.pgvector_store import PgvectorDocumentStore
from comps.dataprep.settings import DataprepSettings

pytestmark = pytest.mark.integration


def job(n: int, status: str) -> dict[str, object]:
    return {"job_id": f"j{n}", "source": f"f{n}.txt", "collection": "c", "status": status, "created_at": 1000.0 + n,
            "chunks_total": 3, "error": None, "tags": "a,b"}  # fmt: skip


def test_jobs_are_kept_listed_resumed_and_pruned(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VECTORSTORE_BACKEND", "pgvector")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DATAPREP_JOBS_KEPT", "10")
    settings = load_settings(DataprepSettings)

    async def main() -> None:
        store = PgvectorDocumentStore(settings)
        await store.warm_up(None)  # type: ignore[arg-type]
        try:
            for n in range(14):
                await store.save_job(job(n, "succeeded" if n % 4 else "running"))
            await store.save_job(job(4, "failed"))  # a later save of the same job replaces it
            assert await store.load_job("j4") == {k: v for k, v in job(4, "failed").items() if v is not None}
            assert [j["job_id"] for j in await store.open_jobs()] == ["j0", "j12", "j8"]
            recent = [j["job_id"] for j in await store.recent_jobs(5)]
            assert recent == ["j13", "j12", "j11", "j10", "j9"]
            # 10 newest kept, plus the open ones older than those
            assert {j["job_id"] for j in await store.recent_jobs(100)} == {f"j{n}" for n in range(4, 14)} | {"j0"}
            await store.save_job(job(0, "succeeded"))
            assert [j["job_id"] for j in await store.open_jobs()] == ["j12", "j8"]
            assert await store.load_job("j0") is None  # finished, and older than the 10 newest
            async with store.pg.connection() as conn:  # expire one
                await conn.execute("UPDATE dataprep_jobs SET expires_at = 0 WHERE job_id = 'j13'")
            assert await store.load_job("j13") is None
        finally:
            await store.close()

    asyncio.run(main())


def test_job_leases_belong_to_one_replica_until_they_expire(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two replicas claim the same jobs: each job is held by one; the holder renews it; once its lease has run out
    (its replica died), the other takes it over."""
    monkeypatch.setenv("VECTORSTORE_BACKEND", "pgvector")
    monkeypatch.setenv("DATABASE_URL", database_url)
    settings = load_settings(DataprepSettings)

    async def main() -> None:
        store = PgvectorDocumentStore(settings)
        await store.warm_up(None)  # type: ignore[arg-type]
        try:
            assert await store.claim_jobs([], "a", 60) == []
            assert await store.claim_jobs(["j1", "j2"], "a", 60) == ["j1", "j2"]
            assert await store.claim_jobs(["j2", "j3"], "b", 60) == ["j3"]  # j2 is a's
            assert await store.claim_jobs(["j1", "j2", "j3"], "a", 60) == ["j1", "j2"]  # renewed; j3 is b's
            async with store.pg.connection() as conn:  # a's lease on j2 runs out
                await conn.execute("UPDATE dataprep_job_leases SET expires_at = 0 WHERE job_id = 'j2'")
            assert await store.claim_jobs(["j2"], "b", 60) == ["j2"]
            assert await store.claim_jobs(["j1", "j2"], "a", 60) == ["j1"]
        finally:
            await store.close()

    asyncio.run(main())
