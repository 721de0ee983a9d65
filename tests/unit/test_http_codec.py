"""HTTP codec: round trips against the real tritonclient, and every rejection path."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest
from tritonclient.http import InferInput, InferRequestedOutput, InferResult
from tritonclient.http._utils import _get_inference_request

from inferd.server.errors import ErrorCode, InferdError
from inferd.server.http_codec import (
    HeaderCache,
    OutputEncoding,
    decode_infer_request,
    decode_raw_input,
    encode_error,
    encode_infer_response,
)
from inferd.server.shared_memory import SharedMemoryRegistry
from inferd.server.types import DataType, InferRequest, InferResponse, RequestedOutput

ALL_TYPES = list(DataType)


def sample(datatype: DataType, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic test data of the datatype, including negatives and fractions."""
    count = int(np.prod(shape))
    if datatype is DataType.BYTES:
        items = [f"s{i}-é".encode() for i in range(count)]
        items[:1] = [b""]  # an empty element must survive too
        array = np.empty(count, dtype=np.object_)
        array[:] = items
        return array.reshape(shape)
    if datatype is DataType.BOOL:
        return np.asarray(np.arange(count) % 3 == 0, dtype=np.bool_).reshape(shape)
    values = np.arange(count) - (count // 2 if datatype.numpy.kind in "if" else 0)
    if datatype.numpy.kind == "f" or datatype is DataType.BF16:
        return (values * 0.5).astype(datatype.numpy).reshape(shape)
    return values.astype(datatype.numpy).reshape(shape)


def client_body(
    inputs: list[InferInput],
    outputs: list[InferRequestedOutput] | None = None,
    request_id: str = "",
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    encoded: tuple[bytes, int | None] = _get_inference_request(
        inputs=inputs,
        request_id=request_id,
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=parameters,
    )
    return encoded


def client_input(name: str, array: np.ndarray, datatype: DataType, binary: bool) -> InferInput:
    tensor = InferInput(name, list(array.shape), datatype.value)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def decode(doc: object, tail: bytes = b"") -> tuple[InferRequest, OutputEncoding]:
    head = orjson.dumps(doc)
    return decode_infer_request(head + tail, len(head) if tail else None, "m", "1")


def assert_invalid(error: pytest.ExceptionInfo[InferdError], *fragments: str) -> None:
    assert error.value.code is ErrorCode.INVALID_ARG
    for fragment in fragments:
        assert fragment in error.value.message


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    assert actual.tolist() == expected.tolist()


# ---------------------------------------------------------------------------------------------
# Requests built by tritonclient


# tritonclient refuses BF16 as JSON; test_decode_bf16_json covers that case.
CLIENT_REQUEST_CASES = [
    pytest.param(datatype, binary, id=f"{datatype.value}-{'binary' if binary else 'json'}")
    for datatype in DataType
    for binary in (True, False)
    if binary or datatype is not DataType.BF16
]


@pytest.mark.parametrize(("datatype", "binary"), CLIENT_REQUEST_CASES)
def test_decode_client_request_every_datatype(datatype: DataType, binary: bool) -> None:
    expected = sample(datatype, (2, 3))
    # A second input after the tested one checks that binary chunks are consumed in order.
    after = np.arange(4, dtype=np.int32).reshape(1, 4)
    body, json_size = client_body(
        [
            client_input("x", expected, datatype, binary),
            client_input("y", after, DataType.INT32, True),
        ],
        request_id="req-7",
    )
    request, encoding = decode_infer_request(body, json_size, "m", "1")
    assert (request.model_name, request.model_version, request.id) == ("m", "1", "req-7")
    assert list(request.inputs) == ["x", "y"]
    assert_same(request.inputs["x"], expected)
    assert_same(request.inputs["y"], after)
    assert request.outputs is None
    # tritonclient asks for binary outputs when it names none.
    assert encoding == OutputEncoding(binary_default=True)
    assert request.parameters == {}


def test_decode_bf16_json() -> None:
    request, _ = decode(
        {"inputs": [{"name": "x", "shape": [3], "datatype": "BF16", "data": [1.5, -2, 3.25]}]}
    )
    assert_same(request.inputs["x"], np.array([1.5, -2, 3.25], dtype=ml_dtypes.bfloat16))


def test_binary_input_is_zero_copy() -> None:
    array = np.arange(1000, dtype=np.float32)
    body, json_size = client_body([client_input("x", array, DataType.FP32, True)])
    request, _ = decode_infer_request(body, json_size, "m", "1")
    assert np.shares_memory(request.inputs["x"], np.frombuffer(body, np.uint8))


def test_decode_accepts_bytearray_and_memoryview() -> None:
    body, json_size = client_body(
        [client_input("x", sample(DataType.INT64, (5,)), DataType.INT64, True)]
    )
    for view in (bytearray(body), memoryview(body)):
        request, _ = decode_infer_request(view, json_size, "m", "")
        assert_same(request.inputs["x"], sample(DataType.INT64, (5,)))


def test_decode_outputs_and_parameters() -> None:
    body, json_size = client_body(
        [client_input("x", sample(DataType.FP32, (1, 4)), DataType.FP32, True)],
        outputs=[
            InferRequestedOutput("probs", binary_data=False, class_count=3),
            InferRequestedOutput("raw", binary_data=True),
        ],
        parameters={"temperature": 0.5, "mode": "fast", "top_k": 4, "greedy": True},
    )
    request, encoding = decode_infer_request(body, json_size, "m", "1")
    assert [(o.name, o.classification) for o in request.outputs or []] == [("probs", 3), ("raw", 0)]
    assert encoding == OutputEncoding(binary_default=False, binary={"probs": False, "raw": True})
    assert request.parameters == {"temperature": 0.5, "mode": "fast", "top_k": 4, "greedy": True}


def test_an_output_asked_for_twice_is_answered_once_as_first_asked() -> None:
    request, encoding = decode(
        {
            **one_input(),
            "outputs": [
                {"name": "y", "parameters": {"binary_data": True}},
                {"name": "z"},
                {"name": "y", "parameters": {"binary_data": False, "classification": 2}},
            ],
        }
    )
    assert request.outputs == [RequestedOutput("y"), RequestedOutput("z")]
    assert encoding.binary == {"y": True}


@pytest.mark.parametrize(
    ("data", "shape", "expected"),
    [
        ([[1, 2, 3], [4, 5, 6]], [2, 3], [[1, 2, 3], [4, 5, 6]]),
        ([[[1], [2]], [[3], [4]]], [4], [1, 2, 3, 4]),
        ([1, 2, 3, 4], [2, 2], [[1, 2], [3, 4]]),
        ([], [0, 3], []),
    ],
    ids=["nested", "deep", "flat-to-2d", "empty"],
)
def test_decode_json_data_nesting(data: list[Any], shape: list[int], expected: list[Any]) -> None:
    request, _ = decode(
        {"inputs": [{"name": "x", "shape": shape, "datatype": "INT64", "data": data}]}
    )
    array = request.inputs["x"]
    assert array.shape == tuple(shape)
    assert array.ravel().tolist() == np.asarray(expected).ravel().tolist()


def test_decode_json_fp_accepts_integers_and_extremes() -> None:
    request, _ = decode(
        {
            "inputs": [
                {"name": "f", "shape": [2], "datatype": "FP16", "data": [1, 65504.0]},
                {"name": "u", "shape": [1], "datatype": "UINT64", "data": [2**64 - 1]},
            ]
        }
    )
    assert request.inputs["f"].tolist() == [1.0, 65504.0]
    assert request.inputs["u"].tolist() == [2**64 - 1]


# ---------------------------------------------------------------------------------------------
# Responses read by tritonclient


def parse_response(body: bytes, header_length: int | None) -> InferResult:
    return InferResult.from_response_body(body, verbose=False, header_length=header_length)


@pytest.mark.parametrize("datatype", ALL_TYPES)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_encode_response_every_datatype(datatype: DataType, binary: bool) -> None:
    array = sample(datatype, (2, 3))
    response = InferResponse(
        "m", "1", [("y", datatype, array), ("z", DataType.INT32, np.arange(3, dtype=np.int32))]
    )
    body, header_length = encode_infer_response(response, OutputEncoding(binary_default=binary))
    assert (header_length is None) is not binary
    result = parse_response(body, header_length)
    got = result.as_numpy("y")
    if datatype is DataType.BYTES and not binary:
        # JSON carries text; tritonclient hands back str elements.
        assert got.tolist() == [[b.decode() for b in row] for row in array.tolist()]
    else:
        assert_same(got, array)
    assert_same(result.as_numpy("z"), np.arange(3, dtype=np.int32))
    assert result.get_output("y")["datatype"] == datatype.value


def test_json_floats_are_the_doubles_they_widen_to_as_triton_prints_them() -> None:
    array = np.array([0.1, 1e-8, -0.0], np.float32)
    response = InferResponse("m", "1", [("y", DataType.FP32, array)])
    body, _ = encode_infer_response(response, OutputEncoding(binary_default=False))
    data = orjson.loads(body)["outputs"][0]["data"]
    assert data == [float(np.float64(v)) for v in array]  # 0.10000000149011612, not 0.1
    assert b"0.10000000149011612" in bytes(body)


def test_encode_response_mixed_outputs_and_header_fields() -> None:
    response = InferResponse(
        "m",
        "3",
        [
            ("a", DataType.FP32, np.ones((2, 2), dtype=np.float32)),
            ("empty", DataType.FP32, np.zeros((0, 4), dtype=np.float32)),
            ("b", DataType.BYTES, np.array([b"x", b"yz"], dtype=np.object_)),
            ("c", DataType.INT8, np.array([[-1, 2]], dtype=np.int8)),
        ],
        id="abc",
        parameters={"sequence_end": True},
    )
    encoding = OutputEncoding(binary_default=True, binary={"c": False})
    body, header_length = encode_infer_response(response, encoding)
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert header["id"] == "abc"
    assert header["model_version"] == "3"
    assert header["parameters"] == {"sequence_end": True}
    assert [o["name"] for o in header["outputs"]] == ["a", "empty", "b", "c"]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 0}
    assert header["outputs"][3]["data"] == [-1, 2]
    assert len(body) == header_length + 16 + 4 + 1 + 4 + 2
    result = parse_response(body, header_length)
    assert_same(result.as_numpy("a"), np.ones((2, 2), dtype=np.float32))
    assert result.as_numpy("empty").shape == (0, 4)
    assert result.as_numpy("b").tolist() == [b"x", b"yz"]
    assert_same(result.as_numpy("c"), np.array([[-1, 2]], dtype=np.int8))


def test_encode_response_json_only_omits_empty_fields() -> None:
    response = InferResponse("m", "1", [("y", DataType.BOOL, np.array([True, False]))])
    body, header_length = encode_infer_response(response, OutputEncoding())
    assert header_length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "y", "datatype": "BOOL", "shape": [2], "data": [True, False]}],
    }


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=">i4").reshape(2, 3),
        np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2],
        np.float64(2.5) * np.ones((), dtype=np.float64),
    ],
    ids=["big-endian", "strided", "scalar"],
)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_encode_response_unusual_arrays(array: np.ndarray, binary: bool) -> None:
    datatype = DataType.FP64 if array.dtype.kind == "f" else DataType.INT32
    response = InferResponse("m", "1", [("y", datatype, array)])
    body, header_length = encode_infer_response(response, OutputEncoding(binary_default=binary))
    got = parse_response(body, header_length).as_numpy("y")
    assert got.shape == array.shape
    assert got.tolist() == array.tolist()


