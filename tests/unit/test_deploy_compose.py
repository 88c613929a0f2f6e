"""docker_compose/: the files validate against the compose spec, each profile runs what it should, only
the gateway is published, and every internal service requires the mesh's internal token."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from comps.runtime.settings import RuntimeSettings
from tests.support.deploy import (
    COMPOSE_DIR,
    INTERNAL_TOKEN,
    MODEL_SERVICES,
    PROFILES,
    PUBLISHED,
    REPO,
    SPECS,
    callers,
    compose_project,
    default_port,
    dev_tool,
    environment,
    interpolate,
    interpolations,
    load_yaml,
    secret_wiring,
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
    result = subprocess.run(
        [dev_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_profile_runs_redis_postgres_and_every_service(profile: str) -> None:
    project = compose_project(PROFILES[profile])
    expected = {"redis", "postgres", "phoenix", *SPECS} | ({"vllm"} if profile == "nvidia-vllm" else set())
    assert set(project["services"]) == expected
    assert project["name"] == "chatqna"
    assert {"redis-data", "postgres-data", "phoenix-data"} <= set(project["volumes"])
    redis = project["services"]["redis"]
    assert redis["image"].startswith("redis/redis-stack-server:") and "latest" not in redis["image"]
    assert "redis-data:/data" in redis["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_postgres_keeps_its_data_and_reports_ready_over_tcp(profile: str, shell_env: dict[str, str]) -> None:
    raw = compose_project(PROFILES[profile])["services"]["postgres"]
    assert raw["image"] == "pgvector/pgvector:pg17"
    assert raw["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    assert raw["healthcheck"]["test"][:4] == ["CMD", "pg_isready", "-h", "127.0.0.1"]
    assert raw["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    env = environment(resolved(profile, shell_env)["postgres"])
    assert env["POSTGRES_PASSWORD"] == shell_env["POSTGRES_PASSWORD"]
    user, db = env["POSTGRES_USER"], env["POSTGRES_DB"]
    assert raw["healthcheck"]["test"][4:] == ["-U", user, "-d", db]
    gateway = environment(resolved(profile, shell_env)["gateway"])
    assert gateway["DATABASE_URL"] == f"postgresql://{user}:{shell_env['POSTGRES_PASSWORD']}@postgres:5432/{db}"


def test_services_start_after_what_they_call_is_healthy(profile: str) -> None:
    services = compose_project(PROFILES[profile])["services"]
    called_by = callers()
    for name in SPECS:
        expected = {target for target, who in called_by.items() if name in who}
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


def published_services(services: dict[str, dict]) -> set[str]:
    """Services reachable from outside the host: a `ports` entry not bound to 127.0.0.1, or the host's network."""
    return {
        name
        for name, svc in services.items()
        if any(not str(p).startswith("127.0.0.1:") for p in svc.get("ports") or ()) or svc.get("network_mode") == "host"
    }


