"""Ingestion jobs survive a crash of dataprep (issue 12, defect 4): after a SIGKILL mid-ingestion, the next
dataprep resumes the jobs that were queued or running, fails with the reason a job whose uploaded bytes are
gone, and none stays unfinished. Real Redis, real dataprep processes; the embedding service is a small
batch-aware stand-in that can hold its answers, so jobs are provably in flight when dataprep dies."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from aiohttp import web

from comps.dataprep.jobs import LOST_UPLOAD
from comps.runtime.process import free_port
from tests.support.procs import start_service

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

    def stop(self) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture
def embeddings() -> Iterator[HeldEmbeddings]:
    stub = HeldEmbeddings().start()
    yield stub
    stub.stop()


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_jobs_survive_a_sigkill_of_dataprep(redis_url: str, embeddings: HeldEmbeddings, tmp_path: Path) -> None:
    collection = f"crash-{os.getpid()}"
    env = {
        "REDIS_URL": redis_url,
        "DATAPREP_EMBEDDING_URL": embeddings.url,
        "DATAPREP_WORKERS": "2",
        "DATAPREP_SPOOL_DIR": str(tmp_path / "spool"),
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
