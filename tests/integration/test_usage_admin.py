"""Usage accounting, the admin API and many models behind one gateway, through a real gateway process.

A real gateway with auth on and a real PostgreSQL, a real chathistory process, and stub embedding/retriever/
reranker services with two stub LLM services, declared as the models ``alpha`` and ``beta`` (and ``gamma``, whose
service is down). Another gateway reaches PostgreSQL through a relay the test cuts: requests go on while the store
is away, and their records are written once it is back.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from comps.runtime.process import free_port
from tests.support.procs import Service, start_chathistory, start_service
from tests.support.stubs import TOKENS, StubMesh
from tests.support.tcp_gate import TcpGate

pytestmark = pytest.mark.integration

JWT_SECRET = secrets.token_urlsafe(48)
INTERNAL = secrets.token_urlsafe(32)
ADMIN = ("usage-admin", "admin-pass-" + secrets.token_hex(6))
ADMIN_ROUTES = ("/v1/admin/usage", "/v1/admin/system", "/v1/admin/sessions/count", "/v1/admin/model/info")
TODAY = datetime.now(UTC).date()


@dataclass
class Stack:
    gateway: Service
    mesh: StubMesh
    beta: StubMesh
    logs: Path

    def login(self, username: str, password: str) -> httpx.Client:
        r = httpx.post(f"{self.gateway.url}/v1/auth/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return self.client(r.json()["access_token"])

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.gateway.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("usage")
    with StubMesh() as mesh, StubMesh(only=("llm",)) as beta:
        chathistory = start_chathistory(database_url, INTERNAL, logs)
        models = {"alpha": mesh.url("llm"), "beta": beta.url("llm"), "gamma": f"http://127.0.0.1:{free_port()}"}
        env = {
            **mesh.env(),
            "GATEWAY_AUTH_ENABLED": "true",
            "DATABASE_URL": database_url,
            "GATEWAY_JWT_SECRET": JWT_SECRET,
            "GATEWAY_INTERNAL_API_KEY": INTERNAL,
            "GATEWAY_CHATHISTORY_URL": chathistory.url,
            "GATEWAY_PROMPTS_URL": "",
            "GATEWAY_DATAPREP_URL": f"http://127.0.0.1:{free_port()}",
            "GATEWAY_MODELS": json.dumps(models),
            "GATEWAY_DEFAULT_MODEL": "alpha",
            "GATEWAY_USAGE_FLUSH_S": "0.1",
            "CHATQNA_ADMIN_USER": ADMIN[0],
            "CHATQNA_ADMIN_PASSWORD": ADMIN[1],
        }
        gateway = start_service("megaservice", "GATEWAY_", env, name="gateway", log_dir=logs, timeout_s=120)
        try:
            yield Stack(gateway, mesh, beta, logs)
        finally:
            gateway.stop()
            chathistory.stop()


@pytest.fixture(scope="module")
def admin(stack: Stack) -> httpx.Client:
    return stack.login(*ADMIN)


def make_user(stack: Stack, admin: httpx.Client) -> tuple[str, httpx.Client]:
    name, password = f"u{secrets.token_hex(4)}", "pw-" + secrets.token_hex(8)
    r = admin.post("/v1/admin/users", json={"username": name, "password": password, "role": "user"})
    assert r.status_code == 201, r.text
    return r.json()["id"], stack.login(name, password)


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Poll ``check`` until it gives something truthy (the usage writer flushes every 0.1 s)."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def ask(client: httpx.Client, model: str | None = None, stream: bool = False) -> httpx.Response:
    body: dict[str, Any] = {"messages": "What is the Zorblax fact?", "stream": stream}
    if model is not None:
        body["model"] = model
    return client.post("/v1/chatqna", json=body)


def assert_envelope(r: httpx.Response, status: int | tuple[int, ...], error_type: str | None = None) -> dict[str, Any]:
    assert r.status_code in ((status,) if isinstance(status, int) else status), r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if error_type:
        assert error["type"] == error_type
    return error


# -- many models ------------------------------------------------------------------------------------------


def test_two_models_answer_through_one_gateway_and_are_listed(stack: Stack, admin: httpx.Client) -> None:
    listed = admin.get("/v1/models").json()
    assert listed["object"] == "list"
    assert {m["id"]: m["status"] for m in listed["data"]} == {"alpha": "ready", "beta": "ready", "gamma": "unreachable"}
    assert all(m["object"] == "model" for m in listed["data"])

    before_alpha, before_beta = len(stack.mesh.seen["llm"]), len(stack.beta.seen["llm"])
    assert ask(admin, "beta").status_code == 200
    assert (len(stack.mesh.seen["llm"]), len(stack.beta.seen["llm"])) == (before_alpha, before_beta + 1)
    assert stack.beta.seen["llm"][-1]["model"] == "beta"
    assert ask(admin, "alpha", stream=True).status_code == 200
    assert ask(admin).status_code == 200  # no model: the default, alpha
    assert (len(stack.mesh.seen["llm"]), len(stack.beta.seen["llm"])) == (before_alpha + 2, before_beta + 1)


def test_an_unknown_model_is_a_404_naming_the_models(admin: httpx.Client) -> None:
    error = assert_envelope(ask(admin, "gpt-17"), 404, "not_found_error")
    assert error["param"] == "model"
    assert all(name in error["message"] for name in ("gpt-17", "alpha", "beta", "gamma"))


def test_models_status_says_ready_loading_unreachable_and_why(stack: Stack, admin: httpx.Client) -> None:
    stack.beta.knobs["llm"].ready = False
    try:
        status = admin.get("/v1/models/status").json()
    finally:
        stack.beta.knobs["llm"].ready = True
    assert status["default"] == "alpha"
    by_id = {m["id"]: m for m in status["models"]}
    assert by_id["alpha"]["status"] == "ready" and by_id["alpha"]["reason"] is None
    assert by_id["alpha"]["service"] == stack.mesh.url("llm")
    assert by_id["beta"]["status"] == "loading" and "warming up" in by_id["beta"]["reason"]
    assert by_id["gamma"]["status"] == "unreachable" and "unreachable" in by_id["gamma"]["reason"]


# -- usage ------------------------------------------------------------------------------------------------


def test_usage_rows_appear_after_requests(stack: Stack, admin: httpx.Client) -> None:
    user_id, user = make_user(stack, admin)
    assert ask(user, "alpha").status_code == 200
    assert ask(user, "beta").status_code == 200
    r = ask(user, "beta", stream=True)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    stack.mesh.knobs["llm"].status = 500
    try:
        assert ask(user, "alpha").status_code == 502
    finally:
        stack.mesh.knobs["llm"].status = 200

    def own() -> list[dict[str, Any]] | None:
        body = user.get("/v1/usage").json()
        rows = body["rows"]
        return rows if sum(row["requests"] for row in rows) == 4 else None

    rows = wait_for(own, "the user's 4 usage records")
    by_model = {row["model"]: row for row in rows}
    n = len(TOKENS)
    assert by_model["alpha"] | {"day": None} == {
        "day": None, "model": "alpha", "requests": 2, "prompt_tokens": 11, "completion_tokens": n,
        "cache_hits": 0, "errors": 1,
    }  # fmt: skip
    assert by_model["beta"] | {"day": None} == {
        "day": None, "model": "beta", "requests": 2, "prompt_tokens": 22, "completion_tokens": 2 * n,
        "cache_hits": 0, "errors": 0,
    }  # fmt: skip
    assert {row["day"] for row in rows} == {str(TODAY)}

    # the admin's view of the same: by user, with median times
    body = admin.get("/v1/admin/usage", params={"group_by": "user"}).json()
    assert body["group_by"] == "user" and body["to"] == str(TODAY)
    mine = next(row for row in body["rows"] if row["key"] == user_id)
    assert (mine["requests"], mine["prompt_tokens"], mine["completion_tokens"], mine["errors"]) == (4, 33, 3 * n, 1)
    assert mine["total_ms_p50"] > 0 and mine["ttft_ms_p50"] > 0  # the one stream has a time to first token
    assert mine["username"].startswith("u")


def test_usage_by_api_key_model_and_day(stack: Stack, admin: httpx.Client) -> None:
    _, user = make_user(stack, admin)
    created = user.post("/v1/auth/keys", json={"name": "bench"}).json()
    with stack.client(created["key"]) as by_key:
        assert ask(by_key, "beta").status_code == 200

    def key_row() -> dict[str, Any] | None:
        rows = admin.get("/v1/admin/usage", params={"group_by": "api_key"}).json()["rows"]
        return next((row for row in rows if row["key"] == created["id"]), None)

    row = wait_for(key_row, "the API key's usage row")
    assert row["requests"] == 1 and "username" not in row
    models = {row["key"] for row in admin.get("/v1/admin/usage", params={"group_by": "model"}).json()["rows"]}
    assert {"alpha", "beta"} <= models
    days = admin.get("/v1/admin/usage", params={"group_by": "day", "from": str(TODAY - timedelta(days=3))}).json()
    assert [row["key"] for row in days["rows"]] == [str(TODAY)]
    empty = admin.get("/v1/admin/usage", params={"from": "2020-01-01", "to": "2020-01-31"}).json()
    assert empty == {"from": "2020-01-01", "to": "2020-01-31", "group_by": "user", "rows": []}


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/v1/usage", {"from": "2026-02-01", "to": "2026-01-01"}, 400),  # inverted
        ("/v1/admin/usage", {"from": "2026-02-01", "to": "2026-01-01"}, 400),
        ("/v1/usage", {"from": "2000-01-01", "to": "2026-01-01"}, 400),  # over a year
        ("/v1/admin/usage", {"from": "2000-01-01", "to": "2026-01-01"}, 400),
        ("/v1/admin/usage", {"group_by": "password"}, (400, 422)),
        ("/v1/admin/usage", {"group_by": ""}, (400, 422)),
        ("/v1/usage", {"from": "2026-13-45"}, (400, 422)),
        ("/v1/usage", {"to": "yesterday"}, (400, 422)),
        ("/v1/admin/usage", {"from": "2026-01-01T00:00:00Z"}, (400, 422)),
        ("/v1/admin/sessions/count", {"active_within_s": "-5"}, (400, 422)),
    ],
)
def test_bad_usage_queries_are_4xx_in_the_envelope(
    admin: httpx.Client, path: str, params: dict[str, str], status: int | tuple[int, ...]
) -> None:
    assert_envelope(admin.get(path, params=params), status)


# -- the admin API ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ADMIN_ROUTES)
def test_every_admin_route_answers_an_admin_and_refuses_a_user(stack: Stack, admin: httpx.Client, path: str) -> None:
    assert admin.get(path).status_code == 200
    _, user = make_user(stack, admin)
    error = assert_envelope(user.get(path), 403, "permission_error")
    assert "admin" in error["message"]
    assert httpx.get(stack.gateway.url + path).status_code == 401


def test_system_reports_each_service_queues_store_and_processes(stack: Stack, admin: httpx.Client) -> None:
    body = admin.get("/v1/admin/system").json()
    assert body["uptime_s"] > 0
    services = {s["name"]: s for s in body["services"]}
    assert services["llm:alpha"]["ready"] and services["llm:alpha"]["url"] == stack.mesh.url("llm")
    assert services["embedding"]["ready"] and services["chathistory"]["ready"]
    assert services["llm:gamma"]["ready"] is False and "unreachable" in services["llm:gamma"]["detail"]
    assert services["dataprep"]["ready"] is False  # nothing listens there
    assert set(body["queues"]) >= {"usage_buffer", "llm:alpha", "llm:beta"}
    assert set(body["llm_slots"]) == {"llm:alpha", "llm:beta", "llm:gamma"}
    assert body["store"]["status"] == "ready"
    assert body["usage"]["dropped"] == 0 and body["usage"]["last_error"] is None
    assert "status" in body["cache"]
    processes = {p["name"]: p for p in body["processes"]}
    assert processes["gateway"]["rss_bytes"] > 0 and processes["gateway"]["cpu_s"] > 0
    assert processes["chathistory"]["pid"] == stack_pid(services["chathistory"])


def stack_pid(service: dict[str, Any]) -> int:
    pid: int = service["detail"]["process"]["pid"]
    return pid


def test_sessions_count_counts_conversations_and_active_users(stack: Stack, admin: httpx.Client) -> None:
    before = admin.get("/v1/admin/sessions/count").json()
    _, user = make_user(stack, admin)
    for _ in range(2):
        assert user.post("/v1/conversations", json={"title": "t"}).status_code == 201
    after = admin.get("/v1/admin/sessions/count").json()
    assert after["conversations"] == before["conversations"] + 2
    assert after["users"] == before["users"] + 1
    assert after["active_users"] == before["active_users"] + 1
    assert after["active_within_s"] == 3600


def test_model_info_lists_every_model_with_its_status(stack: Stack, admin: httpx.Client) -> None:
    body = admin.get("/v1/admin/model/info").json()
    assert body["default"] == "alpha"
    by_id = {m["id"]: m for m in body["models"]}
    assert set(by_id) == {"alpha", "beta", "gamma"}
    assert by_id["alpha"]["status"] == "ready" and by_id["gamma"]["status"] == "unreachable"
    assert by_id["alpha"]["service"] == stack.mesh.url("llm")


# -- a store outage ---------------------------------------------------------------------------------------


def test_a_store_outage_never_fails_a_request_and_loses_no_record(database_url: str, tmp_path: Path) -> None:
    url = make_url(database_url)
    gate = TcpGate(url.host or "127.0.0.1", url.port or 5432).start()
    through_gate = url.set(host="127.0.0.1", port=gate.port).render_as_string(hide_password=False)
    with StubMesh() as mesh:
        env = {**mesh.env(), "DATABASE_URL": through_gate, "GATEWAY_USAGE_FLUSH_S": "0.1"}
        gateway = start_service("megaservice", "GATEWAY_", env, name="gateway-gated", log_dir=tmp_path)
        try:
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                assert ask(client, stream=True).status_code == 200
                wait_for(lambda: total(client) == 1, "the first record")
                gate.cut()
                for n in range(20):
                    r = ask(client, stream=n % 2 == 0)
                    assert r.status_code == 200, r.text  # the request does not wait on the store
                usage = wait_for(
                    lambda: (
                        (u := client.get("/v1/admin/system").json()["usage"])["last_error"]
                        and u["buffered"] == 20
                        and u
                    ),
                    "the writer to keep the 20 records through the outage",
                )
                assert usage["dropped"] == 0 and usage["written"] == 1
                assert client.get("/v1/ready").status_code == 200  # usage alone does not need the store
                gate.open()
                wait_for(lambda: total(client) == 21, "the records kept in memory to be written")
                assert client.get("/v1/admin/system").json()["usage"]["last_error"] is None
        finally:
            gateway.stop()
            gate.stop()


def total(client: httpx.Client) -> int:
    r = client.get("/v1/usage")
    return sum(row["requests"] for row in r.json()["rows"]) if r.status_code == 200 else -1


def test_records_in_memory_are_written_when_the_gateway_stops(database_url: str, tmp_path: Path) -> None:
    with StubMesh() as mesh:
        env = {**mesh.env(), "DATABASE_URL": database_url, "GATEWAY_USAGE_FLUSH_S": "60",
               "GATEWAY_DEFAULT_MODEL": "stopping"}  # fmt: skip
        gateway = start_service("megaservice", "GATEWAY_", env, name="gateway-stopping", log_dir=tmp_path)
        try:
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                for _ in range(3):
                    assert ask(client).status_code == 200
                assert client.get("/v1/admin/system").json()["usage"]["buffered"] == 3  # not written yet
        finally:
            gateway.stop()  # SIGTERM: the gateway writes what it holds before it exits

    async def count() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM usage_events WHERE model = 'stopping'"))
        finally:
            await conn.close()

    assert asyncio.run(count()) == 3
