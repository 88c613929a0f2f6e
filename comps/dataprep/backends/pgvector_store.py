"""Dataprep's store with everything in PostgreSQL (``VECTORSTORE_BACKEND=pgvector``): documents in the pgvector
store, job status in the table ``dataprep_jobs`` (migration ``0006_vectorstore``): the job's record as JSON, when
it expires (``DATAPREP_JOB_TTL_S`` after its last save) and whether it is finished; a job's owner (the replica
running it) in ``dataprep_job_leases``, until when by the server's clock. No Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from comps.dataprep.backends.store import VectorDocuments
from comps.dataprep.protocol import FINISHED
from comps.vectorstore.pgvector_store import PgvectorStore


class PgvectorDocumentStore(VectorDocuments):
    @property
    def pg(self) -> PgvectorStore:
        assert isinstance(self.vectors, PgvectorStore)
        return self.vectors

    async def save_job(self, job: dict[str, Any]) -> None:
        now = time.time()
        record = json.dumps({k: v for k, v in job.items() if v is not None})
        async with self.pg.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO dataprep_jobs (job_id, created_at, expires_at, finished, job) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT (job_id) DO UPDATE SET expires_at = EXCLUDED.expires_at, finished = EXCLUDED.finished, "
                "job = EXCLUDED.job",
                job["job_id"],
                float(job["created_at"]),
                now + self.settings.job_ttl_s,
                job["status"] in FINISHED,
                record,
            )
            # Expired jobs go, and finished ones beyond the newest `jobs_kept` (open ones stay to be resumed).
            await conn.execute(
                "DELETE FROM dataprep_jobs WHERE expires_at < $1 OR (finished AND job_id NOT IN "
                "(SELECT job_id FROM dataprep_jobs ORDER BY created_at DESC LIMIT $2))",
                now,
                self.settings.jobs_kept,
            )
            await conn.execute(
                "DELETE FROM dataprep_job_leases WHERE expires_at < extract(epoch FROM clock_timestamp()) - $1",
                float(self.settings.job_ttl_s),
            )

    async def claim_jobs(self, job_ids: Sequence[str], owner: str, lease_s: float) -> list[str]:
        if not job_ids:
            return []
        async with self.pg.connection() as conn:
            rows = await conn.fetch(
                "INSERT INTO dataprep_job_leases AS l (job_id, owner, expires_at) "
                "SELECT unnest($1::text[]), $2, extract(epoch FROM clock_timestamp()) + $3 "
                "ON CONFLICT (job_id) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at "
                "WHERE l.owner = EXCLUDED.owner OR l.expires_at < extract(epoch FROM clock_timestamp()) "
                "RETURNING job_id",
                list(job_ids),
                owner,
                float(lease_s),
            )
        held = {row[0] for row in rows}
        return [job_id for job_id in job_ids if job_id in held]

    async def open_jobs(self) -> list[dict[str, Any]]:
        return await self._jobs("NOT finished AND expires_at >= $1 ORDER BY job_id", time.time())

    async def load_job(self, job_id: str) -> dict[str, Any] | None:
        found = await self._jobs("job_id = $2 AND expires_at >= $1", time.time(), job_id)
        return found[0] if found else None

    async def recent_jobs(self, limit: int) -> list[dict[str, Any]]:
        return await self._jobs("expires_at >= $1 ORDER BY created_at DESC LIMIT $2", time.time(), limit)

    async def _jobs(self, where: str, *params: Any) -> list[dict[str, Any]]:
        async with self.pg.connection() as conn:
            rows = await conn.fetch(f"SELECT job::text FROM dataprep_jobs WHERE {where}", *params)  # noqa: S608
        return [json.loads(row[0]) for row in rows]
