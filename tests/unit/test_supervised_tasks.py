"""Long-lived background tasks cannot die unseen (issue 12, defect 5): a death is counted, shown by
readiness while the task is down, and the task restarted; a critical task's death makes the process fail
its liveness check and exit. Dataprep's job workers and embedding dispatcher run that way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY

from comps.core import tasks
from comps.core.errors import NotReady
from comps.core.tasks import TaskGroup
from comps.dataprep.embedder import ChunkEmbedder
from comps.dataprep.jobs import Job, JobRunner
from comps.dataprep.settings import DataprepSettings
from tests.unit.test_dataprep_embedder import FakeEmbeddings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_fatal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(tasks._FATAL, "reason", None)
    monkeypatch.setattr(tasks._FATAL, "exit", False)  # never SIGTERM the test process
    yield


async def until(check: Callable[[], bool]) -> None:
    while not check():  # noqa: ASYNC110 - polls state that no event announces
        await asyncio.sleep(0.005)


def deaths(task: str) -> float:
    return REGISTRY.get_sample_value("chatqna_background_task_deaths_total", {"task": task}) or 0.0


def test_a_dying_task_shows_in_readiness_and_metrics_and_is_restarted() -> None:
    async def main() -> None:
        group = TaskGroup("svc")
        runs: list[int] = []
        before = deaths("flaky")

        async def flaky() -> None:
            runs.append(1)
            if len(runs) == 1:
                raise RuntimeError("boom")
            await asyncio.Event().wait()

        group.spawn("flaky", flaky)
        await until(lambda: "flaky" in group.down)
        with pytest.raises(NotReady, match=r"svc background task down \(flaky: RuntimeError: boom\)"):
            group.check()
        assert deaths("flaky") == before + 1
        await until(lambda: len(runs) == 2)
        group.check()  # running again
        done = asyncio.Event()

        async def one_shot() -> None:
            done.set()

        group.spawn("one-shot", one_shot, once=True)  # returning is how a one-shot task ends: no death
        await done.wait()
        await asyncio.sleep(0)
        await group.stop()
        assert group.deaths == {"flaky": 1}

    asyncio.run(main())


def test_a_critical_task_death_is_fatal() -> None:
    async def main() -> None:
        group = TaskGroup("svc")

        async def engine() -> None:
            raise RuntimeError("the engine is gone")

        group.spawn("engine", engine, critical=True)
        await until(lambda: tasks.fatal_reason() is not None)
        await group.stop()

    asyncio.run(main())
    assert tasks.fatal_reason() == "background task engine died: RuntimeError: the engine is gone"


def test_a_fatal_process_fails_liveness_and_readiness() -> None:
    from fastapi.testclient import TestClient

    from comps.core.app import create_app
    from comps.core.settings import ServiceSettings

    class Fine:
        name = "fine"

        async def warm_up(self, http: object) -> None:
            return None

        async def check_ready(self) -> dict[str, object]:
            return {}

        async def close(self) -> None:
            return None

    app = create_app(ServiceSettings(service_name="svc"), backend=Fine())  # type: ignore[call-arg]
    with TestClient(app) as client:
        assert client.get("/v1/health_check").status_code == 200
        tasks.fatal("the generation engine stopped: RuntimeError: x")
        live, ready = client.get("/v1/health_check"), client.get("/v1/ready")
    assert live.status_code == 503 and "the generation engine stopped" in live.json()["error"]["message"]
    assert ready.status_code == 503 and "the process is stopping" in ready.json()["error"]["message"]


def test_a_job_whose_run_raises_fails_with_the_reason_and_its_worker_comes_back() -> None:
    async def main() -> tuple[list[str], list[str | None]]:
        async def run(job: Job) -> None:
            if job.source == "bad":
                raise RuntimeError("worker bug")
            job.finish("succeeded")

        saved: list[dict] = []

        async def save(record: dict) -> None:
            saved.append(record)

        runner = JobRunner(workers=1, max_queued=10, kept=10, run=run, save=save)
        runner.start()
        jobs = [Job(source=s, collection="c", chunk_size=100, chunk_overlap=0, tags=[]) for s in ("bad", "good")]
        runner.submit(jobs)
        await until(lambda: all(j.status in ("succeeded", "failed") for j in jobs))
        assert runner.tasks.deaths == {"dataprep-worker-0": 1}
        await runner.stop()
        return [j.status for j in jobs], [j.error for j in jobs]

    statuses, errors = asyncio.run(main())
    assert statuses == ["failed", "succeeded"]
    assert errors == ["internal error: RuntimeError: worker bug", None]


def test_the_embedding_dispatcher_is_restarted_and_waiting_chunks_are_served() -> None:
    async def main() -> int:
        emb = ChunkEmbedder(DataprepSettings(embedding_url="http://embedding"))  # type: ignore[call-arg]
        real = emb._live
        broken = {"left": 1}

        def live_once_broken() -> int:
            if broken["left"]:
                broken["left"] -= 1
                raise RuntimeError("dispatcher bug")
            return real()

        emb._live = live_once_broken  # type: ignore[method-assign]
        group = TaskGroup("dataprep")
        emb.start(FakeEmbeddings(), group)  # type: ignore[arg-type]

        async def progress(n: int) -> None:
            return None

        vectors, _ = await asyncio.wait_for(emb.embed(["abc", "de"], progress), 30)
        await emb.close()
        assert group.deaths == {"dataprep-embedding-dispatcher": 1}
        return len(vectors)

    assert asyncio.run(main()) == 2
