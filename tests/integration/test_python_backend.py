"""Triton python-backend models served unchanged: a repository of model.py files behind a real
server, driven by the real tritonclient over HTTP and gRPC."""

from __future__ import annotations

import asyncio
import json
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from inferd.backends.gpu import GpuInfo
from inferd.backends.registry import BackendRegistry
from inferd.repository.manager import ModelRepository, RepositorySettings
from inferd.repository.scheduling import INLINE_PARAMETER
from inferd.server.rate_limit_settings import parse_rate_limit
from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.python_models import (
    ADD_SUB,
    ADD_SUB_CONFIG,
    AUTO,
    BATCHER,
    BATCHER_CONFIG,
    BF16_CONFIG,
    BF16_DOUBLE,
    BLS,
    BLS_ASYNC,
    BLS_CONFIG,
    FINALIZER,
    HELPED,
    IDENTITY_CONFIG,
    IN_PLACE_DLPACK,
    INFO,
    INFO_CONFIG,
    RAISER,
    REVERSE,
    REVERSE_CONFIG,
    config_named,
    write_python_model,
)
from tests.waiting import wait_for
from tests.wire import PROTOCOLS, STATUS, fails, infer

BROKEN = {
    "syntax_error": (
        "class TritonPythonModel:\n    def execute(self, requests)\n",
        IDENTITY_CONFIG,
    ),
    "no_model_class": ("class Model:\n    pass\n", IDENTITY_CONFIG),
    "initialize_fails": (
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        raise FileNotFoundError('weights.bin')\n"
        "    def execute(self, requests):\n"
        "        return []\n",
        IDENTITY_CONFIG,
    ),
}


ANY_LENGTH = """
backend: "python"
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]
"""

TIMES_TEN = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x * 10)]))
        return responses
"""

# Answers what times_ten answers it through BLS.
BLS_RELAY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            answer = pb_utils.InferenceRequest(
                model_name="times_ten", requested_output_names=["OUTPUT0"], inputs=[x]
            ).exec()
            if answer.has_error():
                raise pb_utils.TritonModelException(answer.error().message())
            out = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", out)]))
        return responses
"""

# Answers with an error coded as INPUT0 says (a TritonError code).
CODED_ERROR = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            code = int(pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()[0])
            error = pb_utils.TritonError(f"coded {code}", code)
            responses.append(pb_utils.InferenceResponse(error=error))
        return responses
"""

# Calls coded_error through BLS and answers the code of the error it got.
CODE_RELAY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            answer = pb_utils.InferenceRequest(
                model_name="coded_error", requested_output_names=["OUTPUT0"], inputs=[x]
            ).exec()
            code = np.array([answer.error().code()], np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", code)]))
        return responses
"""

# Answers OUTPUT0 as float64 (as numpy code often makes it: np.mean of integers) and leaves
# OUTPUT1 out.
LOOSE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", a.astype("float64") * 0.5)
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
"""

# Returns its outputs in an order that is neither its config's nor their names'.
UNORDERED = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            names = ("M", "Z", "A")
            tensors = [pb_utils.Tensor(name, a + i) for i, name in enumerate(names)]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
"""

UNORDERED_CONFIG = """
backend: "python"
input [{ name: "IN" data_type: TYPE_FP32 dims: [ 2 ] }]
output [
  { name: "Z" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "A" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "M" data_type: TYPE_FP32 dims: [ 2 ] }
]
"""

# Answers the name of the instance that ran it, after a short sleep (so that requests in
# flight together need several instances).
WHO = """
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_instance_name"]

    def execute(self, requests):
        time.sleep(0.02)
        name = np.array([self.name.encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("WHO", name)]) for _ in requests]
"""

