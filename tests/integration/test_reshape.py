"""`reshape { shape }` through the real tritonclient: clients send and receive `dims`, real ONNX
Runtime sessions and a python model get the reshape shape, fixed and variable-size dims,
batched requests, and the config and metadata endpoints."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.models import finish, identity_model, write_model
from tests.python_models import write_python_model
from tests.wire import PROTOCOLS, client_for, infer, load_failure

Factory = Callable[..., RunningServer]


def transpose_model() -> onnx.ModelProto:
    """FP32 [batch, 2, 3] -> [batch, 3, 2]: what a reshape must hand it is observable."""
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["IN"], ["OUT"], perm=[0, 2, 1])],
        "transpose",
        [helper.make_tensor_value_info("IN", TensorProto.FLOAT, ["batch", 2, 3])],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, ["batch", 3, 2])],
    )
    return finish(graph)


TRANSPOSE = """
max_batch_size: 8
input [{ name: "IN" data_type: TYPE_FP32 dims: [ 6 ] reshape { shape: [ 2, 3 ] } }]
output [{ name: "OUT" data_type: TYPE_FP32 dims: [ 6 ] reshape { shape: [ 3, 2 ] } }]
dynamic_batching { max_queue_delay_microseconds: 20000 }
"""
# The model takes [batch, n, 1]; clients send [batch, n].
VARIABLE = """
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] reshape { shape: [ -1, 1 ] } }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] reshape { shape: [ -1, 1 ] } }]
"""
# One scalar per batch item, as Triton's documentation writes it.
SCALAR = """
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_INT64 dims: [ 1 ] reshape { shape: [ ] } }]
output [{ name: "OUTPUT0" data_type: TYPE_INT64 dims: [ 1 ] reshape { shape: [ ] } }]
"""
# A python model reports the shape it was given; it answers in its model shape.
SHAPES_PY = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            seen = np.array([json.dumps(list(x.shape)).encode()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", (x * 10).astype(np.int32)),
                pb_utils.Tensor("SEEN", seen),
            ]))
        return responses
"""
SHAPES_CONFIG = """
backend: "python"
max_batch_size: 0
input [{ name: "X" data_type: TYPE_INT32 dims: [ 4 ] reshape { shape: [ 2, 2 ] } }]
output [
  { name: "Y" data_type: TYPE_INT32 dims: [ 4 ] reshape { shape: [ 2, 2 ] } },
  { name: "SEEN" data_type: TYPE_STRING dims: [ 1 ] }
]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reshape")
    write_model(root, "transpose", transpose_model(), TRANSPOSE)
    write_model(root, "variable", identity_model(shape=("batch", "n", 1)), VARIABLE)
    write_model(root, "scalar", identity_model(TensorProto.INT64, ("batch",)), SCALAR)
    write_python_model(root, "shapes", SHAPES_PY, SHAPES_CONFIG)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    running = start_server(replace(TEST_SETTINGS, model_repositories=(repo,)))
    yield running
    running.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fixed_reshapes_on_the_way_in_and_out(server: RunningServer, protocol: str) -> None:
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    out = infer(server, protocol, "transpose", {"IN": x})["OUT"]
    # The model saw [[0, 1, 2], [3, 4, 5]] and made its transpose; clients get 6 values back.
    assert out.shape == (2, 6)
    assert out[0].tolist() == [0, 3, 1, 4, 2, 5]
    assert out[1].tolist() == [6, 9, 7, 10, 8, 11]


def test_batched_requests_are_reshaped_together(server: RunningServer) -> None:
    results: dict[int, np.ndarray] = {}

    def one(i: int) -> None:
        x = np.full((1, 6), i, np.float32) + np.arange(6, dtype=np.float32)
        results[i] = infer(server, "grpc", "transpose", {"IN": x})["OUT"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, out in results.items():
        assert (out[0] - i).tolist() == [0, 3, 1, 4, 2, 5]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_variable_size_dims_take_their_size_from_the_request(
    server: RunningServer, protocol: str
) -> None:
    for n in (3, 5):
        x = np.arange(n * 2, dtype=np.float32).reshape(2, n)
        out = infer(server, protocol, "variable", {"INPUT0": x})["OUTPUT0"]
        assert out.shape == (2, n) and out.tolist() == x.tolist()
    scalars = np.array([[7], [8]], np.int64)
    assert infer(server, protocol, "scalar", {"INPUT0": scalars})["OUTPUT0"].tolist() == [[7], [8]]


def test_python_models_get_the_model_shape(server: RunningServer) -> None:
    result = infer(server, "http", "shapes", {"X": np.arange(4, dtype=np.int32)})
    assert json.loads(result["SEEN"][0]) == [2, 2]
    assert result["Y"].tolist() == [0, 10, 20, 30]


def test_metadata_shows_dims_and_config_shows_the_reshape(server: RunningServer) -> None:
    client = client_for(server, "http")
    try:
        metadata = client.get_model_metadata("transpose")
        config = client.get_model_config("transpose")
    finally:
        client.close()
    assert metadata["inputs"] == [{"name": "IN", "datatype": "FP32", "shape": [-1, 6]}]
    assert metadata["outputs"] == [{"name": "OUT", "datatype": "FP32", "shape": [-1, 6]}]
    assert config["input"][0]["reshape"] == {"shape": [2, 3]}
    assert config["output"][0]["reshape"] == {"shape": [3, 2]}


def test_a_model_that_does_not_match_its_reshape_fails_to_load(
    tmp_path: Path, server_factory: Factory
) -> None:
    wrong = TRANSPOSE.replace("shape: [ 2, 3 ]", "shape: [ 3, 2 ]")
    write_model(tmp_path, "wrong", transpose_model(), wrong)
    reason = load_failure(server_factory(model_repositories=(tmp_path,)))
    assert "input 'IN': config dims [3, 2] do not match the model's shape" in reason
