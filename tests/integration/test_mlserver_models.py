"""MLServer model repositories (model-settings.json and MLModel implementations) served
unchanged by a real server, through the real clients, with the real mlserver package."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from inferd.server.cache_config import LocalCacheConfig
from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.waiting import wait_for
from tests.wire import PROTOCOLS, client_for, fails, infer

# Found, not imported: the server imports mlserver its own way (backends/mlserver.py).
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mlserver") is None, reason="mlserver is not installed"
)

# A runtime module beside the model folders, as MLServer repositories keep custom code.
RUNTIME = '''
import json

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse


class Scaler(MLModel):
    async def load(self) -> bool:
        self.factor = float(self.settings.parameters.extra["factor"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        rows = np.full((x.shape[0], 1), x.shape[0], dtype=np.int32)  # rows in this predict()
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output("y", (x * self.factor).astype(np.float32)),
                NumpyCodec.encode_output("rows", rows),
            ],
        )


class Echo(MLModel):
    """Schemaless: every input back, as `echo_<name>`, strings through MLServer's codec."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        outputs = []
        for tensor in payload.inputs:
            if tensor.datatype == "BYTES":
                words = StringCodec.decode_input(tensor)
                outputs.append(StringCodec.encode_output("echo_" + tensor.name, words))
            else:
                array = NumpyCodec.decode_input(tensor)
                outputs.append(NumpyCodec.encode_output("echo_" + tensor.name, array))
        return InferenceResponse(model_name=self.name, outputs=outputs)


class Inspect(MLModel):
    """What predict() was handed: the request's id, parameters and asked-for outputs."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        seen = {
            "id": payload.id,
            "content_type": payload.parameters.content_type if payload.parameters else None,
            "outputs": [o.name for o in payload.outputs or []],
            "input_content_types": {
                i.name: i.parameters.content_type if i.parameters else None
                for i in payload.inputs
            },
        }
        return InferenceResponse(
            model_name=self.name,
            parameters={"answered_by": "inspect"},
            outputs=[StringCodec.encode_output("seen", [json.dumps(seen)])],
        )


class Picky(MLModel):
    """MLServer's own error for a request the model cannot take, and an answer that is none."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if payload.inputs[0].name == "wrong":
            raise InferenceError("expected an input named 'right'")
        return None


class Broken(MLModel):
    async def load(self) -> bool:
        raise RuntimeError("no weights here")


class NotReady(MLModel):
    async def load(self) -> bool:
        return False
