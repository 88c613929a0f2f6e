"""`chatqna up` with CHATQNA_LLM_MODELS: one LLM service per GGUF, and the gateway told which model is where."""

from __future__ import annotations

import json

import pytest

from comps.runtime.mesh import SERVICES, Mesh, services_for
from comps.runtime.settings import RuntimeSettings


def test_without_a_list_the_one_default_llm_runs() -> None:
    settings = RuntimeSettings()
    assert services_for(settings) == SERVICES
    gateway = Mesh(settings, "redis://x").env_for(next(s for s in SERVICES if s.name == "gateway"))
    assert "GATEWAY_MODELS" not in gateway and gateway["GATEWAY_LLM_URL"] == "http://127.0.0.1:9000"


def test_one_llm_service_per_listed_gguf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATQNA_LLM_MODELS", json.dumps({"smol": "a.gguf", "big": "/m/b.gguf"}))
    monkeypatch.setenv("LLM_PORT", "9100")
    settings = RuntimeSettings()
    specs = services_for(settings)
    names = [s.name for s in specs]
    assert "llm" not in names and names.count("llm-smol") == names.count("llm-big") == 1
    mesh = Mesh(settings, "redis://x", services=specs)
    envs = {s.name: mesh.env_for(s) for s in specs}
    assert (envs["llm-smol"]["LLM_MODEL"], envs["llm-smol"]["LLM_PORT"]) == ("a.gguf", "9100")
    assert (envs["llm-big"]["LLM_MODEL"], envs["llm-big"]["LLM_PORT"]) == ("/m/b.gguf", "9101")
    assert envs["llm-big"]["LLM_API_KEY"] == mesh.internal_token
    gateway = envs["gateway"]
    assert json.loads(gateway["GATEWAY_MODELS"]) == {"smol": "http://127.0.0.1:9100", "big": "http://127.0.0.1:9101"}
    assert gateway["GATEWAY_LLM_URL"] == "http://127.0.0.1:9100"  # the first is the default
