"""No secret is written into a committed file: compose takes each one from the shell (`${VAR:?...}`, which
set_env.sh fills from its git-ignored secrets file), Kubernetes from the operator's Secret (see
test_deploy_kubernetes.py), and nothing in the deployment files looks like a real key or token."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.support.deploy import COMPOSE_DIR, REPO, SECRET_NAME, SECRET_VARS, environment, load_yaml

pytestmark = pytest.mark.unit

REQUIRED = re.compile(r"\$\{(?P<var>[A-Za-z_][A-Za-z0-9_]*):\?[^}]+\}")
# What a leaked credential looks like: long hex (our generated secrets), OpenAI-style keys, JWTs, PEM keys.
LEAKS = {
    "hex secret": re.compile(r"\b[0-9a-fA-F]{32,}\b"),
    "API key": re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"),
    "JWT": re.compile(r"\beyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\."),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


def deployment_files() -> list[str]:
    """What the repository ships for deploying (tracked, or new and not ignored)."""
    listed = subprocess.run(
        [
            "git",
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            "docker_compose",
            "kubernetes",
            "docker",
            "set_env.sh",
            "README.md",
            ".dockerignore",
            "Makefile",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    files = [f for f in listed.stdout.splitlines() if (REPO / f).is_file()]
    assert "set_env.sh" in files and any(f.startswith("kubernetes/") for f in files)
    return files


@pytest.mark.parametrize("path", sorted(COMPOSE_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(COMPOSE_DIR)))
def test_compose_takes_every_secret_from_the_shell(path) -> None:
    for name, service in (load_yaml(path).get("services") or {}).items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and value is not None:
                found = REQUIRED.fullmatch(value)
                assert found, f"{path.name}/{name}: {key} must be ${{VAR:?...}} or passed through, not {value!r}"
                assert found["var"] in SECRET_VARS, f"{path.name}/{name}: {key} from {found['var']}"
            if key == "DATABASE_URL":
                password = re.fullmatch(r"postgresql://[^:]+:(?P<pw>.+)@postgres:5432/\w+", value or "")
                assert password and REQUIRED.fullmatch(password["pw"])["var"] == "POSTGRES_PASSWORD", value


@pytest.mark.parametrize("kind", list(LEAKS))
def test_no_committed_deployment_file_holds_a_credential(kind: str) -> None:
    for name in deployment_files():
        text = (REPO / name).read_text(errors="replace")
        found = LEAKS[kind].search(text)
        assert not found, f"{name} holds what looks like a {kind}: {found[0][:12]}..."


def test_no_env_file_with_secrets_is_committed() -> None:
    for name in deployment_files():
        if name.endswith(".env"):
            keys = [line.split("=", 1)[0] for line in (REPO / name).read_text().splitlines() if "=" in line]
            assert not [k for k in keys if SECRET_NAME.search(k)], f"{name} sets secrets: they go in a Secret"
