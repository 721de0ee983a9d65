"""TorchScript models (Triton's libtorch backend) through a real server and the real clients
(skipped where torch is not installed: run tools/extra-check pytorch)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

pytest.importorskip("torch")

from tests.conftest import RunningServer
from tests.python_models import write_python_model
from tests.torch_models import (
    Accumulate,
    AddSub,
    DictInput,
    Fails,
    Scale,
    TakesInt,
    Words,
    save,
)
from tests.wire import infer

Factory = Callable[..., RunningServer]

# TorchScript is deprecated in the newest torch releases, and still what Triton serves.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def add_sub_config(inputs: tuple[str, str], outputs: tuple[str, str]) -> str:
    tensors = ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ 4 ] }}' for n in inputs)
    results = ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ 4 ] }}' for n in outputs)
    return f"""
platform: "pytorch_libtorch"
max_batch_size: 8
input [ {tensors} ]
output [ {results} ]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
"""


ONE_INPUT = """
platform: "pytorch_libtorch"
max_batch_size: 0
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2 ] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] }]
"""


@pytest.fixture
def server(server_factory: Factory, tmp_path: Path) -> RunningServer:
    save(
        AddSub(),
        tmp_path,
        "indexed",
        add_sub_config(("INPUT__0", "INPUT__1"), ("OUTPUT__0", "OUTPUT__1")),
    )
    # Named as forward()'s arguments, listed in the other order: found by name.
    save(AddSub(), tmp_path, "by_argument", add_sub_config(("y", "x"), ("SUM__0", "DIFF__1")))
    # Neither: config order, inputs and outputs alike.
    save(AddSub(), tmp_path, "by_order", add_sub_config(("A", "B"), ("S", "D")))
    save(
        DictInput(),
        tmp_path,
        "dict",
        """
platform: "pytorch_libtorch"
max_batch_size: 0
input [
  { name: "b" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "a" data_type: TYPE_FP32 dims: [ 3 ] }
]
output [{ name: "OUT__0" data_type: TYPE_FP32 dims: [ 3 ] }]
""",
    )
    save(
        Words(),
        tmp_path,
        "words",
        """
backend: "pytorch"
max_batch_size: 0
input [{ name: "WORDS__0" data_type: TYPE_STRING dims: [ -1 ] }]
output [
  { name: "UPPER__0" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "LENGTH__1" data_type: TYPE_INT64 dims: [ -1 ] }
]
""",
    )
    save(
        Scale(3.0),
        tmp_path,
        "scale",
        """
platform: "pytorch_libtorch"
max_batch_size: 4
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2 ] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] }]
parameters [
  { key: "INFERENCE_MODE" value: { string_value: "true" } },
  { key: "DISABLE_OPTIMIZED_EXECUTION" value: { string_value: "true" } }
]
instance_group [{ count: 2 kind: KIND_CPU }]
""",
    )
    save(
        Fails(),
        tmp_path,
        "fails",
        """
