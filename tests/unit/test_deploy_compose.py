"""docker_compose/: the files validate against the compose spec, and each profile runs what it should."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from comps.runtime.settings import RuntimeSettings
from tests.support.deploy import (
    COMPOSE_DIR,
    MODEL_SERVICES,
    PROFILES,
    REPO,
    SPECS,
    VENV_BIN,
    compose_project,
    default_port,
    environment,
    interpolate,
    interpolations,
    load_yaml,
    set_env_exports,
    strings,
)

pytestmark = pytest.mark.unit

GPU_SERVICES = ("llm", "embedding", "reranker")
REMOTE_MODEL = {"LLM_REMOTE_MODEL": "Qwen/Qwen2.5-7B-Instruct"}  # what an operator sets for the vLLM profile


@pytest.fixture(scope="module")
def shell_env() -> dict[str, str]:
    return set_env_exports()


@pytest.fixture(scope="module", params=list(PROFILES))
def profile(request: pytest.FixtureRequest) -> str:
    return request.param


def resolved(profile: str, shell_env: dict[str, str]) -> dict[str, dict]:
    """The profile's services with every ${...} interpolated as `docker compose` would after set_env.sh."""
    env = {**shell_env, **(REMOTE_MODEL if profile == "nvidia-vllm" else {})}

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return interpolate(node, env)

    return walk(compose_project(PROFILES[profile])["services"])


