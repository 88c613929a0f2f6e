"""Read the deployment files the way their tools do, offline: compose projects (with `include` and YAML
anchors resolved), kustomize renders, set_env.sh's exports, and each service's settings class."""

from __future__ import annotations

import atexit
import functools
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from comps.core.settings import ServiceSettings
from comps.runtime.mesh import SERVICES, ServiceSpec
from comps.runtime.settings import RuntimeSettings

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
COMPOSE_DIR = REPO / "docker_compose"
K8S_DIR = REPO / "kubernetes"
SET_ENV = REPO / "set_env.sh"

# The files an operator starts (`docker compose -f FILE up`), by profile.
PROFILES = {
    "cpu": COMPOSE_DIR / "cpu" / "compose.yaml",
    "nvidia": COMPOSE_DIR / "nvidia" / "compose.yaml",
    "nvidia-vllm": COMPOSE_DIR / "nvidia" / "compose.vllm.yaml",
}
KUSTOMIZATIONS = {
    "base": K8S_DIR / "base",
    "cpu": K8S_DIR / "overlays" / "cpu",
    "nvidia": K8S_DIR / "overlays" / "nvidia",
}
# Examples beyond the profiles: rendered and checked by tests of their own.
EXAMPLE_KUSTOMIZATIONS = {"two-models": K8S_DIR / "overlays" / "two-models"}
SPECS = {spec.name: spec for spec in SERVICES}
MODEL_SERVICES = ("embedding", "reranker", "llm")  # the ones that load a model from /models

# The public doors: the gateway and the chat UI (which calls only the gateway).
PUBLISHED = {"gateway", "ui"}
# The secrets set_env.sh generates (into <state dir>/secrets.env) and the Kubernetes Secret chatqna-secrets holds.
SECRET_VARS = ("CHATQNA_INTERNAL_TOKEN", "GATEWAY_JWT_SECRET", "POSTGRES_PASSWORD")
INTERNAL_TOKEN = "CHATQNA_INTERNAL_TOKEN"
K8S_SECRET = "chatqna-secrets"
# Names that hold a secret wherever they are set (compose environment, ConfigMap, container env).
SECRET_NAME = re.compile(r"(API_KEY|SECRET|PASSWORD|TOKEN)$")

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}, ${VAR:+alt}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


# --- settings classes ---------------------------------------------------------------------------------


def settings_class(spec: ServiceSpec) -> type[ServiceSettings]:
    """The service's settings class (ServiceSpec.settings, "module:Class").

    A service whose settings module does not exist yet is skipped, unless CHATQNA_REQUIRE_ALL=1 (then
    it fails). A module that exists without that class always fails."""
    module_name, _, class_name = spec.settings.partition(":")
    try:
        found = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:
        found = None
    if found is None:
        message = f"{spec.name}: settings module {module_name} does not exist yet"
        if os.environ.get("CHATQNA_REQUIRE_ALL") == "1":
            pytest.fail(message + " (CHATQNA_REQUIRE_ALL=1)")
        pytest.skip(message)
    cls = getattr(importlib.import_module(module_name), class_name, None)
    assert isinstance(cls, type) and issubclass(cls, ServiceSettings), (
        f"{spec.settings} (comps/runtime/mesh.py) is not a ServiceSettings subclass"
    )
    return cls


def default_port(spec: ServiceSpec) -> int:
    """The service's port: its settings default, which must equal the local mesh's (RuntimeSettings)."""
    port = settings_class(spec).model_fields["port"].default
    mesh_port = RuntimeSettings.model_fields[spec.port_attr].default
    assert port == mesh_port, (
        f"{spec.name}: settings default port {port} != RuntimeSettings.{spec.port_attr} {mesh_port}"
    )
    return port


def runtime_env_names() -> set[str]:
    """The variables RuntimeSettings (`chatqna` CLI, local mesh) reads."""
    aliases = [f.validation_alias for f in RuntimeSettings.model_fields.values()]
    assert all(isinstance(a, AliasChoices) for a in aliases), "RuntimeSettings names each variable (_env)"
    return {str(a.choices[0]) for a in aliases if isinstance(a, AliasChoices)}


