"""The python backend with real model.py files: loading, isolation, execution semantics,
output checks, and the scheduler handing it requests one by one."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferd.backends import python_api as pb_utils
from inferd.backends.base import BackendSettings, Device, InstanceRequest, Rescheduled
from inferd.backends.gpu import GpuInfo
from inferd.backends.python import PythonBackend, PythonInstance, conform_output, to_inferd_error
from inferd.backends.python_module import PB_UTILS
from inferd.batching.policy import BatchPolicy
from inferd.batching.scheduler import DEFAULT_OPTIONS, Scheduler, SchedulerConfig
from inferd.repository.config import (
    ModelConfig,
    TensorConfig,
    normalize,
    parse_config_text,
    to_model_config,
    validate,
)
from inferd.server.errors import ErrorCode, InferdError
from inferd.server.types import DataType, InferRequest, ParamValue, RequestedOutput
from tests.python_models import (
    ADD_SUB,
    ADD_SUB_CONFIG,
    BATCHER,
    BATCHER_CONFIG,
    INFO,
    INFO_CONFIG,
    config_named,
    write_python_model,
)

SETTINGS = BackendSettings()

# Each instance counts its initialize() calls in a module global: 1 everywhere shows that no
# two instances share a module. MARK tells two models (both model.py) apart.
COUNTER = """
import numpy as np
import triton_python_backend_utils as pb_utils

MARK = "{mark}"
INITIALIZED = 0


class TritonPythonModel:
    def initialize(self, args):
        global INITIALIZED
        INITIALIZED += 1

    def execute(self, requests):
        c = np.array([INITIALIZED], dtype=np.int32)
        m = np.array([MARK.encode()], dtype=np.object_)
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("COUNT", c), pb_utils.Tensor("MARK", m)])
            for _ in requests
        ]
"""

COUNTER_CONFIG = """
backend: "python"
input [{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] }]
output [
  { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "MARK" data_type: TYPE_STRING dims: [ 1 ] }
]
"""

# Misbehaves in the way the request's "mode" parameter names.
SHAPESHIFTER = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            mode = json.loads(request.parameters()).get("mode", "ok")
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            outputs = {"OUTPUT0": x + 1, "OUTPUT1": x - 1}
            if mode == "error":
                error = pb_utils.TritonError("no such thing", pb_utils.TritonError.NOT_FOUND)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            if mode == "not a response":
                responses.append({"OUTPUT0": x})
                continue
            if mode == "missing":
                del outputs["OUTPUT0"]
            if mode == "wrong type":
                outputs["OUTPUT0"] = outputs["OUTPUT0"].astype(np.float64)
            if mode == "extra":
                outputs["EXTRA"] = x
            if mode == "only requested":
                wanted = request.requested_output_names()
                outputs = {k: v for k, v in outputs.items() if k in wanted}
            tensors = [pb_utils.Tensor(name, value) for name, value in outputs.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
"""

SHAPESHIFTER_CONFIG = """
backend: "python"
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] }]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 2 ] }
]
"""


def load_config(repo: Path, name: str, settings: BackendSettings = SETTINGS) -> ModelConfig:
    """The config as the loader completes it (config.pbtxt, backend auto-complete, defaults)."""
    model_dir = repo / name
    text = (model_dir / "config.pbtxt").read_text() if (model_dir / "config.pbtxt").exists() else ""
    proto = parse_config_text(text, name)
    PythonBackend.complete_config(proto, model_dir / "1" / "model.py", settings)
    normalize(proto, name, 0)
    validate(proto, name, name)
    return to_model_config(proto, "python")


def make_instance(
    repo: Path, name: str, source: str, config: str, device: Device | None = None
) -> PythonInstance:
    write_python_model(repo, name, source, config)
    instance = PythonBackend.create_instance(
        load_config(repo, name), repo / name / "1" / "model.py", device or Device("cpu"), SETTINGS
    )
    assert isinstance(instance, PythonInstance)
    return instance


def model_modules() -> set[str]:
    return {name for name in sys.modules if name.startswith("inferd_python_model_")}


