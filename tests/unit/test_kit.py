"""The service kit's pure parts: settings errors, the error envelope, backend registry."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from comps.core.backends import load_backend
from comps.core.errors import ConfigError, Overloaded, UpstreamTimeout, install_error_handlers
from comps.core.settings import ServiceSettings, load_settings

pytestmark = pytest.mark.unit


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_", extra="ignore", frozen=True)
    port: int = 1234
    batch: int = Field(default=8, ge=1)


def test_settings_read_prefixed_and_shared_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_PORT", "4321")
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    s = load_settings(DemoSettings)
    assert (s.port, s.log_format, s.otlp_endpoint) == (4321, "json", "http://127.0.0.1:4318")


def test_span_content_is_off_unless_the_shared_setting_allows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from comps.runtime.mesh import SERVICES, Mesh
    from comps.runtime.settings import RuntimeSettings

    assert load_settings(DemoSettings).trace_content is False  # a service's default (containers, Kubernetes)
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    assert load_settings(DemoSettings).trace_content is True
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
    local = Mesh(RuntimeSettings(), "redis://127.0.0.1:6379")  # `chatqna up`: on, for the developer's own machine
    assert {local.env_for(spec)["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] for spec in SERVICES} == {"true"}
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "false")
    private = Mesh(RuntimeSettings(), "redis://127.0.0.1:6379")
    assert {private.env_for(spec)["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] for spec in SERVICES} == {
        "false"
    }


def test_settings_error_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_BATCH", "0")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ConfigError) as err:
        load_settings(DemoSettings)
    msg = str(err.value)
    assert "DEMO_BATCH='0'" in msg and "greater than or equal to 1" in msg
    assert "LOG_FORMAT='xml'" in msg


def test_env_names_lists_every_variable() -> None:
    names = DemoSettings.env_names()
    assert {"DEMO_PORT", "DEMO_BATCH", "LOG_FORMAT", "OTEL_EXPORTER_OTLP_ENDPOINT", "CHATQNA_MODELS_DIR"} <= names
    assert "PORT" not in names


def test_unknown_backend_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"DEMO_BACKEND='nope' is not a known demo backend; valid: a, b"):
        load_backend("demo", {"a": "x:A", "b": "x:B"}, "nope", "DEMO_BACKEND")


class Body(BaseModel):
    n: int


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/n")
    async def n(body: Body) -> dict:
        return {"n": body.n}

    @app.get("/busy")
    async def busy() -> None:
        raise Overloaded("queue full", retry_after=3)

    @app.get("/slow")
    async def slow() -> None:
        raise UpstreamTimeout("llm did not answer within 5s", node="llm")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    return app


def test_errors_map_to_one_envelope() -> None:
    client = TestClient(_app(), raise_server_exceptions=False)
    r = client.post("/n", json={"n": "x"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "n" and r.json()["error"]["type"] == "invalid_request_error"
    r = client.get("/busy")
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.json() == {
        "error": {"message": "queue full", "type": "rate_limit_error", "param": None, "code": "queue_full"}
    }
    r = client.get("/slow")
    assert r.status_code == 504 and r.json()["error"]["code"] == "llm"
    r = client.get("/boom")
    assert r.status_code == 500 and "secret" not in r.text
    assert r.json()["error"]["type"] == "internal_error"
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
