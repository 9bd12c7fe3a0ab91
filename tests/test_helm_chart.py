"""The Helm chart (helm/tailor), linted and rendered offline by Helm v4's own Go code
(helm-python-sdk): strict lint, the objects it makes, the Kubernetes schemas, Ray's
schema for serveConfigV2, the values schema refusing bad values, and the Serve
config held equal to the one `tailor serve --ray` writes."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr
from ray.serve.schema import ServeDeploySchema

from models.store.packaged import PACKAGED_MODELS
from serving import helm_chart, ray_serve
from serving.ray_serve import SECRET_SETTINGS, model_deployment_options, serve_config
from serving.settings import ENV_PREFIX, load_settings, setting_fields
from storage.errors import ConfigurationError
from tests.server import REPO_ROOT

CHART = REPO_ROOT / "helm" / "tailor"
DEFAULT_VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
CI_VALUES = yaml.safe_load((CHART / "ci" / "ci-values.yaml").read_text())
RELEASE = "tailor"
NAMESPACE = "ml"
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest
# kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.26", kubernetes_validate.utils.latest_version())

# Everything switched the other way from the defaults, and odd numbers.
CUSTOM_VALUES: dict[str, Any] = {
    "fullnameOverride": "llm",
    "image": {"repository": "registry.example.com:5000/ml/tailor", "tag": "1.2.3"},
    "imagePullSecrets": [{"name": "registry"}],
    "secrets": {
        "existingSecret": "llm-secrets",
        "keys": {"databaseUrl": "db", "redisUrl": "cache", "adminKey": "", "sessionSecret": ""},
    },
    "config": {"TAILOR_DEVICE": "cuda", "TAILOR_MAX_CONTEXT_TOKENS": "8192"},
    "serve": {"port": 9000, "maxBatch": 7, "maxQueue": 1000000},
    "modelDefaults": {"numGpus": 0.25, "numCpus": 2, "minReplicas": 0, "maxReplicas": 3},
    "models": [
        {"id": "smollm2-135m-instruct", "numGpus": 0, "minReplicas": 2, "maxReplicas": 2},
        {"id": "gemma-3-270m"},
    ],
    "ray": {
        "head": {"rayStartParams": {"metrics-export-port": "8080"}},
        "gpuWorkers": {
            "groupName": "h100",
            "replicas": 2,
            "minReplicas": 0,
            "maxReplicas": 8,
            "gpus": 4,
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [{"key": "dedicated", "value": "llm", "effect": "NoSchedule"}],
        },
    },
    "worker": {
        "replicas": 3,
        "gpus": 2,
        "heartbeatMaxAgeSeconds": 90,
        "nodeSelector": {"pool": "training"},
    },
    "migrations": {"serviceAccountName": "migrator"},
    "persistence": {"existingClaim": "shared-tailor-data", "mountPath": "/data"},
    "service": {"type": "LoadBalancer", "annotations": {"example.com/internal": "true"}},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "hosts": [{"host": "llm.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}],
    },
    "serviceAccount": {"create": False, "name": "ml-runner"},
    "podLabels": {"team": "ml"},
    "podAnnotations": {"example.com/scrape": "true"},
}

# A model of the operator's own, from a volume, beside a packaged one.
OWN_MODEL_VALUES: dict[str, Any] = {
    "models": [
        {"id": "smollm2-135m-instruct"},
        {
            "id": "my-llama",
            "from": "llama-3.2-1b",
            "price": 0.2,
            "contextLength": 4096,
            "chatTemplate": "none",
            "temperature": 0,
            "topP": 0.9,
            "maxTokens": 128,
        },
    ],
    "modelSources": {"existingClaim": "team-models"},
}

VALUE_SETS = {
    "default": None,
    "ci": CI_VALUES,
    "custom": CUSTOM_VALUES,
    "own-models": OWN_MODEL_VALUES,
}

# The fields of KubeRay's ray.io/v1 RayService, from its API reference
# (ray-project/kuberay docs/reference/api.md: RayServiceSpec, RayClusterSpec,
# HeadGroupSpec, WorkerGroupSpec), so that a misspelt or misplaced field fails
# here and not in the operator. The pod templates and the Service inside are
# checked against the Kubernetes schemas instead.
_POD_TEMPLATE = {"type": "object"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
RAYSERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["serveConfigV2", "rayClusterConfig"],
            "properties": {
                "serveConfigV2": {"type": "string"},
                "serveService": {"type": "object"},
                "upgradeStrategy": {"type": "object"},
                "excludeHeadPodFromServeSvc": {"type": "boolean"},
                "rayClusterConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["headGroupSpec"],
                    "properties": {
                        "suspend": {"type": "boolean"},
                        "managedBy": {"type": "string"},
                        "autoscalerOptions": {"type": "object"},
                        "headServiceAnnotations": _STRING_MAP,
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "gcsFaultToleranceOptions": {"type": "object"},
                        "rayVersion": {"type": "string"},
                        "headGroupSpec": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["template"],
                            "properties": {
                                "template": _POD_TEMPLATE,
                                "headService": {"type": "object"},
                                "enableIngress": {"type": "boolean"},
                                "rayStartParams": _STRING_MAP,
                                "serviceType": {"type": "string"},
                            },
                        },
                        "workerGroupSpecs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["groupName", "template"],
                                "properties": {
                                    "suspend": {"type": "boolean"},
                                    "groupName": {"type": "string"},
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "minReplicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer", "minimum": 0},
                                    "idleTimeoutSeconds": {"type": "integer"},
                                    "rayStartParams": _STRING_MAP,
                                    "template": _POD_TEMPLATE,
                                    "scaleStrategy": {"type": "object"},
                                    "numOfHosts": {"type": "integer"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def render(
    values: Mapping[str, Any] | None, chart: Path = CHART, release: str = RELEASE
) -> list[dict[str, Any]]:
    """The chart's objects as ``helm install`` would create them (hooks included)."""
    with helm.Chart.load(chart) as loaded:
        files = loaded.render(
            values=dict(values) if values else None,
            name=release,
            namespace=NAMESPACE,
            is_install=True,
        )
    documents = []
    for path, text in sorted(files.items()):
        if not path.endswith(".yaml"):
            continue  # NOTES.txt
        documents += [doc for doc in yaml.safe_load_all(text) if doc]
    return documents