def int_input() -> dict[str, np.ndarray]:
    return {"INPUT0": np.array([1], np.int32)}


def test_instances_and_models_never_share_module_globals(tmp_path: Path) -> None:
    before = model_modules()
    first = make_instance(tmp_path, "a", COUNTER.format(mark="a"), COUNTER_CONFIG)
    second = make_instance(tmp_path, "a", COUNTER.format(mark="a"), COUNTER_CONFIG)
    other = make_instance(tmp_path, "b", COUNTER.format(mark="b"), COUNTER_CONFIG)
    results = [i.execute(int_input()) for i in (first, second, other)]
    assert [r["COUNT"].tolist() for r in results] == [[1], [1], [1]]
    assert [r["MARK"].tolist() for r in results] == [[b"a"], [b"a"], [b"b"]]
    assert len(model_modules() - before) == 6  # a package and its model.py each, while they live
    for instance in (first, second, other):
        instance.close()
    assert model_modules() == before  # ...and gone with them
    assert sys.modules[PB_UTILS] is pb_utils


def test_importing_the_backend_registers_nothing() -> None:
    # No import-time side effects: the API is registered when a model loads (test above).
    code = (
        "import sys, inferd.backends.python, inferd.backends.registry;"
        f"assert '{PB_UTILS}' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_another_module_under_the_api_name_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, PB_UTILS, types.ModuleType(PB_UTILS))
    with pytest.raises(InferdError, match="already imported") as raised:
        make_instance(tmp_path, "add_sub", ADD_SUB, ADD_SUB_CONFIG)
    assert raised.value.code is ErrorCode.UNAVAILABLE


def test_initialize_gets_tritons_args(tmp_path: Path) -> None:
    device = Device("gpu", 1, name="info_0_3")
    instance = make_instance(tmp_path, "info", INFO, INFO_CONFIG, device)
    args = json.loads(instance.execute(int_input())["ARGS"][0])
    instance.close()
    assert all(isinstance(v, str) for v in args.values())
    config = json.loads(args.pop("model_config"))
    assert args.pop("get_model_dir()") == str(tmp_path / "info" / "1")
    assert (config["name"], config["backend"]) == ("info", "python")
    assert [o["name"] for o in config["output"]] == ["ARGS", "REQUEST"]
    assert args == {
        "model_instance_kind": "GPU",
        "model_instance_name": "info_0_3",
        "model_instance_device_id": "1",
        "model_repository": str(tmp_path / "info"),
        "model_version": "1",
        "model_name": "info",
    }


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def execute(self, requests)\n", r"model\.py: SyntaxError"),
        ("raise ImportError('no torch here')\n", "ImportError: no torch here"),
        ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
        ("class Model:\n    pass\n", "defines no class TritonPythonModel"),
        ("class TritonPythonModel:\n    pass\n", r"TritonPythonModel has no execute\(\) method"),
        (
            "class TritonPythonModel:\n"
            "    def __init__(self, weights):\n"
            "        pass\n"
            "    def execute(self, requests):\n"
            "        return []\n",
            r"TritonPythonModel\(\) failed: TypeError",
        ),
        (
            "class TritonPythonModel:\n"
            "    def initialize(self, args):\n"
            "        raise RuntimeError('weights missing')\n"
            "    def execute(self, requests):\n"
            "        return []\n",
            r"initialize\(\) failed: RuntimeError: weights missing",
        ),
    ],
)
def test_load_failures_name_the_file_and_the_error(
    tmp_path: Path, source: str, message: str
) -> None:
    before = model_modules()
    with pytest.raises(InferdError, match=message) as raised:
        make_instance(tmp_path, "add_sub", source, ADD_SUB_CONFIG)
    assert str(tmp_path / "add_sub" / "1" / "model.py") in raised.value.message
    assert model_modules() == before