platform: "pytorch_libtorch"
max_batch_size: 0
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2 ] }]
output [
  { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "OUTPUT__3" data_type: TYPE_FP32 dims: [ 2 ] }
]
""",
    )
    return server_factory(model_repositories=(tmp_path,))


def test_addsub_by_each_naming_convention(server: RunningServer) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    y = np.ones((2, 4), dtype=np.float32)
    indexed = infer(server, "http", "indexed", {"INPUT__0": x, "INPUT__1": y})
    np.testing.assert_array_equal(indexed["OUTPUT__0"], x + y)
    np.testing.assert_array_equal(indexed["OUTPUT__1"], x - y)
    by_argument = infer(server, "grpc", "by_argument", {"x": x, "y": y})
    np.testing.assert_array_equal(by_argument["SUM__0"], x + y)
    np.testing.assert_array_equal(by_argument["DIFF__1"], x - y)
    by_order = infer(server, "http", "by_order", {"A": x, "B": y})
    np.testing.assert_array_equal(by_order["D"], x - y)


def test_requests_are_batched_and_split_back(server: RunningServer) -> None:
    def one(i: int) -> tuple[int, np.ndarray]:
        x = np.full((1, 4), i, dtype=np.float32)
        return i, infer(server, "http", "indexed", {"INPUT__0": x, "INPUT__1": x})["OUTPUT__0"]

    with ThreadPoolExecutor(8) as pool:
        for i, total in pool.map(one, range(16)):
            np.testing.assert_array_equal(total, np.full((1, 4), 2 * i, dtype=np.float32))
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        stats = client.get_inference_statistics("indexed")["model_stats"][0]
    finally:
        client.close()
    assert stats["inference_count"] == 16
    assert stats["execution_count"] < 16  # some requests ran in one batch


def test_dict_strings_parameters_and_instances(server: RunningServer) -> None:
    a = np.array([1, 2, 3], dtype=np.float32)
    b = np.array([4, 5, 6], dtype=np.float32)
    np.testing.assert_array_equal(
        infer(server, "http", "dict", {"a": a, "b": b})["OUT__0"], a * 10 + b
    )
    words = np.array([b"triton", b"inferd"], dtype=object)
    out = infer(server, "grpc", "words", {"WORDS__0": words})
    assert list(out["UPPER__0"]) == [b"TRITON", b"INFERD"]
    np.testing.assert_array_equal(out["LENGTH__1"], [6, 6])
    x = np.ones((3, 2), dtype=np.float32)
    np.testing.assert_array_equal(
        infer(server, "http", "scale", {"INPUT__0": x})["OUTPUT__0"], x * 3
    )


def test_failures_answer_in_tritons_words(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("INPUT__0", [2], "FP32")
        tensor.set_data_from_numpy(np.array([1, -1], dtype=np.float32))
        with pytest.raises(
            InferenceServerException, match=r"(?s)PyTorch execute failure: .*negative input"
        ):
            client.infer("fails", [tensor])
        tensor.set_data_from_numpy(np.array([1, 1], dtype=np.float32))
        with pytest.raises(InferenceServerException) as raised:
            client.infer("fails", [tensor])
        assert (
            "The output OUTPUT__3 in the model configuration refers to an output index which "
            "doesn't exist. This model has 1 outputs" in str(raised.value)
        )
        assert raised.value.status() == "400"
    finally:
        client.close()


def test_models_that_cannot_load_say_why(server_factory: Factory, tmp_path: Path) -> None:
    save(AddSub(), tmp_path, "too_few", ONE_INPUT)
    save(TakesInt(), tmp_path, "takes_int", add_sub_config(("x", "n"), ("OUT__0", "OUT__1")))
    save(Scale(), tmp_path, "uint16", ONE_INPUT.replace("TYPE_FP32", "TYPE_UINT16", 1))
    strings = ONE_INPUT.replace("TYPE_FP32 dims: [ 2 ]", "TYPE_STRING dims: [ 2, 2 ]", 1)
    save(Words(), tmp_path, "strings_2d", strings)
    bad_parameter = 'parameters [{ key: "INFERENCE_MODE" value: { string_value: "yes" } }]'
    save(Scale(), tmp_path, "bad_parameter", ONE_INPUT + bad_parameter)
    (tmp_path / "not_torchscript" / "1").mkdir(parents=True)
    (tmp_path / "not_torchscript" / "1" / "model.pt").write_bytes(b"not a model")
    (tmp_path / "not_torchscript" / "config.pbtxt").write_text(
        add_sub_config(("INPUT__0", "INPUT__1"), ("OUTPUT__0", "OUTPUT__1"))
    )
    server = server_factory(model_repositories=(tmp_path,), strict_readiness=False)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        reasons = {e["name"]: e.get("reason", "") for e in client.get_model_repository_index()}
    finally:
        client.close()
    assert (
        "unable to load model 'too_few', configuration expects 1 inputs, model provides 2"
        in reasons["too_few"]
    )
    assert "An input of type 'int' was detected in the model" in reasons["takes_int"]
    assert "unsupported datatype TYPE_UINT16 for 'INPUT__0' for model 'uint16'" in reasons["uint16"]
    assert "parameter INFERENCE_MODE must be true or false, got 'yes'" in reasons["bad_parameter"]
    assert "only supports 1 dimensional List of String" in reasons["strings_2d"]
    assert "failed to load model 'not_torchscript'" in reasons["not_torchscript"]


ACCUMULATE = """
platform: "pytorch_libtorch"
max_batch_size: 4
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 1 ] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 1 ] }]
sequence_batching {
  control_input [{
    name: "START__1"
    control [{ kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] }]
  }]
  state [{
    input_name: "STATE__2" output_name: "STATE__1" data_type: TYPE_FP32 dims: [ 1 ]
    initial_state { data_type: TYPE_FP32 dims: [ 1 ] zero_data: true name: "zero" }
  }]
}
"""


def test_a_sequence_model_gets_its_controls_and_state(
    server_factory: Factory, tmp_path: Path
) -> None:
    save(Accumulate(), tmp_path, "accumulate", ACCUMULATE)
    server = server_factory(model_repositories=(tmp_path,))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        totals = {}
        for sequence in (1, 2):
            for step, value in enumerate((1.0, 2.0, 3.0)):
                tensor = grpcclient.InferInput("INPUT__0", [1, 1], "FP32")
                tensor.set_data_from_numpy(np.array([[value * sequence]], dtype=np.float32))
                result = client.infer(
                    "accumulate",
                    [tensor],
                    sequence_id=sequence,
                    sequence_start=step == 0,
                    sequence_end=step == 2,
                )
                totals[sequence, step] = float(result.as_numpy("OUTPUT__0")[0, 0])
    finally:
        client.close()
    assert [totals[1, s] for s in range(3)] == [1.0, 3.0, 6.0]
    assert [totals[2, s] for s in range(3)] == [2.0, 6.0, 12.0]


def test_kind_gpu_without_a_usable_gpu_follows_the_fallback(
    server_factory: Factory, tmp_path: Path
) -> None:
    from inferd.backends.gpu import GpuInfo
    from inferd.backends.pytorch import PyTorchBackend

    # Here torch sees no GPU: the reason names the build, and --gpu-fallback decides.
    reason = PyTorchBackend.gpu_unavailable_reason(GpuInfo(count=1))
    assert "PyTorch" in reason and ("CPU-only" in reason or "no usable GPU" in reason)
    gpu = ONE_INPUT + "instance_group [{ kind: KIND_GPU }]"
    save(Scale(2.0), tmp_path, "on_gpu", gpu)
    server = server_factory(model_repositories=(tmp_path,), gpu_fallback_to_cpu=True)
    x = np.ones((2,), dtype=np.float32)
    np.testing.assert_array_equal(
        infer(server, "http", "on_gpu", {"INPUT__0": x})["OUTPUT__0"], x * 2
    )


def test_weight_sharing_loads_one_module_for_a_devices_instances(
    server_factory: Factory, tmp_path: Path
) -> None:
    from inferd.backends import pytorch

    sharing = 'parameters [{ key: "ENABLE_WEIGHT_SHARING" value: { string_value: "true" } }]'
    config = ONE_INPUT + sharing + "instance_group [{ count: 3 kind: KIND_CPU }]"
    save(Scale(5.0), tmp_path, "shared", config)
    server = server_factory(model_repositories=(tmp_path,), model_control_mode="explicit")
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.load_model("shared")
        assert pytorch.SHARED_MODULES.users() == [3]  # one module, three instances
        x = np.ones((2,), dtype=np.float32)
        np.testing.assert_array_equal(
            infer(server, "http", "shared", {"INPUT__0": x})["OUTPUT__0"], x * 5
        )
        client.unload_model("shared")
        assert pytorch.SHARED_MODULES.users() == []  # the last instance let it go
    finally:
        client.close()


TORCH_DLPACK_MODEL = """
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            shared = torch.utils.dlpack.from_dlpack(tensor.to_dlpack())  # no copy
            doubled = torch.from_dlpack(tensor) * 2
            total = pb_utils.Tensor.from_dlpack(
                "OUTPUT0", torch.utils.dlpack.to_dlpack(shared + doubled)
            )
            tens = pb_utils.Tensor.from_dlpack("OUTPUT1", shared * 10)
            responses.append(pb_utils.InferenceResponse([total, tens]))
        return responses
