"""The whole mesh on PostgreSQL: ``VECTORSTORE_BACKEND=pgvector`` makes the retriever and dataprep keep vectors
(and dataprep its jobs) in the embedded PostgreSQL, and no Redis is started. The ChatQnA suite's corpus is
ingested through the gateway and a question is answered citing the document that holds its answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from comps.runtime.mesh import Supervisor
from tests.e2e.test_chatqna import ADMIN, QUESTION, api_key, auth, collection, gateway, oai  # noqa: F401 (fixtures)
from tests.support.procs import local_mesh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sup(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    with local_mesh(models_dir, tmp_path_factory.mktemp("state"), ADMIN, VECTORSTORE_BACKEND="pgvector") as supervisor:
        yield supervisor


def test_the_mesh_runs_on_postgresql_alone(sup: Supervisor) -> None:
    assert sup.redis is None and sup.postgres is not None
    assert "redis" not in {name for name, *_ in sup.table()}
    assert sup.mesh is not None
    for name in ("retriever", "dataprep"):
        ready = httpx.get(f"{sup.mesh.url(name)}/v1/ready", timeout=10).json()
        assert ready["backend"].endswith("pgvector") and ready["pgvector"], ready  # dataprep: dataprep-pgvector


def test_an_ingested_document_answers_with_its_source(
    oai: openai.OpenAI,  # noqa: F811
    collection: str,  # noqa: F811
    gateway: str,  # noqa: F811
    auth: dict[str, str],  # noqa: F811
) -> None:
    done = oai.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=48,
        extra_body={"collection": collection},
    )
    sources = done.model_extra["sources"]
    assert sources[0]["source"] == "zorblax.txt" and "Idris Vantablack" in sources[0]["text"]
    assert done.choices[0].message.content.strip()
    docs = httpx.post(f"{gateway}/v1/dataprep/get", json={"collection": collection}, headers=auth, timeout=10)
    assert docs.status_code == 200 and {d["source"] for d in docs.json()} >= {"zorblax.txt", "pelmora.md"}, docs.text