WHO_CONFIG = """
backend: "python"
input [{ name: "X" data_type: TYPE_INT32 dims: [ 1 ] }]
output [{ name: "WHO" data_type: TYPE_STRING dims: [ 1 ] }]
instance_group [
  { name: "act" count: 1 kind: KIND_CPU },
  { name: "pas" count: 2 kind: KIND_CPU passive: true }
]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("python_models")
    write_python_model(root, "add_sub", ADD_SUB, ADD_SUB_CONFIG)
    write_python_model(root, "reverse", REVERSE, REVERSE_CONFIG)
    write_python_model(root, "auto", AUTO)  # no config.pbtxt
    write_python_model(root, "info", INFO, INFO_CONFIG)
    # KIND_MODEL: the model places itself; Triton tells each instance "MODEL", device 0.
    placed = INFO_CONFIG + "instance_group [{ kind: KIND_MODEL count: 2 }]"
    write_python_model(root, "info_placed", INFO, placed)
    write_python_model(root, "batcher", BATCHER, BATCHER_CONFIG)
    write_python_model(root, "raiser", RAISER, IDENTITY_CONFIG)
    write_python_model(root, "in_place_dlpack", IN_PLACE_DLPACK, IDENTITY_CONFIG)
    write_python_model(root, "bf16_double", BF16_DOUBLE, BF16_CONFIG)
    # model.py imports the file beside it, as Triton's examples do.
    helped = write_python_model(root, "helped", HELPED, IDENTITY_CONFIG)
    (helped / "1" / "scaling.py").write_text("def scale(x):\n    return x * 10\n")
    write_python_model(root, "bls", BLS, BLS_CONFIG)
    write_python_model(root, "bls_async", BLS_ASYNC, config_named(ADD_SUB_CONFIG, "bls_async"))
    write_python_model(root, "times_ten", TIMES_TEN, ANY_LENGTH)
    write_python_model(root, "bls_relay", BLS_RELAY, ANY_LENGTH)
    write_python_model(root, "coded_error", CODED_ERROR, ANY_LENGTH)
    write_python_model(root, "code_relay", CODE_RELAY, ANY_LENGTH)
    write_python_model(root, "loose", LOOSE, config_named(ADD_SUB_CONFIG, "loose"))
    write_python_model(root, "unordered", UNORDERED, UNORDERED_CONFIG)
    write_python_model(root, "passive", WHO, WHO_CONFIG)
    all_passive = WHO_CONFIG.replace('{ name: "act" count: 1 kind: KIND_CPU },', "")
    write_python_model(root, "all_passive", WHO, all_passive)
    # default_model_filename names the file in place of model.py.
    (root / "renamed" / "1").mkdir(parents=True)
    (root / "renamed" / "1" / "add_sub.py").write_text(ADD_SUB)
    renamed = config_named(ADD_SUB_CONFIG, "renamed") + 'default_model_filename: "add_sub.py"'
    (root / "renamed" / "config.pbtxt").write_text(renamed)
    for name, (source, config) in BROKEN.items():
        write_python_model(root, name, source, config)
    return root


@pytest.fixture(scope="module", params=["thread", "process"])
def server(repo: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """Every test runs on instances in the server's process, then in stub processes."""
    running = start_server(
        replace(TEST_SETTINGS, model_repositories=(repo,), python_isolation=request.param)
    )
    yield running
    running.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_add_sub(server: RunningServer, protocol: str) -> None:
    a = np.array([1, 2, 3, 4], np.float32)
    b = np.array([10, 20, 30, 40], np.float32)
    out = infer(server, protocol, "add_sub", {"INPUT0": a, "INPUT1": b})
    assert out["OUTPUT0"].tolist() == [11, 22, 33, 44]
    assert out["OUTPUT1"].tolist() == [-9, -18, -27, -36]
    assert out["OUTPUT0"].dtype == np.float32
    only = infer(server, protocol, "add_sub", {"INPUT0": a, "INPUT1": b}, outputs=["OUTPUT1"])
    assert list(only) == ["OUTPUT1"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_answer_holds_what_the_model_returned_as_it_returned_it(
    server: RunningServer, protocol: str
) -> None:
    """As Triton's python backend: an output the model left out is left out of the answer, and
    one of another type than its config's goes out as that type."""
    a = np.array([1, 2, 3, 4], np.float32)
    inputs = {"INPUT0": a, "INPUT1": a}
    out = infer(server, protocol, "loose", inputs)
    assert list(out) == ["OUTPUT0"]
    assert out["OUTPUT0"].dtype == np.float64 and out["OUTPUT0"].tolist() == [0.5, 1, 1.5, 2]
    assert infer(server, protocol, "loose", inputs, outputs=["OUTPUT1"]) == {}
    # An output asked for twice is answered once; classification reads the FP64 values.
    twice = infer(server, protocol, "loose", inputs, outputs=["OUTPUT0", "OUTPUT0"], class_count=2)
    assert twice["OUTPUT0"].tolist() == [b"2.000000:3", b"1.500000:2"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_answer_lists_outputs_in_the_order_the_model_returned_them(
    server: RunningServer, protocol: str
) -> None:
    """As Triton 2.51's python backend: neither the config's order nor the request's."""
    inputs = {"IN": np.zeros(2, np.float32)}
    out = infer(server, protocol, "unordered", inputs)
    assert list(out) == ["M", "Z", "A"]
    assert [out[name][0] for name in out] == [0, 1, 2]
    assert list(infer(server, protocol, "unordered", inputs, outputs=["A", "Z"])) == ["Z", "A"]


def test_passive_instances_load_but_take_no_requests(server: RunningServer) -> None:
    """As in Triton 2.51: a `passive` group's instances are created and take no requests. A
    model with only passive instances loads, and its requests are refused at once (Triton's
    wait for good)."""
    x = {"X": np.array([1], np.int32)}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: infer(server, "http", "passive", x), range(12)))
    assert {a["WHO"][0] for a in answers} == {b"act_0"}
    message = fails(lambda: infer(server, "grpc", "all_passive", x), "grpc", "unavailable")
    assert message == "model 'all_passive:1' has no instance that takes requests: all are passive"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bytes_model(server: RunningServer, protocol: str) -> None:
    text = np.array([[b"inferd"], ["caf\u00e9".encode()]], dtype=np.object_)
    out = infer(server, protocol, "reverse", {"TEXT": text})
    assert out["REVERSED"].tolist() == [[b"drefni"], ["caf\u00e9".encode()[::-1]]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_inputs_change_in_place_and_cross_dlpack(server: RunningServer, protocol: str) -> None:
    # tritonclient sends binary tensors: the server's views of them are read-only, the
    # model's copy is not.
    out = infer(server, protocol, "in_place_dlpack", {"INPUT0": np.arange(4, dtype=np.float32)})
    assert out["OUTPUT0"].tolist() == [1, 3, 5, 7]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bf16_tensors_reach_the_model_and_come_back(server: RunningServer, protocol: str) -> None:
    values = np.array([1.5, -2.0, 0.25], ml_dtypes.bfloat16)
    out = infer(server, protocol, "bf16_double", {"INPUT0": values})
    assert out["OUTPUT0"].astype(np.float32).tolist() == [3.0, -4.0, 0.5]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_model_imports_the_file_beside_it(server: RunningServer, protocol: str) -> None:
    out = infer(server, protocol, "helped", {"INPUT0": np.arange(4, dtype=np.float32)})
    assert out["OUTPUT0"].tolist() == [0, 10, 20, 30]


def test_default_model_filename_is_respected(server: RunningServer) -> None:
    x = np.ones(4, np.float32)
    assert (
        infer(server, "http", "renamed", {"INPUT0": x, "INPUT1": x})["OUTPUT0"].tolist() == [2] * 4
    )


def test_model_metadata_and_config(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        metadata = client.get_model_metadata("add_sub")
        config = client.get_model_config("auto")
    finally:
        client.close()
    assert metadata["platform"] == "python"
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("INPUT0", "FP32", [4]),
        ("INPUT1", "FP32", [4]),
    ]
    # "auto" has no config.pbtxt: its auto_complete_config() wrote all of this.
    assert (config["backend"], config["max_batch_size"]) == ("python", 4)
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [2])
    ]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        ("OUTPUT0", "TYPE_FP32", [2])
    ]
    assert config["dynamic_batching"]["preferred_batch_size"] == [4]
    # What Triton 2.51 prints for every python model, auto-completed or not.
    assert config["default_model_filename"] == "model.py"
    assert config["optimization"] == {
        "priority": "PRIORITY_DEFAULT",
        "input_pinned_memory": {"enable": True},
        "output_pinned_memory": {"enable": True},
        "gather_kernel_buffer_threshold": 0,
        "eager_batching": False,
    }
    assert "model_transaction_policy" not in config  # nothing set it


