"""inferd's `triton_python_backend_utils` API, as model.py files call it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as pb

from inferd.backends import python_api as pb_utils
from inferd.backends.python_autocomplete import AutoCompleteConfig, run_auto_complete
from inferd.repository.config import parse_config_text
from inferd.server.errors import InferdError


def test_tensor_wraps_the_array_without_a_copy() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = pb_utils.Tensor("x", array)
    assert tensor.name() == "x"
    assert tensor.as_numpy() is array
    assert tensor.is_cpu()
    assert tensor.shape() == [2, 3]
    assert tensor.triton_dtype() == 11  # TRITONSERVER_TYPE_FP32
    assert pb_utils.Tensor("s", np.array([b"a"], dtype=np.object_)).triton_dtype() == 13
    # Lists become arrays, as Triton's binding converts them.
    assert pb_utils.Tensor("l", [1, 2]).as_numpy().tolist() == [1, 2]


def test_tensor_refuses_unicode_arrays_and_says_what_to_use() -> None:
    with pytest.raises(pb_utils.TritonModelException, match=r"np\.object_"):
        pb_utils.Tensor("s", np.array(["text"]))


def _exec(request: pb_utils.InferenceRequest) -> None:
    asyncio.run(request.async_exec())


def test_response_parameters_read_back_as_json() -> None:
    params: dict[str, bool | int | str] = {"bool": True, "str": "Hello World!", "int": 1024}
    assert json.loads(pb_utils.InferenceResponse([], parameters=params).parameters()) == params
    assert pb_utils.InferenceResponse([]).parameters() == "{}"


BAD_PARAMETERS: dict[str, tuple[Any, str]] = {
    "a list": ([], "Expect parameters to have type dict, got <class 'list'>"),
    "an int key": ({1: "x"}, "Expect parameters keys to have type str, found type <class 'int'>"),
    "a float": (
        {"int": 2, "float": 0.5},
        "Expect parameters values to have type bool/int/str, found type <class 'float'>",
    ),
    "None": (
        {"null": None},
        "Expect parameters values to have type bool/int/str, found type <class 'NoneType'>",
    ),
    "a nested list": (
        {"list": ["variable"]},
        "Expect parameters values to have type bool/int/str, found type <class 'list'>",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PARAMETERS))
def test_response_parameters_are_checked_with_tritons_messages(case: str) -> None:
    parameters, message = BAD_PARAMETERS[case]
    with pytest.raises(pb_utils.TritonModelException) as raised:
        pb_utils.InferenceResponse([], parameters=parameters)
    assert raised.value.message() == message


@pytest.mark.parametrize(
    "call",
    [
        lambda: pb_utils.InferenceRequest(model_name="other").exec(),
        lambda: _exec(pb_utils.InferenceRequest(model_name="other")),
    ],
    ids=["exec", "async_exec"],
)
def test_bls_calls_work_only_inside_execute(call: Callable[[], Any]) -> None:
    with pytest.raises(pb_utils.TritonModelException, match="only supported during the 'execute'"):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: pb_utils.load_model("other"),
        lambda: pb_utils.unload_model("other"),
        lambda: pb_utils.is_model_ready("other"),
    ],
    ids=["load", "unload", "ready"],
)
def test_model_control_works_only_inside_the_models_methods(call: Callable[[], Any]) -> None:
    with pytest.raises(pb_utils.TritonModelException, match="during initialize"):
        call()


def test_model_control_checks_its_arguments_first() -> None:
    with pytest.raises(TypeError, match="model_name must be a str, not int"):
        pb_utils.load_model(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Object of type 'str' is not an instance of 'bytes'"):
        pb_utils.load_model("m", "{}", {"file:1/model.py": "text"})  # type: ignore[dict-item]


def test_bls_hints_and_request_flags_as_triton_has_them() -> None:
    assert (int(pb_utils.TRITONSERVER_MEMORY_GPU), int(pb_utils.TRITONSERVER_MEMORY_CPU)) == (0, 1)
    hint = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, 0)
    assert hint.preferred_memory_type is pb_utils.TRITONSERVER_MEMORY_GPU
    request = pb_utils.InferenceRequest(
        model_name="m", inputs=[], requested_output_names=[], preferred_memory=hint
    )
    request.set_flags(pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END)
    assert request.flags() == 2
    with pytest.raises(TypeError, match="flags must be an int"):
        request.set_flags("2")  # type: ignore[arg-type]
    assert request.trace().get_context() is None  # passed on as trace=..., as in Triton
    assert (pb_utils.Logger.INFO, pb_utils.Logger.ERROR) == (0, 2)
    assert int(pb_utils.Logger.LogLevel.VERBOSE) == 3


def test_bls_names_may_be_bytes() -> None:
    # As Triton's std::string arguments take them: its BLS example (examples/bls) names the
    # called model with `as_numpy()[0]` of a BYTES input.
    request = pb_utils.InferenceRequest(
        model_name=b"add_sub",  # type: ignore[arg-type]
        inputs=[],
        requested_output_names=[b"OUTPUT0"],  # type: ignore[list-item]
        request_id=b"r1",  # type: ignore[arg-type]
    )
    assert request.model_name() == "add_sub"
    assert request.requested_output_names() == {"OUTPUT0"}
    assert request.request_id() == "r1"


def test_get_model_dir_needs_a_model_method() -> None:
    with pytest.raises(pb_utils.TritonModelException, match="model's own methods"):
        pb_utils.get_model_dir()


def test_triton_error_codes_and_message() -> None:
    codes = [
        pb_utils.TritonError.UNKNOWN,
        pb_utils.TritonError.INTERNAL,
        pb_utils.TritonError.NOT_FOUND,
        pb_utils.TritonError.INVALID_ARG,
        pb_utils.TritonError.UNAVAILABLE,
        pb_utils.TritonError.UNSUPPORTED,
        pb_utils.TritonError.ALREADY_EXISTS,
        pb_utils.TritonError.CANCELLED,
    ]
    assert codes == list(range(8))  # Triton's numbering
    error = pb_utils.TritonError("bad input")
    assert (error.message(), error.code()) == ("bad input", pb_utils.TritonError.INTERNAL)
    assert pb_utils.TritonError("gone", pb_utils.TritonError.NOT_FOUND).code() == 2
    assert pb_utils.TritonModelException("broken").message() == "broken"


def test_inference_response_holds_outputs_or_an_error() -> None:
    out = pb_utils.Tensor("OUT", np.zeros(2))
    response = pb_utils.InferenceResponse(output_tensors=[out])
    assert response.output_tensors() == [out] and not response.has_error()
    assert response.error() is None
    assert pb_utils.get_output_tensor_by_name(response, "OUT") is out
    assert pb_utils.get_output_tensor_by_name(response, "NOPE") is None
    failed = pb_utils.InferenceResponse(error=pb_utils.TritonError("no"))
    assert failed.has_error() and failed.error() is not None and failed.output_tensors() == []
    with pytest.raises(pb_utils.TritonModelException, match="must be a list"):
        pb_utils.InferenceResponse(out)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"takes a pb_utils\.TritonError, got str"):
        pb_utils.InferenceResponse(error="no")  # type: ignore[arg-type]


def test_inference_request_accessors() -> None:
    x = pb_utils.Tensor("x", np.zeros(1))
    request = pb_utils.InferenceRequest(
        model_name="m",
        inputs=[x],
        requested_output_names=["y"],
        correlation_id=7,
        request_id="r1",
        flags=pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START,
        parameters={"k": "v", "n": 2},
    )
    assert request.inputs() == [x] and request.model_name() == "m"
    assert (request.request_id(), request.correlation_id(), request.flags()) == ("r1", 7, 1)
    assert json.loads(request.parameters()) == {"k": "v", "n": 2}  # a JSON string, as Triton
    assert request.requested_output_names() == {"y"}  # a set, as Triton's
    assert not request.is_cancelled()
    assert pb_utils.get_input_tensor_by_name(request, "x") is x
    assert pb_utils.get_input_tensor_by_name(request, "missing") is None


def test_model_config_helpers() -> None:
    config: dict[str, Any] = {
        "input": [{"name": "a", "data_type": "TYPE_FP32"}],
        "output": [{"name": "b", "data_type": "TYPE_STRING"}],
        "model_transaction_policy": {"decoupled": False},
    }
    assert pb_utils.get_input_config_by_name(config, "a") == config["input"][0]
    assert pb_utils.get_output_config_by_name(config, "b") == config["output"][0]
    assert pb_utils.get_input_config_by_name(config, "b") is None
    assert pb_utils.get_output_config_by_name({}, "b") is None
    assert not pb_utils.using_decoupled_model_transaction_policy(config)


def test_type_conversions() -> None:
    assert pb_utils.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.triton_string_to_numpy("TYPE_BF16") is ml_dtypes.bfloat16
    assert np.dtype(pb_utils.triton_string_to_numpy("TYPE_BOOL")) == np.bool_
    assert pb_utils.numpy_to_triton_type(np.float32) == 11
    assert pb_utils.numpy_to_triton_type(np.dtype(np.int64)) == 9
    assert pb_utils.numpy_to_triton_type(np.object_) == pb_utils.numpy_to_triton_type(np.bytes_)
    assert pb_utils.numpy_to_triton_type(np.complex64) is None
    assert pb_utils.triton_to_numpy_type(1) is np.bool_
    assert pb_utils.triton_to_numpy_type(13) is np.object_
    assert pb_utils.triton_to_numpy_type(99) is None


def test_bytes_tensor_serialization_round_trips() -> None:
    data = np.array([b"ab", "c\u00e9", b""], dtype=np.object_)
    encoded = pb_utils.serialize_byte_tensor(data)
    assert encoded[:6] == b"\x02\x00\x00\x00ab"
    assert pb_utils.deserialize_bytes_tensor(encoded).tolist() == [b"ab", "cé".encode(), b""]


def test_logger_writes_to_python_logging(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="inferd.backends.python_api"):
        pb_utils.Logger.log_info("info line")
        pb_utils.Logger.log_warn("warn line")
        pb_utils.Logger.log_error("error line")
        pb_utils.Logger.log_verbose("verbose line")
        pb_utils.Logger.log("leveled line", pb_utils.LogLevel.ERROR)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "info line"),
        (logging.WARNING, "warn line"),
        (logging.ERROR, "error line"),
        (logging.DEBUG, "verbose line"),
        (logging.ERROR, "leveled line"),
    ]


# ---- auto-complete ----------------------------------------------------------------------------


def editable(**config: Any) -> AutoCompleteConfig:
    return AutoCompleteConfig({"name": "m", "max_batch_size": 0, "input": [], **config})


def test_add_input_fills_a_named_tensor_and_adds_new_ones() -> None:
    config = editable(input=[{"name": "a", "data_type": "TYPE_INVALID", "dims": []}])
    config.add_input({"name": "a", "data_type": "TYPE_FP32", "dims": [3]})
    config.add_input({"name": "b", "data_type": "TYPE_INT32", "dims": [1], "optional": True})
    config.add_output({"name": "y", "data_type": "TYPE_FP32", "dims": [3]})
    assert config.as_dict()["input"] == [
        {"name": "a", "data_type": "TYPE_FP32", "dims": [3]},
        {"name": "b", "data_type": "TYPE_INT32", "dims": [1], "optional": True},
    ]
    assert config.as_dict()["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.add_input({"name": "a", "data_type": "TYPE_INT8", "dims": [3]}), "TYPE_FP32"),
        (lambda c: c.add_input({"name": "a", "data_type": "TYPE_FP32", "dims": [4]}), "dims"),
        (lambda c: c.add_input({"name": "z", "data_type": "TYPE_FP32"}), "'dims'"),
        (lambda c: c.add_output({"name": "z", "data_type": "T", "dims": [1], "x": 1}), "x"),
        (lambda c: c.set_max_batch_size(2), "max_batch_size 8"),
        (lambda c: c.set_dynamic_batching(), "sequence_batching"),
        (lambda c: c.set_model_transaction_policy({"decoupled": False}), "decoupled True"),
        (lambda c: c.set_model_transaction_policy({"other": 1}), "other"),
    ],
)
def test_auto_complete_refuses_contradicting_the_config(
    call: Callable[[AutoCompleteConfig], None], message: str
) -> None:
    config = editable(
        max_batch_size=8,
        input=[{"name": "a", "data_type": "TYPE_FP32", "dims": [3]}],
        sequence_batching={},
        model_transaction_policy={"decoupled": True},
    )
    with pytest.raises(ValueError, match=message):
        call(config)


def test_auto_complete_setters() -> None:
    config = editable()
    config.set_max_batch_size(16)
    config.set_dynamic_batching()
    config.set_model_transaction_policy({"decoupled": False})
    data = config.as_dict()
    assert data["max_batch_size"] == 16
    assert data["dynamic_batching"] == {}
    assert data["model_transaction_policy"] == {"decoupled": False}


class _Completes:
    @staticmethod
    def auto_complete_config(config: AutoCompleteConfig) -> AutoCompleteConfig:
        config.set_max_batch_size(2)
        config.add_input({"name": "x", "data_type": "TYPE_FP32", "dims": [-1]})
        return config


class _Misspells:
    @staticmethod
    def auto_complete_config(config: AutoCompleteConfig) -> AutoCompleteConfig:
        config.as_dict()["max_batch_sise"] = 2
        return config


class _Fails:
    @staticmethod
    def auto_complete_config(config: AutoCompleteConfig) -> AutoCompleteConfig:
        raise RuntimeError("cannot read the weights")


class _ReturnsNothing:
    @staticmethod
    def auto_complete_config(config: AutoCompleteConfig) -> None:
        config.set_max_batch_size(2)


def test_run_auto_complete_replaces_the_config_with_what_the_model_returns() -> None:
    config = parse_config_text('backend: "python"', "test")
    run_auto_complete(config, _Completes, "m", Path("m/1/model.py"))
    assert config.max_batch_size == 2
    assert config.name == "m"
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("x", pb.TYPE_FP32, [-1])
    ]
    assert config.backend == "python"  # what the model did not touch stays


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_Misspells, "left an invalid config: .*max_batch_sise"),
        (_Fails, r"auto_complete_config\(\) failed: RuntimeError: cannot read the weights"),
        (  # as Triton: the config must be returned
            _ReturnsNothing,
            "auto_complete_config function in model 'm' must return a valid pb.ModelConfig",
        ),
    ],
)
def test_run_auto_complete_failures_name_the_file(model: type, message: str) -> None:
    config = parse_config_text("", "test")
    with pytest.raises(InferdError, match=message) as raised:
        run_auto_complete(config, model, "m", Path("repo/m/1/model.py"))
    assert raised.value.message.startswith("repo/m/1/model.py: ")
