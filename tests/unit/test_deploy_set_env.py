"""set_env.sh: sources cleanly under `set -euo pipefail` (twice), exports exactly what compose reads."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from comps.runtime.mesh import SERVICES
from comps.runtime.settings import RuntimeSettings
from tests.support.deploy import (
    COMPOSE_DIR,
    REPO,
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
    assert {"HOST_IP", "CHATQNA_MODELS_DIR", "LLM_MODEL", "EMBEDDING_MODEL", "INDEX_NAME",
            "MEGA_SERVICE_PORT", "DATAPREP_PORT"} <= set(exports)


def test_values_point_at_this_checkout_and_this_host() -> None:
    exports = set_env_exports()
    assert exports["CHATQNA_MODELS_DIR"] == str(REPO / "models")
    ipaddress.ip_address(exports["HOST_IP"])  # found locally: a real address, never empty


def test_defaults_agree_with_the_services_settings() -> None:
    exports = set_env_exports()
    assert exports["MEGA_SERVICE_PORT"] == str(RuntimeSettings.model_fields["gateway_port"].default)
    assert exports["DATAPREP_PORT"] == str(RuntimeSettings.model_fields["dataprep_port"].default)
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
    result = subprocess.run(["bash", str(SET_ENV)], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "source it" in result.stderr
