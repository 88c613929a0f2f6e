"""Ingestion jobs survive a crash of dataprep (issue 12, defect 4): after a SIGKILL mid-ingestion, the next
dataprep resumes the jobs that were queued or running, fails with the reason a job whose uploaded bytes are
gone, and none stays unfinished. With two replicas on one Redis, each job is run by exactly one of them, and
the jobs of a replica SIGKILLed mid-job are taken over by the other once their lease expires. Real Redis,
real dataprep processes; the embedding service is a small batch-aware stand-in that can hold its answers,
so jobs are provably in flight when dataprep dies."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from aiohttp import web

from comps.dataprep.jobs import LOST_UPLOAD
from comps.runtime.process import free_port
from tests.support.procs import start_service
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

FINISHED = ("succeeded", "failed", "skipped")


class HeldEmbeddings:
    """``/v1/embeddings`` answering one small vector per input, only once ``release`` is set."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._release: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests += 1
        assert self._release is not None
        await self._release.wait()
        data = [{"index": i, "embedding": [float(len(t) % 7 + 1), 1.0, 0.5, float(i % 3)]}
                for i, t in enumerate(body["input"])]  # fmt: skip
        tokens = sum(len(t.split()) for t in body["input"])
        return web.json_response({"object": "list", "data": data, "model": "held",
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})  # fmt: skip

    async def _ready(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ready", "model": "held"})

    async def _start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/ready", self._ready)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> HeldEmbeddings:
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def release(self) -> None:
        assert self._release is not None
        self._loop.call_soon_threadsafe(self._release.set)

    def hold(self) -> None:
        assert self._release is not None
        asyncio.run_coroutine_threadsafe(self._clear(), self._loop).result(10)

    async def _clear(self) -> None:
        assert self._release is not None
        self._release.clear()

    def stop(self) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture
def embeddings() -> Iterator[HeldEmbeddings]:
    stub = HeldEmbeddings().start()
    yield stub
    stub.stop()


def test_jobs_survive_a_sigkill_of_dataprep(redis_url: str, embeddings: HeldEmbeddings, tmp_path: Path) -> None:
    collection = f"crash-{os.getpid()}"
    env = {
        "REDIS_URL": redis_url,
        "DATAPREP_EMBEDDING_URL": embeddings.url,
        "DATAPREP_WORKERS": "2",
        "DATAPREP_SPOOL_DIR": str(tmp_path / "spool"),
        "DATAPREP_JOB_LEASE_S": "2",  # the restarted process is another replica (another port): it waits for the lease
    }
    r = redis.Redis.from_url(redis_url)
    first = start_service("comps.dataprep", "DATAPREP_", env, log_dir=tmp_path)
    second = None
    try:
        files = [("files", (f"doc{i}.txt", f"Document {i} says {'something useful ' * (20 + i)}".encode()))
                 for i in range(6)]  # fmt: skip
        with httpx.Client(base_url=first.url, timeout=30) as c:
            answer = c.post("/v1/dataprep/ingest", files=files, data={"collection": collection})
            assert answer.status_code == 202, answer.text
            ids = [j["job_id"] for j in answer.json()["jobs"]]

            def states() -> list[str]:
                return [c.get(f"/v1/dataprep/jobs/{i}").json()["status"] for i in ids]

            wait_for(lambda: states().count("running") == 2 and embeddings.requests > 0, "two jobs embedding")
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.stop()
        before = [r.hget(f"dataprep:job:{i}", "status").decode() for i in ids]
        assert sorted(before) == ["queued"] * 4 + ["running"] * 2, before
        # One queued job loses its upload with the process (e.g. a spool on a temp disk).
        lost = next(i for i, s in zip(ids, before, strict=True) if s == "queued")
        Path(r.hget(f"dataprep:job:{lost}", "upload_path").decode()).unlink()
        embeddings.release()

        second = start_service("comps.dataprep", "DATAPREP_", env, log_dir=tmp_path)  # ready = recovered
        with httpx.Client(base_url=second.url, timeout=30) as c:
            jobs = wait_for(
                lambda: (
                    (js := c.get("/v1/dataprep/jobs", params={"ids": ",".join(ids)}).json()["jobs"])
                    and all(j["status"] in FINISHED for j in js)
                    and js
                ),
                "every job to finish after the restart",
            )
            by_id = {j["job_id"]: j for j in jobs}
            assert by_id[lost]["status"] == "failed" and by_id[lost]["error"] == LOST_UPLOAD
            assert sorted(j["status"] for j in jobs) == ["failed"] + ["succeeded"] * 5
            docs = c.post("/v1/dataprep/get", json={"collection": collection}).json()
            assert len(docs) == 5
        assert not set(ids) & {m.decode() for m in r.smembers("dataprep:jobs:open")}
        metrics = httpx.get(f"{second.url}/metrics").text
        assert 'chatqna_dataprep_jobs_recovered_total{outcome="resumed"} 5.0' in metrics
        assert 'chatqna_dataprep_jobs_recovered_total{outcome="failed"} 1.0' in metrics
    finally:
        for svc in (first, second):
            if svc is not None:
                svc.stop()
        r.close()


def metric(url: str, sample: str) -> float:
    """The value of one metric sample (name and labels, as exposed), 0 when absent."""
    found = re.search(rf"^{re.escape(sample)} (\S+)$", httpx.get(f"{url}/metrics").text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def ingest(url: str, collection: str, names: list[str]) -> list[str]:
    files = [("files", (n, f"{n} says {'something useful about {n} ' * 30}".encode())) for n in names]
    answer = httpx.post(f"{url}/v1/dataprep/ingest", files=files, data={"collection": collection}, timeout=30)
    assert answer.status_code == 202, answer.text
    return [j["job_id"] for j in answer.json()["jobs"]]


def statuses(url: str, ids: list[str]) -> dict[str, str]:
    jobs = httpx.get(f"{url}/v1/dataprep/jobs", params={"ids": ",".join(ids)}, timeout=30).json()["jobs"]
    return {j["job_id"]: j["status"] for j in jobs}


def test_two_replicas_run_each_job_once_and_take_over_a_dead_ones_jobs(
    redis_url: str, embeddings: HeldEmbeddings, tmp_path: Path
) -> None:
    collection = f"replicas-{os.getpid()}"
    lease_s = 2.0
    env = {
        "REDIS_URL": redis_url,
        "DATAPREP_EMBEDDING_URL": embeddings.url,
        "DATAPREP_WORKERS": "2",
        "DATAPREP_SPOOL_DIR": str(tmp_path / "spool"),  # shared: a replica that takes a job over reads its upload
        "DATAPREP_JOB_LEASE_S": str(lease_s),
    }
    r = redis.Redis.from_url(redis_url)
    a = start_service("comps.dataprep", "DATAPREP_", env, name="dataprep-a", log_dir=tmp_path)
    b = start_service("comps.dataprep", "DATAPREP_", env, name="dataprep-b", log_dir=tmp_path)
    try:
        succeeded = 'chatqna_dataprep_jobs_total{status="succeeded"}'
        taken = 'chatqna_dataprep_jobs_recovered_total{outcome="resumed"}'
        # 1. Both alive: each runs its own jobs, even while they are held for longer than a lease.
        ids_a = ingest(a.url, collection, [f"a{i}.txt" for i in range(4)])
        ids_b = ingest(b.url, collection, [f"b{i}.txt" for i in range(4)])
        wait_for(lambda: list(statuses(a.url, ids_a).values()).count("running") == 2, "a's jobs running")
        lease = f"dataprep:lease:{ids_a[0]}"
        assert r.get(lease) == f"{socket.gethostname()}:{a.port}".encode()
        renewals = {"n": 0, "ttl": r.pttl(lease)}

        def renewed() -> bool:  # a's heartbeat pushed the lease's expiry forward again
            ttl = r.pttl(lease)
            if ttl > renewals["ttl"]:
                renewals["n"] += 1
            renewals["ttl"] = ttl
            return renewals["n"] >= 5  # about 1.7 leases: an unrenewed lease would have expired by now

        wait_for(renewed, "five renewals of a running job's lease")
        assert r.get(lease) == f"{socket.gethostname()}:{a.port}".encode()
        embeddings.release()
        wait_for(lambda: set(statuses(a.url, ids_a + ids_b).values()) == {"succeeded"}, "the 8 jobs to succeed")
        assert (metric(a.url, succeeded), metric(b.url, succeeded)) == (4.0, 4.0)
        assert metric(a.url, taken) == metric(b.url, taken) == 0.0
        assert not r.keys("dataprep:lease:*")  # finished jobs hold no lease

        # 2. a is SIGKILLed mid-job: b takes its jobs over once their leases expire, and they finish once.
        embeddings.hold()
        ids = ingest(a.url, collection, [f"late{i}.txt" for i in range(4)])
        wait_for(lambda: list(statuses(a.url, ids).values()).count("running") == 2, "a's new jobs running")
        os.killpg(a.process.pid, signal.SIGKILL)
        a.process.stop()
        wait_for(lambda: metric(b.url, taken) == 4.0, "b to take over a's 4 jobs")
        assert {r.get(f"dataprep:lease:{i}") for i in ids} == {f"{socket.gethostname()}:{b.port}".encode()}
        embeddings.release()
        wait_for(lambda: set(statuses(b.url, ids).values()) == {"succeeded"}, "the taken-over jobs to succeed")
        assert metric(b.url, succeeded) == 8.0  # its own 4, and a's 4, each once
        docs = {d["source"]: d for d in httpx.post(f"{b.url}/v1/dataprep/get", json={"collection": collection}).json()}
        assert sorted(docs) == sorted([f"a{i}.txt" for i in range(4)] + [f"b{i}.txt" for i in range(4)]
                                      + [f"late{i}.txt" for i in range(4)])  # fmt: skip
        assert not set(ids) & {m.decode() for m in r.smembers("dataprep:jobs:open")}
    finally:
        a.stop()
        b.stop()
        r.close()