def test_add_sub_executes_each_request_with_its_own_tensors(tmp_path: Path) -> None:
    instance = make_instance(tmp_path, "add_sub", ADD_SUB, ADD_SUB_CONFIG)
    a, b = np.arange(4, dtype=np.float32), np.full(4, 10, np.float32)
    results = instance.execute_requests(
        [InstanceRequest({"INPUT0": a, "INPUT1": b}), InstanceRequest({"INPUT0": b, "INPUT1": a})]
    )
    instance.close()
    assert isinstance(results[0], dict) and isinstance(results[1], dict)
    assert results[0]["OUTPUT0"].tolist() == [10, 11, 12, 13]
    assert results[1]["OUTPUT1"].tolist() == [10, 9, 8, 7]


def test_each_request_succeeds_or_fails_on_its_own(tmp_path: Path) -> None:
    instance = make_instance(tmp_path, "shift", SHAPESHIFTER, SHAPESHIFTER_CONFIG)
    x = {"INPUT0": np.array([1, 2], np.float32)}
    modes = ["ok", "error", "missing", "wrong type", "not a response", "extra"]
    results = instance.execute_requests([InstanceRequest(x, parameters={"mode": m}) for m in modes])
    instance.close()
    ok, error, missing, wrong_type, not_response, extra = results
    assert isinstance(ok, dict) and ok["OUTPUT0"].tolist() == [2, 3]
    assert isinstance(error, InferdError)
    assert (error.code, error.message) == (ErrorCode.NOT_FOUND, "no such thing")
    # As Triton's python backend: what the model left out is left out of the answer, and an
    # output keeps the type the model returned it as.
    assert isinstance(missing, dict) and list(missing) == ["OUTPUT1"]
    assert isinstance(wrong_type, dict) and wrong_type["OUTPUT0"].dtype == np.float64
    assert isinstance(not_response, InferdError) and "returned a dict" in str(not_response)
    assert isinstance(extra, dict) and sorted(extra) == ["OUTPUT0", "OUTPUT1"]  # EXTRA dropped


def test_requested_outputs_reach_the_model_and_limit_the_answer(tmp_path: Path) -> None:
    instance = make_instance(tmp_path, "shift", SHAPESHIFTER, SHAPESHIFTER_CONFIG)
    x = {"INPUT0": np.array([1, 2], np.float32)}
    request = InstanceRequest(x, parameters={"mode": "only requested"}, outputs=("OUTPUT1",))
    (result,) = instance.execute_requests([request])
    instance.close()
    assert isinstance(result, dict) and list(result) == ["OUTPUT1"]


def test_an_exception_in_execute_fails_the_whole_batch_with_its_message(tmp_path: Path) -> None:
    source = "class TritonPythonModel:\n    def execute(self, requests):\n        return 1 / 0\n"
    instance = make_instance(tmp_path, "add_sub", source, ADD_SUB_CONFIG)
    with pytest.raises(InferdError) as raised:
        instance.execute_requests([InstanceRequest({})])
    instance.close()
    assert raised.value.code is ErrorCode.INTERNAL
    assert raised.value.message == (
        "Failed to process the request(s) for model 'add_sub_0', message: ZeroDivisionError: "
        "division by zero"
    )


def test_execute_must_answer_every_request(tmp_path: Path) -> None:
    source = "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n"
    instance = make_instance(tmp_path, "add_sub", source, ADD_SUB_CONFIG)
    with pytest.raises(InferdError, match=r"one InferenceResponse per request \(2\), got 0"):
        instance.execute_requests([InstanceRequest({}), InstanceRequest({})])
    instance.close()


def test_close_runs_finalize_once(tmp_path: Path) -> None:
    source = ADD_SUB.replace(
        'pb_utils.Logger.log_info("add_sub: finalize")',
        'with open(__file__ + ".finalized", "a") as marker:\n            marker.write("x")',
    )
    instance = make_instance(tmp_path, "add_sub", source, ADD_SUB_CONFIG)
    instance.close()
    instance.close()  # a second close is harmless
    assert (tmp_path / "add_sub" / "1" / "model.py.finalized").read_text() == "x"