@pytest.mark.parametrize(
    "items",
    [["text", "é"], [np.str_("a"), np.bytes_(b"b")]],
    ids=["str", "numpy-scalars"],
)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_encode_bytes_element_kinds(items: list[Any], binary: bool) -> None:
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    response = InferResponse("m", "1", [("y", DataType.BYTES, array)])
    body, header_length = encode_infer_response(response, OutputEncoding(binary_default=binary))
    got = parse_response(body, header_length).as_numpy("y").tolist()
    text = [i.decode() if isinstance(i, bytes) else str(i) for i in items]
    assert got == ([t.encode() for t in text] if binary else text)


def test_encode_fixed_width_numpy_strings() -> None:
    response = InferResponse("m", "1", [("y", DataType.BYTES, np.array(["ab", "c"]))])
    body, header_length = encode_infer_response(response, OutputEncoding(binary_default=True))
    assert parse_response(body, header_length).as_numpy("y").tolist() == [b"ab", b"c"]


def test_encode_non_utf8_bytes_as_json_is_invalid() -> None:
    response = InferResponse(
        "m", "1", [("blob", DataType.BYTES, np.array([b"\xff"], dtype=np.object_))]
    )
    with pytest.raises(InferdError) as error:
        encode_infer_response(response, OutputEncoding())
    assert_invalid(error, "'blob'", "binary")