def test_auto_completed_model_serves(server: RunningServer) -> None:
    x = np.array([[1, 2], [3, 4]], np.float32)
    assert infer(server, "grpc", "auto", {"INPUT0": x})["OUTPUT0"].tolist() == [[2, 4], [6, 8]]


def test_initialize_gets_tritons_args(server: RunningServer, repo: Path) -> None:
    out = infer(server, "http", "info", {"INPUT0": np.array([1], np.int32)}, outputs=["ARGS"])
    args = json.loads(out["ARGS"][0])
    written = args.pop("model_config")
    config = json.loads(written)
    # As Triton writes it: compact, every field in the proto's order.
    assert written == json.dumps(config, separators=(",", ":"), ensure_ascii=False)
    assert list(config)[:6] == [
        "name",
        "platform",
        "backend",
        "runtime",
        "version_policy",
        "max_batch_size",
    ]
    assert config["name"] == "info"
    assert args.pop("get_model_dir()") == str(repo / "info" / "1")  # model.py's folder
    assert args == {
        "model_name": "info",
        "model_repository": str(repo / "info"),
        "model_version": "1",
        "model_instance_kind": "CPU",
        "model_instance_name": "info_0",
        "model_instance_device_id": "0",
    }


def test_kind_model_instances_are_told_so(server: RunningServer) -> None:
    names = set()
    for _ in range(8):  # requests spread over both instances
        out = infer(
            server, "http", "info_placed", {"INPUT0": np.array([1], np.int32)}, outputs=["ARGS"]
        )
        args = json.loads(out["ARGS"][0])
        assert (args["model_instance_kind"], args["model_instance_device_id"]) == ("MODEL", "0")
        names.add(args["model_instance_name"])
    assert names <= {"info_placed_0_0", "info_placed_0_1"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_id_and_parameters_reach_the_model(server: RunningServer, protocol: str) -> None:
    out = infer(
        server,
        protocol,
        "info",
        {"INPUT0": np.array([1], np.int32)},
        outputs=["REQUEST"],
        request_id="req-7",
        parameters={"tenant": "a"},
    )
    seen = json.loads(out["REQUEST"][0])
    assert (seen["request_id"], seen["parameters"]) == ("req-7", {"tenant": "a"})
    assert seen["requested"] == ["REQUEST"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dynamic_batch_reaches_one_execute_and_an_error_fails_only_its_request(
    server: RunningServer, protocol: str
) -> None:
    values = [1.0, -1.0, 2.0, 3.0]  # preferred_batch_size 4: one batch, after all four

    def one(value: float) -> dict[str, np.ndarray] | str:
        x = np.array([[value]], np.float32)
        try:
            return infer(server, protocol, "batcher", {"INPUT0": x})
        except InferenceServerException as exc:
            assert exc.status() == STATUS[protocol]["invalid"]
            return str(exc.message())

    with ThreadPoolExecutor(len(values)) as pool:
        results = list(pool.map(one, values))
    assert results[1] == "negative input"  # the model's own message and code
    for value, result in zip(values, results, strict=True):
        if value >= 0:
            assert isinstance(result, dict)
            assert result["Y"].tolist() == [[2 * value]]
            assert result["COUNT"].tolist() == [[4]]  # execute() got all four requests


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_exception_in_execute_fails_the_request_with_its_message(
    server: RunningServer, protocol: str
) -> None:
    x = {"INPUT0": np.zeros(4, np.float32)}
    message = fails(lambda: infer(server, protocol, "raiser", x), protocol, "internal")
    assert message == (  # Triton's words, less the traceback it appends
        "Failed to process the request(s) for model 'raiser_0', message: ValueError: cannot "
        "compute this batch"
    )


def test_broken_models_are_unavailable_with_a_reason_and_the_others_serve(
    server: RunningServer, repo: Path
) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        index = {e["name"]: e for e in client.get_model_repository_index()}
    finally:
        client.close()
    for name in BROKEN:
        assert index[name]["state"] == "UNAVAILABLE", name
    reasons = {name: index[name]["reason"] for name in BROKEN}
    assert str(repo / "syntax_error" / "1" / "model.py") in reasons["syntax_error"]
    assert "SyntaxError" in reasons["syntax_error"]
    assert "defines no class TritonPythonModel" in reasons["no_model_class"]
    assert "initialize() failed: FileNotFoundError: weights.bin" in reasons["initialize_fails"]
    message = fails(
        lambda: infer(server, "grpc", "syntax_error", {"INPUT0": np.zeros(4, np.float32)}),
        "grpc",
        "unavailable",
    )
    assert "SyntaxError" in message
    x = np.ones(4, np.float32)
    assert (
        infer(server, "grpc", "add_sub", {"INPUT0": x, "INPUT1": x})["OUTPUT0"].tolist() == [2] * 4
    )


def test_unload_runs_finalize(tmp_path: Path, server_factory: Callable[..., RunningServer]) -> None:
    write_python_model(
        tmp_path, "final", FINALIZER, IDENTITY_CONFIG + "instance_group [{ count: 2 }]"
    )
    write_python_model(tmp_path, "add_sub", ADD_SUB, ADD_SUB_CONFIG)
    server = server_factory(
        model_repositories=(tmp_path,), model_control_mode="explicit", load_models=("*",)
    )
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        x = {"INPUT0": np.arange(4, dtype=np.float32)}
        assert infer(server, "http", "final", x)["OUTPUT0"].tolist() == [0, 1, 2, 3]
        assert not list(tmp_path.glob("final/finalized_*"))
        client.unload_model("final")  # returns before the instances close, as Triton's
    finally:
        client.close()

    def markers() -> list[str]:
        return sorted(p.name for p in (tmp_path / "final").glob("finalized_*"))

    wait_for(lambda: markers() == ["finalized_final_0_0", "finalized_final_0_1"])
    assert infer(server, "http", "add_sub", {"INPUT0": x["INPUT0"], "INPUT1": x["INPUT0"]})


async def test_gpu_instances_are_told_their_device(tmp_path: Path) -> None:
    # As Triton: the model runs in the server process and is told its device, to use as it will.
    config = INFO_CONFIG + "instance_group [{ kind: KIND_GPU gpus: [ 1 ] }]"
    write_python_model(tmp_path, "info", INFO, config)
    for gpus in (GpuInfo(count=2, reason="", driver_cuda=(13, 0)), GpuInfo()):
        settings = RepositorySettings(roots=(tmp_path,), gpus=gpus)
        repository = ModelRepository(settings, BackendRegistry(), asyncio.get_running_loop())
        await repository.load_all()
        try:
            (version,) = repository.model_versions("info")
            if not gpus.count:  # no GPU: the loader's rule for every backend
                assert version.state == "UNAVAILABLE"
                assert "asks for KIND_GPU, but no GPU is available" in version.reason
                continue
            assert (version.state, version.devices) == ("READY", "1 x gpu:1")
            assert version.scheduler is not None
            outputs = await version.scheduler.submit(
                {"INPUT0": np.array([1], np.int32)}, 1, None, time.monotonic_ns()
            )
        finally:
            await repository.close()
        args = json.loads(outputs["ARGS"][0])
        assert args["model_instance_kind"] == "GPU"
        assert args["model_instance_device_id"] == "1"
        assert args["model_instance_name"] == "info_0_0"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_model_calls_another_model_through_bls(server: RunningServer, protocol: str) -> None:
    a = np.array([1, 2, 3, 4], np.float32)
    b = np.array([10, 20, 30, 40], np.float32)
    out = infer(server, protocol, "bls", {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(out["OUTPUT0"], (a + b) * 2)
    missing, code, itself, floats = (note.decode() for note in out["NOTES"].ravel())
    # A failed call is an error response, worded and coded as Triton's BLS does: the caller's
    # internal error, whatever the server answered.
    assert missing == (
        "Model no_such_model - Error when running inference: Request for unknown model: "
        "'no_such_model' is not found"
    )
    assert int(code) == 1  # TritonError.INTERNAL
    assert itself == "model 'bls' cannot call itself: its instance would wait for itself"
    # Parameters of the types the protocol carries, as Triton checks them.
    assert (
        floats == "Expect parameters values to have type bool/int/str, found type <class 'float'>"
    )


def test_an_error_the_called_model_answered_keeps_its_code(server: RunningServer) -> None:
    # As Triton's python backend passes it on since the fix of server#7804 (its
    # examples/bls_error_code); the server's own refusals still read INTERNAL (above).
    for code in (2, 3, 4, 5, 7):  # NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, CANCELLED
        sent = np.array([code], np.float32)
        assert infer(server, "grpc", "code_relay", {"INPUT0": sent})["OUTPUT0"].tolist() == [code]
    unknown = np.array([0], np.float32)  # UNKNOWN: an internal error here
    assert infer(server, "http", "code_relay", {"INPUT0": unknown})["OUTPUT0"].tolist() == [1]


@pytest.mark.parametrize("count", [16, 100_000, 1_000_000])  # 4 MB: more than a socket holds
@pytest.mark.parametrize("model", ["times_ten", "bls_relay"])
def test_tensors_of_any_size_cross_to_the_model_and_its_bls_calls(
    server: RunningServer, model: str, count: int
) -> None:
    """In stub processes, a batch, a BLS call and their answers bigger than a socket's buffer
    wait for the other end to read them (they hung before: the loop's poller had made the
    socket non-blocking, so a send stopped half-way)."""
    x = np.arange(count, dtype=np.float32)
    out = infer(server, "http", model, {"INPUT0": x})
    np.testing.assert_array_equal(out["OUTPUT0"], x * 10)


@pytest.mark.parametrize("rate_limit", ["off", "execution_count"])
def test_bls_calls_of_a_stub_answer_each_request_its_own(
    tmp_path: Path, server_factory: Callable[..., RunningServer], rate_limit: str
) -> None:
    """A stub's BLS calls go on the channel its batches come on, and their answers come back
    there while the server may already have sent its next batches (read meanwhile, run
    after); under the rate limiter the instance's thread, not the loop, reads and serves
    them. Each request still gets its own answer."""
    one = ANY_LENGTH + "instance_group [{ count: 1 kind: KIND_CPU }]"
    slow = TIMES_TEN.replace("responses = []", "responses = []\n        time.sleep(0.02)")
    write_python_model(tmp_path, "times_ten", "import time\n" + slow, one)
    write_python_model(tmp_path, "bls_relay", BLS_RELAY, one)
    server = server_factory(
        model_repositories=(tmp_path,),
        python_isolation="process",
        rate_limit=parse_rate_limit(rate_limit, []),
    )

    def relay(i: int) -> None:
        x = np.full(3, i, np.float32)
        np.testing.assert_array_equal(
            infer(server, "grpc", "bls_relay", {"INPUT0": x})["OUTPUT0"], x * 10
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(relay, range(32)))


# A BLS call whose input holds an object of a class only this model's module defines.
UNREADABLE_CALL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class OnlyHere:
    pass


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            odd = pb_utils.Tensor("TEXT", np.array([[OnlyHere()]], dtype=np.object_))
            answer = pb_utils.InferenceRequest(
                model_name="reverse", requested_output_names=["REVERSED"], inputs=[odd]
            ).exec()
            note = answer.error().message() if answer.has_error() else "answered"
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("REVERSED", np.array([[note.encode()]], dtype=np.object_))]
            ))
        return responses
"""


@pytest.mark.parametrize("rate_limit", ["off", "execution_count"])
def test_a_bls_call_the_server_cannot_read_fails_and_the_model_serves_on(
    tmp_path: Path, server_factory: Callable[..., RunningServer], rate_limit: str
) -> None:
    """In a stub process, a BLS call whose tensors hold an object of a class only the model
    defines cannot be read in the server: it fails, saying why (it used to wait forever)."""
    write_python_model(tmp_path, "reverse", REVERSE, REVERSE_CONFIG)
    write_python_model(tmp_path, "unreadable_call", UNREADABLE_CALL, REVERSE_CONFIG)
    server = server_factory(
        model_repositories=(tmp_path,),
        python_isolation="process",
        rate_limit=parse_rate_limit(rate_limit, []),
    )
    text = np.array([[b"abc"]], dtype=np.object_)
    for _ in range(2):  # and the instance serves on
        [[note]] = infer(server, "http", "unreadable_call", {"TEXT": text})["REVERSED"]
        assert b"cannot be read in the server" in note and b"OnlyHere" in note, note


# Answers the name of the thread its execute() runs on; WAIT: seconds it sleeps first, CALL:
# whether it calls "reverse" first (BLS).
WHERE = """
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

WAIT = {wait}
CALL = {call}


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(WAIT)
        asked = pb_utils.get_input_tensor_by_name(requests[0], "TEXT").as_numpy().item()
        if CALL or asked == b"call":
            text = pb_utils.Tensor("TEXT", np.array([[b"ab"]], dtype=np.object_))
            answer = pb_utils.InferenceRequest(
                model_name="reverse", requested_output_names=["REVERSED"], inputs=[text]
            ).exec()
            assert not answer.has_error(), answer.error().message()
        name = np.array([[threading.current_thread().name.encode()]], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("REVERSED", name)]) for _ in requests]
