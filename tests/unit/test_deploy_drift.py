"""No drift between the deployment files and the code: every variable compose and Kubernetes set is one
that the service's settings class reads (`ServiceSettings.env_names()`), each service is told what it
needs, and the ports agree everywhere (settings default == comps/runtime/mesh.py == compose == k8s).

Settings classes come from comps/runtime/mesh.py (ServiceSpec.settings). A service whose settings
module does not exist yet is skipped; with CHATQNA_REQUIRE_ALL=1 that is a failure instead."""

from __future__ import annotations

import pytest

from tests.support.deploy import (
    PROFILES,
    SPECS,
    by_kind,
    compose_project,
    config_map,
    default_port,
    environment,
    interpolate,
    kustomize,
    runtime_env_names,
    set_env_exports,
    settings_class,
    wiring,
)

pytestmark = pytest.mark.unit

SHARED = {"REDIS_URL", "INDEX_NAME", "LOG_FORMAT", "LOG_LEVEL", "OTEL_EXPORTER_OTLP_ENDPOINT", "CHATQNA_MODELS_DIR"}
PREFIXES = {spec.env_prefix for spec in SPECS.values()}


@pytest.fixture(scope="module")
def shell_env() -> dict[str, str]:
    return {**set_env_exports(), "LLM_REMOTE_MODEL": "Qwen/Qwen2.5-7B-Instruct"}


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict]]:
    return {name: kustomize(name)[1] for name in ("cpu", "nvidia")}


def compose_env(profile: str, name: str, shell_env: dict[str, str]) -> dict[str, str | None]:
    raw = environment(compose_project(PROFILES[profile])["services"][name])
    return {k: interpolate(v, shell_env) for k, v in raw.items()}


def assert_told_what_it_needs(where: str, spec, cls, env: dict) -> None:
    """Where it listens and where its dependencies are (`wiring`), and every setting without a default."""
    for key, value in wiring(spec).items():
        assert env.get(key) == value, f"{where}/{spec.name}: {key}={env.get(key)!r}, should be {value!r}"
    required = {cls.env_name(f) for f, info in cls.model_fields.items() if info.is_required()}
    assert required <= set(env), f"{where}/{spec.name} lacks {required - set(env)}, which {cls.__name__} requires"


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("name", list(SPECS))
def test_compose_sets_only_what_the_service_reads(profile: str, name: str, shell_env: dict[str, str]) -> None:
    spec = SPECS[name]
    cls = settings_class(spec)
    env = compose_env(profile, name, shell_env)
    dead = set(env) - cls.env_names()
    assert not dead, f"{profile}/{name} sets {sorted(dead)}, which {cls.__name__} does not read"
    assert_told_what_it_needs(f"compose {profile}", spec, cls, env)


@pytest.mark.parametrize("overlay", ["cpu", "nvidia"])
@pytest.mark.parametrize("name", list(SPECS))
def test_kubernetes_config_of_each_service_is_read_by_it(overlay: str, name: str, k8s) -> None:
    spec = SPECS[name]
    cls = settings_class(spec)
    config = config_map(k8s[overlay])
    own = {k for k in config if k.startswith(spec.env_prefix)}
    dead = own - cls.env_names()
    assert not dead, f"{overlay}: ConfigMap sets {sorted(dead)}, which {cls.__name__} does not read"
    assert_told_what_it_needs(f"k8s {overlay}", spec, cls, config)


@pytest.mark.parametrize("overlay", ["cpu", "nvidia"])
def test_kubernetes_config_has_no_dead_variables(overlay: str, k8s) -> None:
    config = config_map(k8s[overlay])
    unknown = {k for k in config if not any(k.startswith(p) for p in PREFIXES)} - SHARED
    assert not unknown, f"ConfigMap sets {sorted(unknown)}: neither a service prefix nor a shared name"
    classes = {}
    for name, spec in SPECS.items():
        try:
            classes[name] = settings_class(spec)
        except pytest.skip.Exception:
            continue  # not written yet; settings_class fails instead under CHATQNA_REQUIRE_ALL=1
    for key in sorted(set(config) & SHARED):
        readers = [name for name, cls in classes.items() if key in cls.env_names()]
        if not readers and len(classes) < len(SPECS):
            pytest.skip(f"no service written so far reads {key}")
        assert readers, f"no service reads {key}"
    job = by_kind(k8s[overlay], "Job")["chatqna-fetch-models"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in job["env"]} - {"PIP_NO_CACHE_DIR"} <= runtime_env_names()


@pytest.mark.parametrize("name", list(SPECS))
def test_compose_and_kubernetes_tell_a_service_the_same(name: str, shell_env: dict[str, str], k8s) -> None:
    """On CPU, each value compose gives a service (after set_env.sh) is the one the k8s ConfigMap gives."""
    settings_class(SPECS[name])
    config = config_map(k8s["cpu"])
    for key, value in compose_env("cpu", name, shell_env).items():
        if value is None:  # passed through from the operator's shell when set
            continue
        assert config.get(key) == value, f"{name}: compose {key}={value!r}, k8s ConfigMap {config.get(key)!r}"


@pytest.mark.parametrize("name", list(SPECS))
def test_ports_agree_everywhere(name: str, k8s) -> None:
    spec = SPECS[name]
    port = default_port(spec)  # also asserts: settings default == RuntimeSettings (the local mesh)
    for profile in PROFILES:
        svc = compose_project(PROFILES[profile])["services"][name]
        assert svc["build"]["args"]["PORT"] == str(port)
        container_ports = svc.get("expose") or [p.rsplit(":", 1)[1] for p in svc["ports"]]
        assert container_ports == [str(port)], f"{profile}/{name}: {container_ports}"
    for overlay, docs in k8s.items():
        container = by_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["ports"] == [{"name": "http", "containerPort": port}], f"{overlay}/{name}"
        service_ports = by_kind(docs, "Service")[name]["spec"]["ports"]
        assert service_ports == [{"name": "http", "port": port, "targetPort": "http"}], f"{overlay}/{name}"