def test_encode_error() -> None:
    assert orjson.loads(encode_error('bad "x"\n')) == {"error": 'bad "x"\n'}


# ---------------------------------------------------------------------------------------------
# Raw binary requests (Inference-Header-Content-Length: 0)


@pytest.mark.parametrize(
    ("datatype", "dims", "max_batch_size", "body", "expected"),
    [
        (
            DataType.FP32,
            (2,),
            0,
            np.array([1, 2], np.float32).tobytes(),
            np.array([1, 2], np.float32),
        ),
        (
            DataType.INT16,
            (-1, 2),
            0,
            np.arange(6, dtype=np.int16).tobytes(),
            np.arange(6, dtype=np.int16).reshape(3, 2),
        ),
        (DataType.UINT8, (-1,), 8, b"\x01\x02\x03", np.array([[1, 2, 3]], np.uint8)),
        (DataType.BOOL, (2,), 4, b"\x01\x00", np.array([[True, False]])),
        (DataType.BYTES, (1,), 0, struct.pack("<I", 3) + b"abc", np.array([b"abc"], np.object_)),
        (DataType.BYTES, (-1,), 2, struct.pack("<I", 0), np.array([[b""]], np.object_)),
    ],
    ids=["fixed", "variable", "batched", "bool", "bytes", "bytes-batched"],
)
def test_decode_raw_input(
    datatype: DataType,
    dims: tuple[int, ...],
    max_batch_size: int,
    body: bytes,
    expected: np.ndarray,
) -> None:
    assert_same(decode_raw_input(body, "x", datatype, dims, max_batch_size), expected)


