"""Accounts from the command line (`chatqna users ...` on DATABASE_URL) and open registration at the gateway, on one
real PostgreSQL: what one creates, the other signs in."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.procs import REPO, Service, start_service
from tests.support.stubs import StubMesh

pytestmark = pytest.mark.integration


def chatqna(database_url: str, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    if password is not None:
        env["CHATQNA_NEW_PASSWORD"] = password
    cli = Path(sys.executable).with_name("chatqna")
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "comps.runtime.cli"]
    return subprocess.run(
        [*argv, "users", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def gateway(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with StubMesh() as mesh:
        env = {
            **mesh.env(),
            "GATEWAY_AUTH_ENABLED": "true",
            "DATABASE_URL": database_url,
            "GATEWAY_JWT_SECRET": secrets.token_urlsafe(48),
            "GATEWAY_OPEN_REGISTRATION": "true",
        }
        svc = start_service(
            "megaservice", "GATEWAY_", env, name="gateway-open", log_dir=tmp_path_factory.mktemp("gw"), timeout_s=120
        )
        try:
            yield svc
        finally:
            svc.stop()


def login(gateway: Service, username: str, password: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/auth/login", json={"username": username, "password": password}, timeout=30)


def test_the_cli_creates_lists_and_resets_accounts(database_url: str, gateway: Service) -> None:
    made = chatqna(database_url, "create", "Carol", "--admin", password="first-password")
    assert made.returncode == 0, made.stderr
    assert "created admin carol" in made.stdout
    assert "first-password" not in made.stdout
    assert login(gateway, "carol", "first-password").json()["user"]["role"] == "admin"

    listed = chatqna(database_url, "list")
    assert listed.returncode == 0 and "carol" in listed.stdout and "admin" in listed.stdout

    generated = chatqna(database_url, "create", "dan", "--generate")
    assert generated.returncode == 0, generated.stderr
    password = generated.stdout.rsplit("password: ", 1)[1].strip()
    assert login(gateway, "dan", password).status_code == 200

    assert chatqna(database_url, "set-password", "carol", password="second-password").returncode == 0
    assert login(gateway, "carol", "second-password").status_code == 200
    assert login(gateway, "carol", "first-password").status_code == 401


def test_the_cli_refuses_bad_input_with_a_message(database_url: str) -> None:
    bad_name = chatqna(database_url, "create", "no spaces allowed", password="long-enough-1")
    assert bad_name.returncode == 2 and "USERNAME" in bad_name.stderr
    short = chatqna(database_url, "create", "erin", password="short")
    assert short.returncode == 2 and "8 characters" in short.stderr
    taken = chatqna(database_url, "create", "erin2", password="long-enough-1")
    assert taken.returncode == 0
    again = chatqna(database_url, "create", "erin2", password="long-enough-1")
    assert again.returncode == 1 and "taken" in again.stderr
    unknown = chatqna(database_url, "set-password", "nobody-here", password="long-enough-1")
    assert unknown.returncode == 1 and "no user" in unknown.stderr


def test_open_registration_makes_a_plain_user_once(gateway: Service) -> None:
    name = "reg-" + secrets.token_hex(3)
    r = httpx.post(f"{gateway.url}/v1/auth/register", json={"username": name, "password": "long-enough-1"}, timeout=30)
    assert r.status_code == 201, r.text
    assert r.json()["role"] == "user"
    again = httpx.post(
        f"{gateway.url}/v1/auth/register", json={"username": name, "password": "long-enough-2"}, timeout=30
    )
    assert again.status_code == 409
    # Nobody registers themselves as admin: the field does not exist for this route.
    sneaky = httpx.post(
        f"{gateway.url}/v1/auth/register",
        json={"username": name + "x", "password": "long-enough-1", "role": "admin"},
        timeout=30,
    )
    assert sneaky.status_code == 400
    assert login(gateway, name, "long-enough-1").json()["user"]["role"] == "user"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/x"}, "GATEWAY_JWT_SECRET"),
        ({"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/x", "GATEWAY_JWT_SECRET": "changeme"}, "GATEWAY_JWT_SECRET"),
        ({"GATEWAY_JWT_SECRET": secrets.token_urlsafe(40)}, "DATABASE_URL"),
        ({"GATEWAY_AUTH_ENABLED": "false", "GATEWAY_HOST": "0.0.0.0"}, "GATEWAY_AUTH_ENABLED"),
    ],
    ids=["no-secret", "default-secret", "no-database", "auth-off-on-a-public-address"],
)
def test_an_insecure_gateway_refuses_to_start_naming_the_variable(env: dict[str, str], named: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "DATABASE_URL"}
    started = subprocess.run(
        [sys.executable, "-m", "megaservice"],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert started.returncode == 2, started.stderr
    assert named in started.stderr
