"""An answer lists its outputs in the order the model's Triton backend adds them, whatever
order the config or the request names them in: by name for ONNX Runtime (its backend keeps
them in a std::map). Python models and TensorRT: tests/integration/test_python_backend.py and
tests/unit/test_tensorrt.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import RunningServer
from tests.models import double_model, write_model
from tests.wire import PROTOCOLS, infer

# The config lists OUTPUT1 first.
CONFIG = """
name: "double"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]
output [
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }
]
"""


@pytest.fixture
def server(tmp_path: Path, server_factory: Callable[..., RunningServer]) -> RunningServer:
    write_model(tmp_path, "double", double_model(), CONFIG)
    return server_factory(model_repositories=(tmp_path,))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_onnx_runtime_answers_list_outputs_by_name(server: RunningServer, protocol: str) -> None:
    inputs = {"INPUT0": np.array([[1, 2]], np.float32)}
    out = infer(server, protocol, "double", inputs)
    assert list(out) == ["OUTPUT0", "OUTPUT1"]
    assert out["OUTPUT0"].tolist() == [[2, 4]] and out["OUTPUT1"].tolist() == [[1, 2]]
    asked = infer(server, protocol, "double", inputs, outputs=["OUTPUT1", "OUTPUT0"])
    assert list(asked) == ["OUTPUT0", "OUTPUT1"]
    assert list(infer(server, protocol, "double", inputs, outputs=["OUTPUT1"])) == ["OUTPUT1"]


def test_an_empty_outputs_list_asks_for_every_output(server: RunningServer) -> None:
    body = {
        "inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
        "outputs": [],
    }
    answer = httpx.post(f"http://{server.http_url}/v2/models/double/infer", json=body).json()
    assert [o["name"] for o in answer["outputs"]] == ["OUTPUT0", "OUTPUT1"]