def test_phoenix_is_optional_and_on_this_host_only(profile: str, shell_env: dict[str, str]) -> None:
    services = resolved(profile, shell_env)
    phoenix = services["phoenix"]
    assert phoenix["profiles"] == ["tracing"] and phoenix["image"].startswith("arizephoenix/phoenix:version-")
    assert phoenix["ports"] == ["127.0.0.1:6006:6006"] and phoenix["volumes"] == ["phoenix-data:/mnt/data"]
    for name in SPECS:  # no prompt, answer or passage text in spans unless the operator says so
        env = environment(services[name])
        assert env["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] == "false", name


def test_only_the_gateway_is_published_in_any_compose_file() -> None:
    for path in sorted(COMPOSE_DIR.rglob("*.yaml")):
        services = load_yaml(path).get("services") or {}
        assert published_services(services) <= PUBLISHED, f"{path} publishes {published_services(services) - PUBLISHED}"


def test_each_profile_publishes_the_gateway_and_the_ui_and_nothing_else(
    profile: str, shell_env: dict[str, str]
) -> None:
    services = resolved(profile, shell_env)
    assert published_services(services) == PUBLISHED == {"gateway", "ui"}
    for name in PUBLISHED:
        port = default_port(SPECS[name])
        host_port = RuntimeSettings.model_fields[SPECS[name].port_attr].default
        assert services[name]["ports"] == [f"{host_port}:{port}"], name
        assert "expose" not in services[name]
    for name in set(SPECS) - PUBLISHED:  # reached by name inside the network; they scale in place
        assert services[name]["expose"] == [str(default_port(SPECS[name]))], name
    assert services["redis"]["expose"] == ["6379"] and services["postgres"]["expose"] == ["5432"]


@pytest.mark.parametrize("name", list(SPECS))
def test_every_service_requires_and_sends_the_internal_token(profile: str, name: str, shell_env: dict) -> None:
    env = environment(resolved(profile, shell_env)[name])
    token = shell_env[INTERNAL_TOKEN]
    if name == "ui":  # a public door that calls only the gateway, as the signed-in user: it holds no secret
        assert not any(value == token for value in env.values()), "the UI must not hold the internal token"
        assert env["UI_GATEWAY_URL"] == f"http://gateway:{default_port(SPECS['gateway'])}"
        return
    for key, ref in secret_wiring(SPECS[name]).items():
        secret = ref.removeprefix("$(").removesuffix(")")
        assert env.get(key) == shell_env[secret], f"{profile}/{name}: {key} is not ${{{secret}}}"
    raw = environment(compose_project(PROFILES[profile])["services"][name])
    required_key = next(iter(secret_wiring(SPECS[name])))  # <PREFIX>API_KEY; the gateway's INTERNAL_API_KEY
    with pytest.raises(KeyError, match=INTERNAL_TOKEN):  # compose refuses to start without it
        interpolate(raw[required_key], {})
    if name == "gateway":
        assert "GATEWAY_API_KEY" not in env, "accounts and API keys replace one static gateway key"
        assert "GATEWAY_AUTH_ENABLED" not in env, "auth stays on (the default) behind a published port"
        assert env["GATEWAY_DATAPREP_URL"] == f"http://dataprep:{default_port(SPECS['dataprep'])}"
        assert token != shell_env["GATEWAY_JWT_SECRET"]


def test_vllm_requires_the_internal_token_too(shell_env: dict[str, str]) -> None:
    services = resolved("nvidia-vllm", shell_env)
    assert environment(services["vllm"])["VLLM_API_KEY"] == shell_env[INTERNAL_TOKEN]
    assert environment(services["llm"])["LLM_REMOTE_API_KEY"] == shell_env[INTERNAL_TOKEN]


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


def test_the_two_model_example_runs_a_second_llm_the_gateway_routes_to(shell_env: dict[str, str]) -> None:
    """compose.two-models.yaml: a second LLM service (the llm service's definition, another GGUF), its own container
    to scale, declared to the gateway as a model next to the default one; still only the gateway published."""
    project = compose_project(COMPOSE_DIR / "cpu" / "compose.two-models.yaml")
    services = project["services"]
    assert set(services) == {"redis", "postgres", "phoenix", "llm-gemma3", *SPECS}
    second = services["llm-gemma3"]
    assert second["extends"] == {"file": "../common/compose.yaml", "service": "llm"}
    assert interpolate(second["environment"]["LLM_MODEL"], shell_env) != interpolate(
        services["llm"]["environment"]["LLM_MODEL"], shell_env
    )
    assert "ports" not in second and published_services(services) == PUBLISHED
    gateway = environment(services["gateway"])
    models = json.loads(str(gateway["GATEWAY_MODELS"]))
    port = default_port(SPECS["llm"])
    assert models == {"smollm2": f"http://llm:{port}", "gemma3": f"http://llm-gemma3:{port}"}
    assert gateway["GATEWAY_DEFAULT_MODEL"] in models
    assert services["gateway"]["depends_on"]["llm-gemma3"] == {"condition": "service_healthy"}
    assert services["gateway"]["depends_on"]["llm"] == {"condition": "service_healthy"}  # merged, not replaced
