"""gRPC codec: round trips against what the real tritonclient.grpc builds and reads, and every
rejection path."""

from __future__ import annotations

import struct
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from tritonclient.grpc import InferInput, InferRequestedOutput, InferResult
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc._utils import _get_inference_request

from inferd.server.errors import ErrorCode, InferdError
from inferd.server.grpc_codec import (
    decode_infer_request,
    encode_infer_response,
    encode_stream_error,
    encode_stream_response,
)
from inferd.server.types import DataType, InferRequest, InferResponse, Params, RequestedOutput


def sample(datatype: DataType, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic data of the datatype, with negatives, fractions and an empty string."""
    count = int(np.prod(shape))
    if datatype is DataType.BYTES:
        array = np.empty(count, dtype=np.object_)
        array[:] = [b""] + [f"s{i}-é".encode() for i in range(1, count)]
        return array.reshape(shape)
    if datatype is DataType.BOOL:
        return np.asarray(np.arange(count) % 3 == 0).reshape(shape)
    values = np.arange(count) - (count // 2 if datatype.numpy.kind in "if" else 0)
    if datatype.numpy.kind == "f" or datatype is DataType.BF16:
        return (values * 0.5).astype(datatype.numpy).reshape(shape)
    return values.astype(datatype.numpy).reshape(shape)


def client_request(
    inputs: list[InferInput],
    outputs: list[InferRequestedOutput] | None = None,
    request_id: str = "",
    parameters: dict[str, Any] | None = None,
    **reserved: Any,
) -> Any:
    """The ModelInferRequest tritonclient.grpc sends (parsed back from its wire bytes)."""
    options: dict[str, Any] = {
        "sequence_id": 0,
        "sequence_start": False,
        "sequence_end": False,
        "priority": 0,
        "timeout": None,
    }
    options.update(reserved)
    message = _get_inference_request(
        model_name="m",
        inputs=inputs,
        model_version="1",
        request_id=request_id,
        outputs=outputs,
        parameters=parameters,
        **options,
    )
    return pb.ModelInferRequest.FromString(message.SerializeToString())


def client_input(name: str, array: np.ndarray, datatype: DataType) -> InferInput:
    tensor = InferInput(name, list(array.shape), datatype.value)
    tensor.set_data_from_numpy(array)
    return tensor


def typed_request(datatype: str, shape: list[int], **contents: Any) -> Any:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(
        name="x", datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
    )
    return message


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    assert actual.tolist() == expected.tolist()


def invalid(message: Any, *fragments: str) -> None:
    with pytest.raises(InferdError) as error:
        decode_infer_request(message)
    assert error.value.code is ErrorCode.INVALID_ARG
    for fragment in fragments:
        assert fragment in error.value.message


# ---- requests built by tritonclient --------------------------------------------------------


@pytest.mark.parametrize("datatype", list(DataType), ids=lambda d: d.value)
def test_decode_client_request_every_datatype(datatype: DataType) -> None:
    expected = sample(datatype, (2, 3))
    # A second input checks that raw_input_contents are matched to inputs in order.
    after = np.arange(4, dtype=np.int32).reshape(1, 4)
    message = client_request(
        [client_input("x", expected, datatype), client_input("y", after, DataType.INT32)],
        request_id="req-7",
    )
    request = decode_infer_request(message)
    assert (request.model_name, request.model_version, request.id) == ("m", "1", "req-7")
    assert list(request.inputs) == ["x", "y"]
    assert_same(request.inputs["x"], expected)
    assert_same(request.inputs["y"], after)
    assert request.outputs is None
    assert request.parameters == {}


def test_raw_input_views_the_field_bytes() -> None:
    message = client_request([client_input("x", np.arange(1000, dtype=np.float32), DataType.FP32)])
    array = decode_infer_request(message).inputs["x"]
    owner: object = array
    while isinstance(owner, np.ndarray):
        owner = owner.base
    assert isinstance(owner, bytes)  # np.frombuffer over the field: no copy of our own


def test_empty_tensor() -> None:
    request = decode_infer_request(
        client_request([client_input("x", np.zeros((0, 3), np.float32), DataType.FP32)])
    )
    assert request.inputs["x"].shape == (0, 3)


def test_decode_outputs_and_parameters() -> None:
    message = client_request(
        [client_input("x", sample(DataType.FP32, (1, 4)), DataType.FP32)],
        outputs=[InferRequestedOutput("probs", class_count=3), InferRequestedOutput("raw")],
        parameters={"temperature": 0.5, "mode": "fast", "top_k": 4, "greedy": True},
        priority=2**63 + 5,  # sent as uint64_param
        sequence_id=42,
        sequence_start=True,
        timeout=100,
    )
    request = decode_infer_request(message)
    assert request.outputs == [RequestedOutput("probs", 3), RequestedOutput("raw", 0)]
    assert request.parameters == {
        "temperature": 0.5,
        "mode": "fast",
        "top_k": 4,
        "greedy": True,
        "priority": 2**63 + 5,
        "sequence_id": 42,
        "sequence_start": True,
        "sequence_end": False,
        "timeout": 100,
    }


def test_empty_final_response_flag_is_accepted_and_dropped() -> None:
    # perf_analyzer sends it on every request; it is the one 'triton_' key Triton accepts.
    message = client_request([client_input("x", sample(DataType.FP32, (2,)), DataType.FP32)])
    message.parameters["triton_enable_empty_final_response"].bool_param = False
    assert decode_infer_request(message).parameters == {}
    message.parameters["triton_enable_empty_final_response"].string_param = "yes"
    invalid(
        message,
        "invalid value type for 'triton_enable_empty_final_response' parameter, expected "
        "bool_param.",
    )


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("sequence_id", pb.InferParameter(uint64_param=1), "int64_param or string_param."),
        ("sequence_id", pb.InferParameter(bool_param=True), "int64_param or string_param."),
        ("sequence_start", pb.InferParameter(int64_param=1), "bool_param."),
        ("sequence_end", pb.InferParameter(string_param="true"), "bool_param."),
        ("priority", pb.InferParameter(double_param=1.0), "int64_param or uint64_param."),
        ("timeout", pb.InferParameter(uint64_param=1), "int64_param."),
        ("other", pb.InferParameter(uint64_param=1), "int64_param, bool_param, or string_param."),
        ("other", pb.InferParameter(), "int64_param, bool_param, or string_param."),
    ],
)
def test_parameter_kinds_are_triton_grpcs(key: str, value: Any, expected: str) -> None:
    message = client_request([client_input("x", sample(DataType.FP32, (2,)), DataType.FP32)])
    message.parameters[key].CopyFrom(value)
    invalid(message, f"invalid value type for '{key}' parameter, expected {expected}")


def test_reserved_parameters() -> None:
    message = client_request([client_input("x", sample(DataType.FP32, (2,)), DataType.FP32)])
    message.parameters["triton_custom"].bool_param = True
    invalid(
        message,
        "parameter keys starting with 'triton_' are reserved for Triton usage. Only the "
        "following keys starting with 'triton_' are allowed: triton_enable_empty_final_response",
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (pb.InferParameter(int64_param=-1), "invalid value for 'classification' parameter"),
        (pb.InferParameter(string_param="3"), "invalid value type for 'classification'"),
        (pb.InferParameter(uint64_param=2), "invalid value type for 'classification'"),
        (pb.InferParameter(), "invalid value type for 'classification' parameter"),
    ],
    ids=["negative", "string", "uint64", "empty"],
)
def test_bad_classification(value: Any, message: str) -> None:
    request = client_request([client_input("x", sample(DataType.FP32, (2,)), DataType.FP32)])
    output = request.outputs.add(name="probs")
    output.parameters["classification"].CopyFrom(value)
    invalid(request, message)  # Triton 2.51's words: tritonclient sends an int64_param


# ---- typed contents ------------------------------------------------------------------------

TYPED_CASES = [
    (DataType.BOOL, "bool_contents", [True, False, True]),
    (DataType.INT8, "int_contents", [-128, 0, 127]),
    (DataType.INT16, "int_contents", [-300, 0, 300]),
    (DataType.INT32, "int_contents", [-(2**31), 0, 2**31 - 1]),
    (DataType.INT64, "int64_contents", [-(2**63), 0, 2**63 - 1]),
    (DataType.UINT8, "uint_contents", [0, 1, 255]),
    (DataType.UINT16, "uint_contents", [0, 1, 65535]),
    (DataType.UINT32, "uint_contents", [0, 1, 2**32 - 1]),
    (DataType.UINT64, "uint64_contents", [0, 1, 2**64 - 1]),
    (DataType.FP32, "fp32_contents", [-1.5, 0.0, 2.25]),
    (DataType.FP64, "fp64_contents", [-1.5, 0.0, 1e300]),
    (DataType.BYTES, "bytes_contents", [b"", b"a", "é".encode()]),
]


@pytest.mark.parametrize(
    ("datatype", "field", "values"), TYPED_CASES, ids=[c[0].value for c in TYPED_CASES]
)
def test_typed_contents(datatype: DataType, field: str, values: list[Any]) -> None:
    request = decode_infer_request(typed_request(datatype.value, [1, 3], **{field: values}))
    expected = np.empty(3, dtype=datatype.numpy)
    expected[:] = values
    assert_same(request.inputs["x"], expected.reshape(1, 3))


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_typed_contents_have_no_half_floats(datatype: str) -> None:
    invalid(
        typed_request(datatype, [1], fp32_contents=[1.0]),
        "unexpected explicit tensor data for input tensor 'x' for model 'm' of type 'FP32', "
        f"expected datatype '{datatype}'",
    )
    invalid(
        typed_request(datatype, [1]),
        f"input 'x': {datatype} has no typed contents field; send it in raw_input_contents",
    )


def test_typed_contents_count_and_range() -> None:
    invalid(
        typed_request("INT32", [2, 2], int_contents=[1, 2, 3]),
        "input 'x': expected 4 values in contents.int_contents for shape [2, 2], got 3",
    )
    # Data in another field than the datatype's: Triton 2.51's words.
    invalid(
        typed_request("INT32", [1], int_contents=[1], fp32_contents=[1.0]),
        "unexpected explicit tensor data for input tensor 'x' for model 'm' of type 'FP32', "
        "expected datatype 'INT32'",
    )
    invalid(typed_request("INT8", [1], int_contents=[300]), "input 'x': a value is out of range")


# ---- rejections ----------------------------------------------------------------------------


def two_inputs() -> Any:
    array = sample(DataType.INT32, (1, 4))
    return client_request(
        [client_input("a", array, DataType.INT32), client_input("b", array, DataType.INT32)]
    )


def test_wrong_raw_count() -> None:
    message = two_inputs()
    del message.raw_input_contents[1]
    invalid(message, "unable to find data for input tensor 'b' for model 'm'", "2 inputs but 1")
    message = two_inputs()
    message.raw_input_contents.append(b"")
    invalid(message, "3 raw_input_contents entries but only 2 inputs")


def test_raw_size_mismatch() -> None:
    message = two_inputs()
    message.raw_input_contents[1] = b"\0" * 15
    invalid(  # Triton 2.51's words
        message,
        "[request id: <id_unknown>] input byte size mismatch for input 'b' for model 'm'. "
        "Expected 16, got 15",
    )


def test_mixing_raw_and_contents() -> None:
    message = two_inputs()
    message.inputs[1].contents.int_contents.extend([1, 2, 3, 4])
    invalid(
        message,
        "contents field must not be specified when using raw_input_contents for 'b' for model 'm'",
    )
    # Input by input, as Triton reads them: the contents are refused before the entries are
    # counted (tritonclient's grpc_explicit_int_content_client example checks for this).
    message = two_inputs()
    del message.raw_input_contents[1]
    message.inputs[0].contents.int_contents.extend([1, 2, 3, 4])
    invalid(
        message,
        "contents field must not be specified when using raw_input_contents for 'a' for model 'm'",
    )


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (struct.pack("<I", 5) + b"abc", "BYTES element 0 has length 5, which runs past"),
        (struct.pack("<I", 1) + b"a" + b"\0\0", "BYTES data holds 1 elements, expected 2"),
        (struct.pack("<I", 0) * 3, "BYTES data has 4 bytes after its 2 elements"),
    ],
    ids=["overrun", "short", "trailing"],
)
def test_corrupt_bytes(raw: bytes, fragment: str) -> None:
    message = pb.ModelInferRequest(model_name="m", raw_input_contents=[raw])
    message.inputs.add(name="s", datatype="BYTES", shape=[2])
    invalid(message, f"input 's': {fragment}")


def test_malformed_tensors() -> None:
    message = two_inputs()
    message.inputs[1].name = "a"
    invalid(message, "input 'a' already exists in request")
    message = two_inputs()
    message.inputs[0].datatype = "FP8"
    invalid(message, "input 'a': unknown datatype 'FP8'")
    message = two_inputs()
    message.inputs[0].shape[0] = -1
    invalid(message, "input 'a': 'shape' must be non-negative integers, got [-1, 4]")
    message = two_inputs()
    message.inputs[0].shape[:] = [1] * 70
    invalid(message, "input 'a': shape has 70 dimensions, at most 64 are supported")


def test_an_output_asked_for_twice_is_answered_once_as_first_asked() -> None:
    message = two_inputs()
    message.outputs.add(name="o").parameters["classification"].int64_param = 2
    message.outputs.add(name="p")
    message.outputs.add(name="o")
    assert decode_infer_request(message).outputs == [
        RequestedOutput("o", 2),
        RequestedOutput("p"),
    ]


def test_shared_memory_parameters() -> None:
    message = two_inputs()
    message.outputs.add(name="o").parameters["shared_memory_region"].string_param = "r"
    along = "'shared_memory_byte_size' must be specified along with 'shared_memory_region'"
    invalid(message, f"{along} parameter for tensor 'o'")
    message = two_inputs()
    message.inputs[0].parameters["shared_memory_region"].string_param = "r"
    invalid(message, f"{along} parameter for tensor 'a'")
    for key in ("shared_memory_byte_size", "shared_memory_offset"):
        message = two_inputs()
        message.inputs[0].parameters[key].int64_param = 8
        invalid(
            message,
            f"'{key}' can not be specified without 'shared_memory_region' parameter for tensor 'a'",
        )
    message = two_inputs()
    message.outputs.add(name="o").parameters["shared_memory_region"].int64_param = 1
    invalid(
        message,
        "invalid value type for 'shared_memory_region' parameter for tensor 'o', expected "
        "string_param.",
    )
    message = two_inputs()
    output = message.outputs.add(name="o")
    output.parameters["shared_memory_region"].string_param = "r"
    output.parameters["shared_memory_byte_size"].int64_param = 8
    output.parameters["classification"].int64_param = 2
    invalid(message, "output 'o' can't set both 'shared_memory_region' and 'classification'")


# ---- responses read by tritonclient --------------------------------------------------------


@pytest.mark.parametrize("datatype", list(DataType), ids=lambda d: d.value)
def test_encode_every_datatype(datatype: DataType) -> None:
    array = sample(datatype, (2, 3))
    other = np.arange(3, dtype=np.int64)
    response = InferResponse(
        "m", "1", [("x", datatype, array), ("n", DataType.INT64, other)], id="req-1"
    )
    message = pb.ModelInferResponse.FromString(encode_infer_response(response).SerializeToString())
    assert len(message.raw_output_contents) == 2  # one per output, in output order
    result = InferResult(message)
    assert_same(result.as_numpy("x"), array)
    assert_same(result.as_numpy("n"), other)
    assert (message.model_name, message.model_version, message.id) == ("m", "1", "req-1")
    assert [o.datatype for o in message.outputs] == [datatype.value, "INT64"]


def test_encode_converts_dtype_and_layout() -> None:
    # A non-contiguous float64 view reported as FP32 (as classification or backends may give).
    array = np.arange(12, dtype=np.float64).reshape(3, 4).T
    message = encode_infer_response(InferResponse("m", "1", [("x", DataType.FP32, array)]))
    assert_same(InferResult(message).as_numpy("x"), array.astype(np.float32))


def test_encode_bytes_from_str_and_empty_tensor() -> None:
    strings = np.array(["a", "é"], dtype=np.object_)
    empty = np.zeros((0, 4), dtype=ml_dtypes.bfloat16)
    message = encode_infer_response(
        InferResponse("m", "1", [("s", DataType.BYTES, strings), ("e", DataType.BF16, empty)])
    )
    assert InferResult(message).as_numpy("s").tolist() == [b"a", "é".encode()]
    assert InferResult(message).as_numpy("e").shape == (0, 4)
    assert message.raw_output_contents[1] == b""


def test_encode_response_parameters() -> None:
    params: Params = {"flag": True, "n": -3, "big": 2**64 - 1, "x": 0.25, "s": "t"}
    message = encode_infer_response(InferResponse("m", "1", [], parameters=params))
    decoded = {
        k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in message.parameters.items()
    }
    assert decoded == params
    assert message.parameters["big"].WhichOneof("parameter_choice") == "uint64_param"
    assert message.parameters["flag"].WhichOneof("parameter_choice") == "bool_param"


def test_stream_messages() -> None:
    array = sample(DataType.FP32, (1, 2))
    ok = encode_stream_response(InferResponse("m", "1", [("x", DataType.FP32, array)], id="a"))
    assert ok.error_message == ""
    assert_same(InferResult(ok.infer_response).as_numpy("x"), array)
    failed = encode_stream_error("b", "boom")
    assert failed.error_message == "boom"
    assert failed.infer_response == pb.ModelInferResponse(id="b")


def test_decoded_request_round_trips_through_response() -> None:
    """What a model echoes comes back to tritonclient bit for bit, for every datatype."""
    arrays = {d.value: sample(d, (1, 5)) for d in DataType}
    inputs = [client_input(name, a, DataType(name)) for name, a in arrays.items()]
    request: InferRequest = decode_infer_request(client_request(inputs))
    outputs = [(n, DataType(n), a) for n, a in request.inputs.items()]
    result = InferResult(encode_infer_response(InferResponse("m", "1", outputs)))
    for name, array in arrays.items():
        assert_same(result.as_numpy(name), array)
