"""The prompt registry on a real PostgreSQL, called as the gateway calls it (internal token + identity headers)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import httpx
import pytest

from comps.core.caller import Caller
from tests.support.procs import Service, start_service

pytestmark = pytest.mark.integration

INTERNAL = secrets.token_urlsafe(32)
RAG = "Use these:\n{context}\n\nQ: {question}"


@pytest.fixture(scope="module")
def service(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    env = {"DATABASE_URL": database_url, "PROMPTS_API_KEY": INTERNAL}
    svc = start_service(
        "comps.prompt_registry", "PROMPTS_", env, log_dir=tmp_path_factory.mktemp("prompts"), timeout_s=120
    )
    yield svc
    svc.stop()


def as_user(service: Service, role: str = "user") -> httpx.Client:
    who = Caller(str(uuid.uuid4()), f"u{secrets.token_hex(3)}", role)
    return httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {INTERNAL}", **who.headers()}, timeout=30
    )


def test_shared_prompts_are_read_by_all_and_managed_by_admins(service: Service) -> None:
    admin, a = as_user(service, "admin"), as_user(service)
    r = admin.post("/v1/prompts", json={"name": "terse", "kind": "rag", "text": RAG, "shared": True})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    assert a.get("/v1/prompts/terse").json()["id"] == pid
    assert a.post("/v1/prompts", json={"name": "x", "text": RAG, "shared": True}).status_code == 403
    assert a.put(f"/v1/prompts/{pid}", json={"text": RAG + "!"}).status_code == 403
    assert a.delete(f"/v1/prompts/{pid}").status_code == 403
    assert admin.post("/v1/prompts", json={"name": "terse", "text": RAG, "shared": True}).status_code == 409


def test_editing_keeps_the_old_versions(service: Service) -> None:
    a = as_user(service)
    pid = a.post("/v1/prompts", json={"name": "mine", "kind": "system", "text": "Be brief."}).json()["id"]
    r = a.put(f"/v1/prompts/{pid}", json={"text": "Be very brief."})
    assert r.json()["version"] == 2
    assert a.get("/v1/prompts/mine").json()["text"] == "Be very brief."
    assert a.get(f"/v1/prompts/{pid}", params={"version": 1}).json()["text"] == "Be brief."
    assert [v["version"] for v in a.get(f"/v1/prompts/{pid}/versions").json()] == [1, 2]
    assert a.get(f"/v1/prompts/{pid}", params={"version": 3}).status_code == 404


def test_personal_prompts_are_private_and_come_before_shared_ones(service: Service) -> None:
    admin, a, b = as_user(service, "admin"), as_user(service), as_user(service)
    admin.post("/v1/prompts", json={"name": "house", "kind": "system", "text": "shared", "shared": True})
    mine = a.post("/v1/prompts", json={"name": "house", "kind": "system", "text": "mine"}).json()
    assert a.get("/v1/prompts/house").json()["text"] == "mine"
    assert b.get("/v1/prompts/house").json()["text"] == "shared"
    for r in (
        b.get(f"/v1/prompts/{mine['id']}"),
        b.put(f"/v1/prompts/{mine['id']}", json={"text": "x"}),
        b.delete(f"/v1/prompts/{mine['id']}"),
        b.post("/v1/prompt/get", json={"prompt_id": mine["id"]}),
    ):
        assert r.status_code == 404, r.text
    assert mine["id"] not in {p["id"] for p in b.get("/v1/prompts").json()}


def test_opea_bodies(service: Service) -> None:
    a = as_user(service)
    text = "Quokka style. " + RAG
    pid = a.post("/v1/prompt/create", json={"prompt_text": text, "user": "someone"}).json()
    got = a.post("/v1/prompt/get", json={"user": "someone", "prompt_id": pid}).json()
    assert got["prompt_text"] == text and got["kind"] == "rag"
    assert [p["id"] for p in a.post("/v1/prompt/get", json={"user": "x", "prompt_text": "quokka"}).json()] == [pid]
    assert a.post("/v1/prompt/delete", json={"user": "x", "prompt_id": pid}).json() is True
    assert a.post("/v1/prompt/get", json={"prompt_id": pid}).status_code == 404


def test_bad_input_is_a_4xx(service: Service) -> None:
    a = as_user(service)
    for body in (
        {"name": "t", "kind": "rag", "text": "no slots"},
        {"name": "t", "kind": "rag", "text": "{context}"},
        {"name": "", "text": RAG},
        {"name": "x" * 101, "text": RAG},
        {"name": "t", "text": ""},
        {"name": "t", "text": RAG, "owner": "me"},
    ):
        r = a.post("/v1/prompts", json=body)
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}, (body, r.text)
    pid = a.post("/v1/prompts", json={"name": "ok", "text": RAG}).json()["id"]
    r = a.put(f"/v1/prompts/{pid}", json={"text": "lost the slots"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "template_slots"
    assert a.get("/v1/prompts/ok").json()["version"] == 1
