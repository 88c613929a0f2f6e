"""kubernetes/: every kustomization renders offline and its resources validate against the API schemas;
the rendered objects have what an operator relies on (probes, requests, HPAs, GPUs only on nvidia), only
the gateway may be exposed, NetworkPolicies let only callers in, and secrets come from the operator's Secret."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.deploy import (
    INTERNAL_TOKEN,
    K8S_SECRET,
    KUSTOMIZATIONS,
    MODEL_SERVICES,
    PUBLISHED,
    SECRET_NAME,
    SECRET_VARS,
    SPECS,
    by_kind,
    callers,
    config_map,
    dev_tool,
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
    exe = dev_tool("kubernetes-validate")
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(rendered[name][0])
    # --strict rejects unknown fields; the schemas ship with the package (no network).
    result = subprocess.run(
        [exe, "--strict", "--quiet", str(manifest)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


def test_one_deployment_and_service_per_service_plus_redis_and_postgres(docs: list[dict]) -> None:
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    assert set(deployments) == set(SPECS)
    assert set(services) == set(SPECS) | {"redis", "postgres"}
    assert set(by_kind(docs, "StatefulSet")) == {"redis", "postgres"}
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
        live = "/v1/health_check" if SPECS[name].ready_path == "/v1/ready" else SPECS[name].ready_path
        assert c["readinessProbe"]["httpGet"] == {"path": SPECS[name].ready_path, "port": "http"}, name
        assert c["livenessProbe"]["httpGet"] == {"path": live, "port": "http"}, name


def test_every_container_requests_resources(docs: list[dict]) -> None:
    pods = [d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]
    assert len(pods) == len(SPECS) + 3  # the services, redis, postgres, the model fetch job
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
        assert c["envFrom"] == [{"configMapRef": {"name": config}}], name
        for entry in c.get("env", []):  # settings belong in the ConfigMap; `env` holds the secrets
            assert "valueFrom" in entry or entry["name"] == "DATABASE_URL", f"{name}: {entry['name']}"
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


def test_postgres_is_a_statefulset_with_a_volume_and_a_readiness_probe(docs: list[dict]) -> None:
    postgres = by_kind(docs, "StatefulSet")["postgres"]
    assert [c["metadata"]["name"] for c in postgres["spec"]["volumeClaimTemplates"]] == ["data"]
    pod = postgres["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "pgvector/pgvector:pg17"
    assert {"name": "data", "mountPath": "/var/lib/postgresql/data"} in container["volumeMounts"]
    env = {e["name"]: e for e in container["env"]}
    assert env["PGDATA"]["value"].startswith("/var/lib/postgresql/data/")  # below lost+found of the volume root
    assert env["POSTGRES_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": K8S_SECRET, "key": "POSTGRES_PASSWORD"}}
    user, db = env["POSTGRES_USER"]["value"], env["POSTGRES_DB"]["value"]
    assert container["readinessProbe"]["exec"]["command"] == ["pg_isready", "-h", "127.0.0.1", "-U", user, "-d", db]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = by_kind(docs, "Service")["postgres"]["spec"]
    assert service["ports"] == [{"name": "postgres", "port": 5432, "targetPort": "postgres"}]
    gateway = {e["name"]: e for e in server(by_kind(docs, "Deployment")["gateway"])["env"]}
    assert gateway["DATABASE_URL"]["value"] == f"postgresql://{user}:$(POSTGRES_PASSWORD)@postgres:5432/{db}"
    names = list(gateway)
    assert names.index("POSTGRES_PASSWORD") < names.index("DATABASE_URL"), "$(VAR) expands earlier entries only"


def test_only_the_gateway_and_the_ui_may_be_exposed(docs: list[dict]) -> None:
    for name, service in by_kind(docs, "Service").items():
        spec = service["spec"]
        assert spec.get("type", "ClusterIP") == "ClusterIP", f"Service {name} is {spec['type']}"
        assert not {"externalIPs", "loadBalancerIP", "externalName"} & set(spec), name
        assert all("nodePort" not in port for port in spec["ports"]), name
    for ingress in by_kind(docs, "Ingress").values():
        backends = [p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
        assert set(backends) <= PUBLISHED, f"Ingress {ingress['metadata']['name']} exposes {backends}"
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]
    for pod in pods:
        assert not pod.get("hostNetwork")
        assert all("hostPort" not in p for c in pod["containers"] for p in c.get("ports", []))


def test_network_policies_let_only_the_callers_in(docs: list[dict]) -> None:
    policies = list(by_kind(docs, "NetworkPolicy").values())
    targets: dict[str, dict] = {}
    for policy in policies:
        target = policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        assert target not in targets, f"two NetworkPolicies select {target}"
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        targets[target] = policy
    expected = {name: who for name, who in callers().items() if name not in PUBLISHED}
    assert set(targets) == set(expected) | PUBLISHED
    for target, who in expected.items():
        rules = targets[target]["spec"]["ingress"]
        assert len(rules) == 1, target
        allowed = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rules[0]["from"]}
        assert allowed == who, f"{target} admits {allowed}, its callers are {who}"
        assert all(set(peer) == {"podSelector"} for peer in rules[0]["from"]), "no namespace-wide or IP peers"
    for name in PUBLISHED:
        assert targets[name]["spec"]["ingress"] == [{"ports": [{"port": "http"}]}]  # anyone, on its port only


def secret_refs(docs: list[dict]) -> dict[tuple[str, str], dict]:
    """(workload, variable) -> its secretKeyRef, over every container of every workload."""
    found = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                for e in c.get("env", []):
                    if "secretKeyRef" in e.get("valueFrom", {}):
                        found[(d["metadata"]["name"], e["name"])] = e["valueFrom"]["secretKeyRef"]
    return found


def test_secrets_come_from_the_operators_secret_and_each_pod_gets_only_its_own(docs: list[dict]) -> None:
    refs = secret_refs(docs)
    assert {r["name"] for r in refs.values()} == {K8S_SECRET}
    # What `kubectl create secret generic chatqna-secrets --from-env-file=.state/secrets.env` holds.
    assert {r["key"] for r in refs.values() if not r.get("optional")} == set(SECRET_VARS)
    for name, spec in SPECS.items():
        if name == "ui":  # a public door that calls only the gateway as the signed-in user: no secret at all
            assert not [key for (workload, key) in refs if workload == "ui"]
            continue
        token = f"{spec.env_prefix}INTERNAL_API_KEY" if name == "gateway" else f"{spec.env_prefix}API_KEY"
        assert refs[(name, token)] == {"name": K8S_SECRET, "key": INTERNAL_TOKEN}, name
    holders = {workload for (workload, _), r in refs.items() if r["key"] == "GATEWAY_JWT_SECRET"}
    assert holders == {"gateway"}, "the JWT secret reaches no other pod"
    holders = {workload for (workload, _), r in refs.items() if r["key"] == "POSTGRES_PASSWORD"}
    users = {name for name, spec in SPECS.items() if spec.uses_database}
    assert holders == {"gateway", "postgres"} | users, "the database password reaches only the store's users"
    assert not by_kind(docs, "Secret"), "no Secret is rendered: the operator creates it (README.md)"


def test_no_secret_is_written_into_a_manifest(rendered) -> None:
    for name, (_, docs) in rendered.items():
        for key in config_map(docs):
            assert not SECRET_NAME.search(key), f"{name}: {key} belongs in the Secret, not the ConfigMap"
        for d in docs:
            if d["kind"] in ("Deployment", "StatefulSet", "Job"):
                for c in d["spec"]["template"]["spec"]["containers"]:
                    for e in c.get("env", []):
                        if SECRET_NAME.search(e["name"]):
                            assert "valueFrom" in e, f"{name}/{d['metadata']['name']}: {e['name']} has a literal value"


def test_the_two_model_example_adds_a_deployment_with_its_hpa_for_the_second_model(tmp_path: Path) -> None:
    """overlays/two-models: a second LLM Deployment (another GGUF) with its Service, HPA and NetworkPolicy and the
    shared service defaults; the gateway's settings declare both models."""
    text, docs = kustomize("two-models")
    manifest = tmp_path / "two-models.yaml"
    manifest.write_text(text)
    result = subprocess.run(
        [dev_tool("kubernetes-validate"), "--strict", "--quiet", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    second = "llm-gemma3"
    deployments, services, hpas = (
        by_kind(docs, "Deployment"),
        by_kind(docs, "Service"),
        by_kind(docs, "HorizontalPodAutoscaler"),
    )
    assert set(deployments) == set(SPECS) | {second}
    assert set(hpas) == HPA_SERVICES | {second}
    assert hpas[second]["spec"]["scaleTargetRef"]["name"] == second
    assert services[second]["spec"]["selector"] == {"app.kubernetes.io/name": second}
    container = server(deployments[second])
    assert container["readinessProbe"]["httpGet"] == {"path": "/v1/ready", "port": "http"}
    assert container["envFrom"] == server(deployments["llm"])["envFrom"]  # the shared settings
    env = {e["name"]: e for e in container["env"]}
    settings = config_map(docs)
    assert env["LLM_MODEL"]["value"] != settings["LLM_MODEL"]
    assert env["LLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": K8S_SECRET, "key": INTERNAL_TOKEN}
    models = json.loads(settings["GATEWAY_MODELS"])
    port = services["llm"]["spec"]["ports"][0]["port"]
    assert models == {"smollm2": f"http://llm:{port}", "gemma3": f"http://{second}:{port}"}
    assert settings["GATEWAY_DEFAULT_MODEL"] in models
    policy = by_kind(docs, "NetworkPolicy")[second]["spec"]
    assert [p["podSelector"]["matchLabels"] for p in policy["ingress"][0]["from"]] == [
        {"app.kubernetes.io/name": "gateway"}
    ]
