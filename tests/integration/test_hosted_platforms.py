"""The SageMaker and Vertex AI front doors: real servers on their own ports, driven with
httpx and tritonclient's own request and response codec, and their flags and environment."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from inferd.repository.remote import RemoteLocation
from inferd.server.app import StartupError
from inferd.server.cli import build_parser, settings_from_args
from inferd.server.restricted_api import Api, Restriction
from inferd.server.sagemaker import SageMakerSettings
from inferd.server.sagemaker_container import ContainerError, container_setup
from inferd.server.sagemaker_container import main as sagemaker_container_main
from inferd.server.settings import Settings
from inferd.server.types import ModelIndexEntry
from inferd.server.vertex_ai import VertexAiSettings
from tests.conftest import EXAMPLES, RunningServer, start_server
from tests.python_models import write_python_model

Factory = Callable[..., RunningServer]
VERTEX = VertexAiSettings(port=0, predict_route="/predict", health_route="/health")
VERTEX_BINARY = "application/vnd.vertex-ai-triton.binary+json;json-header-size="
SAGEMAKER_BINARY = "application/vnd.sagemaker-triton.binary+json;json-header-size="
TARGET = "X-Amzn-SageMaker-Target-Model"
REDIRECT = "X-Vertex-Ai-Triton-Redirect"


def simple_inputs() -> tuple[list[httpclient.InferInput], np.ndarray, np.ndarray]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32")]
    inputs.append(httpclient.InferInput("INPUT1", [1, 16], "INT32"))
    inputs[0].set_data_from_numpy(a, binary_data=True)
    inputs[1].set_data_from_numpy(b, binary_data=True)
    return inputs, a, b


def json_body() -> dict[str, object]:
    return {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
        ]
    }


def binary_round_trip(url: str, content_type_prefix: str, **headers: str) -> httpx.Response:
    """A request in the binary tensor extension, marked by the platform's content type;
    tritonclient decodes the answer, whose JSON header's length either the same content type
    (SageMaker) or the HTTP port's Inference-Header-Content-Length (Vertex AI) gives."""
    inputs, a, b = simple_inputs()
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)]
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, outputs)
    answer = httpx.post(
        url, content=body, headers={"Content-Type": f"{content_type_prefix}{json_size}", **headers}
    )
    assert answer.status_code == 200, answer.text
    content_type = answer.headers["content-type"]
    if content_type.startswith(content_type_prefix):
        assert "inference-header-content-length" not in answer.headers
        length = int(content_type[len(content_type_prefix) :])
    else:
        assert content_type == "application/octet-stream"
        length = int(answer.headers["inference-header-content-length"])
    result = httpclient.InferenceServerClient.parse_response_body(
        answer.content, header_length=length
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    return answer


# ---- Vertex AI -------------------------------------------------------------------------------


def vertex_url(server: RunningServer, path: str) -> str:
    return f"http://127.0.0.1:{server.app.vertex_ai_port}{path}"


@pytest.fixture(params=["inferd", "uvicorn"])  # the fast path, and ASGI's
def vertex(server_factory: Factory, request: pytest.FixtureRequest) -> RunningServer:
    return server_factory(
        model_repositories=(EXAMPLES,),
        vertex_ai=VertexAiSettings(
            port=0, predict_route="/predict", health_route="/health", default_model="simple"
        ),
        http_stack=request.param,
    )


def test_vertex_health_and_predict_run_the_default_model(vertex: RunningServer) -> None:
    assert httpx.get(vertex_url(vertex, "/health")).status_code == 200
    answer = httpx.post(vertex_url(vertex, "/predict"), json=json_body())
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_name"] == "simple"
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    assert outputs["OUTPUT0"] == [i + 1 for i in range(16)]
    # Binary answers keep the HTTP port's form on this port, as in Triton.
    binary = binary_round_trip(vertex_url(vertex, "/predict"), VERTEX_BINARY)
    assert binary.headers["content-type"] == "application/octet-stream"
    # Bad input is answered in the protocol's own words, as on the HTTP port.
    bad = httpx.post(vertex_url(vertex, "/predict"), json={"inputs": []})
    assert bad.status_code == 400 and "error" in bad.json()
    for header_size in ("9999999", "-1"):
        refused = httpx.post(
            vertex_url(vertex, "/predict"),
            content=b"{}",
            headers={"Content-Type": VERTEX_BINARY + header_size},
        )
        assert refused.status_code == 400
        assert "inference header size should be in range (0, 2)" in refused.json()["error"]
    # Anything else on the port is a bad request, as in Triton; predict takes POST only.
    assert httpx.get(vertex_url(vertex, "/v2/health/ready")).status_code == 400
    assert httpx.get(vertex_url(vertex, "/predict")).status_code == 405


def test_vertex_redirect_reaches_every_endpoint_by_post(vertex: RunningServer) -> None:
    def redirected(target: str, **kwargs: object) -> httpx.Response:
        return httpx.post(vertex_url(vertex, "/predict"), headers={REDIRECT: target}, **kwargs)  # type: ignore[arg-type]

    config = redirected("v2/models/identity_fp32/config")
    assert config.status_code == 200 and config.json()["name"] == "identity_fp32"
    assert redirected("v2/models/digits").json()["name"] == "digits"  # metadata
    assert redirected("v2/models/digits/ready").status_code == 200
    assert redirected("v2/health/live").status_code == 200
    assert redirected("v2").json()["name"] == "inferd"
    stats = redirected("v2/models/simple/stats").json()["model_stats"]
    assert stats[0]["name"] == "simple"
    index = redirected("v2/repository/index").json()
    assert {entry["name"] for entry in index} >= {"simple", "digits"}
    assert redirected("v2/systemsharedmemory/status").status_code == 200
    infer = redirected("v2/models/simple/infer", json=json_body())
    assert infer.status_code == 200 and infer.json()["model_name"] == "simple"
    binary_round_trip(
        vertex_url(vertex, "/predict"), VERTEX_BINARY, **{REDIRECT: "v2/models/simple/infer"}
    )
    # In explicit mode only: the repository API answers as on the HTTP port.
    unload = redirected("v2/repository/models/simple/unload")
    assert unload.status_code == 503 and "explicit" in unload.json()["error"]
    assert redirected("v2/foo").status_code == 400
    assert redirected("v2/models/simple/generate").status_code == 400
    with_get = httpx.get(vertex_url(vertex, "/predict"), headers={REDIRECT: "v2"})
    assert with_get.status_code == 405


def test_vertex_default_model_must_be_loaded_or_the_only_one(
    server_factory: Factory, tmp_path: Path
) -> None:
    with pytest.raises(StartupError, match="only a single model if default model"):
        server_factory(model_repositories=(EXAMPLES,), vertex_ai=VERTEX)
    with pytest.raises(StartupError, match="Expect the default model 'nope' is loaded"):
        server_factory(
            model_repositories=(EXAMPLES,),
            vertex_ai=VertexAiSettings(
                port=0, predict_route="/predict", health_route="/health", default_model="nope"
            ),
        )
    shutil.copytree(EXAMPLES / "simple", tmp_path / "simple")
    server = server_factory(model_repositories=(tmp_path,), vertex_ai=VERTEX)
    answer = httpx.post(vertex_url(server, "/predict"), json=json_body())
    assert answer.json()["model_name"] == "simple"


def test_vertex_environment_sets_the_defaults(tmp_path: Path) -> None:
    def settings(environ: dict[str, str], *flags: str) -> Settings:
        return settings_from_args(build_parser(environ).parse_args(["serve", *flags]))

    environ = {
        "AIP_MODE": "PREDICTION",
        "AIP_HTTP_PORT": "7080",
        "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict",
        "AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2",
        "AIP_STORAGE_URI": str(tmp_path),
    }
    vertex = settings(environ)
    assert vertex.vertex_ai == VertexAiSettings(
        7080, "", environ["AIP_PREDICT_ROUTE"], environ["AIP_HEALTH_ROUTE"]
    )
    assert (vertex.allow_http, vertex.allow_grpc) == (False, False)  # as in Triton
    assert vertex.model_repositories == (tmp_path,)
    both = settings(environ, "--allow-http=true", "--vertex-ai-port=9090", "--model-store=/m")
    assert both.allow_http and both.vertex_ai is not None and both.vertex_ai.port == 9090
    assert both.model_repositories == (Path("/m"),)
    assert settings({}).vertex_ai is None and settings({}).allow_grpc
    gcs = settings({"AIP_STORAGE_URI": "gs://bucket/models"}).model_repositories
    assert isinstance(gcs[0], RemoteLocation) and (gcs[0].bucket, gcs[0].prefix) == (
        "bucket",
        "models",
    )
    with pytest.raises(ValueError, match="AIP_HEALTH_ROUTE is not defined"):
        settings({"AIP_PREDICT_ROUTE": "/p"}, "--allow-vertex-ai=true")
    with pytest.raises(ValueError, match=r"AIP_PREDICT_ROUTE='/p\[' is not a valid route"):
        settings({"AIP_PREDICT_ROUTE": "/p[", "AIP_HEALTH_ROUTE": "/h"}, "--allow-vertex-ai")


def test_two_front_doors_never_share_a_port() -> None:
    def settings(*flags: str) -> Settings:
        return settings_from_args(build_parser({}).parse_args(["serve", *flags]))

    with pytest.raises(ValueError, match="cannot listen to HTTP requests and SageMaker requests "):
        settings("--http-port=8080", "--allow-sagemaker=true")
    with pytest.raises(ValueError, match="GRPC requests and metrics requests at the same address"):
        settings("--grpc-port=8002", "--grpc-address=0.0.0.0")
    with pytest.raises(ValueError, match=r"HTTP requests at port 8000, allowed port range is \["):
        settings("--allow-sagemaker=true", "--sagemaker-safe-port-range=9000-9100")
    ok = settings("--allow-sagemaker", "--sagemaker-safe-port-range=8000-8002")
    assert ok.sagemaker == SageMakerSettings(safe_port_range=(8000, 8002))
    assert settings("--http-port=0", "--grpc-port=0").grpc_port == 0  # any free port: no clash


# ---- SageMaker -------------------------------------------------------------------------------


def test_sagemaker_environment_names_the_model_and_the_ping() -> None:
    def sagemaker(environ: dict[str, str]) -> SageMakerSettings | None:
        args = build_parser(environ).parse_args(["serve", "--allow-sagemaker=true"])
        return settings_from_args(args).sagemaker

    environ = {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "m", "SAGEMAKER_TRITON_PING_MODE": "live"}
    assert sagemaker(environ) == SageMakerSettings(default_model="m", ping_mode="live")
    # Any other ping mode means readiness, as in Triton.
    assert sagemaker({"SAGEMAKER_TRITON_PING_MODE": "bogus"}) == SageMakerSettings()
    assert settings_from_args(build_parser({}).parse_args(["serve"])).sagemaker is None


def sagemaker_url(server: RunningServer, path: str) -> str:
    return f"http://127.0.0.1:{server.app.sagemaker_port}{path}"


FAILING = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        text = pb_utils.get_input_tensor_by_name(requests[0], "TEXT").as_numpy()[0].decode()
        raise pb_utils.TritonModelException(text)
"""

FAILING_CONFIG = """
name: "failing"
backend: "python"
input [{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }]
output [{ name: "OUT" data_type: TYPE_STRING dims: [ 1 ] }]
"""


@pytest.mark.parametrize("stack", ["inferd", "uvicorn"])  # the fast path, and ASGI's
def test_sagemaker_ping_and_invocations(server_factory: Factory, stack: str) -> None:
    server = server_factory(
        model_repositories=(EXAMPLES,),
        sagemaker=SageMakerSettings(port=0, default_model="simple"),
        http_stack=stack,
    )
    assert httpx.get(sagemaker_url(server, "/ping")).status_code == 200
    answer = httpx.post(sagemaker_url(server, "/invocations"), json=json_body())
    assert answer.status_code == 200 and answer.json()["model_name"] == "simple"
    binary = binary_round_trip(sagemaker_url(server, "/invocations"), SAGEMAKER_BINARY)
    assert binary.headers["content-type"].startswith(SAGEMAKER_BINARY)
    bad = httpx.post(sagemaker_url(server, "/invocations"), content=b"not json")
    assert bad.status_code == 400 and "error" in bad.json()
    too_long = httpx.post(
        sagemaker_url(server, "/invocations"),
        content=b"{}",
        headers={"Content-Type": SAGEMAKER_BINARY + "3"},
    )
    assert too_long.status_code == 400
    assert too_long.json() == {"error": "inference header size should be in range (0, 2), got: 3"}
    compressed = httpx.post(
        sagemaker_url(server, "/invocations"), json=json_body(), headers={"Accept-Encoding": "gzip"}
    )
    assert "content-encoding" not in compressed.headers  # never compressed here, as in Triton
    assert httpx.get(sagemaker_url(server, "/elsewhere")).status_code == 400


def test_sagemaker_failures_answer_400_or_507_for_memory(
    server_factory: Factory, tmp_path: Path
) -> None:
    write_python_model(tmp_path, "failing", FAILING, FAILING_CONFIG)
    server = server_factory(
        model_repositories=(tmp_path,),
        sagemaker=SageMakerSettings(port=0, default_model="failing"),
    )

    def invoke(text: str) -> httpx.Response:
        body = {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": [text]}]}
        return httpx.post(sagemaker_url(server, "/invocations"), json=body)

    plain = invoke("the model failed")
    assert plain.status_code == 400 and "the model failed" in plain.json()["error"]
    memory = invoke("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert memory.status_code == 507 and "CUDA out of memory" in memory.json()["error"], memory.text
    missing = server_factory(model_repositories=(tmp_path,), sagemaker=SageMakerSettings(port=0))
    unknown = httpx.post(sagemaker_url(missing, "/invocations"), json=json_body())
    assert unknown.status_code == 404  # refused before it ran: the HTTP port's status
    assert "unspecified_SAGEMAKER_TRITON_DEFAULT_MODEL_NAME" in unknown.json()["error"]


def test_sagemaker_ping_follows_the_ping_mode(server_factory: Factory, tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()  # fails to load: the server is live, not ready
    (tmp_path / "broken" / "config.pbtxt").write_text('backend: "nope"')
    ready = server_factory(model_repositories=(tmp_path,), sagemaker=SageMakerSettings(port=0))
    assert httpx.get(sagemaker_url(ready, "/ping")).status_code == 400
    live = server_factory(
        model_repositories=(tmp_path,), sagemaker=SageMakerSettings(port=0, ping_mode="live")
    )
    assert httpx.get(sagemaker_url(live, "/ping")).status_code == 200


def multi_model_server(server_factory: Factory, tmp_path: Path) -> RunningServer:
    """A multi-model endpoint: explicit mode, an empty repository, SageMaker on."""
    empty = tmp_path / "repository"
    empty.mkdir()
    return server_factory(
        model_repositories=(empty,),
        model_control_mode="explicit",
        sagemaker=SageMakerSettings(port=0),
    )


def test_sagemaker_multi_model_endpoint(server_factory: Factory, tmp_path: Path) -> None:
    server = multi_model_server(server_factory, tmp_path)
    # As SageMaker unpacks a model archive: /opt/ml/models/<hash>/model/<model folder>.
    unpacked = tmp_path / "models" / "0123abcd" / "model"
    shutil.copytree(EXAMPLES / "simple", unpacked / "simple")
    url = str(unpacked)

    def models(path: str = "", method: str = "GET", **kwargs: object) -> httpx.Response:
        return httpx.request(method, sagemaker_url(server, "/models" + path), **kwargs)  # type: ignore[arg-type]

    # The model is served under the header's name, whatever its config calls it, as in Triton;
    # the name is the archive's path under the endpoint's S3 prefix, so it may hold a slash.
    headers = {TARGET: "v1/simple.tar.gz"}
    load = models(method="POST", json={"model_name": "0123abcd", "url": url}, headers=headers)
    assert load.status_code == 200, load.text
    listed = models().json()
    assert listed == {"models": [{"modelName": "0123abcd", "modelUrl": url}]}
    assert models("/0123abcd").json() == {"modelName": "0123abcd", "modelUrl": url}
    assert models("/unknown").status_code == 404
    invoke = models("/0123abcd/invoke", method="POST", json=json_body(), headers=headers)
    assert invoke.status_code == 200 and invoke.json()["model_name"] == "v1/simple.tar.gz"
    assert models("/0123abcd/invoke").json()["modelName"] == "0123abcd"  # GET: as /0123abcd
    # Every failure of an invocation answers 400 here, as in Triton.
    bad = models("/0123abcd/invoke", method="POST", json={"inputs": []}, headers=headers)
    assert bad.status_code == 400 and "error" in bad.json()
    other = models("/0123abcd/invoke", method="POST", json=json_body(), headers={TARGET: "x"})
    assert other.status_code == 400 and "unknown model: 'x'" in other.json()["error"]
    without_header = models("/0123abcd/invoke", method="POST", json=json_body())
    assert without_header.json()["model_name"] == "v1/simple.tar.gz"  # the model it loaded
    binary_round_trip(sagemaker_url(server, "/models/0123abcd/invoke"), SAGEMAKER_BINARY, **headers)
    again = models(method="POST", json={"model_name": "0123abcd", "url": url}, headers=headers)
    assert again.status_code == 409 and "error" in again.json()
    assert models("/0123abcd", method="DELETE", headers=headers).status_code == 200
    assert models("/0123abcd", method="DELETE", headers=headers).status_code == 404
    assert models("/0123abcd/invoke", method="POST", json=json_body()).status_code == 404
    assert models().json() == {"models": []}
    # Loadable again once unloaded (the repository it was registered as is gone).
    reload = models(method="POST", json={"model_name": "0123abcd", "url": url}, headers=headers)
    assert reload.status_code == 200, reload.text
    # Refused: system folders, a request that is not JSON, a folder with no model.
    proc = models(method="POST", json={"model_name": "p", "url": "/proc/self"})
    assert proc.status_code == 400
    assert models(method="POST", content=b"{").status_code == 400
    nothing = models(method="POST", json={"model_name": "n", "url": str(tmp_path / "none")})
    assert nothing.status_code == 400 and "error" in nothing.json()
    assert models("/n").status_code == 404  # a failed load leaves nothing behind
    assert models(method="DELETE").status_code == 404
    assert models(method="PUT").status_code == 400
    assert httpx.post(sagemaker_url(server, "/ping")).status_code == 405


PIPELINE = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [
  { name: "A" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "B" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [{ name: "SUM" data_type: TYPE_INT32 dims: [ 16 ] }]
ensemble_scheduling { step [ {
  model_name: "simple" model_version: -1
  input_map { key: "INPUT0" value: "A" } input_map { key: "INPUT1" value: "B" }
  output_map { key: "OUTPUT0" value: "SUM" }
} ] }
"""


def repository_index(server: RunningServer, ready_only: bool = False) -> list[ModelIndexEntry]:
    core = server.app.core
    assert core is not None
    return cast(list[ModelIndexEntry], server.call(core.repository_index(ready_only)))


def test_sagemaker_multi_model_endpoint_loads_an_ensemble_with_its_steps(
    server_factory: Factory, tmp_path: Path
) -> None:
    server = multi_model_server(server_factory, tmp_path)
    unpacked = tmp_path / "models" / "feed" / "model"
    shutil.copytree(EXAMPLES / "simple", unpacked / "simple")
    (unpacked / "pipeline" / "1").mkdir(parents=True)
    (unpacked / "pipeline" / "config.pbtxt").write_text(PIPELINE)
    headers = {TARGET: "pipeline.tar.gz"}
    load = httpx.post(
        sagemaker_url(server, "/models"),
        json={"model_name": "feed", "url": str(unpacked)},
        headers=headers,
    )
    assert load.status_code == 200, load.text
    body = {
        "inputs": [
            {"name": "A", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
            {"name": "B", "shape": [1, 16], "datatype": "INT32", "data": [2] * 16},
        ]
    }
    invoke = httpx.post(sagemaker_url(server, "/models/feed/invoke"), json=body, headers=headers)
    assert invoke.status_code == 200, invoke.text
    assert invoke.json()["outputs"][0]["data"] == [i + 2 for i in range(16)]
    index = {(e.name, e.state) for e in repository_index(server)}
    assert {("pipeline.tar.gz", "READY"), ("simple", "READY")} <= index
    unload = httpx.delete(sagemaker_url(server, "/models/feed"), headers=headers)
    assert unload.status_code == 200
    assert repository_index(server) == []  # its step went with it, and both left the index
    # An ensemble that fails to load takes the steps it loaded with it, and its repository.
    (unpacked / "pipeline" / "config.pbtxt").write_text(PIPELINE.replace('"SUM"', '"NOPE"', 1))
    failed = httpx.post(
        sagemaker_url(server, "/models"),
        json={"model_name": "feed", "url": str(unpacked)},
        headers=headers,
    )
    assert failed.status_code == 400, failed.text
    assert repository_index(server) == []
    assert httpx.get(sagemaker_url(server, "/models/feed")).status_code == 404


# ---- the SageMaker container's entry point ---------------------------------------------------


def test_sagemaker_container_serves_the_only_model(tmp_path: Path) -> None:
    single = tmp_path / "opt-ml-model"
    shutil.copytree(EXAMPLES / "simple", single / "simple")
    environ = {"SAGEMAKER_BIND_TO_PORT": "0", "SAGEMAKER_TRITON_LOG_VERBOSE": "true"}
    flags, environment = container_setup(environ, single, tmp_path / "mme")
    assert flags[-1] == "--load-model=simple"
    assert environment["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"] == "simple"
    settings = settings_from_args(build_parser(environment).parse_args(["serve", *flags]))
    assert (settings.allow_http, settings.allow_grpc, settings.allow_metrics) == (False,) * 3
    assert settings.log_level == "debug" and settings.model_control_mode == "explicit"
    server = start_server(replace(settings, http_address="127.0.0.1"))
    try:
        answer = httpx.post(sagemaker_url(server, "/invocations"), json=json_body())
        assert answer.status_code == 200 and answer.json()["model_name"] == "simple"
    finally:
        server.stop()


def test_sagemaker_container_refuses_what_triton_refuses(tmp_path: Path) -> None:
    single = tmp_path / "model"
    single.mkdir()
    with pytest.raises(ContainerError, match="No model found"):
        container_setup({}, single, tmp_path / "mme")
    (single / "a").mkdir()
    (single / "b").mkdir()
    with pytest.raises(ContainerError, match="Directories found in model repository: a b"):
        container_setup({}, single, tmp_path / "mme")
    assert container_setup({"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "b"}, single)[0][-1] == (
        "--load-model=b"
    )
    with pytest.raises(ContainerError, match="SAGEMAKER_TRITON_DEFAULT_MODEL_NAME c does not"):
        container_setup({"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "c"}, single)
    (single / "config.pbtxt").write_text("")
    with pytest.raises(ContainerError, match="Incorrect directory structure"):
        container_setup({}, single)
    # A multi-model endpoint starts with no model, on a folder of its own.
    flags, _ = container_setup(
        {"SAGEMAKER_MULTI_MODEL": "true", "SAGEMAKER_SAFE_PORT_RANGE": "8000-9000"},
        single,
        tmp_path / "mme",
    )
    assert f"--model-repository={tmp_path / 'mme'}" in flags and (tmp_path / "mme").is_dir()
    assert "--sagemaker-safe-port-range=8000-9000" in flags
    assert not any(flag.startswith("--load-model") for flag in flags)
    assert sagemaker_container_main(["predict"]) == 2


def test_sagemaker_multi_model_loads_run_side_by_side(
    server_factory: Factory, tmp_path: Path
) -> None:
    server = multi_model_server(server_factory, tmp_path)
    for name in ("one", "two", "three"):
        shutil.copytree(EXAMPLES / "simple", tmp_path / name / "model" / "simple")

    async def load_all() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:  # loads on 2 busy cores

            def load(name: str, url_of: str) -> Any:
                body = {"model_name": name, "url": str(tmp_path / url_of / "model")}
                headers = {TARGET: f"{name}.tar.gz"}
                return client.post(sagemaker_url(server, "/models"), json=body, headers=headers)

            answers = await asyncio.gather(
                load("one", "one"), load("two", "two"), load("one", "three")
            )
            return [answer.status_code for answer in answers]

    statuses = asyncio.run(load_all())
    assert sorted(statuses) == [200, 200, 409]  # one name, asked for twice at once
    listed = httpx.get(sagemaker_url(server, "/models")).json()["models"]
    assert sorted(m["modelName"] for m in listed) == ["one", "two"]


def test_restricted_apis_hold_on_the_hosted_ports(server_factory: Factory, tmp_path: Path) -> None:
    restricted = {
        Api.MODEL_REPOSITORY: Restriction("admin", "yes"),
        Api.INFERENCE: Restriction("infer-key", "secret"),
    }
    server = server_factory(
        model_repositories=(EXAMPLES,),
        model_control_mode="explicit",
        load_models=("simple",),
        http_restricted_api=restricted,
        sagemaker=SageMakerSettings(port=0, default_model="simple"),
        vertex_ai=replace(VERTEX, default_model="simple"),
    )
    refused = httpx.get(sagemaker_url(server, "/models"))
    assert refused.status_code == 403
    assert refused.json() == {"error": "This API is restricted, expecting header 'admin'"}
    assert httpx.get(sagemaker_url(server, "/models"), headers={"admin": "yes"}).status_code == 200
    invocations = sagemaker_url(server, "/invocations")
    assert httpx.post(invocations, json=json_body()).status_code == 403
    allowed = httpx.post(invocations, json=json_body(), headers={"infer-key": "secret"})
    assert allowed.status_code == 200
    assert httpx.get(sagemaker_url(server, "/ping")).status_code == 200  # health: open
    predict = vertex_url(server, "/predict")
    assert httpx.post(predict, json=json_body()).status_code == 403
    index = httpx.post(predict, headers={REDIRECT: "v2/repository/index"})
    assert index.status_code == 403
    index = httpx.post(predict, headers={REDIRECT: "v2/repository/index", "admin": "yes"})
    assert index.status_code == 200