def test_finalize_failure_is_reported(tmp_path: Path) -> None:
    source = ADD_SUB.replace('pb_utils.Logger.log_info("add_sub: finalize")', "raise OSError(5)")
    instance = make_instance(tmp_path, "add_sub", source, ADD_SUB_CONFIG)
    with pytest.raises(InferdError, match=r"finalize\(\) failed: OSError: 5"):
        instance.close()


def test_bytes_outputs_are_normalised_and_other_arrays_kept_unless_untyped() -> None:
    spec = TensorConfig("T", DataType.BYTES, (1,))
    fixed = conform_output(np.array([b"ab", b"c"], dtype=np.bytes_), spec)
    assert fixed.dtype == np.object_ and fixed.tolist() == [b"ab", b"c"]
    text = conform_output(np.array(["ab", "c"]), spec)
    assert text.dtype == np.object_ and text.tolist() == ["ab", "c"]
    mixed = conform_output(np.array([b"x", "y", 3], dtype=np.object_), spec)
    assert mixed.tolist() == [b"x", "y", "3"]  # str is encoded by the front doors
    numbers = np.zeros(2, np.float32)
    assert conform_output(numbers, spec) is numbers
    with pytest.raises(InferdError, match="holds numpy complex128, which no Triton data type"):
        conform_output(np.zeros(2, np.complex128), spec)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (pb_utils.TritonError.INVALID_ARG, ErrorCode.INVALID_ARG),
        (pb_utils.TritonError.NOT_FOUND, ErrorCode.NOT_FOUND),
        (pb_utils.TritonError.UNAVAILABLE, ErrorCode.UNAVAILABLE),
        (pb_utils.TritonError.UNSUPPORTED, ErrorCode.UNSUPPORTED),
        (pb_utils.TritonError.ALREADY_EXISTS, ErrorCode.ALREADY_EXISTS),
        (pb_utils.TritonError.CANCELLED, ErrorCode.CANCELLED),
        (pb_utils.TritonError.INTERNAL, ErrorCode.INTERNAL),
        (pb_utils.TritonError.UNKNOWN, ErrorCode.INTERNAL),
        (42, ErrorCode.INTERNAL),
    ],
)
def test_triton_error_codes_map_to_inferd_codes(code: int, expected: ErrorCode) -> None:
    error = to_inferd_error(pb_utils.TritonError("why", code))
    assert (error.code, error.message) == (expected, "why")


def test_complete_config(tmp_path: Path) -> None:
    plain = config_named(ADD_SUB_CONFIG, "plain").replace('backend: "python"', "")
    write_python_model(tmp_path, "plain", ADD_SUB, plain)
    assert load_config(tmp_path, "plain").proto.backend == "python"
    env = (
        config_named(ADD_SUB_CONFIG, "env")
        + 'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "x" } }'
    )
    write_python_model(tmp_path, "env", ADD_SUB, env)
    with pytest.raises(InferdError, match=r"EXECUTION_ENV_PATH '.*x' is neither") as raised:
        load_config(tmp_path, "env")
    assert raised.value.code is ErrorCode.INVALID_ARG


def test_auto_complete_runs_only_when_enabled(tmp_path: Path) -> None:
    source = ADD_SUB + (
        "\n    @staticmethod\n"
        "    def auto_complete_config(config):\n"
        "        config.set_max_batch_size(8)\n"
        "        return config\n"
    )
    write_python_model(tmp_path, "add_sub", source, ADD_SUB_CONFIG)
    assert load_config(tmp_path, "add_sub").max_batch_size == 8
    disabled = BackendSettings(auto_complete=False)
    assert load_config(tmp_path, "add_sub", disabled).max_batch_size == 0


def test_decoupled_python_models_load_as_decoupled(tmp_path: Path) -> None:
    config = ADD_SUB_CONFIG + "model_transaction_policy { decoupled: true }"
    write_python_model(tmp_path, "add_sub", ADD_SUB, config)
    assert load_config(tmp_path, "add_sub").decoupled


def test_python_models_run_wherever_gpus_are() -> None:
    assert PythonBackend.gpu_unavailable_reason(GpuInfo()) == ""