@pytest.mark.parametrize(
    ("datatype", "dims", "body", "fragment"),
    [
        (DataType.FP32, (2,), b"\x00" * 12, "expected 8 bytes"),
        (DataType.FP32, (-1,), b"\x00" * 6, "do not fit"),
        (DataType.FP32, (-1, -1), b"\x00" * 8, "at most one variable"),
        (DataType.FP32, (0, -1), b"", "do not fit"),
        (DataType.BYTES, (2,), struct.pack("<I", 0), "exactly one element"),
        (DataType.BYTES, (1,), struct.pack("<I", 9) + b"abc", "runs past"),
        (DataType.BYTES, (1,), struct.pack("<I", 1) + b"ab", "after its 1 elements"),
        (DataType.BYTES, (1,), b"\x01", "holds 0 elements"),
    ],
    ids=[
        "size",
        "not-multiple",
        "two-variable",
        "unsolvable",
        "bytes-two",
        "bytes-long",
        "bytes-trailing",
        "bytes-short",
    ],
)
def test_decode_raw_input_errors(
    datatype: DataType, dims: tuple[int, ...], body: bytes, fragment: str
) -> None:
    with pytest.raises(InferdError) as error:
        decode_raw_input(body, "x", datatype, dims, 0)
    assert_invalid(error, "'x'", fragment)


# ---------------------------------------------------------------------------------------------
# Rejections


def one_input(**fields: Any) -> dict[str, Any]:
    tensor = {"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2]}
    tensor.update(fields)
    return {"inputs": [tensor]}


def binary_input(size: Any) -> dict[str, Any]:
    doc = one_input(parameters={"binary_data_size": size})
    del doc["inputs"][0]["data"]
    return doc


SHM = {"shared_memory_region": "r", "shared_memory_byte_size": 8}


def shm_input(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "parameters": parameters}]}


def without(key: str) -> dict[str, Any]:
    doc = one_input()
    del doc["inputs"][0][key]
    return doc


