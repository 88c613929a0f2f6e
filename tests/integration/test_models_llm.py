"""Two models behind one gateway on real llama.cpp: two LLM service processes (the default GGUF under two names),
a real gateway routing by ``model``, its model list and the model facts the LLM services report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from comps.runtime.models import DEFAULT_LLM
from tests.support.procs import Service, start_service

pytestmark = pytest.mark.integration

N_CTX = 512
LLM_ENV = {"LLM_N_CTX": str(N_CTX), "LLM_PARALLEL": "1", "LLM_N_BATCH": "64", "LLM_N_THREADS": "1"}


@pytest.fixture(scope="module")
def gateway(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    logs = tmp_path_factory.mktemp("models")
    started: list[Service] = []
    try:
        for name in ("smol-a", "smol-b"):
            started.append(start_service("comps.llm", "LLM_", LLM_ENV, name=f"llm-{name}", log_dir=logs))
        env = {
            "GATEWAY_AUTH_ENABLED": "false",
            "GATEWAY_PIPELINE": "llm-only",
            "GATEWAY_MODELS": json.dumps({"smol-a": started[0].url, "smol-b": started[1].url}),
            "GATEWAY_DEFAULT_MODEL": "smol-b",
            "GATEWAY_CHATHISTORY_URL": "",
            "GATEWAY_PROMPTS_URL": "",
        }
        started.append(start_service("megaservice", "GATEWAY_", env, name="gateway", log_dir=logs))
        yield started[-1]
    finally:
        for svc in reversed(started):
            svc.stop()


def test_two_real_models_answer_through_one_gateway_and_are_listed(gateway: Service) -> None:
    with httpx.Client(base_url=gateway.url, timeout=120) as client:
        listed = client.get("/v1/models").json()["data"]
        assert [(m["id"], m["status"], m["root"]) for m in listed] == [
            ("smol-a", "ready", DEFAULT_LLM),
            ("smol-b", "ready", DEFAULT_LLM),
        ]
        for model in ("smol-a", "smol-b", None):
            body = {"messages": "Say hello.", "max_tokens": 8, "temperature": 0}
            if model:
                body["model"] = model
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["choices"][0]["message"]["content"]
            assert answer["usage"]["completion_tokens"] >= 1
        assert client.post("/v1/chat/completions", json={"messages": "hi", "model": "smol-c"}).status_code == 404


def test_model_info_names_backend_file_quantisation_window_and_slots(gateway: Service) -> None:
    info = httpx.get(gateway.url + "/v1/admin/model/info", timeout=30).json()
    assert info["default"] == "smol-b"
    for model in info["models"]:
        assert model["status"] == "ready"
        assert model["backend"] == "llama-cpp"
        assert Path(model["file"]).name == DEFAULT_LLM
        assert model["quantisation"] == "Q4_1"
        assert (model["context_window"], model["parallel_slots"], model["gpu_layers"]) == (N_CTX, 1, 0)
        assert model["slots_in_use"] == 0 and model["queue_waiting"] == 0


def test_chatqna_up_starts_one_llm_service_per_listed_gguf(models_dir: Path, tmp_path: Path) -> None:
    """The runtime's supervisor (what `chatqna up` runs) with CHATQNA_LLM_MODELS: one real LLM process per model."""
    from comps.runtime.mesh import Supervisor
    from comps.runtime.settings import RuntimeSettings
    from tests.support.procs import free_runtime_ports

    settings = RuntimeSettings(
        CHATQNA_STATE_DIR=tmp_path,
        CHATQNA_MODELS_DIR=models_dir,
        CHATQNA_READY_TIMEOUT_S=300,
        CHATQNA_LLM_MODELS={"first": DEFAULT_LLM, "second": str(models_dir / DEFAULT_LLM)},
        **free_runtime_ports(),
    )
    supervisor = Supervisor(settings, only={"llm"}, out=lambda line: None)
    supervisor.start()
    try:
        assert set(supervisor.procs) == {"llm-first", "llm-second"}
        assert supervisor.mesh is not None
        for name in supervisor.procs:
            ready = httpx.get(supervisor.mesh.url(name) + "/v1/ready", timeout=30).json()
            assert ready["model"] == DEFAULT_LLM and ready["status"] == "ready"
        assert supervisor.mesh.url("llm-second").endswith(f":{settings.llm_port + 1}")
    finally:
        supervisor.stop()
