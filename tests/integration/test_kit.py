"""The service kit across real processes: readiness, errors, metrics, request ids, shutdown, Redis."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from comps.runtime.process import free_port
from tests.support.procs import REPO
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration
MODULE = "tests.support.relay_service"


def test_readiness_flips_from_503_to_200_when_backend_is_ready(service_factory, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    svc = service_factory(MODULE, "RELAY_", {"RELAY_READY_FILE": str(gate)}, wait="live")
    r = httpx.get(f"{svc.url}/v1/ready")
    assert r.status_code == 503
    assert r.json()["error"]["message"] == "file-gated backend is warming up"
    assert httpx.get(f"{svc.url}/v1/health_check").status_code == 200
    r = httpx.post(f"{svc.url}/v1/echo", json={"text": "a"})
    assert r.status_code == 503 and "warming up" in r.json()["error"]["message"]
    gate.touch()
    deadline = time.monotonic() + 10
    while httpx.get(f"{svc.url}/v1/ready").status_code != 200:
        assert time.monotonic() < deadline, "readiness never flipped"
        time.sleep(0.05)
    body = httpx.get(f"{svc.url}/v1/ready").json()
    assert body["status"] == "ready" and body["backend"] == "file-gated" and body["gate"] == str(gate)
    assert httpx.post(f"{svc.url}/v1/echo", json={"text": "a", "count": 2}).json() == {"text": "aa"}
    gate.unlink()  # readiness really asks the backend each time
    assert httpx.get(f"{svc.url}/v1/ready").status_code == 503


@pytest.fixture(scope="module")
def relay_pair(tmp_path_factory: pytest.TempPathFactory):
    from tests.support.procs import start_service

    logs = tmp_path_factory.mktemp("relay")
    down = start_service(MODULE, "RELAY_", {"RELAY_SERVICE_NAME": "down"}, name="down", log_dir=logs)
    up = start_service(MODULE, "RELAY_", {"RELAY_DOWNSTREAM_URL": down.url}, name="up", log_dir=logs)
    yield up, down
    up.stop()
    down.stop()


def test_bad_json_and_wrong_types_get_the_envelope(relay_pair) -> None:
    up, _ = relay_pair
    r = httpx.post(f"{up.url}/v1/echo", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "not valid JSON" in err["message"]
    r = httpx.post(f"{up.url}/v1/echo", json={"text": ["list"], "count": 9})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "text" and "(and 1 more error(s))" in err["message"]
    r = httpx.get(f"{up.url}/v1/nope")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_metrics_count_requests_per_route(relay_pair) -> None:
    up, _ = relay_pair
    httpx.post(f"{up.url}/v1/echo", json={"text": "x"})
    httpx.post(f"{up.url}/v1/echo", json={"text": 1})
    text = httpx.get(f"{up.url}/metrics").text
    ok = re.search(
        r'chatqna_http_requests_total\{method="POST",route="/v1/echo",service="relay",status="200"\} (\S+)', text
    )
    bad = re.search(
        r'chatqna_http_requests_total\{method="POST",route="/v1/echo",service="relay",status="400"\} (\S+)', text
    )
    assert ok and float(ok.group(1)) >= 1
    assert bad and float(bad.group(1)) >= 1
    assert 'chatqna_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/echo"' in text


def test_request_id_and_trace_context_cross_two_processes(relay_pair) -> None:
    up, _ = relay_pair
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"x-request-id": "req-abc-123", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    r = httpx.get(f"{up.url}/v1/relay", headers=headers)
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-abc-123"
    seen = r.json()["seen_downstream"]
    assert seen["request_id"] == "req-abc-123"
    _, tid, span_id, _ = seen["traceparent"].split("-")
    assert tid == trace_id and span_id != "00f067aa0ba902b7"
    # without a request id, one is generated and still propagated
    r = httpx.get(f"{up.url}/v1/relay")
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    assert r.json()["seen_downstream"]["request_id"] == r.headers["x-request-id"]


def test_downstream_failure_names_the_node(service_factory) -> None:
    up = service_factory(MODULE, "RELAY_", {"RELAY_DOWNSTREAM_URL": f"http://127.0.0.1:{free_port()}"})
    r = httpx.get(f"{up.url}/v1/relay")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "downstream" and "unreachable" in r.json()["error"]["message"]


def test_bearer_auth_protects_routes_but_not_probes(service_factory) -> None:
    svc = service_factory(MODULE, "RELAY_", {"RELAY_API_KEY": "s3cret"})
    assert httpx.post(f"{svc.url}/v1/echo", json={"text": "a"}).status_code == 401
    r = httpx.post(f"{svc.url}/v1/echo", json={"text": "a"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(f"{svc.url}/v1/echo", json={"text": "a"}, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200
    assert httpx.get(f"{svc.url}/v1/ready").status_code == 200


def test_shutdown_drains_in_flight_requests(service_factory, tmp_path: Path) -> None:
    svc = service_factory(MODULE, "RELAY_", {"RELAY_DRAIN_TIMEOUT_S": "10"})
    result: dict = {}
    started = tmp_path / "started"

    def call() -> None:
        params = {"seconds": 1.5, "started": str(started)}
        result["resp"] = httpx.get(f"{svc.url}/v1/slow", params=params, timeout=10)

    t = threading.Thread(target=call)
    t.start()
    wait_for(started.exists, "the slow request to be in flight", 30)
    svc.process.proc.send_signal(15)  # SIGTERM while the request is in flight
    t.join(10)
    assert result["resp"].status_code == 200 and result["resp"].json() == {"slept": 1.5}
    assert svc.process.proc.wait(10) in (0, -15)  # uvicorn re-raises SIGTERM after draining


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RELAY_PORT": "eighty"}, "RELAY_PORT='eighty'"),
        ({"RELAY_MAX_ITEMS": "0"}, "RELAY_MAX_ITEMS='0'"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL='LOUD'"),
    ],
)
def test_invalid_configuration_fails_at_start_naming_the_variable(env: dict, expected: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", MODULE], env={**_base_env(), **env}, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "configuration error" in proc.stderr and expected in proc.stderr


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}


def test_embedded_redis_keeps_data_across_restart(tmp_path: Path) -> None:
    import redis

    from comps.runtime.redis_server import EmbeddedRedis
    from comps.vectorstore import schema

    port = free_port()
    with EmbeddedRedis(tmp_path / "data", port) as srv:

        async def write() -> None:
            r = schema.connect(srv.url)
            await schema.ensure_index(r, "persist", 3, model="m")
            await r.hset(
                schema.chunk_key("persist", "d", 1, 0),
                mapping={
                    "text": "the vault code is 7741",
                    "embedding": schema.vector_bytes([1, 0, 0]),
                    "source": "a.txt",
                    "doc_id": "d",
                    "page": 1,
                    "chunk": 0,
                },
            )
            await r.aclose()

        asyncio.run(write())
    with EmbeddedRedis(tmp_path / "data", port) as srv:
        client = redis.Redis(port=port)
        assert client.hget("persist:chunk:d:1:0", "text") == b"the vault code is 7741"
        res = client.ft("persist").search("vault")
        assert res.total == 1 and res.docs[0].id == "persist:chunk:d:1:0"
        client.close()


def test_spans_are_exported_over_otlp_when_configured(service_factory) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies: list[bytes] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        svc = service_factory(
            MODULE,
            "RELAY_",
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
        trace_id = "0af7651916cd43dd8448eb211c80319c"
        httpx.post(
            f"{svc.url}/v1/echo", json={"text": "a"}, headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
        )
        deadline = time.monotonic() + 10
        while not any(bytes.fromhex(trace_id) in body for _, body in bodies):
            assert time.monotonic() < deadline, f"no span with the trace id reached the collector: {len(bodies)} posts"
            time.sleep(0.1)
        assert all(path == "/v1/traces" for path, _ in bodies)
        assert any(b"POST /v1/echo" in body for _, body in bodies)
    finally:
        collector.shutdown()


def test_no_export_without_endpoint(relay_pair) -> None:
    # nothing configured: the service works and exposes no exporter errors in its log
    up, _ = relay_pair
    assert httpx.post(f"{up.url}/v1/echo", json={"text": "b"}).status_code == 200
    assert "Exception while exporting" not in up.process.last_output(200)


def test_request_bodies_over_the_limit_get_413(service_factory) -> None:
    svc = service_factory(MODULE, "RELAY_", {"RELAY_MAX_BODY_BYTES": "1000"})
    r = httpx.post(f"{svc.url}/v1/echo", json={"text": "x" * 2000})
    assert r.status_code == 413
    assert r.json()["error"] == {
        "message": "request body is over the limit of 1000 bytes",
        "type": "invalid_request_error",
        "param": None,
        "code": "body_too_large",
    }

    def chunked():  # no Content-Length: the limit is enforced while the body is read
        yield b'{"text": "'
        for _ in range(20):
            yield b"y" * 100
        yield b'"}'

    r = httpx.post(f"{svc.url}/v1/echo", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert httpx.post(f"{svc.url}/v1/echo", json={"text": "small"}).json() == {"text": "small"}