'''


RUNTIME_LIGHTGBM = "mlserver_lightgbm.LightGBMModel"
PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"


def write_model(root: Path, folder: str, settings: dict[str, Any]) -> None:
    (root / folder).mkdir(parents=True)
    (root / folder / "model-settings.json").write_text(json.dumps(settings))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mlserver")
    (root / "runtime.py").write_text(RUNTIME)
    tensor = {"datatype": "FP32", "shape": [-1, 2]}
    scaler = {
        "name": "scaler",
        "implementation": "runtime.Scaler",
        "parameters": {"extra": {"factor": 3}},
        "max_batch_size": 8,
        "max_batch_time": 0.01,
        "inputs": [{"name": "x", **tensor}],
        "outputs": [
            {"name": "y", **tensor},
            {"name": "rows", "datatype": "INT32", "shape": [-1, 1]},
        ],
    }
    write_model(root, "scaler", scaler)
    # The same without adaptive batching: requests that queue together still get one
    # predict() each.
    solo = {k: v for k, v in scaler.items() if k not in ("max_batch_size", "max_batch_time")}
    write_model(root, "solo", {**solo, "name": "solo"})
    # Served under its settings' name, as MLServer serves it.
    write_model(root, "echo-folder", {"name": "echo", "implementation": "runtime.Echo"})
    write_model(root, "inspect", {"implementation": "runtime.Inspect"})
    write_model(root, "picky", {"implementation": "runtime.Picky"})
    write_model(root, "broken", {"implementation": "runtime.Broken"})
    write_model(root, "not_ready", {"implementation": "runtime.NotReady"})
    write_model(root, "missing", {"implementation": "runtime.NoSuchModel"})
    write_model(root, "bad_batch", {"implementation": "runtime.Echo", "max_batch_size": "lots"})
    (root / "garbled").mkdir()
    (root / "garbled" / "model-settings.json").write_text("{not json")
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    running = start_server(
        replace(TEST_SETTINGS, model_repositories=(repository,), strict_readiness=False)
    )
    yield running
    running.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_mlmodel_answers_over_both_protocols(server: RunningServer, protocol: str) -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    outputs = infer(server, protocol, "scaler", {"x": x})
    np.testing.assert_array_equal(outputs["y"], x * 3)
    assert outputs["y"].dtype == np.float32


def test_generate_is_infer_for_an_mlmodel_as_in_mlserver(server: RunningServer) -> None:
    """MLServer's REST generate takes and answers what infer does; other models keep Triton's
    generate extension (a flat JSON object in and out)."""
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
    for path in ("scaler/generate", "scaler/versions/1/generate"):
        answer = httpx.post(f"http://{server.http_url}/v2/models/{path}", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
        assert outputs["y"] == [3.0, 6.0]
    triton = httpx.post(f"http://{server.http_url}/v2/models/nowhere/generate", json={}, timeout=10)
    assert triton.status_code == 404 and "error" in triton.json()  # as Triton answers it


def test_concurrent_requests_are_batched_into_one_predict_and_split_back(
    server: RunningServer,
) -> None:
    def one(i: int) -> int:
        x = np.full((1 + i % 2, 2), i, np.float32)
        outputs = infer(server, "http", "scaler", {"x": x})
        np.testing.assert_array_equal(outputs["y"], x * 3)  # its own rows, whatever the batch
        return int(outputs["rows"][0, 0])

    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(one, range(48)))
    assert all(1 <= r <= 9 for r in rows)  # at most 7 rows, then one more request of 1 or 2
    big = np.ones((20, 2), np.float32)  # larger than a batch: taken whole, as MLServer takes it
    np.testing.assert_array_equal(infer(server, "grpc", "scaler", {"x": big})["y"], big * 3)


def test_without_adaptive_batching_each_request_gets_its_own_predict(
    server: RunningServer,
) -> None:
    def one(i: int) -> None:
        x = np.full((1 + i % 3, 2), i, np.float32)
        outputs = infer(server, "grpc", "solo", {"x": x})
        np.testing.assert_array_equal(outputs["y"], x * 3)
        assert outputs["rows"].ravel().tolist() == [len(x)] * len(x)  # its rows alone

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(48)))


def test_metadata_is_the_settings(server: RunningServer) -> None:
    with client_for(server, "http") as client:
        metadata = client.get_model_metadata("scaler")
        config = client.get_model_config("scaler")
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
    # MLServer's max_batch_size counts requests: any request size is taken, batches stop at 8.
    assert config["max_batch_size"] == 2**31 - 1
    assert config["dynamic_batching"]["preferred_batch_size"] == [8]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 10_000
    assert config["backend"] == "mlserver"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_model_without_metadata_takes_and_answers_any_tensors(
    server: RunningServer, protocol: str
) -> None:
    numbers = np.arange(6, dtype=np.int64).reshape(2, 3)
    words = np.array([b"hello", "caf\u00e9".encode()], dtype=object)
    outputs = infer(server, protocol, "echo", {"numbers": numbers, "words": words})
    np.testing.assert_array_equal(outputs["echo_numbers"], numbers)
    # MLServer's codecs give a 1-D answer a second dim: shape [2, 1], as MLServer sends it.
    assert outputs["echo_words"].tolist() == [[b"hello"], ["caf\u00e9".encode()]]
    # Asking for one output answers that one; one it does not answer is refused.
    asked = infer(server, protocol, "echo", {"numbers": numbers}, outputs=["echo_numbers"])
    assert list(asked) == ["echo_numbers"]
    message = fails(
        lambda: infer(server, protocol, "echo", {"numbers": numbers}, outputs=["nope"]),
        protocol,
        "invalid",
    )
    assert "unexpected inference output 'nope' for model 'echo'" in message


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_predict_sees_the_requests_id_parameters_and_outputs(
    server: RunningServer, protocol: str
) -> None:
    client = client_for(server, protocol)
    module: Any = httpclient if protocol == "http" else grpcclient
    try:
        given = module.InferInput("x", [1], "FP32")
        given.set_data_from_numpy(np.ones(1, np.float32))
        result = client.infer(
            "inspect",
            [given],
            request_id="req-7",
            parameters={"content_type": "np"},
            outputs=[module.InferRequestedOutput("seen")],
        )
        response = result.get_response() if protocol == "http" else result.get_response(True)
    finally:
        client.close()
    seen = json.loads(result.as_numpy("seen").ravel()[0])
    assert seen == {
        "id": "req-7",
        "content_type": "np",
        "outputs": ["seen"],
        "input_content_types": {"x": None},
    }
    parameters = response["parameters"]
    value = parameters["answered_by"]
    assert (value if protocol == "http" else value["string_param"]) == "inspect"


def test_each_inputs_own_parameters_reach_predict(server: RunningServer) -> None:
    """MLServer's codecs read an input's `content_type` (StringCodec for "str"); the
    transport's own parameters (binary_data_size) stay behind."""
    body = {
        "inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"],
             "parameters": {"content_type": "str"}},
            {"name": "n", "shape": [1], "datatype": "INT32", "data": [1]},
        ]
    }  # fmt: skip
    answer = httpx.post(f"http://{server.http_url}/v2/models/inspect/infer", json=body).json()
    seen = json.loads(answer["outputs"][0]["data"][0])
    assert seen["input_content_types"] == {"text": "str", "n": None}
    request = service_pb2.ModelInferRequest(model_name="inspect")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"hi")
    tensor.parameters["content_type"].string_param = "str"
    with grpc.insecure_channel(server.grpc_url) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    seen = json.loads(reply.raw_output_contents[0][4:])  # one BYTES element: length, text
    assert seen["input_content_types"] == {"text": "str"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_models_errors_answer_with_their_status(server: RunningServer, protocol: str) -> None:
    x = np.ones(1, np.float32)
    message = fails(lambda: infer(server, protocol, "picky", {"wrong": x}), protocol, "invalid")
    assert "model 'picky' failed: InferenceError: expected an input named 'right'" in message
    message = fails(lambda: infer(server, protocol, "picky", {"right": x}), protocol, "internal")
    assert "model 'picky' answered what is not an InferenceResponse's outputs" in message


def test_outputs_carry_the_content_type_of_mlservers_codecs(server: RunningServer) -> None:
    """As MLServer answers them: its clients (and Seldon's pipelines) decode by it."""
    body = {
        "inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]},
            {"name": "n", "shape": [1], "datatype": "INT32", "data": [1]},
        ]
    }
    url = f"http://{server.http_url}/v2/models/echo/infer"
    outputs = httpx.post(url, json=body, timeout=10).json()["outputs"]
    assert {o["name"]: o["parameters"] for o in outputs} == {
        "echo_text": {"content_type": "str"},
        "echo_n": {"content_type": "np"},
    }
    binary = httpx.post(url, json={**body, "parameters": {"binary_data_output": True}}, timeout=10)
    header = json.loads(binary.content[: int(binary.headers["inference-header-content-length"])])
    assert header["outputs"][1]["parameters"] == {"content_type": "np", "binary_data_size": 4}
    request = service_pb2.ModelInferRequest(model_name="echo")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"hi")
    with grpc.insecure_channel(server.grpc_url) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert reply.outputs[0].parameters["content_type"].string_param == "str"


def test_models_that_cannot_load_say_why(server: RunningServer) -> None:
    with client_for(server, "http") as client:
        reasons = {e["name"]: e.get("reason", "") for e in client.get_model_repository_index()}
    assert "failed to load model 'broken': RuntimeError: no weights here" in reasons["broken"]
    assert "its load() returned False" in reasons["not_ready"]
    assert "NoSuchModel" in reasons["missing"]
    assert "failed to read" in reasons["garbled"] and "model-settings.json" in reasons["garbled"]
    assert "max_batch_size and max_batch_time must be numbers" in reasons["bad_batch"]
    assert "echo-folder" not in reasons  # served as "echo"


@pytest.mark.skipif(
    importlib.util.find_spec("mlserver_lightgbm") is None, reason="mlserver-lightgbm missing"
)
def test_one_of_mlservers_own_runtimes_serves_its_model(tmp_path: Path) -> None:
    """mlserver-lightgbm, as MLServer users deploy it: a booster file and two lines of
    settings (the model file is found in the folder, as MLServer finds it)."""
    import lightgbm

    rng = np.random.default_rng(0)
    features = rng.random((200, 4))
    labels = features @ np.array([1.0, -2.0, 0.5, 3.0])
    booster = lightgbm.train(
        {"objective": "regression", "verbose": -1, "num_leaves": 4},
        lightgbm.Dataset(features, labels),
        num_boost_round=5,
    )
    write_model(tmp_path, "lgb-model", {"name": "lgb", "implementation": RUNTIME_LIGHTGBM})
    booster.save_model(str(tmp_path / "lgb-model" / "model.bst"))
    server = start_server(replace(TEST_SETTINGS, model_repositories=(tmp_path,)))
    try:
        x = features[:3].astype(np.float64)
        for protocol in PROTOCOLS:
            answered = infer(server, protocol, "lgb", {"input-0": x})["predict"]
            # MLServer's codec gives the 1-D prediction a second dim, as MLServer answers it.
            expected = np.asarray(booster.predict(x)).reshape(3, 1)
            np.testing.assert_allclose(answered, expected)
    finally:
        server.stop()


def test_explicit_unload_runs_unload_and_a_reload_reads_the_code_anew(tmp_path: Path) -> None:
    (tmp_path / "versioned.py").write_text(VERSIONED.format(answer=1))
    write_model(tmp_path, "answer", {"implementation": "versioned.Answer"})
    settings = replace(
        TEST_SETTINGS,
        model_repositories=(tmp_path,),
        model_control_mode="explicit",
        load_models=("answer",),
    )
    server = start_server(settings)
    try:
        x = {"x": np.zeros(1, np.float32)}
        assert infer(server, "http", "answer", x)["answer"].ravel().tolist() == [1]
        with client_for(server, "http") as client:
            client.unload_model("answer")
            unloaded = tmp_path / "unloaded"
            wait_for(lambda: unloaded.is_file() and unloaded.read_text() == "answer")  # it ran
            (tmp_path / "versioned.py").write_text(VERSIONED.format(answer=2))
            client.load_model("answer")
        assert infer(server, "http", "answer", x)["answer"].ravel().tolist() == [2]
    finally:
        server.stop()


VERSIONED = """
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse


class Answer(MLModel):
    async def predict(self, payload):
        answer = NumpyCodec.encode_output("answer", np.array([{answer}], dtype=np.int32))
        return InferenceResponse(model_name=self.name, outputs=[answer])

    async def unload(self):
        (Path(__file__).parent / "unloaded").write_text(self.name)
        return True
"""


def test_a_repository_that_is_one_model_folder_serves_that_model(tmp_path: Path) -> None:
    """`mlserver start MODEL_FOLDER`, and KServe's storageUri folders: the settings at the top,
    the model's files (sub-folders too) beside them."""
    (tmp_path / "runtime.py").write_text(RUNTIME)
    (tmp_path / "artifacts").mkdir()  # not a model: the model's own files
    settings = {"name": "top", "implementation": "runtime.Echo"}
    (tmp_path / "model-settings.json").write_text(json.dumps(settings))
    server = start_server(replace(TEST_SETTINGS, model_repositories=(tmp_path,)))
    try:
        with client_for(server, "http") as client:
            index = client.get_model_repository_index()
        assert [(e["name"], e["state"]) for e in index] == [("top", "READY")]
        numbers = np.arange(3, dtype=np.float32)
        np.testing.assert_array_equal(
            infer(server, "grpc", "top", {"n": numbers})["echo_n"].ravel(), numbers
        )
    finally:
        server.stop()


def test_version_folders_are_versions_by_number_and_by_mlservers_name(tmp_path: Path) -> None:
    """MLServer's `models/NAME/VERSION/model-settings.json`: every version served (numbered in
    the folders' order, 0.10 after 0.2), the latest by default, each also by its own name."""
    (tmp_path / "runtime.py").write_text(RUNTIME)
    tensor = {"datatype": "FP32", "shape": [-1, 2]}
    for version, factor in (("v0.1.0", 1), ("v0.2.0", 2), ("v0.10.0", 10)):
        write_model(
            tmp_path / "mnist",
            version,
            {
                "name": "mnist",
                "implementation": "runtime.Scaler",
                "parameters": {"version": version, "extra": {"factor": factor}},
                "inputs": [{"name": "x", **tensor}],
                "outputs": [{"name": "y", **tensor}],
            },
        )
    server = start_server(replace(TEST_SETTINGS, model_repositories=(tmp_path,)))
    try:
        x = np.ones((1, 2), np.float32)
        with client_for(server, "http") as client:
            assert client.get_model_metadata("mnist")["versions"] == ["1", "2", "3"]
        for protocol in PROTOCOLS:
            assert infer(server, protocol, "mnist", {"x": x})["y"].ravel()[0] == 10
            for version, factor in (("v0.1.0", 1), ("2", 2), ("v0.10.0", 10)):
                y = infer(server, protocol, "mnist", {"x": x}, model_version=version)["y"]
                assert y.ravel()[0] == factor, (protocol, version)
    finally:
        server.stop()


@pytest.mark.skipif(
    importlib.util.find_spec("mlserver_lightgbm") is None, reason="mlserver-lightgbm missing"
)
def test_a_repository_without_models_serves_the_model_its_environment_describes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KServe's kserve-mlserver runtime: the storageUri's files alone in the repository (no
    settings), the model described by MLSERVER_MODEL_* variables, as KServe sets them."""
    import lightgbm

    rng = np.random.default_rng(1)
    features = rng.random((100, 3))
    booster = lightgbm.train(
        {"objective": "regression", "verbose": -1, "num_leaves": 4},
        lightgbm.Dataset(features, features.sum(axis=1)),
        num_boost_round=3,
    )
    booster.save_model(str(tmp_path / "model.bst"))
    (tmp_path / "metadata").mkdir()  # a folder of the model's files, not a model
    monkeypatch.setenv("MLSERVER_MODEL_IMPLEMENTATION", RUNTIME_LIGHTGBM)
    monkeypatch.setenv("MLSERVER_MODEL_NAME", "house-prices")
    monkeypatch.setenv("MLSERVER_MODEL_URI", str(tmp_path))
    monkeypatch.setenv("mlserver_model_version", "v3")  # MLServer reads them in any case
    server = start_server(replace(TEST_SETTINGS, model_repositories=(tmp_path,)))
    try:
        with client_for(server, "http") as client:
            index = client.get_model_repository_index()
        assert [(e["name"], e["state"]) for e in index] == [("house-prices", "READY")]
        x = features[:2]
        expected = np.asarray(booster.predict(x)).reshape(2, 1)
        for protocol in PROTOCOLS:
            for version in ("", "1", "v3"):  # by MLServer's name for it too
                answered = infer(server, protocol, "house-prices", {"i": x}, model_version=version)
                np.testing.assert_allclose(answered["predict"], expected)
    finally:
        server.stop()


def test_declared_models_come_before_the_environments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in MLServer, the environment's model is served only where the repository declares
    none; and variables that do not name an implementation describe no model."""
    (tmp_path / "runtime.py").write_text(RUNTIME)
    write_model(tmp_path, "echo-folder", {"name": "echo", "implementation": "runtime.Echo"})
    monkeypatch.setenv("MLSERVER_MODEL_IMPLEMENTATION", "runtime.Echo")
    monkeypatch.setenv("MLSERVER_MODEL_NAME", "from-env")
    server = start_server(replace(TEST_SETTINGS, model_repositories=(tmp_path,)))
    try:
        with client_for(server, "http") as client:
            assert [e["name"] for e in client.get_model_repository_index()] == ["echo"]
    finally:
        server.stop()
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.delenv("MLSERVER_MODEL_IMPLEMENTATION")
    server = start_server(replace(TEST_SETTINGS, model_repositories=(empty,)))
    try:
        with client_for(server, "http") as client:
            assert client.get_model_repository_index() == []
    finally:
        server.stop()


def test_a_models_own_environment_gives_it_what_the_server_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`environment_tarball` (conda-pack's archive, relative to the settings) and
    `environment_path` (a folder): the implementation's module is only in the environment."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the server runs in this process
    envs = tmp_path / "envs"
    for name, value in (("packed", 1), ("unpacked", 2)):
        packages = envs / name / "lib" / PYTHON / "site-packages"
        packages.mkdir(parents=True)
        (packages / f"envruntime_{name}.py").write_text(VERSIONED.format(answer=value))
    repository = tmp_path / "repository"
    write_model(
        repository,
        "packed",
        {
            "implementation": "envruntime_packed.Answer",
            "parameters": {"environment_tarball": "./env.tar.gz"},
        },
    )
    with tarfile.open(repository / "packed" / "env.tar.gz", "w:gz") as packed:
        packed.add(envs / "packed", ".")
    write_model(
        repository,
        "unpacked",
        {
            "implementation": "envruntime_unpacked.Answer",
            "parameters": {"environment_path": str(envs / "unpacked")},
        },
    )
    wrong = envs / "wrong" / "lib" / "python3.9" / "site-packages"  # inferd needs 3.11+
    wrong.mkdir(parents=True)
    write_model(
        repository,
        "wrong",
        {"implementation": "runtime.Echo", "parameters": {"environment_path": str(envs / "wrong")}},
    )
    server = start_server(replace(TEST_SETTINGS, model_repositories=(repository,)))
    try:
        x = {"x": np.zeros(1, np.float32)}
        assert infer(server, "http", "packed", x)["answer"].ravel().tolist() == [1]
        assert infer(server, "grpc", "unpacked", x)["answer"].ravel().tolist() == [2]
        with client_for(server, "http") as client:
            reasons = {e["name"]: e.get("reason", "") for e in client.get_model_repository_index()}
        assert f"environment_path '{envs / 'wrong'}' is not an environment" in reasons["wrong"]
        assert "it has python3.9" in reasons["wrong"]
    finally:
        server.stop()


def test_settings_anywhere_below_are_models_named_as_mlserver_names_them(tmp_path: Path) -> None:
    """MLServer finds model-settings.json at any depth: each is a version of the model its
    `name` (else its folder) names, wherever the others of that name are."""
    (tmp_path / "runtime.py").write_text(RUNTIME)
    echo = {"implementation": "runtime.Echo"}
    write_model(tmp_path / "tabular" / "sklearn", "iris", echo)  # named by its folder
    write_model(tmp_path / "tabular" / "sklearn", "wine-folder", {**echo, "name": "wine"})
    for group, version in (("a", "v1"), ("b", "v2")):  # one model, versions in two groups
        write_model(
            tmp_path / group,
            version,
            {**echo, "name": "mushroom", "parameters": {"version": version}},
        )
    write_model(tmp_path / "unnamed", "v7", echo)  # MLServer names it by its folder: "v7"
    (tmp_path / "twin").mkdir()
    (tmp_path / "twin" / "config.pbtxt").write_text('backend: "python"')
    write_model(tmp_path / "elsewhere", "twin-folder", {**echo, "name": "twin"})
    server = start_server(replace(TEST_SETTINGS, model_repositories=(tmp_path,)))
    try:
        with client_for(server, "http") as client:
            index = {e["name"]: e for e in client.get_model_repository_index()}
            assert sorted(index) == ["iris", "mushroom", "twin", "v7", "wine"]
            assert client.get_model_metadata("mushroom")["versions"] == ["1", "2"]
        assert "appears in two places of" in index["twin"]["reason"]
        n = {"n": np.arange(2, dtype=np.float32)}
        for name, version in (("iris", ""), ("wine", ""), ("v7", ""), ("mushroom", "v1")):
            answered = infer(server, "http", name, n, model_version=version)
            np.testing.assert_array_equal(answered["echo_n"].ravel(), n["n"])
    finally:
        server.stop()


PROCESS_RUNTIME = """
import os

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse


class Pid(MLModel):
    async def predict(self, payload):
        x = NumpyCodec.decode_input(payload.inputs[0])
        if x.ravel()[0] < 0:
            os._exit(3)  # as a crashing extension would
        pid = NumpyCodec.encode_output("pid", np.array([os.getpid()], dtype=np.int64))
        return InferenceResponse(model_name=self.name, outputs=[pid])
"""


def test_models_run_in_stub_processes_when_asked(tmp_path: Path) -> None:
    """`--backend-config=mlserver,isolation=process`: each model in a process of its own, as
    MLServer's inference workers; a crash fails its requests only, and the next starts anew."""
    (tmp_path / "process_runtime.py").write_text(PROCESS_RUNTIME)
    write_model(tmp_path, "pid", {"implementation": "process_runtime.Pid"})
    settings = replace(TEST_SETTINGS, model_repositories=(tmp_path,), mlserver_isolation="process")
    server = start_server(settings)
    try:
        x = {"x": np.ones(1, np.float32)}
        first = int(infer(server, "grpc", "pid", x)["pid"].ravel()[0])
        assert first != os.getpid()
        crash = {"x": -x["x"]}
        message = fails(lambda: infer(server, "http", "pid", crash), "http", "internal")
        assert message == "Stub process 'pid_0_0' is not healthy."
        second = int(infer(server, "http", "pid", x)["pid"].ravel()[0])
        assert second not in (first, os.getpid())
    finally:
        server.stop()


def test_parallel_workers_run_as_many_processes_of_each_model(tmp_path: Path) -> None:
    """MLServer's parallel_workers: each of its workers serves every model; in inferd, each
    model has that many stub processes, which take requests in parallel."""
    (tmp_path / "process_runtime.py").write_text(PROCESS_RUNTIME)
    write_model(tmp_path, "pid", {"implementation": "process_runtime.Pid"})
    settings = replace(
        TEST_SETTINGS,
        model_repositories=(tmp_path,),
        mlserver_isolation="process",
        mlserver_workers=2,
    )
    server = start_server(settings)
    try:
        config = httpx.get(f"http://{server.http_url}/v2/models/pid/config", timeout=10).json()
        assert [group["count"] for group in config["instance_group"]] == [2]
        x = {"x": np.ones(1, np.float32)}
        with ThreadPoolExecutor(8) as pool:
            pids = set(pool.map(lambda _: infer(server, "http", "pid", x)["pid"].item(), range(64)))
        assert len(pids) == 2 and os.getpid() not in pids
    finally:
        server.stop()


# MLServer's custom metrics: one registered in load(), one made by its first log().
METRICS_RUNTIME = """
import mlserver
import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse


class Logs(MLModel):
    async def load(self):
        mlserver.register("rows_seen", "rows this model was asked about")
        return True

    async def predict(self, payload):
        x = NumpyCodec.decode_input(payload.inputs[0])
        mlserver.log(rows_seen=len(x), row_value=float(x.ravel()[0]))
        y = NumpyCodec.encode_output("y", x)
        return InferenceResponse(model_name=self.name, outputs=[y])
"""


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_mlserver_log_metrics_reach_the_metrics_endpoint(tmp_path: Path, isolation: str) -> None:
    """mlserver.register() / mlserver.log() work as under MLServer (the model's context is
    set around load() and predict()), and their histograms, labelled with the model's name
    and version, are on the server's /metrics, from the server's process or a stub's."""
    (tmp_path / "metrics_runtime.py").write_text(METRICS_RUNTIME)
    write_model(
        tmp_path,
        "logs",
        {"implementation": "metrics_runtime.Logs", "parameters": {"version": "v7"}},
    )
    settings = replace(TEST_SETTINGS, model_repositories=(tmp_path,), mlserver_isolation=isolation)
    server = start_server(settings)
    try:
        for value in (2.0, 3.0):
            x = {"x": np.full((3, 1), value, np.float32)}
            assert infer(server, "http", "logs", x)["y"].ravel().tolist() == [value] * 3
        text = httpx.get(f"http://{server.http_url}/metrics", timeout=10).text
    finally:
        server.stop()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    labels = {"model_name": "logs", "model_version": "v7"}
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for name in ("rows_seen", "row_value")
        for sample in families[name].samples
    }
    key = tuple(sorted(labels.items()))
    assert samples[("rows_seen_count", key)] == 2 and samples[("rows_seen_sum", key)] == 6
    assert samples[("row_value_sum", key)] == 5
    assert families["rows_seen"].documentation == "rows this model was asked about"
    assert families["rows_seen"].type == "histogram"


# Answers how many times predict() ran: a cached answer repeats an old count.
COUNTING_RUNTIME = """
import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse


class Counts(MLModel):
    async def load(self):
        self.calls = 0
        return True

    async def predict(self, payload):
        self.calls += 1
        calls = NumpyCodec.encode_output("calls", np.array([self.calls], dtype=np.int64))
        return InferenceResponse(model_name=self.name, outputs=[calls])
"""


def test_models_whose_settings_enable_the_cache_answer_from_it(tmp_path: Path) -> None:
    """MLServer's response cache: a model with cache_enabled answers a request it answered
    before from the cache (served with MLServer's server setting, or --cache-config); one
    without runs every time."""
    (tmp_path / "counting_runtime.py").write_text(COUNTING_RUNTIME)
    for name, cached in (("cached", True), ("fresh", False)):
        write_model(
            tmp_path, name, {"implementation": "counting_runtime.Counts", "cache_enabled": cached}
        )
    cache = LocalCacheConfig(size=1 << 20, entries=10)
    server = start_server(
        replace(TEST_SETTINGS, model_repositories=(tmp_path,), response_cache=cache)
    )
    try:
        x = {"x": np.ones(2, np.float32)}
        calls = {
            name: [int(infer(server, "http", name, x)["calls"].ravel()[0]) for _ in range(3)]
            for name in ("cached", "fresh")
        }
        config = httpx.get(f"http://{server.http_url}/v2/models/cached/config", timeout=10).json()
        # A stream's answers are not cached, nor answered from the cache, as in MLServer.
        body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 1]}]}
        url = f"http://{server.http_url}/v2/models/cached/infer_stream"
        streamed = httpx.post(url, json=body, timeout=10).text
        again = int(infer(server, "http", "cached", x)["calls"].ravel()[0])
    finally:
        server.stop()
    assert calls == {"cached": [1, 1, 1], "fresh": [1, 2, 3]}
    assert json.loads(streamed.removeprefix("data: "))["outputs"][0]["data"] == [2]
    assert again == 1
    assert config["response_cache"] == {"enable": True}