def test_warmup_path_raises_a_request_error(tmp_path: Path) -> None:
    instance = make_instance(tmp_path, "batcher", BATCHER, BATCHER_CONFIG)
    assert instance.execute({"INPUT0": np.ones((2, 1), np.float32)})["Y"].tolist() == [[2], [2]]
    with pytest.raises(InferdError, match="negative input"):
        instance.execute({"INPUT0": -np.ones((1, 1), np.float32)})
    instance.close()


# ---- through the scheduler ----------------------------------------------------------------


async def test_the_scheduler_hands_over_requests_with_their_metadata(tmp_path: Path) -> None:
    instance = make_instance(tmp_path, "info", INFO, INFO_CONFIG)
    scheduler = Scheduler(
        "info", SchedulerConfig(BatchPolicy(0)), [instance], asyncio.get_running_loop()
    )
    request = InferRequest(
        "info",
        "",
        int_input(),
        id="req-1",
        parameters={"mode": "x", "priority": 1, "sequence_id": 9, "sequence_end": True},
        outputs=[RequestedOutput("REQUEST")],
    )
    future = scheduler.submit(
        request.inputs, 1, None, time.monotonic_ns(), DEFAULT_OPTIONS, request=request
    )
    outputs = await future
    await scheduler.close()
    assert list(outputs) == ["REQUEST"]
    assert json.loads(outputs["REQUEST"][0]) == {
        "request_id": "req-1",
        "parameters": {"mode": "x"},  # Triton's reserved parameters are not the model's
        "correlation_id": 9,
        "flags": pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END,
        "requested": ["REQUEST"],
    }


async def test_a_batch_with_failed_requests_answers_each_and_counts_them(tmp_path: Path) -> None:
    instance = make_instance(tmp_path, "batcher", BATCHER, BATCHER_CONFIG)
    scheduler = Scheduler(
        "batcher", SchedulerConfig(BatchPolicy(8)), [instance], asyncio.get_running_loop()
    )
    values = [1.0, -1.0, 3.0]
    futures = [
        scheduler.submit({"INPUT0": np.array([[v]], np.float32)}, 1, None, time.monotonic_ns())
        for v in values
    ]
    results: list[Any] = await asyncio.gather(*futures, return_exceptions=True)
    await scheduler.close()
    assert results[0]["Y"].tolist() == [[2.0]] and results[2]["Y"].tolist() == [[6.0]]
    assert results[0]["COUNT"].tolist() == [[3]]  # one execute() call got all three
    assert isinstance(results[1], InferdError)
    assert (results[1].code, results[1].message) == (ErrorCode.INVALID_ARG, "negative input")
    stats = scheduler.stats
    assert (stats.success.count, stats.fail.count, stats.execution_count) == (2, 1, 1)


# Reschedules the requests whose parameter "again" is set; answers the others. A rescheduled
# request's place holds whatever "place" asks for (Triton's python backend ignores it).
RESCHEDULER = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            parameters = json.loads(request.parameters())
            one = pb_utils.Tensor("OUTPUT0", np.array([1], np.int32))
            answer = pb_utils.InferenceResponse([one])
            if parameters.get("again"):
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                responses.append(answer if parameters.get("place") == "answer" else None)
            else:
                responses.append(answer)
        return responses
"""
RESCHEDULER_CONFIG = """
backend: "python"
input [{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 1 ] }]
"""


def test_a_rescheduled_request_comes_back_as_rescheduled_whatever_its_place_holds(
    tmp_path: Path,
) -> None:
    instance = make_instance(tmp_path, "again", RESCHEDULER, RESCHEDULER_CONFIG)
    asks: list[dict[str, ParamValue]] = [{"again": True}, {"again": True, "place": "answer"}, {}]
    results = instance.execute_requests([InstanceRequest(int_input(), parameters=a) for a in asks])
    instance.close()
    assert [type(r) for r in results] == [Rescheduled, Rescheduled, dict]


def test_release_flags_must_be_tritons() -> None:
    request = pb_utils.InferenceRequest()
    request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_ALL)
    with pytest.raises(pb_utils.TritonModelException, match="unknown release flags 4"):
        request.set_release_flags(4)
