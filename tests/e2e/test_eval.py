"""`chatqna ingest` and `chatqna eval` on the real mesh: the shipped question set over the shipped handbook
(documents the project wrote, made-up facts), with the default models. Checks that the command runs end to
end and writes its report and chart, that retrieval finds the right documents, and that the answers end
(no answer runs to max_tokens repeating itself)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from comps.runtime import ingest
from comps.runtime.cli import app
from comps.runtime.mesh import Supervisor
from tests.support.procs import local_mesh

pytestmark = pytest.mark.e2e

EVAL = Path(__file__).parents[2] / "benchmarks" / "eval"


ADMIN = ("evaladmin", "eval-admin-password-1")


@pytest.fixture(scope="module")
def sup(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    with local_mesh(models_dir, tmp_path_factory.mktemp("state"), ADMIN) as supervisor:
        yield supervisor


def test_eval_runs_the_shipped_question_set(sup: Supervisor, tmp_path: Path) -> None:
    assert sup.mesh is not None
    gateway = sup.mesh.url("gateway")
    login = httpx.post(f"{gateway}/v1/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]}, timeout=30)
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    collection = f"eval-{uuid.uuid4().hex[:8]}"
    jobs = asyncio.run(ingest.run([EVAL / "handbook"], url=gateway, fields={"collection": collection}, api_key=token))
    assert {j["status"] for j in jobs.values()} == {"succeeded"}
    report, chart = tmp_path / "report.json", tmp_path / "chart.svg"
    args = ["eval", str(EVAL / "handbook.jsonl"), "--url", gateway, "--api-key", token]
    args += ["--set", f"collection={collection}", "--compare", f"rag:collection={collection},rerank=false"]
    result = CliRunner().invoke(app, [*args, "--report", str(report), "--chart", str(chart)])
    assert result.exit_code == 0, result.output
    assert "| source@1 |" in result.output and "| base | rag |" in result.output
    summary = json.loads(report.read_text())["summary"]
    for s in summary.values():
        assert s["errors"] == 0 and s["questions"] == 13
        assert s["source_at_k"] >= 0.75  # the handbook's three documents are easy to tell apart
        assert s["finish_reasons"].get("length", 0) <= 3  # answers end
    assert chart.read_text().startswith("<svg")