def only(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents if doc["kind"] == kind]
    return found


def containers(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every container of every pod the chart describes, the RayService's included."""
    found = []
    for doc in documents:
        for template in pod_templates(doc):
            found += template["spec"]["containers"]
    return found


def pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "RayService":
        cluster = doc["spec"]["rayClusterConfig"]
        return [
            cluster["headGroupSpec"]["template"],
            *(group["template"] for group in cluster["workerGroupSpecs"]),
        ]
    if doc["kind"] in ("Deployment", "Job"):
        return [doc["spec"]["template"]]
    return []


def serve_config_of(documents: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(only(documents, "RayService")["spec"]["serveConfigV2"])
    return config


def assert_refused(values: dict[str, Any]) -> str:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(values)
    report = helm.lint(CHART, values, strict=True)
    assert report["errors"], report
    return str(refused.value)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_strict_lint_passes(values: dict[str, Any] | None) -> None:
    for kube_version in KUBERNETES_VERSIONS:
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{kube_version}.0")
        assert report["errors"] == []
        # Only the advice to give the chart an icon (severity 1, info) is left.
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_rendering_gives_the_expected_kinds_and_names() -> None:
    objects = {(doc["kind"], doc["metadata"]["name"]) for doc in render(None)}
    assert objects == {
        ("ConfigMap", "tailor-config"),
        ("ServiceAccount", "tailor"),
        ("PersistentVolumeClaim", "tailor-data"),
        ("RayService", "tailor"),
        ("Deployment", "tailor-worker"),
        ("Job", "tailor-migrations"),
    }
    # Another release name, an ingress, a claim and an account of one's own.
    custom = {
        (doc["kind"], doc["metadata"]["name"]) for doc in render(CUSTOM_VALUES, release="prod")
    }
    assert custom == {
        ("ConfigMap", "llm-config"),
        ("RayService", "llm"),
        ("Deployment", "llm-worker"),
        ("Job", "llm-migrations"),
        ("Ingress", "llm"),
    }
    # The release's name, and the chart's unless the release's already holds it.
    named = render({**CUSTOM_VALUES, "fullnameOverride": ""}, release="prod")
    assert only(named, "RayService")["metadata"]["name"] == "prod-tailor"
    assert only(named, "Deployment")["metadata"]["name"] == "prod-tailor-worker"
    named = render(None, release="tailor-eu")
    assert only(named, "RayService")["metadata"]["name"] == "tailor-eu"
    off = render({"worker": {"enabled": False}, "migrations": {"enabled": False}})
    assert {doc["kind"] for doc in off} == {
        "ConfigMap",
        "ServiceAccount",
        "PersistentVolumeClaim",
        "RayService",
    }


def test_the_values_file_of_the_install_instructions_installs() -> None:
    readme = (CHART / "README.md").read_text()
    match = re.search(r"cat > my-values.yaml <<'EOF'\n(.*?)\nEOF\n", readme, re.DOTALL)
    assert match is not None
    values = yaml.safe_load(match.group(1))
    assert helm.lint(CHART, values, strict=True)["errors"] == []
    config = serve_config_of(render(values))
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    assert deployments["model-smollm2-135m-instruct"]["ray_actor_options"]["num_gpus"] == 0.5


def test_the_packaged_chart_renders_the_same(tmp_path: Path) -> None:
    # files/serve-config.yaml must travel in the archive that `helm package` makes.
    archive = Path(helm.package(CHART, destination=tmp_path))
    assert archive.name == "tailor-0.1.0.tgz"
    assert render(CUSTOM_VALUES, archive) == render(CUSTOM_VALUES)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_manifest_validates_against_the_kubernetes_schemas(
    values: dict[str, Any] | None,
) -> None:
    documents = render(values)
    for version in KUBERNETES_VERSIONS:
        for doc in documents:
            if doc["apiVersion"] != "ray.io/v1":
                kubernetes_validate.validate(doc, version, strict=True)
                continue
            jsonschema.validate(doc, RAYSERVICE_SCHEMA)
            # What KubeRay copies into core objects: the pod templates and the Service.
            for index, template in enumerate(pod_templates(doc)):
                pod_template = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": f"ray-{index}"},
                    "template": template,
                }
                kubernetes_validate.validate(pod_template, version, strict=True)
            service = {"apiVersion": "v1", "kind": "Service", **doc["spec"]["serveService"]}
            kubernetes_validate.validate(service, version, strict=True)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_serve_config_v2_is_valid_for_rays_own_schema(values: dict[str, Any] | None) -> None:
    config = serve_config_of(render(values))
    ServeDeploySchema.model_validate(config)
    (application,) = config["applications"]
    assert application["import_path"] == "serving.ray_serve:build_app"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_serve_config_v2_is_what_the_code_writes_for_the_same_settings(
    values: dict[str, Any] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chart -> code: the rendered serveConfigV2 equals serving.ray_serve.serve_config
    for the environment of the chart's pods (the ConfigMap)."""
    documents = render(values)
    settings_env = only(documents, "ConfigMap")["data"]
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.engine.models is not None
    expected = serve_config(settings, settings.engine.models)
    assert serve_config_of(documents) == expected

    merged = DEFAULT_VALUES | (values or {})
    assert settings.engine.models == [model["id"] for model in merged["models"]]
    # The port the proxies listen on is the one the pods and the Service expose.
    port = expected["http_options"]["port"]
    rayservice = only(documents, "RayService")
    assert rayservice["spec"]["serveService"]["spec"]["ports"] == [{"name": "serve", "port": port}]
    for template in pod_templates(rayservice):
        (ray_container,) = template["spec"]["containers"]
        assert {"name": "serve", "containerPort": port} in ray_container["ports"]


def test_the_custom_values_map_onto_each_models_deployment() -> None:
    deployments = {
        d["name"]: d
        for d in serve_config_of(render(CUSTOM_VALUES))["applications"][0]["deployments"]
    }
    smol, gemma = deployments["model-smollm2-135m-instruct"], deployments["model-gemma-3-270m"]
    # A model's own options win over modelDefaults, including a 0.
    assert smol["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0}
    assert smol["autoscaling_config"]["min_replicas"] == smol["autoscaling_config"]["max_replicas"]
    assert gemma["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0.25}
    assert gemma["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 3,
        "target_ongoing_requests": 3,  # half of maxBatch 7, rounded down
    }
    assert (gemma["max_ongoing_requests"], gemma["max_queued_requests"]) == (7, 1000000)


def test_the_committed_serve_config_file_is_the_codes() -> None:
    """Code -> chart: files/serve-config.yaml is what serving.helm_chart writes now."""
    assert (CHART / "files" / "serve-config.yaml").read_text() == (
        helm_chart.chart_serve_config_text()
    )
    assert helm_chart.main(["--check"]) == 0


def test_drift_on_either_side_is_caught(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The code changes and the chart's copy does not: the check fails.
    changed = copy.deepcopy(ray_serve.INGRESS_OPTIONS)
    changed["max_ongoing_requests"] = 2000
    monkeypatch.setattr(ray_serve, "INGRESS_OPTIONS", changed)
    assert helm_chart.main(["--check"]) == 1
    assert "is stale" in capsys.readouterr().err
    monkeypatch.undo()

    # A template changes and the code does not: the rendered config differs.
    chart = tmp_path / "tailor"
    shutil.copytree(CHART, chart)
    helpers = chart / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    assert text.count('"max_ongoing_requests" $batch') == 1
    helpers.write_text(text.replace('"max_ongoing_requests" $batch', '"max_ongoing_requests" 1'))
    assert serve_config_of(render(None, chart)) != serve_config_of(render(None))


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"image": {"repository": ""}}, id="empty-image"),
        pytest.param({"image": {"repository": None}}, id="no-image"),
        pytest.param({"image": {"repository": "has space"}}, id="bad-image"),
        pytest.param({"worker": {"replicas": -1}}, id="negative-worker-replicas"),
        pytest.param({"ray": {"gpuWorkers": {"replicas": -1}}}, id="negative-ray-replicas"),
        pytest.param({"ray": {"gpuWorkers": {"gpus": -1}}}, id="negative-gpus"),
        pytest.param({"models": [{"id": "a", "minReplicas": -1}]}, id="negative-model-replicas"),
        pytest.param({"models": [{"id": "a", "numGpus": -0.5}]}, id="negative-model-gpus"),
        pytest.param({"models": []}, id="no-model"),
        pytest.param({"serve": {"maxBatch": 0}}, id="zero-batch"),
        pytest.param({"config": {"TAILOR_MAX_BATCH": 8}}, id="non-string-setting"),
        pytest.param({"config": {"TAILOR_PORT": "9000"}}, id="chart-managed-setting"),
    ],
)
def test_bad_values_are_refused_by_the_schema(values: dict[str, Any]) -> None:
    assert_refused(values)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        pytest.param(
            {"config": {"TAILOR_DATABASE_URL": "postgresql://u:pw@db/t"}},
            "'TAILOR_DATABASE_URL'",
            id="db-url",
        ),
        pytest.param(
            {"config": {"TAILOR_REDIS_URL": "redis://:pw@redis:6379"}},
            "'TAILOR_REDIS_URL'",
            id="redis-url",
        ),
        pytest.param(
            {"config": {"TAILOR_ADMIN_KEY": "hunter2"}}, "'TAILOR_ADMIN_KEY'", id="admin-key"
        ),
        pytest.param(
            {"config": {"TAILOR_SESSION_SECRET": "hunter2"}},
            "'TAILOR_SESSION_SECRET'",
            id="session-secret",
        ),
        pytest.param(
            {"config": {"tailor_admin_key": "hunter2"}},
            "'tailor_admin_key'",
            id="lower-case-admin-key",
        ),
        pytest.param(
            {"secrets": {"databaseUrl": "postgresql://u:pw@db/t"}},
            "'databaseUrl' not allowed",
            id="beside-keys",
        ),
        pytest.param(
            {"secrets": {"keys": {"databaseUrl": "postgresql://u:pw@db/t"}}},
            "/secrets/keys/databaseUrl",
            id="value-as-key",
        ),
        pytest.param(
            {"secrets": {"keys": {"adminKey": "s3cr3t/+=="}}},
            "/secrets/keys/adminKey",
            id="admin-key-as-key",
        ),
        pytest.param({"adminKey": "hunter2"}, "'adminKey' not allowed", id="top-level"),
        pytest.param(
            {"worker": {"env": [{"name": "X", "value": "y"}]}},
            "'env' not allowed",
            id="worker-env",
        ),
    ],
)
def test_a_secret_value_in_values_is_refused(values: dict[str, Any], named: str) -> None:
    assert named in assert_refused(values)


