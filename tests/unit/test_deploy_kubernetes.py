"""kubernetes/: every kustomization renders offline and its resources validate against the API schemas;
the rendered objects have what an operator relies on (probes, requests, HPAs, GPUs only on nvidia)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.deploy import (
    KUSTOMIZATIONS,
    MODEL_SERVICES,
    SPECS,
    VENV_BIN,
    by_kind,
    config_map,
    kustomize,
)

pytestmark = pytest.mark.unit

HPA_SERVICES = {"gateway", "embedding", "reranker", "llm"}
GPU_SERVICES = {"llm", "embedding"}  # the reranker keeps lexical fusion on CPU unless a cross-encoder is set


@pytest.fixture(scope="module")
def rendered() -> dict[str, tuple[str, list[dict]]]:
    return {name: kustomize(name) for name in KUSTOMIZATIONS}


@pytest.fixture(params=list(KUSTOMIZATIONS))
def docs(request: pytest.FixtureRequest, rendered) -> list[dict]:
    return rendered[request.param][1]


def server(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["server"], deployment["metadata"]["name"]
    return containers[0]


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_renders_and_validates_against_the_kubernetes_schemas(name: str, rendered, tmp_path: Path) -> None:
    tool = VENV_BIN / "kubernetes-validate"
    exe = str(tool) if tool.exists() else shutil.which("kubernetes-validate")
    assert exe, "kubernetes-validate is missing: install the dev extra (pip install -e '.[dev]')"
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(rendered[name][0])
    # --strict rejects unknown fields; the schemas ship with the package (no network).
    result = subprocess.run([exe, "--strict", "--quiet", str(manifest)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


def test_one_deployment_and_service_per_service_plus_redis(docs: list[dict]) -> None:
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    assert set(deployments) == set(SPECS)
    assert set(services) == set(SPECS) | {"redis"}
    for name in SPECS:
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert services[name]["spec"]["selector"] == {"app.kubernetes.io/name": name}
        assert labels["app.kubernetes.io/name"] == name and labels["app.kubernetes.io/part-of"] == "chatqna"
        assert services[name]["spec"]["ports"][0]["targetPort"] == "http"


def test_redis_is_a_statefulset_with_a_volume(docs: list[dict]) -> None:
    redis = by_kind(docs, "StatefulSet")["redis"]
    claims = redis["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert container["image"].startswith("redis/redis-stack-server:")
    assert container["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    assert by_kind(docs, "Service")["redis"]["spec"]["ports"][0]["port"] == 6379


def test_probes_hit_the_real_endpoints(docs: list[dict]) -> None:
    for name, deployment in by_kind(docs, "Deployment").items():
        c = server(deployment)
        assert [p["name"] for p in c["ports"]] == ["http"], name
        assert c["readinessProbe"]["httpGet"] == {"path": "/v1/ready", "port": "http"}, name
        assert c["livenessProbe"]["httpGet"] == {"path": "/v1/health_check", "port": "http"}, name


def test_every_container_requests_resources(docs: list[dict]) -> None:
    pods = [d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]
    assert len(pods) == len(SPECS) + 2  # the services, redis, the model fetch job
    for pod in pods:
        for c in pod["spec"]["containers"]:
            resources = c["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), c["name"]
            assert "memory" in resources["limits"], c["name"]


def test_autoscalers_for_gateway_embedding_reranker_and_llm(docs: list[dict]) -> None:
    hpas, deployments = by_kind(docs, "HorizontalPodAutoscaler"), by_kind(docs, "Deployment")
    assert set(hpas) == HPA_SERVICES
    for name, hpa in hpas.items():
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert spec["minReplicas"] >= 1 and spec["maxReplicas"] > spec["minReplicas"]
        assert spec["metrics"][0]["resource"]["name"] == "cpu"
        assert "cpu" in server(deployments[name])["resources"]["requests"]  # utilization needs a request


def test_services_read_the_settings_configmap_and_run_as_non_root(docs: list[dict]) -> None:
    config = next(d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap")
    for name, deployment in by_kind(docs, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        c = server(deployment)
        assert {"configMapRef": {"name": config}} in c["envFrom"], name
        assert "env" not in c, f"{name}: settings belong in the ConfigMap"
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_models_are_mounted_read_only_where_a_model_runs(docs: list[dict]) -> None:
    for name, deployment in by_kind(docs, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        mounts = [m for m in server(deployment)["volumeMounts"] if m["mountPath"] == "/models"]
        claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        if name in MODEL_SERVICES:
            assert mounts == [{"name": "models", "mountPath": "/models", "readOnly": True}], name
            claim = {"claimName": "chatqna-models", "readOnly": True}
            assert claims == [{"name": "models", "persistentVolumeClaim": claim}], name
        else:
            assert not mounts and not claims, name
    job = by_kind(docs, "Job")["chatqna-fetch-models"]["spec"]["template"]["spec"]
    assert job["containers"][0]["command"] == ["chatqna", "models", "fetch"]
    assert {"name": "models", "mountPath": "/models"} in job["containers"][0]["volumeMounts"]
    assert "chatqna-models" in by_kind(docs, "PersistentVolumeClaim")


def gpus(deployment: dict) -> int:
    return int(server(deployment)["resources"].get("limits", {}).get("nvidia.com/gpu", 0))


def test_gpu_limits_only_in_the_nvidia_overlay(rendered) -> None:
    for name in ("base", "cpu"):
        text, docs = rendered[name]
        assert "nvidia.com/gpu" not in text
        assert all(not server(d)["image"].split(":")[0].endswith("-cuda") for d in by_kind(docs, "Deployment").values())
        assert "LLM_N_GPU_LAYERS" not in config_map(docs)
    docs = rendered["nvidia"][1]
    deployments = by_kind(docs, "Deployment")
    for name, deployment in deployments.items():
        image = server(deployment)["image"]
        if name in GPU_SERVICES:
            assert gpus(deployment) == 1, name
            assert image.startswith(f"chatqna/{name}-cuda:"), image
            tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
        else:
            assert gpus(deployment) == 0, name
            assert image.startswith(f"chatqna/{name}:"), image
    config = config_map(docs)
    assert config["LLM_N_GPU_LAYERS"] == "-1"  # every layer offloaded
    assert config["EMBEDDING_DEVICE"] == "cuda"
    assert config["RERANKER_DEVICE"] == "cpu"
