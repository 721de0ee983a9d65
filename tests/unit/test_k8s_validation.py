"""The offline manifest validator (tests/k8s_validation.py) catches real mistakes: one valid
minimal Knative Service, ServingRuntime and InferenceService, each broken one way per case."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s_validation import ManifestValidator, schema_dir, validator

AS = "autoscaling.knative.dev/"
ANNOTATIONS = "spec.template.metadata.annotations"
CONTAINER = "spec.template.spec.containers[0]"
DELETE = object()  # an edit that removes the field


@pytest.fixture(scope="module")
def check() -> ManifestValidator:
    assert schema_dir().is_dir(), f"CRD schemas not found at {schema_dir()}: set K8S_SCHEMA_DIR"
    return validator()


def knative_service() -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "inferd", "namespace": "default", "labels": {"app": "inferd"}},
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        AS + "min-scale": "0",
                        AS + "max-scale": "4",
                        AS + "metric": "concurrency",
                        AS + "target": "8",
                        AS + "window": "60s",
                        AS + "scale-to-zero-pod-retention-period": "5m",
                        "serving.knative.dev/progress-deadline": "1800s",
                    }
                },
                "spec": {
                    "containerConcurrency": 16,
                    "timeoutSeconds": 300,
                    "containers": [
                        {
                            "name": "inferd",
                            "image": "ghcr.io/example/inferd:0.1.0",
                            "args": ["serve", "--model-repository=/mnt/models"],
                            "ports": [{"name": "http1", "containerPort": 8080}],
                            "env": [{"name": "MODEL_REPOSITORY", "value": "/mnt/models"}],
                            "resources": {
                                "requests": {"cpu": "2", "memory": "16Gi"},
                                "limits": {"memory": "16Gi", "nvidia.com/gpu": "1"},
                            },
                            "readinessProbe": {"httpGet": {"path": "/v2/health/ready"}},
                            "livenessProbe": {
                                "httpGet": {"path": "/v2/health/live", "port": 8080},
                                "periodSeconds": 10,
                            },
                            "startupProbe": {
                                "httpGet": {"path": "/v2/health/live", "port": "http1"},
                                "periodSeconds": 5,
                                "failureThreshold": 120,
                            },
                        }
                    ],
                },
            }
        },
    }


def serving_runtime(kind: str = "ServingRuntime") -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "inferd"},
        "spec": {
            "supportedModelFormats": [
                {"name": "inferd", "version": "1", "autoSelect": True, "priority": 2},
                {"name": "onnx", "version": "1"},
            ],
            "protocolVersions": ["v2", "grpc-v2"],
            "annotations": {"prometheus.kserve.io/port": "8002"},
            "containers": [
                {
                    "name": "kserve-container",
                    "image": "ghcr.io/example/inferd:0.1.0",
                    "args": ["serve", "--model-repository=/mnt/models", "--http-port=8080"],
                    "env": [
                        {"name": "ISVC_NAME", "value": "{{.Name}}"},
                        {"name": "ISVC_TEAM", "value": "{{ .Labels.team }}"},
                    ],
                    "resources": {"limits": {"cpu": "1", "memory": "2Gi"}},
                }
            ],
        },
    }


def inference_service() -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "densenet",
            "annotations": {
                "serving.kserve.io/deploymentMode": "Serverless",
                AS + "scale-to-zero-pod-retention-period": "5m",
            },
        },
        "spec": {
            "predictor": {
                "minReplicas": 0,
                "maxReplicas": 2,
                "model": {
                    "modelFormat": {"name": "onnx"},
                    "runtime": "inferd",
                    "protocolVersion": "v2",
                    "storageUri": "pvc://models/densenet",
                    "ports": [{"name": "h2c", "containerPort": 8081, "protocol": "TCP"}],
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                },
            }
        },
    }


def deployment() -> dict[str, Any]:
    labels = {"app": "inferd"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "inferd", "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": "inferd", "image": "inferd:0.1.0", "imagePullPolicy": "Always"}
                    ]
                },
            },
        },
    }


def edited(document: dict[str, Any], edits: dict[tuple[str | int, ...], Any]) -> dict[str, Any]:
    """The document with each (key path) set to its value, or removed for DELETE."""
    for path, value in edits.items():
        node: Any = document
        for key in path[:-1]:
            node = node[key] if isinstance(key, int) else node.setdefault(key, {})
        if value is DELETE:
            del node[path[-1]]
        elif isinstance(node, list) and path[-1] == len(node):
            node.append(value)
        else:
            node[path[-1]] = value
    return document


def ann(key: str) -> tuple[str | int, ...]:
    return ("spec", "template", "metadata", "annotations", key)


def pod(*keys: str | int) -> tuple[str | int, ...]:
    return ("spec", "template", "spec", *keys)


def ctr(*keys: str | int) -> tuple[str | int, ...]:
    return pod("containers", 0, *keys)


def model(*keys: str | int) -> tuple[str | int, ...]:
    return ("spec", "predictor", "model", *keys)


GPU = ctr("resources", "limits", "nvidia.com/gpu")
Build = Callable[[], dict[str, Any]]
Edits = dict[tuple[str | int, ...], Any]
CASES: list[tuple[str, Build, Edits, str, str]] = [
    # (id, valid manifest, edits, field path in the error ("" = none), word in the error)
    ("annotation-int", knative_service, {ann(AS + "max-scale"): 4},
     f"{ANNOTATIONS}.{AS}max-scale", "4 is not of type 'string'"),
    ("field-typo", knative_service, {pod("containerConcurency"): 16},
     "spec.template.spec", "'containerConcurency' was unexpected"),
    ("quantity", knative_service, {ctr("resources", "limits", "memory"): "16GB"},
     f"{CONTAINER}.resources.limits.memory", "'16GB' does not match"),
    ("quantity-float", knative_service, {ctr("resources", "requests", "cpu"): 0.1},
     f"{CONTAINER}.resources.requests.cpu", "not valid under any of the given schemas"),
    ("on-service", knative_service, {("metadata", "annotations", AS + "min-scale"): "1"},
     f"metadata.annotations.{AS}min-scale", "belong in spec.template.metadata.annotations"),
    ("kpa-metric", knative_service, {ann(AS + "metric"): "cpu"},
     f"{ANNOTATIONS}.{AS}metric", "metric 'cpu' not valid for KPA"),
    ("hpa-to-zero", knative_service, {ann(AS + "class"): "hpa.autoscaling.knative.dev"},
     f"{ANNOTATIONS}.{AS}class", "HPA class cannot scale to zero"),
    ("unknown-class", knative_service, {ann(AS + "class"): "kpa.knative.dev"},
     f"{ANNOTATIONS}.{AS}class", "unknown autoscaler class"),
    ("max-below-min", knative_service, {ann(AS + "min-scale"): "5"},
     f"{ANNOTATIONS}.{AS}max-scale", "less than min-scale 5"),
    ("min-scale-negative", knative_service, {ann(AS + "minScale"): "-1"},
     f"{ANNOTATIONS}.{AS}minScale", "an integer >= 0"),
    ("initial-scale-zero", knative_service, {ann(AS + "initial-scale"): "0"},
     f"{ANNOTATIONS}.{AS}initial-scale", "allow-zero-initial-scale"),
    ("activation-scale", knative_service, {ann(AS + "activation-scale"): "1"},
     f"{ANNOTATIONS}.{AS}activation-scale", ">= 2"),
    ("target", knative_service, {ann(AS + "target"): "0"}, f"{ANNOTATIONS}.{AS}target", ">= 0.01"),
    ("utilization", knative_service, {ann(AS + "target-utilization-percentage"): "150"},
     f"{ANNOTATIONS}.{AS}target-utilization-percentage", "1..100"),
    ("window", knative_service, {ann(AS + "window"): "5s"}, f"{ANNOTATIONS}.{AS}window", "6s..1h"),
    ("retention", knative_service, {ann(AS + "scale-to-zero-pod-retention-period"): "2h"},
     f"{ANNOTATIONS}.{AS}scale-to-zero-pod-retention-period", "0s..1h"),
    ("progress-deadline", knative_service, {ann("serving.knative.dev/progress-deadline"): "10 min"},
     f"{ANNOTATIONS}.serving.knative.dev/progress-deadline", "Go duration"),
    ("two-ports", knative_service, {ctr("ports", 1): {"name": "h2c", "containerPort": 8081}},
     f"{CONTAINER}.ports[1]", "single container port (got 2)"),
    ("port-name", knative_service, {ctr("ports", 0, "name"): "http"},
     f"{CONTAINER}.ports[0].name", "port name 'http' not allowed"),
    ("port-udp", knative_service, {ctr("ports", 0, "protocol"): "UDP"},
     f"{CONTAINER}.ports[0].protocol", "TCP"),
    ("reserved-port", knative_service, {ctr("ports", 0, "containerPort"): 8012},
     f"{CONTAINER}.ports[0].containerPort", "reserved"),
    ("reserved-env", knative_service, {ctr("env", 0, "name"): "PORT"},
     f"{CONTAINER}.env[0].name", "PORT is a reserved env name"),
    ("queue-proxy", knative_service, {ctr("name"): "queue-proxy"}, f"{CONTAINER}.name", "reserved"),
    ("probe-port", knative_service, {ctr("livenessProbe", "httpGet", "port"): 8002},
     f"{CONTAINER}.livenessProbe.httpGet.port", "serving port 8080"),
    ("aggressive-probe", knative_service, {ctr("readinessProbe", "failureThreshold"): 3},
     f"{CONTAINER}.readinessProbe.failureThreshold", "periodSeconds is 0"),
    ("gpu-request", knative_service, {ctr("resources", "requests", "nvidia.com/gpu"): "2"},
     f"{CONTAINER}.resources.requests.nvidia.com/gpu", "must equal its limit"),
    ("gpu-no-limit", knative_service,
     {GPU: DELETE, ctr("resources", "requests", "nvidia.com/gpu"): "1"},
     f"{CONTAINER}.resources.limits", "nvidia.com/gpu needs a limit"),
    ("node-selector", knative_service,
     {pod("nodeSelector"): {"gpu": "a100"}},
     "spec.template.spec.nodeSelector", "kubernetes.podspec-nodeselector"),
    ("pvc", knative_service,
     {pod("volumes"): [{"name": "m", "persistentVolumeClaim": {"claimName": "m"}}]},
     "spec.template.spec.volumes[0].persistentVolumeClaim", "persistent-volume-claim"),
    ("v1beta1", knative_service, {("apiVersion",): "serving.knative.dev/v1beta1"},
     "", "no schema for ('serving.knative.dev/v1beta1', 'Service')"),
    ("name", knative_service, {("metadata", "name"): "Inferd"}, "metadata.name", "does not match"),
    ("metadata-typo", knative_service, {("metadata", "lables"): {"app": "inferd"}},
     "metadata", "'lables' was unexpected"),
    ("auto-select", serving_runtime, {("spec", "supportedModelFormats", 0, "autoSelect"): "yes"},
     "spec.supportedModelFormats[0].autoSelect", "'yes' is not of type 'boolean'"),
    ("priority-zero", serving_runtime, {("spec", "supportedModelFormats", 0, "priority"): 0},
     "spec.supportedModelFormats[0].priority", "0 is less than the minimum of 1"),
    ("priority-no-auto", serving_runtime, {("spec", "supportedModelFormats", 1, "priority"): 1},
     "spec.supportedModelFormats[1].priority", "autoSelect: true"),
    ("placeholder", serving_runtime,
     {("spec", "containers", 0, "args", 1): "--model-name={{.ModelName}}"},
     "spec.containers[0]", "unknown placeholder {{.ModelName}}"),
    ("container-name", serving_runtime, {("spec", "containers", 0, "name"): "inferd"},
     "spec.containers", "kserve-container"),
    ("storage-uri", inference_service, {model("storageURI"): "pvc://models/x"},
     "spec.predictor.model", "'storageURI' was unexpected"),
    ("model-format", inference_service, {model("modelFormat", "name"): "tensorflow"},
     "spec.predictor.model.modelFormat.name", "modelFormat 'tensorflow' not supported by runtime"),
    ("protocol", inference_service, {model("protocolVersion"): "v1"},
     "spec.predictor.model.protocolVersion", "protocolVersions"),
    ("isvc-name", inference_service, {("metadata", "name"): "1densenet"}, "metadata.name", "match"),
    ("no-mode", inference_service,
     {("metadata", "annotations", "serving.kserve.io/deploymentMode"): DELETE},
     "metadata.annotations", "serving.kserve.io/deploymentMode"),
    ("bad-mode", inference_service,
     {("metadata", "annotations", "serving.kserve.io/deploymentMode"): "Serverles"},
     "metadata.annotations.serving.kserve.io/deploymentMode", "not one of"),
    ("min-replicas", inference_service, {("spec", "predictor", "minReplicas"): -1},
     "spec.predictor.minReplicas", ">= 0"),
    ("min-over-max", inference_service, {("spec", "predictor", "minReplicas"): 3},
     "spec.predictor.minReplicas", "more than maxReplicas 2"),
    ("isvc-two-ports", inference_service, {model("ports", 1): {"containerPort": 8080}},
     "spec.predictor.model.ports[1]", "single container port (got 2)"),
    ("isvc-port-name", inference_service, {model("ports", 0, "name"): "grpc"},
     "spec.predictor.model.ports[0].name", "port name 'grpc' not allowed"),
    ("isvc-node-selector", inference_service, {("spec", "predictor", "nodeSelector"): {"a": "b"}},
     "spec.predictor.nodeSelector", "kubernetes.podspec-nodeselector"),
    ("deployment-typo", deployment, {ctr("imagePullPolice"): "Always"},
     "spec.template.spec.containers[0]", "'imagePullPolice' was unexpected"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "edits", "where", "word"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_mistake_is_caught(
    check: ManifestValidator, build: Build, edits: Edits, where: str, word: str
) -> None:
    # An ISVC is checked beside the runtime it names (modelFormat, protocolVersion).
    runtime = [serving_runtime()] if build is inference_service else []
    errors = check.validate([edited(build(), edits), *runtime])
    assert any(word in error for error in errors), errors
    if where:
        assert any(f": {where}: " in error and word in error for error in errors), errors


@pytest.mark.parametrize(
    "documents",
    [
        [knative_service()],
        [serving_runtime()],
        [serving_runtime("ClusterServingRuntime")],
        [inference_service(), serving_runtime()],
        [inference_service()],  # its runtime defined elsewhere: nothing to compare with
        [deployment()],
    ],
    ids=["ksvc", "runtime", "cluster-runtime", "isvc-with-runtime", "isvc", "deployment"],
)
def test_the_valid_minimal_manifests_pass(
    check: ManifestValidator, documents: list[dict[str, Any]]
) -> None:
    assert check.validate(documents) == []


def test_feature_flagged_fields_pass_once_enabled(check: ManifestValidator) -> None:
    gated = {
        pod("nodeSelector"): {"gpu": "a100"},
        pod("tolerations"): [{"key": "nvidia.com/gpu", "operator": "Exists"}],
    }
    service = edited(knative_service(), gated)
    assert len(check.validate([service])) == 2
    assert check.validate([service], features={"nodeselector", "tolerations"}) == []
    # The flag names of Knative's config-features ConfigMap work too.
    flags = {"kubernetes.podspec-nodeselector", "kubernetes.podspec-tolerations"}
    assert check.validate([service], features=flags) == []
    assert check.validate([service], features={"nodeselector"}) != []
    zero = edited(knative_service(), {ann(AS + "initial-scale"): "0"})
    assert check.validate([zero], features={"allow-zero-initial-scale"}) == []


def test_hpa_class_with_a_minimum_scale_passes(check: ManifestValidator) -> None:
    hpa = {ann(AS + "class"): "hpa.autoscaling.knative.dev", ann(AS + "metric"): "inferd_queue"}
    assert check.validate([edited(knative_service(), {**hpa, ann(AS + "min-scale"): "1"})]) == []


def test_every_schema_error_is_reported_sorted_by_path(check: ManifestValidator) -> None:
    broken = edited(
        knative_service(),
        {ctr("resources", "limits", "memory"): "16GB", ann(AS + "max-scale"): 4, ctr("tty"): 1},
    )
    errors = check.validate([broken])
    assert len(errors) == 3, errors
    assert all(error.startswith("Service/inferd: ") for error in errors)
    paths = [error.split(": ")[1] for error in errors]
    assert paths == sorted(paths)


def test_files_are_checked_together_and_named(check: ManifestValidator, tmp_path: Path) -> None:
    runtime, isvc = tmp_path / "runtime.yaml", tmp_path / "isvc.yaml"
    runtime.write_text("---\n" + yaml.safe_dump(serving_runtime()) + "---\n")
    model_format = {model("modelFormat", "name"): "tensorflow"}
    isvc.write_text(yaml.safe_dump_all([edited(inference_service(), model_format), deployment()]))
    errors = check.validate_files([runtime, isvc])
    assert len(errors) == 1, errors
    assert errors[0].startswith("isvc.yaml: InferenceService/densenet: ")
    assert "not supported by runtime 'inferd'" in errors[0]
    assert check.validate_files([runtime]) == []
