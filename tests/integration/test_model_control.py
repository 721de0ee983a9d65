"""The model repository extension through real tritonclients (HTTP and gRPC): load, unload,
reload, config override, file upload, and the errors for bad requests and other modes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer
from tests.models import identity_model, write_model
from tests.wire import STATUS

Factory = Callable[..., RunningServer]
Client = Any  # tritonclient.http or tritonclient.grpc InferenceServerClient: same method names

IDENTITY_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
"""


def connect(server: RunningServer, protocol: str) -> Client:
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url)
    return grpcclient.InferenceServerClient(server.grpc_url)


@pytest.fixture(params=["http", "grpc"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def explicit(
    tmp_path: Path, server_factory: Factory, protocol: str
) -> Iterator[tuple[Client, Path]]:
    """An explicit-mode server on an empty repository, and a client of the protocol."""
    repo = tmp_path / "repo"
    repo.mkdir()
    server = server_factory(model_repositories=(repo,), model_control_mode="explicit")
    client = connect(server, protocol)
    yield client, repo
    client.close()


def states(client: Client) -> dict[tuple[str, str], tuple[str, str]]:
    index = client.get_model_repository_index()
    entries = (
        index
        if isinstance(index, list)
        else [
            {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
            for m in index.models
        ]
    )
    return {
        (e["name"], e.get("version", "")): (e.get("state", ""), e.get("reason", ""))
        for e in entries
    }


def settled(client: Client) -> dict[tuple[str, str], tuple[str, str]]:
    """The index once no version is UNLOADING: as in Triton 2.51, an unload returns before
    the model's versions are freed."""
    deadline = time.monotonic() + 10
    while True:
        found = states(client)
        if all(state != "UNLOADING" for state, _ in found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def infer(client: Client, model: str, version: str = "") -> Any:
    module = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    tensor = module.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    return client.infer(model, [tensor], model_version=version)


def as_json(client: Client, call: str, *args: Any) -> Any:
    """A getter's answer as JSON from either client (gRPC answers protobufs by default)."""
    if isinstance(client, httpclient.InferenceServerClient):
        return getattr(client, call)(*args)
    return getattr(client, call)(*args, as_json=True)


def fails(call: Callable[[], Any], protocol: str, code: str, *words: str) -> None:
    with pytest.raises(InferenceServerException) as error:
        call()
    assert error.value.status() == STATUS[protocol][code], error.value.message()
    for word in words:
        assert word in error.value.message()


def test_load_unload_and_reload(explicit: tuple[Client, Path], protocol: str) -> None:
    client, repo = explicit
    write_model(repo, "m", identity_model(), IDENTITY_CONFIG)
    assert states(client) == {("m", ""): ("", "")}  # found, never loaded: name only
    client.load_model("m")
    assert states(client) == {("m", "1"): ("READY", "")}
    assert client.is_model_ready("m") and client.is_server_ready()
    assert infer(client, "m").as_numpy("OUTPUT0").tolist() == [[0, 1, 2, 3]]

    client.unload_model("m")
    assert settled(client) == {("m", "1"): ("UNAVAILABLE", "unloaded")}  # as Triton
    assert not client.is_model_ready("m")
    assert client.is_server_ready()  # an unloaded model does not count against readiness
    fails(lambda: infer(client, "m"), protocol, "unavailable", "unloaded")
    # A version asked for by number: Triton 2.51's status and words, then why.
    message = "Request for unknown model: 'm' version 1 is not at ready state: unloaded"
    fails(lambda: infer(client, "m", "1"), protocol, "unavailable", message)
    client.unload_model("m")  # unloading again is harmless, as in Triton

    client.load_model("m")
    write_model(repo, "m", identity_model(), versions=(2,))
    client.load_model("m")  # loading a loaded model reloads it: version 2 replaces version 1
    # As in Triton 2.51, the version it replaced stays in the index, unloaded.
    assert settled(client) == {
        ("m", "1"): ("UNAVAILABLE", "unloaded"),
        ("m", "2"): ("READY", ""),
    }
    assert as_json(client, "get_model_metadata", "m")["versions"] == ["2"]
    fails(lambda: infer(client, "m", "1"), protocol, "unavailable", message)


def inference_count(client: Client, model: str) -> int:
    stats = as_json(client, "get_inference_statistics", model)["model_stats"]
    return int(stats[0].get("inference_count", 0))


def test_loading_an_unchanged_model_leaves_it_serving_as_it_is(
    explicit: tuple[Client, Path],
) -> None:
    client, repo = explicit
    folder = write_model(repo, "m", identity_model(), IDENTITY_CONFIG)
    client.load_model("m")
    infer(client, "m")
    client.load_model("m")  # as Triton: the folder is as it was loaded, so nothing reloads
    assert inference_count(client, "m") == 1  # the same version, its statistics kept
    config = folder / "config.pbtxt"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 1_000_000))
    client.load_model("m")  # a file touched: reloaded, with fresh statistics
    assert inference_count(client, "m") == 0
    # A `config` parameter always reloads; unloading forgets what was loaded.
    client.load_model("m", config=json.dumps({"max_batch_size": 2}))
    assert model_config(client, "m")["max_batch_size"] == 2
    client.unload_model("m")
    client.load_model("m")
    assert model_config(client, "m")["max_batch_size"] == 4


def model_config(client: Client, name: str) -> dict[str, Any]:
    answer = as_json(client, "get_model_config", name)
    return dict(answer.get("config", answer))  # gRPC wraps it in ModelConfigResponse


def test_config_override_and_model_files(
    explicit: tuple[Client, Path], protocol: str, tmp_path: Path
) -> None:
    client, repo = explicit
    write_model(repo, "m", identity_model(), IDENTITY_CONFIG)
    # `config` replaces config.pbtxt; what it leaves out is auto-completed from the model.
    client.load_model("m", config=json.dumps({"max_batch_size": 2}))
    assert model_config(client, "m")["max_batch_size"] == 2
    assert infer(client, "m").as_numpy("OUTPUT0").shape == (1, 4)

    # A model that is not in any repository at all, its files sent with the request.
    model = identity_model().SerializeToString()
    config = json.dumps({"name": "sent", "backend": "onnxruntime", "max_batch_size": 3})
    files = {"file:1/model.onnx": model, "file:2/model.onnx": model}
    client.load_model("sent", config=config, files=files)
    assert states(client)[("sent", "2")] == ("READY", "")
    assert model_config(client, "sent")["max_batch_size"] == 3
    assert infer(client, "sent").as_numpy("OUTPUT0").tolist() == [[0, 1, 2, 3]]
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # nothing written into the repo

    # Reloading without files serves from the repository again, which has no "sent".
    fails(lambda: client.load_model("sent"), protocol, "not_found", "sent")
    assert states(client)[("sent", "2")] == ("READY", "")  # the failed load changed nothing
    client.unload_model("sent")
    assert settled(client)[("sent", "2")] == ("UNAVAILABLE", "unloaded")


def test_bad_requests(explicit: tuple[Client, Path], protocol: str) -> None:
    client, repo = explicit
    write_model(repo, "good", identity_model(), IDENTITY_CONFIG)
    write_model(repo, "typo", identity_model(), IDENTITY_CONFIG + "max_batch_sise: 2")
    (repo / "empty").mkdir()
    client.load_model("good")
    model = identity_model().SerializeToString()

    fails(lambda: client.load_model("nowhere"), protocol, "not_found", "'nowhere'")
    fails(lambda: client.load_model("typo"), protocol, "invalid", "max_batch_sise")
    fails(lambda: client.load_model("empty"), protocol, "invalid", "no version folders")
    typo_state, typo_reason = states(client)[("typo", "1")]
    assert typo_state == "UNAVAILABLE" and "max_batch_sise" in typo_reason
    # No version ready: its statistics answer as Triton 2.51's do.
    message = "requested model 'typo' is not available"
    fails(lambda: client.get_inference_statistics("typo"), protocol, "invalid", message)
    fails(lambda: client.get_inference_statistics("typo", "1"), protocol, "invalid", message)
    message = "requested model version is not available for model 'good'"
    fails(lambda: client.get_inference_statistics("good", "2"), protocol, "invalid", message)
    assert states(client)[("empty", "")][0] == "UNAVAILABLE"

    config = json.dumps({"backend": "onnxruntime"})
    for path in ("../escape.onnx", "1/../../escape.onnx", "/etc/escape.onnx"):
        files = {f"file:{path}": model}
        fails(
            lambda: client.load_model("x", config=config, files=files),  # noqa: B023
            protocol,
            "invalid",
            f"file:{path}",
        )
    fails(
        lambda: client.load_model("x", files={"file:1/model.onnx": model}),
        protocol,
        "invalid",
        "'config'",
    )
    # "failed to load" leads, as Triton's examples (simple_*_model_control.py) check for.
    fails(
        lambda: client.load_model("good", config="{not json"),
        protocol,
        "invalid",
        "failed to load 'good': failed to parse the 'config' parameter: it is not JSON",
    )
    for not_an_object in ("-1", "[1]", '"x"'):
        fails(
            lambda: client.load_model("good", config=not_an_object),  # noqa: B023
            protocol,
            "invalid",
            "failed to load 'good': failed to parse the 'config' parameter: a model config is a "
            "JSON object",
        )
    fails(
        lambda: client.load_model("good", config=json.dumps({"max_batch_sise": 2})),
        protocol,
        "invalid",
        "max_batch_sise",
    )
    # A config that parses but cannot be served: the reload fails, the loaded model serves on.
    fails(
        lambda: client.load_model("good", config=json.dumps({"name": "other"})),
        protocol,
        "invalid",
        "'other'",
    )
    assert states(client)[("good", "1")] == ("READY", "")
    assert infer(client, "good").as_numpy("OUTPUT0").shape == (1, 4)
    assert not any(p.name == "x" for p in repo.iterdir())

    # Never served: nothing to unload, which succeeds (Triton 2.51) and changes nothing.
    client.unload_model("never")
    client.unload_model("typo_")
    assert ("never", "") not in states(client) and ("typo_", "") not in states(client)
    assert not client.is_server_ready()  # "typo" and "empty" were asked for and failed
    client.unload_model("typo")
    client.unload_model("empty")
    assert client.is_server_ready()


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_load_and_unload_are_refused_outside_explicit_mode(
    tmp_path: Path, server_factory: Factory, protocol: str, mode: str
) -> None:
    write_model(tmp_path, "m", identity_model(), IDENTITY_CONFIG)
    server = server_factory(model_repositories=(tmp_path,), model_control_mode=mode)
    client = connect(server, protocol)
    try:
        for call in (lambda: client.load_model("m"), lambda: client.unload_model("m")):
            # Triton's answer in both modes: UNAVAILABLE, with this message.
            fails(call, protocol, "unavailable", "explicit model load / unload is not allowed")
        assert states(client) == {("m", "1"): ("READY", "")}
    finally:
        client.close()


def test_named_repository_is_unsupported(examples_server: RunningServer) -> None:
    import httpx

    with httpx.Client(base_url=f"http://{examples_server.http_url}") as http:
        for action in ("load", "unload"):
            response = http.post(f"/v2/repository/models_repo/models/simple/{action}")
            assert response.status_code == 501
            assert "named repository" in response.json()["error"]


def test_a_failed_version_is_named_as_triton_2_51_words_it(explicit: tuple[Client, Path]) -> None:
    client, repo = explicit
    config = IDENTITY_CONFIG + "version_policy: { all { } }"
    write_model(repo, "half", identity_model(), config, versions=(1, 2))
    (repo / "half" / "1" / "model.onnx").write_bytes(b"not an onnx file")  # the latest is fine
    with pytest.raises(InferenceServerException) as error:
        client.load_model("half")
    message = error.value.message()
    assert message.startswith("load failed for model 'half': version 1 is at UNAVAILABLE state: ")
    assert message.endswith(";")
    assert states(client)[("half", "2")] == ("READY", "")


def test_grpc_parameters_of_another_kind_are_refused_in_tritons_words(
    tmp_path: Path, server_factory: Factory
) -> None:
    """tritonclient sends each parameter as its kind; another client may not."""
    server = server_factory(model_repositories=(tmp_path,), model_control_mode="explicit")
    pb = grpcclient.service_pb2
    as_int = pb.ModelRepositoryParameter(int64_param=5)
    calls = [
        (
            "RepositoryModelLoad",
            pb.RepositoryModelLoadRequest(model_name="m", parameters={"config": as_int}),
            "invalid value type for load parameter 'config', expected string_param.",
        ),
        (
            "RepositoryModelLoad",
            pb.RepositoryModelLoadRequest(model_name="m", parameters={"file:1/m.onnx": as_int}),
            "invalid value type for load parameter 'file:1/m.onnx', expected bytes_param.",
        ),
        (
            "RepositoryModelUnload",
            pb.RepositoryModelUnloadRequest(
                model_name="m", parameters={"unload_dependents": as_int}
            ),
            "invalid value type for 'unload_dependents' parameter, expected bool_param.",
        ),
    ]
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = grpcclient.service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for method, request, words in calls:
            with pytest.raises(grpc.RpcError) as error:
                getattr(stub, method)(request)
            assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert error.value.details() == words