def test_the_schema_refuses_every_secret_setting_the_code_knows() -> None:
    # Every SecretStr setting is a secret the Serve config must leave out ...
    secret_fields = {
        setting.variable.removeprefix(ENV_PREFIX)
        for setting in setting_fields()
        if setting.field.annotation is not None
        and SecretStr in getattr(setting.field.annotation, "__args__", ())
    }
    assert secret_fields <= set(SECRET_SETTINGS)
    # ... and each one the code leaves out is refused in the chart's config.
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    refused = set(schema["properties"]["config"]["propertyNames"]["not"]["enum"])
    assert {ENV_PREFIX + name for name in SECRET_SETTINGS} <= refused


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_secrets_come_only_from_the_existing_secret(values: dict[str, Any] | None) -> None:
    documents = render(values)
    merged = DEFAULT_VALUES | (values or {})
    secret_name = merged["secrets"]["existingSecret"]
    assert "Secret" not in {doc["kind"] for doc in documents}
    secret_env = {ENV_PREFIX + name for name in SECRET_SETTINGS}
    for container in containers(documents):
        by_name = {env["name"]: env for env in container.get("env", [])}
        assert {"TAILOR_DATABASE_URL", "TAILOR_REDIS_URL"} <= set(by_name)
        for name in secret_env & set(by_name):
            assert "value" not in by_name[name]
            assert by_name[name]["valueFrom"]["secretKeyRef"]["name"] == secret_name
    assert not secret_env & set(only(documents, "ConfigMap")["data"])
    env_vars = serve_config_of(documents)["applications"][0]["runtime_env"]["env_vars"]
    assert not secret_env & set(env_vars)


