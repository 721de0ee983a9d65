"""Loading real repositories: auto-complete, versions, policies, broken models beside good ones."""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto

from inferd.server.app import StartupError
from tests.conftest import EXAMPLES, RunningServer
from tests.models import identity_model, write_model

Factory = Callable[..., RunningServer]

IDENTITY_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]
"""


def index(server: RunningServer) -> dict[tuple[str, str], tuple[str, str]]:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        entries = client.get_model_repository_index()
    finally:
        client.close()
    return {
        (e["name"], e.get("version", "")): (e.get("state", ""), e.get("reason", ""))
        for e in entries
    }


def infer_identity(server: RunningServer, model: str, version: str = "") -> httpclient.InferResult:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        return client.infer(model, [tensor], model_version=version)
    finally:
        client.close()


def test_config_is_autocompleted_from_the_onnx_graph(
    tmp_path: Path, server_factory: Factory
) -> None:
    write_model(tmp_path, "auto", identity_model())  # no config.pbtxt at all
    server = server_factory(model_repositories=(tmp_path,))
    client = httpclient.InferenceServerClient(server.http_url)
    config = client.get_model_config("auto")
    client.close()
    assert config["name"] == "auto"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 4  # Triton's default-max-batch-size
    assert config["input"] == [
        {**config["input"][0], "name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}
    ]
    assert config["output"][0]["dims"] == [4]
    assert "dynamic_batching" in config
    assert infer_identity(server, "auto").as_numpy("OUTPUT0").tolist() == [[1, 1, 1, 1]]


def test_partial_config_is_completed(tmp_path: Path, server_factory: Factory) -> None:
    write_model(tmp_path, "part", identity_model(), 'max_batch_size: 2\ninput [{name: "INPUT0"}]')
    server = server_factory(model_repositories=(tmp_path,))
    client = httpclient.InferenceServerClient(server.http_url)
    config = client.get_model_config("part")
    client.close()
    assert config["max_batch_size"] == 2
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert [o["name"] for o in config["output"]] == ["OUTPUT0"]


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("", ["3"]),
        ("version_policy: { latest: { num_versions: 2 } }", ["2", "3"]),
        ("version_policy: { all: {} }", ["1", "2", "3"]),
        ("version_policy: { specific: { versions: [1, 3] } }", ["1", "3"]),
    ],
)
def test_version_policies(
    tmp_path: Path, server_factory: Factory, policy: str, served: list[str]
) -> None:
    write_model(tmp_path, "m", identity_model(), IDENTITY_CONFIG + policy, versions=(1, 2, 3))
    (tmp_path / "m" / "010").mkdir()  # leading zero: not a version
    (tmp_path / "m" / "notes").mkdir()  # not numeric: ignored
    server = server_factory(model_repositories=(tmp_path,))
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.get_model_metadata("m")["versions"] == served
        for version in ("1", "2", "3"):
            assert client.is_model_ready("m", version) == (version in served)
    finally:
        client.close()
    response = infer_identity(server, "m").get_response()
    assert response["model_version"] == served[-1]  # no version asked: the highest ready one


def test_broken_models_are_unavailable_and_others_serve(
    tmp_path: Path, server_factory: Factory
) -> None:
    write_model(tmp_path, "good", identity_model(), IDENTITY_CONFIG)
    write_model(tmp_path, "typo", identity_model(), IDENTITY_CONFIG + "max_batch_sise: 3")
    write_model(
        tmp_path,
        "wrong_type",
        identity_model(),
        IDENTITY_CONFIG.replace(
            "TYPE_FP32 dims: [ 4 ] }]\noutput", "TYPE_INT32 dims: [ 4 ] }]\noutput"
        ),
    )
    write_model(
        tmp_path, "wrong_name", identity_model(), IDENTITY_CONFIG.replace('"INPUT0"', '"X"')
    )
    write_model(
        tmp_path,
        "wrong_dims",
        identity_model(),
        IDENTITY_CONFIG.replace("[ 4 ] }]\nout", "[ 5 ] }]\nout"),
    )
    (tmp_path / "no_versions").mkdir()
    (tmp_path / "corrupt" / "1").mkdir(parents=True)
    (tmp_path / "corrupt" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    server = server_factory(model_repositories=(tmp_path,), strict_readiness=False)
    states = index(server)
    assert states[("good", "1")] == ("READY", "")
    reasons = {
        name: reason for (name, _), (state, reason) in states.items() if state == "UNAVAILABLE"
    }
    assert "max_batch_sise" in reasons["typo"] and "config.pbtxt" in reasons["typo"]
    assert "TYPE_INT32" in reasons["wrong_type"] and "TYPE_FP32" in reasons["wrong_type"]
    assert "'X'" in reasons["wrong_name"] and "INPUT0" in reasons["wrong_name"]
    assert "[5]" in reasons["wrong_dims"]
    assert "no version folders" in reasons["no_versions"]
    assert "corrupt" in reasons["corrupt"] or "model.onnx" in reasons["corrupt"]
    assert infer_identity(server, "good").as_numpy("OUTPUT0").shape == (1, 4)


def test_the_checksum_agent_guards_the_model_files(tmp_path: Path, server_factory: Factory) -> None:
    for name in ("checked", "tampered"):
        folder = write_model(tmp_path, name, identity_model(), IDENTITY_CONFIG)
    digest = hashlib.md5((folder / "1" / "model.onnx").read_bytes()).hexdigest()
    agent = (
        'model_repository_agents {{ agents [{{ name: "checksum" parameters {{ key: '
        '"MD5:1/model.onnx" value: "{}" }} }}] }}'
    )
    (tmp_path / "checked" / "config.pbtxt").write_text(IDENTITY_CONFIG + agent.format(digest))
    (tmp_path / "tampered" / "config.pbtxt").write_text(IDENTITY_CONFIG + agent.format("0" * 32))
    server = server_factory(model_repositories=(tmp_path,), strict_readiness=False)
    states = index(server)
    assert states[("checked", "1")] == ("READY", "")
    state, reason = states[("tampered", "1")]
    assert state == "UNAVAILABLE"
    assert f"Mismatched MD5 hash for file 1/model.onnx, expect: {'0' * 32}, got: {digest}" in reason


def test_strict_readiness_reports_not_ready_with_a_broken_model(
    tmp_path: Path, server_factory: Factory
) -> None:
    write_model(tmp_path, "good", identity_model(), IDENTITY_CONFIG)
    write_model(tmp_path, "typo", identity_model(), "bogus_field: 1")
    strict = server_factory(model_repositories=(tmp_path,))
    lenient = server_factory(model_repositories=(tmp_path,), strict_readiness=False)
    for server, ready in ((strict, False), (lenient, True)):
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            assert client.is_server_live()
            assert client.is_server_ready() is ready
            assert client.is_model_ready("good")
            assert not client.is_model_ready("typo")
        finally:
            client.close()


def test_several_repositories_and_duplicates(tmp_path: Path, server_factory: Factory) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_model(first, "only_a", identity_model(), IDENTITY_CONFIG)
    write_model(first, "both", identity_model(), IDENTITY_CONFIG)
    write_model(second, "both", identity_model(), IDENTITY_CONFIG)
    server = server_factory(model_repositories=(first, second), strict_readiness=False)
    states = index(server)
    assert states[("only_a", "1")][0] == "READY"
    state, reason = states[("both", "1")]
    assert state == "UNAVAILABLE" and "more than one repository" in reason


def test_non_batching_model(tmp_path: Path, server_factory: Factory) -> None:
    config = """
    platform: "onnxruntime_onnx"
    input [{ name: "INPUT0" data_type: TYPE_INT64 dims: [ 3 ] }]
    output [{ name: "OUTPUT0" data_type: TYPE_INT64 dims: [ 3 ] }]
    """
    write_model(tmp_path, "flat", identity_model(TensorProto.INT64, (3,)), config)
    server = server_factory(model_repositories=(tmp_path,))
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.get_model_metadata("flat")["inputs"][0]["shape"] == [3]
        tensor = httpclient.InferInput("INPUT0", [3], "INT64")
        tensor.set_data_from_numpy(np.array([5, 6, 7], np.int64))
        assert client.infer("flat", [tensor]).as_numpy("OUTPUT0").tolist() == [5, 6, 7]
    finally:
        client.close()


def test_explicit_mode_loads_only_named_models(server_factory: Factory) -> None:
    server = server_factory(
        model_repositories=(EXAMPLES,), model_control_mode="explicit", load_models=("simple",)
    )
    states = index(server)
    assert states[("simple", "1")][0] == "READY"
    assert states[("digits", "")] == ("", "")  # found, never loaded: name only, as Triton
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.is_server_ready()
        assert not client.is_model_ready("digits")
    finally:
        client.close()


def test_kind_gpu_without_gpu_follows_the_fallback_setting(
    tmp_path: Path, server_factory: Factory
) -> None:
    write_model(
        tmp_path, "gpu", identity_model(), IDENTITY_CONFIG + "instance_group [{kind: KIND_GPU}]"
    )
    refused = index(server_factory(model_repositories=(tmp_path,), strict_readiness=False))
    assert refused[("gpu", "1")][0] == "UNAVAILABLE"
    assert "no GPU is available" in refused[("gpu", "1")][1]
    fallback = server_factory(model_repositories=(tmp_path,), gpu_fallback_to_cpu=True)
    state, reason = index(fallback)[("gpu", "1")]
    assert state == "READY" and "run on the CPU" in reason
    assert infer_identity(fallback, "gpu").as_numpy("OUTPUT0").shape == (1, 4)
    with urllib.request.urlopen(f"http://{fallback.http_url}/metrics") as response:
        assert 'inferd_gpu_fallback{model="gpu",version="1"} 1\n' in response.read().decode()


def test_exit_on_error_makes_a_start_up_load_failure_fatal(
    tmp_path: Path, server_factory: Factory
) -> None:
    write_model(tmp_path, "good", identity_model(), IDENTITY_CONFIG)
    write_model(tmp_path, "typo", identity_model(), "bogus_field: 1")
    with pytest.raises(StartupError, match=r"failed to load model\(s\) typo"):
        server_factory(model_repositories=(tmp_path,), exit_on_error=True)