"""
ON_LOOP = f'parameters {{ key: "{INLINE_PARAMETER}" value {{ string_value: "5000" }} }}'


# Runs a coroutine of its own with asyncio.run() in its (sync) execute().
ASYNCIO_RUN = """
import asyncio
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


async def where():
    return threading.current_thread().name.encode()


class TritonPythonModel:
    def execute(self, requests):
        coroutine = where()
        try:
            name = np.array([[asyncio.run(coroutine)]], dtype=np.object_)
        finally:
            coroutine.close()  # never started when asyncio.run() refused
        return [pb_utils.InferenceResponse([pb_utils.Tensor("REVERSED", name)]) for _ in requests]
"""


def test_a_model_that_runs_its_own_event_loop_leaves_the_servers(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    """asyncio.run() cannot run on the server's loop: that batch fails, saying why, and the
    model's batches run on its own thread from then on."""
    write_python_model(tmp_path, "runs_a_loop", ASYNCIO_RUN, REVERSE_CONFIG + ON_LOOP)
    server = server_factory(model_repositories=(tmp_path,))
    text = {"TEXT": np.array([[b"x"]], dtype=np.object_)}
    own = infer(server, "http", "runs_a_loop", text)["REVERSED"].item()  # measured there
    message = fails(lambda: infer(server, "http", "runs_a_loop", text), "http", "internal")
    assert "running event loop" in message and "from now on" in message, message
    assert infer(server, "http", "runs_a_loop", text)["REVERSED"].item() == own


