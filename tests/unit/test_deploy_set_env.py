"""set_env.sh: sources cleanly under `set -euo pipefail` (twice), exports exactly what compose reads, and
generates the deployment's secrets once (locally, into a git-ignored mode-600 file), never printing them."""

from __future__ import annotations

import ipaddress
import re
import stat
import subprocess
from pathlib import Path

import pytest

from comps.runtime.mesh import SERVICES
from comps.runtime.settings import RuntimeSettings
from tests.support.deploy import (
    COMPOSE_DIR,
    REPO,
    SECRET_VARS,
    SET_ENV,
    exported,
    interpolations,
    load_yaml,
    set_env_exports,
    settings_class,
    source_set_env,
)

pytestmark = pytest.mark.unit

SPECS = {spec.name: spec for spec in SERVICES}


def test_sources_twice_under_set_u_with_the_same_result() -> None:
    once, twice = source_set_env(times=1), source_set_env(times=2)
    assert once.returncode == 0, once.stderr
    assert twice.returncode == 0, twice.stderr
    assert exported(once) == exported(twice)
    assert "unbound variable" not in once.stderr + twice.stderr


def test_exports_what_the_compose_profiles_require_and_nothing_they_do_not_read() -> None:
    exports = set_env_exports()
    found = [found for f in COMPOSE_DIR.rglob("*.yaml") for found in interpolations(load_yaml(f))]
    read = {var for var, _, _ in found}
    # Every required variable but the vLLM profile's model, which is the operator's choice.
    required = {var for var, op, _ in found if op == ":?"} - {"LLM_REMOTE_MODEL"}
    assert required <= set(exports), f"set_env.sh does not export {required - set(exports)}"
    # HOST_IP is for the operator's own commands (README's curl examples); everything else feeds compose.
    assert set(exports) - {"HOST_IP"} <= read, f"set_env.sh exports what no compose file reads: {set(exports) - read}"
    assert {
        "HOST_IP",
        "CHATQNA_MODELS_DIR",
        "LLM_MODEL",
        "EMBEDDING_MODEL",
        "INDEX_NAME",
        "MEGA_SERVICE_PORT",
        *SECRET_VARS,
    } <= set(exports)
    assert "DATAPREP_PORT" not in exports, "dataprep is reached through the gateway only"


def test_values_point_at_this_checkout_and_this_host() -> None:
    exports = set_env_exports()
    assert exports["CHATQNA_MODELS_DIR"] == str(REPO / "models")
    ipaddress.ip_address(exports["HOST_IP"])  # found locally: a real address, never empty


def test_defaults_agree_with_the_services_settings() -> None:
    exports = set_env_exports()
    assert exports["MEGA_SERVICE_PORT"] == str(RuntimeSettings.model_fields["gateway_port"].default)
    assert exports["LLM_MODEL"] == settings_class(SPECS["llm"]).model_fields["model"].default
    assert exports["EMBEDDING_MODEL"] == settings_class(SPECS["embedding"]).model_fields["model"].default
    for name in ("retriever", "dataprep"):
        assert exports["INDEX_NAME"] == settings_class(SPECS[name]).model_fields["index_name"].default


def test_values_set_before_sourcing_win_and_relative_paths_become_absolute() -> None:
    result = source_set_env({"INDEX_NAME": "my-docs", "CHATQNA_MODELS_DIR": "models", "HOST_IP": "10.1.2.3"}, times=2)
    assert result.returncode == 0, result.stderr
    env = exported(result)
    assert env["INDEX_NAME"] == "my-docs"
    assert env["HOST_IP"] == "10.1.2.3"
    assert env["CHATQNA_MODELS_DIR"] == str(REPO / "models")  # sourced from the repo root (cwd)


def test_running_it_instead_of_sourcing_says_so() -> None:
    result = subprocess.run(["bash", str(SET_ENV)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0
    assert "source it" in result.stderr


def secrets_file(state_dir: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (state_dir / "secrets.env").read_text().splitlines())


def test_generates_each_secret_once_and_gives_the_same_values_when_sourced_again(tmp_path: Path) -> None:
    first = source_set_env(state_dir=tmp_path)
    again = source_set_env(state_dir=tmp_path, times=2)  # another shell: read back from the file
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    values = {name: exported(first)[name] for name in SECRET_VARS}
    assert {name: exported(again)[name] for name in SECRET_VARS} == values
    for name, value in values.items():
        assert re.fullmatch(r"[0-9a-f]{64}", value), f"{name}: 256 random bits as hex (URL-safe, 32+ characters)"
    assert len(set(values.values())) == len(SECRET_VARS), "each secret is generated on its own"
    assert secrets_file(tmp_path) == values
    assert stat.S_IMODE((tmp_path / "secrets.env").stat().st_mode) == 0o600
    other = source_set_env(state_dir=tmp_path / "elsewhere")
    assert not {exported(other)[name] for name in SECRET_VARS} & set(values.values()), "not derived from anything"


def test_never_prints_a_secret(tmp_path: Path) -> None:
    script = f'set -euo pipefail\nsource "{SET_ENV}"\nsource "{SET_ENV}"\n'
    result = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CHATQNA_STATE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for value in secrets_file(tmp_path).values():
        assert value not in result.stdout + result.stderr


def test_values_set_in_the_shell_win_and_are_not_written(tmp_path: Path) -> None:
    mine = "a-token-the-operator-chose-" + "x1y2z3" * 4
    result = source_set_env({"CHATQNA_INTERNAL_TOKEN": mine}, state_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert exported(result)["CHATQNA_INTERNAL_TOKEN"] == mine
    assert set(secrets_file(tmp_path)) == set(SECRET_VARS) - {"CHATQNA_INTERNAL_TOKEN"}
    # Sourced later without it, the token is generated then, and the other two are kept.
    kept = secrets_file(tmp_path)
    result = source_set_env(state_dir=tmp_path)
    assert set(secrets_file(tmp_path)) == set(SECRET_VARS)
    assert {k: v for k, v in secrets_file(tmp_path).items() if k in kept} == kept
    assert exported(result)["CHATQNA_INTERNAL_TOKEN"] != mine


def test_secrets_live_in_the_git_ignored_state_folder_by_default() -> None:
    text = SET_ENV.read_text()
    assert '"$_chatqna_root/.state/secrets.env"' in text  # the default, next to the local runtime's state
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".state/secrets.env"], cwd=REPO, capture_output=True, timeout=30, check=False
    )
    assert ignored.returncode == 0, ".state/ must stay in .gitignore: it holds the generated secrets"
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "/dev/urandom" in code and not re.search(r"\b(curl|wget|nc)\b", code), "a local random source only"


def test_a_relative_state_dir_is_taken_from_where_it_is_sourced(tmp_path: Path) -> None:
    script = f'set -euo pipefail\ncd "{tmp_path}"\nsource "{SET_ENV}"\n'
    result = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CHATQNA_STATE_DIR": "st"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert set(secrets_file(tmp_path / "st")) == set(SECRET_VARS)