def callers() -> dict[str, set[str]]:
    """Who opens connections to whom: each service's `needs`, the gateway to dataprep (it proxies
    /v1/dataprep/*) and to PostgreSQL, and the Redis users to Redis."""
    found: dict[str, set[str]] = {name: set() for name in [*SPECS, "redis", "postgres"]}
    for spec in SPECS.values():
        for need in spec.needs:
            found[need].add(spec.name)
        if spec.uses_vectorstore:
            found["redis"].add(spec.name)
        if spec.uses_database:
            found["postgres"].add(spec.name)
    found["dataprep"].add("gateway")
    found["postgres"].add("gateway")
    return found


def wiring(spec: ServiceSpec) -> dict[str, str]:
    """What a container deployment must tell a service: listen on every interface, where each service it
    calls is (service name as host name, default port), and where Redis is."""
    env = {f"{spec.env_prefix}HOST": "0.0.0.0"}
    for need in spec.needs:
        env[f"{spec.env_prefix}{need.upper()}_URL"] = f"http://{need}:{default_port(SPECS[need])}"
    if spec.uses_vectorstore:
        env["REDIS_URL"] = "redis://redis:6379"
    if spec.uses_database or spec.name == "gateway":
        env["DATABASE_URL"] = "postgresql://chatqna:$(POSTGRES_PASSWORD)@postgres:5432/chatqna"
    if spec.name == "gateway":
        env["GATEWAY_DATAPREP_URL"] = f"http://dataprep:{default_port(SPECS['dataprep'])}"
    return env


def secret_wiring(spec: ServiceSpec) -> dict[str, str]:
    """The secrets a deployment must give a service, as `$(VARIABLE)` of the secret they come from: every
    internal service requires the internal token (<PREFIX>API_KEY) and sends it to what it calls; the
    gateway sends it to everything and signs access tokens with its JWT secret."""
    token = f"$({INTERNAL_TOKEN})"
    if spec.name == "ui":
        return {}  # a public door that holds no secret: it calls the gateway as the signed-in user
    if spec.name == "gateway":
        return {"GATEWAY_INTERNAL_API_KEY": token, "GATEWAY_JWT_SECRET": "$(GATEWAY_JWT_SECRET)"}
    env = {f"{spec.env_prefix}API_KEY": token}
    for need in spec.needs:
        env[f"{spec.env_prefix}{need.upper()}_API_KEY"] = token
    return env


def secrets_as_references(env: dict[str, str]) -> dict[str, str]:
    """``env`` with each secret variable replaced by ``$(NAME)``: compose values interpolated with it read
    like Kubernetes' secretKeyRef entries (see `container_env`), so the two can be compared."""
    return {**env, **{name: f"$({name})" for name in SECRET_VARS}}


# --- compose ------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    with path.open() as f:
        data = yaml.safe_load(f)  # resolves anchors and `<<` merge keys, as compose does
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def _merge(base: Any, override: Any) -> Any:
    """Compose's merge, for what these files override: mappings merge key by key; anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def compose_project(path: Path) -> dict[str, Any]:
    """The compose model of ``path`` before interpolation: its includes merged in (each include's file
    list merged in order, as `docker compose` does), top-level `x-` extensions dropped."""
    data = load_yaml(path)
    project: dict[str, Any] = {"services": {}, "volumes": {}}
    for entry in data.get("include", []):
        files = entry if isinstance(entry, str) else entry["path"]
        files = [files] if isinstance(files, str) else files
        merged: dict[str, Any] = {}
        for name in files:
            merged = _merge(merged, load_yaml((path.parent / name).resolve()))
        for section in ("services", "volumes"):
            clash = set(project[section]) & set(merged.get(section) or {})
            assert not clash, f"{path}: included {section} {clash} defined twice"
            project[section].update(merged.get(section) or {})
    for section in ("services", "volumes"):
        clash = set(project[section]) & set(data.get(section) or {})
        assert not clash, f"{path}: {section} {clash} conflict with included ones"
        project[section].update(data.get(section) or {})
    project["name"] = data.get("name")
    return project


def strings(node: Any) -> list[str]:
    """Every string in a parsed YAML tree (keys and values)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(k) + strings(v)]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return []