def test_short_batches_run_on_the_event_loop_only_where_the_config_asks(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    """`inferd.inline_execution_us` in a python model's config: once measured short, its
    batches run on the loop's thread (no thread hop: about 2x the throughput of a small
    model). Unless a model calls the server (it would wait for the loop it holds) or its
    batches wait (a sleep, I/O): then they stay on, or go back to, its own thread."""
    write_python_model(tmp_path, "reverse", REVERSE, REVERSE_CONFIG)
    models = {
        "plain": (WHERE.format(wait=0, call=False), REVERSE_CONFIG),
        "on_loop": (WHERE.format(wait=0, call=False), REVERSE_CONFIG + ON_LOOP),
        "calls": (WHERE.format(wait=0, call=True), REVERSE_CONFIG + ON_LOOP),
        "sleeps": (WHERE.format(wait=0.03, call=False), REVERSE_CONFIG + ON_LOOP),
    }
    for name, (source, config) in models.items():
        write_python_model(tmp_path, name, source, config)
    server = server_factory(model_repositories=(tmp_path,))
    text = np.array([[b"x"]], dtype=np.object_)

    def threads(model: str, count: int, on: RunningServer = server) -> list[str]:
        return [
            infer(on, "http", model, {"TEXT": text})["REVERSED"].item().decode()
            for _ in range(count)
        ]

    own, *rest = threads("on_loop", 8)  # the first batch is measured on its own thread
    assert set(rest) != {own} and rest[-1] != own, (own, rest)
    assert len(set(threads("plain", 8))) == 1
    assert len(set(threads("calls", 8))) == 1  # it called on its first batch: never moved
    # Three batches on the loop that took more than 4x the budget (20 ms): back for good.
    first, *later = threads("sleeps", 7)
    assert later[0] != first and later[-2:] == [first, first], (first, later)
    # A call the model makes only now, from the loop: that request fails, saying why; the
    # model's batches go back to its thread, where the call works.
    call = np.array([[b"call"]], dtype=np.object_)
    message = fails(lambda: infer(server, "http", "on_loop", {"TEXT": call}), "http", "internal")
    assert INLINE_PARAMETER in message, message  # model_calls names it without importing it
    assert infer(server, "http", "on_loop", {"TEXT": call})["REVERSED"].item().decode() == own
    # --backend-config=python,inline-execution-us=N: for every python model without its own.
    everyone = server_factory(model_repositories=(tmp_path,), python_inline_us="5000")
    own, *rest = threads("plain", 8, everyone)
    assert rest[-1] != own, (own, rest)
    client = httpclient.InferenceServerClient(everyone.http_url)
    try:
        parameters = client.get_model_config("plain")["parameters"]
    finally:
        client.close()
    assert parameters[INLINE_PARAMETER] == {"string_value": "5000"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_execute_awaits_concurrent_bls_calls(server: RunningServer, protocol: str) -> None:
    a = np.array([1, 2, 3, 4], np.float32)
    b = np.array([4, 3, 2, 1], np.float32)
    out = infer(server, protocol, "bls_async", {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)


# Scales its input by a factor that only the packed environment's package knows.
ENV_SCALED = """
import inferd_test_env_only
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(
                "OUTPUT0",
                pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
                * inferd_test_env_only.FACTOR,
            )])
            for r in requests
        ]
"""


def test_a_model_imports_its_packed_environment(
    tmp_path: Path, server_factory: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where it is unpacked
    env = tmp_path / "env" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    (env / "site-packages" / "inferd_test_env_only").mkdir(parents=True)
    (env / "site-packages" / "inferd_test_env_only" / "__init__.py").write_text("FACTOR = 3\n")
    repo = tmp_path / "repo"
    config = IDENTITY_CONFIG + (
        'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: '
        '"$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }'
    )
    model_dir = write_python_model(repo, "env_scaled", ENV_SCALED, config)
    with tarfile.open(model_dir / "env.tar.gz", "w:gz") as packed:
        packed.add(tmp_path / "env", ".")
    server = server_factory(model_repositories=(repo,))
    x = {"INPUT0": np.arange(4, dtype=np.float32)}
    assert infer(server, "http", "env_scaled", x)["OUTPUT0"].tolist() == [0, 3, 6, 9]
    assert list((tmp_path / "cache" / "inferd" / "python-envs").iterdir())