BAD_DOCUMENTS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("top-level-list", [1], ("must be an object",)),
    ("no-inputs", {}, ("'inputs'",)),
    ("inputs-not-list", {"inputs": {"x": 1}}, ("'inputs'",)),
    ("input-not-object", {"inputs": [3]}, ("must be an object",)),
    ("no-name", without("name"), ("'name'",)),
    ("no-shape", without("shape"), ("'x'", "'shape'")),
    ("no-datatype", without("datatype"), ("'x'", "'datatype'")),
    ("no-data", without("data"), ("'x'", "'data'")),
    ("unknown-datatype", one_input(datatype="FLOAT"), ("'x'", "unknown datatype 'FLOAT'")),
    ("negative-dim", one_input(shape=[-1]), ("'x'", "non-negative")),
    ("float-dim", one_input(shape=[2.0]), ("'x'", "non-negative")),
    ("bool-dim", one_input(shape=[True, 2]), ("'x'", "non-negative")),
    ("shape-not-list", one_input(shape=2), ("'x'", "'shape'")),
    ("id-not-string", {**one_input(), "id": 5}, ("'id'", "string")),
    ("params-not-object", {**one_input(), "parameters": [1]}, ("'parameters'", "object")),
    (
        "reserved-param",
        {**one_input(), "parameters": {"triton_enable_empty_final_response": True}},
        ("parameter keys starting with 'triton_' are reserved for Triton usage and should not",),
    ),
    ("param-object", {**one_input(), "parameters": {"p": {"a": 1}}}, ("'p'",)),
    (
        "binary-output-not-bool",
        {**one_input(), "parameters": {"binary_data_output": 1}},
        ("binary_data_output",),
    ),
    ("input-params-not-object", one_input(parameters=5), ("'x'", "'parameters'")),
    (
        "input-shm-without-size",
        one_input(parameters={"shared_memory_region": "r"}),
        ("'x'", "'shared_memory_byte_size'", "together"),
    ),
    (
        "input-shm-and-data",
        one_input(parameters={"shared_memory_region": "r", "shared_memory_byte_size": 8}),
        ("'x'", "only one of"),
    ),
    (
        "input-shm-and-binary",
        shm_input({**SHM, "binary_data_size": 8}),
        ("'x'", "only one of"),
    ),
    (
        "input-shm-offset-negative",
        shm_input({**SHM, "shared_memory_offset": -1}),
        ("'x'", "'shared_memory_offset'", "non-negative integer"),
    ),
    ("input-shm-region-empty", shm_input({**SHM, "shared_memory_region": ""}), ("'x'", "name")),
    ("data-not-list", one_input(data=5), ("'x'", "list")),
    ("count-mismatch", one_input(data=[1, 2, 3]), ("'x'", "3 elements", "expected 2")),
    ("nested-count", one_input(data=[[1], [2, 3]]), ("'x'", "3 elements")),
    ("string-for-int", one_input(data=["1", 2]), ("'x'", "INT32", "string")),
    ("float-for-int", one_input(data=[1.5, 2]), ("'x'", "INT32", "number")),
    ("bool-for-int", one_input(data=[True, 2]), ("'x'", "INT32", "boolean")),
    ("null-for-int", one_input(data=[None, 2]), ("'x'", "null")),
    ("object-for-int", one_input(data=[{}, 2]), ("'x'", "object")),
    ("int-overflow", one_input(data=[2**31, 1]), ("'x'", "out of range for INT32")),
    ("uint-negative", one_input(datatype="UINT8", data=[-1, 1]), ("'x'", "out of range for UINT8")),
    ("fp16-overflow", one_input(datatype="FP16", data=[1e6, 1]), ("'x'", "out of range for FP16")),
    ("bf16-overflow", one_input(datatype="BF16", data=[1e39, 1]), ("'x'", "out of range for BF16")),
    ("string-for-float", one_input(datatype="FP32", data=["a", 1]), ("'x'", "FP32", "string")),
    ("int-for-bool", one_input(datatype="BOOL", data=[1, 0]), ("'x'", "BOOL", "integer")),
    ("int-for-bytes", one_input(datatype="BYTES", data=[1, "a"]), ("'x'", "BYTES", "integer")),
    ("duplicate-input", {"inputs": one_input()["inputs"] * 2}, ("'x'", "already exists")),
    ("outputs-not-list", {**one_input(), "outputs": {}}, ("'outputs'",)),
    ("output-no-name", {**one_input(), "outputs": [{}]}, ("'outputs'", "'name'")),
    (
        "output-params",
        {**one_input(), "outputs": [{"name": "y", "parameters": 1}]},
        ("'y'", "'parameters'"),
    ),
    (
        "output-binary-not-bool",
        {**one_input(), "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]},
        ("'y'", "binary_data"),
    ),
    (
        "classification-negative",
        {**one_input(), "outputs": [{"name": "y", "parameters": {"classification": -1}}]},
        ("'y'", "classification"),
    ),
    (
        "classification-float",
        {**one_input(), "outputs": [{"name": "y", "parameters": {"classification": 1.5}}]},
        ("'y'", "classification"),
    ),
    (
        "output-shm-without-size",
        {**one_input(), "outputs": [{"name": "y", "parameters": {"shared_memory_region": "r"}}]},
        ("'y'", "together"),
    ),
    (
        "output-shm-and-binary",
        {**one_input(), "outputs": [{"name": "y", "parameters": {**SHM, "binary_data": True}}]},
        ("'y'", "can't set both", "'binary_data'"),
    ),
    (
        "output-shm-and-classification",
        {**one_input(), "outputs": [{"name": "y", "parameters": {**SHM, "classification": 2}}]},
        ("'y'", "can't set both", "'classification'"),
    ),
    (
        "output-shm-size-string",
        {
            **one_input(),
            "outputs": [{"name": "y", "parameters": {**SHM, "shared_memory_byte_size": "8"}}],
        },
        ("'y'", "'shared_memory_byte_size'", "non-negative integer"),
    ),
    (
        "output-shm-offset-negative",
        {
            **one_input(),
            "outputs": [{"name": "y", "parameters": {**SHM, "shared_memory_offset": -1}}],
        },
        ("'y'", "'shared_memory_offset'", "non-negative integer"),
    ),
    (
        "rank-above-numpy-limit",
        one_input(shape=[1] * 65, data=[1]),
        ("'x'", "65 dimensions, at most 64"),
    ),
    ("binary-size-negative", binary_input(-1), ("'x'", "binary_data_size")),
    ("binary-size-bool", binary_input(True), ("'x'", "binary_data_size")),
    ("binary-size-with-data", one_input(parameters={"binary_data_size": 0}), ("'x'", "both")),
    ("binary-without-section", binary_input(8), ("'x'", "past the end")),
]