def test_every_compose_file_validates_against_the_compose_spec() -> None:
    files = sorted(COMPOSE_DIR.rglob("*.yaml")) + sorted(COMPOSE_DIR.rglob("*.yml"))
    assert set(PROFILES.values()) <= set(files)
    tool = VENV_BIN / "check-jsonschema"
    exe = str(tool) if tool.exists() else shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is missing: install the dev extra (pip install -e '.[dev]')"
    result = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", *map(str, files)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_profile_runs_redis_and_every_service(profile: str) -> None:
    project = compose_project(PROFILES[profile])
    expected = {"redis", *SPECS} | ({"vllm"} if profile == "nvidia-vllm" else set())
    assert set(project["services"]) == expected
    assert project["name"] == "chatqna"
    assert "redis-data" in project["volumes"]
    redis = project["services"]["redis"]
    assert redis["image"].startswith("redis/redis-stack-server:") and "latest" not in redis["image"]
    assert "redis-data:/data" in redis["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_services_start_after_what_they_call_is_healthy(profile: str) -> None:
    services = compose_project(PROFILES[profile])["services"]
    for name, spec in SPECS.items():
        expected = set(spec.needs) | ({"redis"} if spec.uses_redis else set())
        if profile == "nvidia-vllm" and name == "llm":
            expected.add("vllm")
        depends = services[name].get("depends_on") or {}
        assert set(depends) == expected, f"{profile}/{name} depends_on {set(depends)}, should be {expected}"
        for dep, cond in depends.items():
            assert cond == {"condition": "service_healthy"}, f"{profile}/{name} -> {dep}: {cond}"


def test_healthchecks_ask_readiness(profile: str) -> None:
    services = compose_project(PROFILES[profile])["services"]
    for name in SPECS:
        test = services[name]["healthcheck"]["test"]
        # The image's CHATQNA_READY_URL is http://127.0.0.1:$PORT/v1/ready (test_deploy_images checks it).
        assert test[0] == "CMD" and "urlopen(os.environ['CHATQNA_READY_URL']" in test[-1], (name, test)
    if profile == "nvidia-vllm":
        assert "/health" in services["vllm"]["healthcheck"]["test"][-1]


@pytest.mark.parametrize("name", list(SPECS))
def test_each_service_is_built_from_its_own_extra(profile: str, name: str, shell_env: dict[str, str]) -> None:
    spec = SPECS[name]
    svc = resolved(profile, shell_env)[name]
    build = svc["build"]
    assert (COMPOSE_DIR / "common" / build["context"]).resolve() == REPO
    cuda_llm = name == "llm" and profile.startswith("nvidia")
    assert build["dockerfile"] == ("docker/Dockerfile.llm-cuda" if cuda_llm else "docker/Dockerfile")
    assert (REPO / build["dockerfile"]).is_file()
    assert build["args"]["SERVICE"] == name
    assert build["args"]["MODULE"] == spec.module
    assert build["args"]["PORT"] == str(default_port(spec))
    suffix = "-cuda" if profile.startswith("nvidia") and name in GPU_SERVICES else ""
    assert svc["image"] == f"chatqna/{name}{suffix}:latest"


@pytest.mark.parametrize("name", list(SPECS))
def test_only_the_gateway_and_dataprep_are_published(profile: str, name: str, shell_env: dict[str, str]) -> None:
    services = resolved(profile, shell_env)
    published = {"gateway": "gateway_port", "dataprep": "dataprep_port"}  # RuntimeSettings: the host's ports
    port = default_port(SPECS[name])
    if name in published:
        host_default = RuntimeSettings.model_fields[published[name]].default
        assert services[name]["ports"] == [f"{host_default}:{port}"]
        assert "expose" not in services[name]
    else:
        assert "ports" not in services[name], f"{name} should not be published (scaling it would clash)"
        assert services[name]["expose"] == [str(port)]
    assert "ports" not in services["redis"]


def test_models_are_mounted_read_only_only_where_a_model_runs(profile: str, shell_env: dict[str, str]) -> None:
    services = resolved(profile, shell_env)
    for name in SPECS:
        mounts = [v for v in services[name].get("volumes", []) if isinstance(v, dict) and v["target"] == "/models"]
        if name in MODEL_SERVICES:
            assert mounts == [
                {"type": "bind", "source": shell_env["CHATQNA_MODELS_DIR"], "target": "/models", "read_only": True}
            ]
        else:
            assert not services[name].get("volumes"), f"{name} needs no models"


def test_services_run_hardened(profile: str) -> None:
    services = compose_project(PROFILES[profile])["services"]
    for name in SPECS:
        svc = services[name]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"] and svc["tmpfs"] == ["/tmp"], name
        assert svc["restart"] == "unless-stopped", name


def gpu_reserved(svc: dict) -> bool:
    devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any(d.get("driver") == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_nvidia_puts_llm_embedding_and_reranker_on_the_gpu(shell_env: dict[str, str]) -> None:
    for profile in ("nvidia", "nvidia-vllm"):
        services = resolved(profile, shell_env)
        for name in GPU_SERVICES:
            assert gpu_reserved(services[name]), f"{profile}/{name} has no GPU reservation"
        for name in set(SPECS) - set(GPU_SERVICES):
            assert not gpu_reserved(services[name]), f"{profile}/{name} should not hold a GPU"
        assert environment(services["llm"])["LLM_N_GPU_LAYERS"] == "-1"  # every layer offloaded
        assert environment(services["embedding"])["EMBEDDING_DEVICE"] == "cuda"
        assert environment(services["reranker"])["RERANKER_DEVICE"] == "cuda"
        for name in ("embedding", "reranker"):
            assert re.fullmatch(r"cu\d+", services[name]["build"]["args"]["TORCH_VARIANT"])


def test_cpu_profile_uses_no_gpu(shell_env: dict[str, str]) -> None:
    services = resolved("cpu", shell_env)
    assert not any(gpu_reserved(svc) for svc in services.values())
    assert "TORCH_VARIANT" not in str(services)  # the Dockerfile's default: the CPU build
    assert environment(services["embedding"])["EMBEDDING_DEVICE"] == "cpu"
    assert environment(services["reranker"])["RERANKER_DEVICE"] == "cpu"
    assert "LLM_N_GPU_LAYERS" not in environment(services["llm"])


def test_vllm_profile_serves_the_llm_through_the_remote_backend(shell_env: dict[str, str]) -> None:
    services = resolved("nvidia-vllm", shell_env)
    env = environment(services["llm"])
    assert env["LLM_BACKEND"] == "remote"
    assert env["LLM_REMOTE_URL"] == "http://vllm:8000"
    assert env["LLM_REMOTE_MODEL"] == REMOTE_MODEL["LLM_REMOTE_MODEL"]
    vllm = services["vllm"]
    assert gpu_reserved(vllm)
    command = vllm["command"]
    assert command[command.index("--model") + 1] == REMOTE_MODEL["LLM_REMOTE_MODEL"]
    assert command[command.index("--port") + 1] == "8000" and vllm["expose"] == ["8000"]
    with pytest.raises(KeyError, match="LLM_REMOTE_MODEL"):  # without it compose refuses to start
        interpolate(compose_project(PROFILES["nvidia-vllm"])["services"]["vllm"]["command"][1], shell_env)


def test_variables_are_braced_and_required_ones_explain_themselves() -> None:
    for path in sorted(COMPOSE_DIR.rglob("*.yaml")):
        data = load_yaml(path)
        for text in strings(data):
            assert not re.search(r"\$(?![{$])", text), f"{path}: use ${{VAR}} form in {text!r}"
        for var, op, arg in interpolations(data):
            assert op in (":-", ":?"), f"{path}: ${{{var}{op}}}: use ${{{var}:-default}} or ${{{var}:?message}}"
            if op == ":?":
                assert len(arg.split()) >= 3, f"{path}: ${{{var}:?...}} needs a message that says what to set"


def test_profiles_interpolate_with_set_env_and_fail_without_it(profile: str, shell_env: dict[str, str]) -> None:
    resolved(profile, shell_env)  # raises KeyError on a missing required variable
    with pytest.raises(KeyError):
        resolved(profile, {})