"""

TORCH_DLPACK_CONFIG = """
backend: "python"
max_batch_size: 4
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 3 ] }]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 3 ] }
]
"""


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_python_models_trade_tensors_with_torch_through_dlpack(
    server_factory: Factory, tmp_path: Path, isolation: str
) -> None:
    write_python_model(tmp_path, "dlpack", TORCH_DLPACK_MODEL, TORCH_DLPACK_CONFIG)
    server = server_factory(model_repositories=(tmp_path,), python_isolation=isolation)
    x = np.array([[1, 2, 3]], dtype=np.float32)
    out = infer(server, "http", "dlpack", {"INPUT0": x})
    np.testing.assert_array_equal(out["OUTPUT0"], x * 3)
    np.testing.assert_array_equal(out["OUTPUT1"], x * 10)


def test_kind_model_leaves_the_module_where_it_was_saved(
    server_factory: Factory, tmp_path: Path
) -> None:
    """Triton's libtorch backend takes KIND_MODEL (a module that places itself): inputs go in
    on the CPU, and the module stays on the devices it was saved on (the CPU here)."""
    save(Scale(3.0), tmp_path, "placed", ONE_INPUT + "instance_group [{ kind: KIND_MODEL }]")
    server = server_factory(model_repositories=(tmp_path,))
    x = np.arange(2, dtype=np.float32)
    np.testing.assert_array_equal(
        infer(server, "grpc", "placed", {"INPUT__0": x})["OUTPUT__0"], x * 3
    )
