"""Dataprep's store with job status in Redis (the default, ``VECTORSTORE_BACKEND=redis``); documents go to the
vector store (`store.VectorDocuments`). Job status lives in ``dataprep:job:<id>`` hashes (fields of
`JobInfo` plus what resuming it needs, unset ones absent) with a TTL, indexed by the sorted set
``dataprep:jobs`` (score: creation time); the set ``dataprep:jobs:open`` holds the ids of jobs not finished.
A job's owner (the replica running it) holds the key ``dataprep:lease:<id>`` (its replica id, with a TTL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from comps.dataprep.backends.store import VectorDocuments
from comps.dataprep.protocol import FINISHED
from comps.dataprep.settings import DataprepSettings
from comps.vectorstore.client import redacted, redis_errors
from comps.vectorstore.redis_store import RedisVectorStore

JOB_PREFIX = "dataprep:job:"
JOBS_INDEX = "dataprep:jobs"
OPEN_JOBS = "dataprep:jobs:open"
LEASE_PREFIX = "dataprep:lease:"

# KEYS: lease keys; ARGV: owner, lease ms. Takes (or keeps) each lease that is free or already the owner's;
# returns 1/0 per key: held by the owner now, or by another replica.
CLAIM = """
local held = {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if not owner or owner == ARGV[1] then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    held[i] = 1
  else
    held[i] = 0
  end
end
return held
"""


class RedisDocumentStore(VectorDocuments):
    """Documents and job status in the one Redis (``VECTORSTORE_BACKEND=redis``)."""

    def __init__(self, settings: DataprepSettings) -> None:
        super().__init__(settings)
        self.where = redacted(settings.redis_url)

    @property
    def r(self) -> aioredis.Redis:
        assert isinstance(self.vectors, RedisVectorStore)
        return self.vectors.r

    async def save_job(self, job: dict[str, Any]) -> None:
        key = JOB_PREFIX + job["job_id"]
        with redis_errors(self.where):
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping={k: str(v) for k, v in job.items() if v is not None})
                pipe.expire(key, self.settings.job_ttl_s)
                pipe.zadd(JOBS_INDEX, {job["job_id"]: job["created_at"]})
                pipe.zremrangebyrank(JOBS_INDEX, 0, -self.settings.jobs_kept - 1)
                if job["status"] in FINISHED:
                    pipe.srem(OPEN_JOBS, job["job_id"])
                    pipe.delete(LEASE_PREFIX + job["job_id"])
                else:
                    pipe.sadd(OPEN_JOBS, job["job_id"])
                await pipe.execute()

    async def open_jobs(self) -> list[dict[str, Any]]:
        with redis_errors(self.where):
            ids = sorted(m.decode() for m in await self.r.smembers(OPEN_JOBS))
            if not ids:
                return []
            async with self.r.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(JOB_PREFIX + job_id)
                raws = await pipe.execute()
            gone = [job_id for job_id, raw in zip(ids, raws, strict=True) if not raw]
            if gone:  # expired: nothing left to resume or to report
                await self.r.srem(OPEN_JOBS, *gone)
        return [_decode(raw) for raw in raws if raw]

    async def claim_jobs(self, job_ids: Sequence[str], owner: str, lease_s: float) -> list[str]:
        if not job_ids:
            return []
        with redis_errors(self.where):
            held = await self.r.eval(CLAIM, len(job_ids), *(LEASE_PREFIX + i for i in job_ids), owner,
                                     max(1, round(lease_s * 1000)))  # fmt: skip
        return [job_id for job_id, ok in zip(job_ids, held, strict=True) if ok]

    async def load_job(self, job_id: str) -> dict[str, Any] | None:
        with redis_errors(self.where):
            raw = await self.r.hgetall(JOB_PREFIX + job_id)
        return _decode(raw) if raw else None

    async def recent_jobs(self, limit: int) -> list[dict[str, Any]]:
        with redis_errors(self.where):
            ids = await self.r.zrevrange(JOBS_INDEX, 0, limit - 1)
            if not ids:
                return []
            async with self.r.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(JOB_PREFIX + job_id.decode())
                raws = await pipe.execute()
        return [_decode(raw) for raw in raws if raw]


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}