def test_gpu_workers_get_their_gpus_and_placement() -> None:
    documents = render(CUSTOM_VALUES)
    cluster = only(documents, "RayService")["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    # The head takes no model replica: no CPUs for Ray, no GPU.
    assert head["rayStartParams"] == {
        "dashboard-host": "0.0.0.0",
        "num-cpus": "0",
        "metrics-export-port": "8080",
    }
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    (group,) = cluster["workerGroupSpecs"]
    assert (group["groupName"], group["replicas"], group["minReplicas"], group["maxReplicas"]) == (
        "h100",
        2,
        0,
        8,
    )
    spec = group["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["tolerations"] == [{"key": "dedicated", "value": "llm", "effect": "NoSchedule"}]
    assert {"imagePullSecrets": [{"name": "registry"}]}.items() <= spec.items()
    # Every Ray pod and worker sees the same data directory (adapter blobs).
    for template in pod_templates(only(documents, "RayService")):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "shared-tailor-data"
        assert template["metadata"]["labels"]["team"] == "ml"
    cpu_only = only(render(CI_VALUES), "RayService")["spec"]["rayClusterConfig"]
    limits = cpu_only["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in limits["limits"]


def test_a_model_asking_for_gpus_the_workers_lack_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"ray\.gpuWorkers\.gpus is 0"):
        render({"ray": {"gpuWorkers": {"gpus": 0}}})
    with pytest.raises(helm.HelmRenderError, match="minReplicas above maxReplicas"):
        render({"models": [{"id": "a", "minReplicas": 3, "maxReplicas": 2}]})
    with pytest.raises(helm.HelmRenderError, match="listed twice"):
        render({"models": [{"id": "a"}, {"id": "a"}]})


@pytest.mark.slow
def test_fine_tune_workers_are_probed_through_their_heartbeat(tmp_path: Path) -> None:
    deployment = only(render(CUSTOM_VALUES), "Deployment")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["worker"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"pool": "training"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    heartbeat = Path(str(env["TAILOR_FINETUNE_HEARTBEAT_FILE"]))
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(heartbeat.parent) in mounts
    probes = [container[p]["exec"]["command"] for p in ("startupProbe", "livenessProbe")]
    probes.append(container["readinessProbe"]["exec"]["command"])
    assert probes == [["tailor", "worker", "--check-health", "--max-age", "90"]] * 3

    # The probe command itself, against a heartbeat file here.
    tailor = str(Path(sys.executable).parent / "tailor")
    probe_env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    probe_env["TAILOR_FINETUNE_HEARTBEAT_FILE"] = str(tmp_path / "heartbeat")

    def probe() -> int:
        command = [tailor, *probes[0][1:]]
        return subprocess.run(command, env=probe_env, capture_output=True, timeout=60).returncode

    assert probe() == 1  # no heartbeat yet
    (tmp_path / "heartbeat").touch()
    assert probe() == 0
    os.utime(tmp_path / "heartbeat", (0, os.path.getmtime(tmp_path / "heartbeat") - 91))
    assert probe() == 1


def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook() -> None:
    documents = render(CUSTOM_VALUES)
    job = only(documents, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    # Not the chart's own account: hooks run before the release's objects exist.
    assert pod["serviceAccountName"] == "migrator"
    (container,) = pod["containers"]
    assert container["command"][:2] == ["/bin/sh", "-ec"]
    assert container["command"][2].splitlines() == ["tailor db upgrade", "tailor models prepare"]
    assert "envFrom" not in container  # the ConfigMap does not exist yet either
    env = {e["name"]: e for e in container["env"]}
    settings = only(documents, "ConfigMap")["data"]
    assert {name: env[name]["value"] for name in settings} == settings
    assert env["TAILOR_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "llm-secrets",
        "key": "db",
    }


def test_per_model_settings_reach_serve_config() -> None:
    """What the chart writes into TAILOR_RAY_MODEL_DEPLOYMENTS, `tailor serve --ray`
    reads the same way."""
    settings = load_settings(
        engine={
            "ray_max_replicas": 5,
            "ray_model_deployments": {"m": {"num_gpus": 0.5, "min_replicas": 0}},
            "device": "cpu",
        }
    )
    options = model_deployment_options(settings, "m")
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert options["autoscaling_config"]["min_replicas"] == 0
    assert options["autoscaling_config"]["max_replicas"] == 5
    other = model_deployment_options(settings, "other")
    assert other["ray_actor_options"]["num_gpus"] == 0
    assert other["autoscaling_config"]["min_replicas"] == 1
    with pytest.raises(ConfigurationError, match="TAILOR_RAY_MODEL_DEPLOYMENTS"):
        load_settings(
            engine={"ray_model_deployments": {"m": {"min_replicas": 3, "max_replicas": 2}}}
        )
    with pytest.raises(ConfigurationError, match="TAILOR_RAY_MODEL_DEPLOYMENTS"):
        load_settings(engine={"ray_model_deployments": {"m": {"gpus": 1}}})


def test_the_defaults_match_the_image_and_the_packaged_models() -> None:
    assert [m["id"] for m in DEFAULT_VALUES["models"]] == [m.id for m in PACKAGED_MODELS]
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    # The image installs the lock's Ray; KubeRay must be told the same version.
    assert (
        f"\nray=={DEFAULT_VALUES['ray']['version']} "
        in (REPO_ROOT / "requirements.lock").read_text()
    )
    assert f"TAILOR_MODEL_STORE={DEFAULT_VALUES['modelStore']} " in dockerfile
    assert f"TAILOR_DATA_DIR={DEFAULT_VALUES['persistence']['mountPath']}\n" in dockerfile
    user = DEFAULT_VALUES["podSecurityContext"]["runAsUser"]
    assert f"USER {user}:{user}\n" in dockerfile


def test_models_from_a_volume_are_added_by_the_heads_init_container() -> None:
    documents = render(OWN_MODEL_VALUES)
    # Their store copies live on the shared data volume, with the packaged models.
    assert only(documents, "ConfigMap")["data"]["TAILOR_MODEL_STORE"] == "/var/lib/tailor/models"
    cluster = only(documents, "RayService")["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    (init,) = head["initContainers"]
    assert init["command"][:2] == ["/bin/sh", "-ec"]
    assert init["command"][2].splitlines() == [
        "tailor models prepare --quiet",
        "tailor models add 'my-llama' --from '/opt/tailor/model-sources/llama-3.2-1b' "
        "--exist-ok --quiet --price 0.2 --context-length 4096 --no-chat-template "
        "--temperature 0 --top-p 0.9 --max-tokens 128",
    ]
    assert {"name": "data", "mountPath": "/var/lib/tailor"} in init["volumeMounts"]
    assert {
        "name": "model-sources",
        "mountPath": "/opt/tailor/model-sources",
        "readOnly": True,
    } in init["volumeMounts"]
    assert {
        "name": "model-sources",
        "persistentVolumeClaim": {"claimName": "team-models", "readOnly": True},
    } in head["volumes"]
    # Only the head reads the sources; the GPU workers load the copies from the data volume.
    for group in cluster["workerGroupSpecs"]:
        assert "initContainers" not in group["template"]["spec"]
        assert all(v["name"] != "model-sources" for v in group["template"]["spec"]["volumes"])
    # The hook runs before the release's claim exists: it leaves the store to the head.
    (hook,) = [doc for doc in documents if doc["kind"] == "Job"]
    script = hook["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert script.split() == ["tailor", "db", "upgrade"]

    packaged_only = render(None)
    assert only(packaged_only, "ConfigMap")["data"]["TAILOR_MODEL_STORE"] == "/opt/tailor/models"
    spec = only(packaged_only, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert "initContainers" not in spec["template"]["spec"]


def test_a_model_from_a_volume_needs_the_claims() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"needs modelSources\.existingClaim"):
        render({**OWN_MODEL_VALUES, "modelSources": {"existingClaim": ""}})
    with pytest.raises(helm.HelmRenderError, match=r"needs persistence\.enabled"):
        render({**OWN_MODEL_VALUES, "persistence": {"enabled": False}})
    refused = assert_refused({**OWN_MODEL_VALUES, "models": [{"id": "x", "from": "/abs"}]})
    assert "from" in refused
    # An id `tailor models add` would refuse, refused at install rather than in a crash loop.
    refused = assert_refused({**OWN_MODEL_VALUES, "models": [{"id": "My-Llama", "from": "a"}]})
    assert "id" in refused