def interpolations(node: Any) -> list[tuple[str, str, str]]:
    """(variable, operator, argument) of every ${...} in ``node``; operator "" for a bare ${VAR}."""
    return [(m[1], m[2] or "", m[3] or "") for s in strings(node) for m in INTERPOLATION.finditer(s)]


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of one value with ``env``; a required variable that is missing raises."""
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m[1], m[2] or "", m[3] or ""
        present = name in env and (env[name] != "" or not op.startswith(":"))
        if op in ("?", ":?") and not present:
            raise KeyError(f"{name}: {arg}")
        if op in ("-", ":-") and not present:
            return arg
        if op in ("+", ":+"):
            return arg if present else ""
        return env.get(name, "")

    return INTERPOLATION.sub(sub, value)


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A compose service's `environment` as a mapping (None: passed through from the shell)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


# --- set_env.sh ---------------------------------------------------------------------------------------


@functools.cache
def scratch_state_dir() -> Path:
    """Where set_env.sh keeps its secrets during the tests (never the checkout's .state/); removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="chatqna-set-env-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def source_set_env(
    env: dict[str, str] | None = None, times: int = 1, state_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Source set_env.sh ``times`` times in a clean `bash` with `set -euo pipefail`; prints `env -0`.
    Its secrets file lives in ``state_dir`` (default: one scratch folder for the whole test run)."""
    script = "set -euo pipefail\n" + f'source "{SET_ENV}"\n' * times + "env -0\n"
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "CHATQNA_STATE_DIR": str(state_dir or scratch_state_dir()),
    }
    return subprocess.run(
        ["bash", "-c", script],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )


def exported(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in result.stdout.split("\0") if "=" in item)


def set_env_exports() -> dict[str, str]:
    """What set_env.sh exports in a clean shell (only the variables it adds)."""
    before = exported(source_set_env(times=0))
    result = source_set_env()
    assert result.returncode == 0, result.stderr
    return {k: v for k, v in exported(result).items() if k not in before and k not in ("SHLVL", "_", "PWD", "OLDPWD")}


# --- kubernetes ---------------------------------------------------------------------------------------


def dev_tool(name: str) -> str:
    """A command-line tool of the dev extra: from the checkout's .venv, the running interpreter's
    environment (a shared venv), or PATH. Missing: a failure, not a skip (CI must run it)."""
    for folder in (VENV_BIN, Path(sys.executable).parent):
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    assert found, f"{name} is missing: install the dev extra (pip install -e '.[dev]')"
    return found


def kubectl() -> str:
    path = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)
    if path is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the kustomizations offline")
    return path


def kustomize(name: str) -> tuple[str, list[dict[str, Any]]]:
    """`kubectl kustomize` of one kustomization: the rendered text and its resources."""
    path = KUSTOMIZATIONS.get(name) or EXAMPLE_KUSTOMIZATIONS[name]
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return result.stdout, [d for d in yaml.safe_load_all(result.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container_env(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    """The `env` of a Deployment's or StatefulSet's first container; a secretKeyRef reads ``$(KEY)``."""
    workloads = {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}
    found: dict[str, str] = {}
    for entry in workloads[name]["spec"]["template"]["spec"]["containers"][0].get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        found[entry["name"]] = f"$({ref['key']})" if ref else entry["value"]
    return found


def config_map(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The data of the one settings ConfigMap (its generated name carries a hash suffix)."""
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("chatqna-config")]
    assert len(maps) == 1, f"expected one chatqna-config ConfigMap, found {[m['metadata']['name'] for m in maps]}"
    return maps[0]["data"]