@pytest.mark.parametrize(
    ("doc", "fragments"),
    [row[1:] for row in BAD_DOCUMENTS],
    ids=[row[0] for row in BAD_DOCUMENTS],
)
def test_bad_request_documents(doc: Any, fragments: tuple[str, ...]) -> None:
    with pytest.raises(InferdError) as error:
        decode(doc)
    assert_invalid(error, *fragments)


def bytes_chunk(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


BAD_BINARY: list[tuple[str, str, list[int], bytes, tuple[str, ...]]] = [
    # Triton 2.51's words for a wrong size
    (
        "short",
        "FP32",
        [2],
        b"\x00" * 4,
        (
            "[request id: <id_unknown>] input byte size mismatch for input 'x' for model 'm'. "
            "Expected 8, got 4",
        ),
    ),
    ("long", "INT64", [1], b"\x00" * 16, ("input 'x' for model 'm'. Expected 8, got 16",)),
    (
        "bytes-count-low",
        "BYTES",
        [3],
        bytes_chunk(b"a", b"b"),
        ("'x'", "holds 2 elements, expected 3"),
    ),
    ("bytes-count-high", "BYTES", [1], bytes_chunk(b"a", b"b"), ("'x'", "5 bytes after")),
    ("bytes-length-past-end", "BYTES", [1], struct.pack("<I", 99) + b"abc", ("'x'", "runs past")),
    (
        "bytes-torn-prefix",
        "BYTES",
        [2],
        bytes_chunk(b"a") + b"\x01\x00",
        ("'x'", "holds 1 elements"),
    ),
]


@pytest.mark.parametrize(
    ("datatype", "shape", "chunk", "fragments"),
    [row[1:] for row in BAD_BINARY],
    ids=[row[0] for row in BAD_BINARY],
)
def test_bad_binary_data(
    datatype: str, shape: list[int], chunk: bytes, fragments: tuple[str, ...]
) -> None:
    doc = {
        "inputs": [
            {
                "name": "x",
                "shape": shape,
                "datatype": datatype,
                "parameters": {"binary_data_size": len(chunk)},
            }
        ]
    }
    with pytest.raises(InferdError) as error:
        decode(doc, chunk)
    assert_invalid(error, *fragments)


def test_binary_chunk_past_end_of_body() -> None:
    with pytest.raises(InferdError) as error:
        decode(binary_input(8), b"\x00" * 4)
    assert_invalid(error, "binary data for input 'x' extends past the end of the request body")


def test_bytes_after_last_binary_input() -> None:
    with pytest.raises(InferdError) as error:
        decode(binary_input(8), b"\x00" * 12)
    assert_invalid(error, "4 bytes after the last binary input")


def test_trailing_bytes_without_binary_inputs() -> None:
    with pytest.raises(InferdError) as error:
        decode(one_input(), b"junk")
    assert_invalid(error, "4 bytes after")


@pytest.mark.parametrize(
    ("body", "header_length", "fragment"),
    [
        (b'{"inputs": [', None, "failed to parse"),
        (b"\xff\xfe", None, "failed to parse"),
        (b"{}", 3, "exceeds the request body"),
        (b"{}", 0, "must be positive"),
        (b"{}", -2, "must be positive"),
    ],
    ids=["truncated", "not-utf8", "header-too-long", "header-zero", "header-negative"],
)
def test_bad_framing(body: bytes, header_length: int | None, fragment: str) -> None:
    with pytest.raises(InferdError) as error:
        decode_infer_request(body, header_length, "m", "1")
    assert_invalid(error, fragment)


# ---- the header cache ------------------------------------------------------------------------


def _binary_body(values: np.ndarray, **request: Any) -> tuple[bytes, int]:
    header = orjson.dumps(
        {
            **request,
            "inputs": [
                {
                    "name": "x",
                    "shape": list(values.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": values.nbytes},
                }
            ],
        }
    )
    return header + values.tobytes(), len(header)


def test_header_cache_reuses_a_decoded_header_for_new_tensor_bytes() -> None:
    cache = HeaderCache()
    first_body, length = _binary_body(np.zeros((1, 4), np.float32), id="a")
    second_body, _ = _binary_body(np.arange(4, dtype=np.float32).reshape(1, 4), id="a")
    first, _ = decode_infer_request(first_body, length, "m", "", cache)
    second, encoding = decode_infer_request(second_body, length, "m", "2", cache)
    assert first.inputs["x"].tolist() == [[0, 0, 0, 0]]
    assert second.inputs["x"].tolist() == [[0, 1, 2, 3]]  # the new bytes, not the cached ones
    assert (second.id, second.model_version, encoding.binary_default) == ("a", "2", False)
    second.parameters["changed"] = 1  # each request gets its own parameters
    third, _ = decode_infer_request(first_body, length, "m", "", cache)
    assert third.parameters == {}


def test_header_cache_checks_the_body_size_and_skips_json_data() -> None:
    cache = HeaderCache()
    body, length = _binary_body(np.zeros((1, 4), np.float32))
    decode_infer_request(body, length, "m", "", cache)
    with pytest.raises(InferdError, match="extends past the end"):
        decode_infer_request(body[:-4], length, "m", "", cache)
    json_body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    )
    assert decode_infer_request(json_body, None, "m", "", cache)[0].inputs["x"].tolist() == [1.0]


def test_header_cache_plans_shared_memory_requests_and_looks_regions_up_each_time(
    tmp_path: Path,
) -> None:
    (tmp_path / "key").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    regions = SharedMemoryRegistry(allow_client=True, directory=tmp_path)
    regions.register_system("r", "/key", 0, 16)
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", **SHM_X}]})
    cache = HeaderCache()
    for _ in range(2):  # decoded, then from the plan
        request, _ = decode_infer_request(body, None, "m", "", cache, regions)
        assert request.inputs["x"].tolist() == [[0, 1, 2, 3]]
    assert len(cache) == 1
    regions.unregister_system("r")
    with pytest.raises(InferdError, match="Unable to find shared memory region: 'r'"):
        decode_infer_request(body, None, "m", "", cache, regions)
    json_body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    )
    decode_infer_request(json_body, None, "m", "", cache)
    assert len(cache) == 1  # tensors in the JSON: nothing to plan


SHM_X = {"parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 16}}


def test_header_cache_is_bounded() -> None:
    cache = HeaderCache(capacity=2)
    for request_id in "abc":
        body, length = _binary_body(np.zeros((1, 1), np.float32), id=request_id)
        assert decode_infer_request(body, length, "m", "", cache)[0].id == request_id
    assert len(cache) == 1  # cleared when full, then the newest added
