"""HTTP/JSON wire codec for KServe v2 inference: body bytes <-> protocol-neutral types.

Pure functions, no I/O. Layout facts (binary data extension): the body is a JSON header, then
binary tensor chunks in the order their tensors appear in the JSON, with no padding. BYTES
elements are a 4-byte little-endian length followed by the raw bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from inferd.server.errors import invalid, refused, unsupported
from inferd.server.shared_memory import (
    SharedMemoryRegistry,
    own_parameters,
    shared_memory_ref,
)
from inferd.server.tensor_codec import (
    bytes_elements,
    check_rank,
    element_bytes,
    object_array,
    pack_bytes,
    tensor_from_bytes,
)
from inferd.server.types import (
    DATATYPES,
    DataType,
    InferRequest,
    InferResponse,
    Params,
    RequestedOutput,
    SharedMemoryRef,
)

_FLOATS = frozenset({DataType.FP16, DataType.FP32, DataType.FP64, DataType.BF16})
# Datatypes whose numpy arrays export the Python buffer protocol (ml_dtypes' bfloat16 does not).
_BUFFERS = frozenset(DataType) - {DataType.BF16, DataType.BYTES}
# Python types a JSON `data` element may have, per datatype (bool is not an int here).
_INT_TYPES: frozenset[type] = frozenset({int})
_FLOAT_TYPES: frozenset[type] = frozenset({int, float})
_BOOL_TYPES: frozenset[type] = frozenset({bool})
_BYTES_TYPES: frozenset[type] = frozenset({str})
# A JSON-only body up to this size is looked up in the header cache: all its tensors may be in
# shared memory. Larger ones carry their data in the JSON, and copying them for a key is waste.
_SMALL_JSON = 4096
_JSON_NAMES: dict[type, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "list",
    type(None): "null",
}


@dataclass(slots=True)
class OutputEncoding:
    """How the client wants outputs encoded (HTTP-only concern)."""

    binary_default: bool = False  # request parameter binary_data_output
    binary: dict[str, bool] = field(default_factory=dict)  # per-output parameters.binary_data


# ---------------------------------------------------------------------------------------------
# Request decoding


@dataclass(frozen=True, slots=True)
class _BinaryInput:
    name: str
    datatype: DataType
    shape: tuple[int, ...]
    size: int  # bytes in the body; 0 for an input in shared memory
    shared: SharedMemoryRef | None = None


@dataclass(frozen=True, slots=True)
class _HeaderPlan:
    """A decoded JSON header whose inputs are all binary or in shared memory: the same header
    bytes always decode to the same request apart from the tensor bytes, so the JSON work is
    done once. (Regions are looked up by name for each request: they may change between.)"""

    request_id: str
    parameters: Params
    outputs: tuple[RequestedOutput, ...] | None
    encoding: OutputEncoding  # shared by the requests of this plan: read-only
    inputs: tuple[_BinaryInput, ...]
    binary_size: int


class HeaderCache:
    """Decoded binary-request headers by their bytes. Clients send the same header request
    after request (same model, shapes and options); bounded, cleared when full."""

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._plans: dict[bytes, _HeaderPlan] = {}

    def __len__(self) -> int:
        return len(self._plans)

    def get(self, header: bytes) -> _HeaderPlan | None:
        return self._plans.get(header)

    def put(self, header: bytes, plan: _HeaderPlan) -> None:
        if len(self._plans) >= self._capacity:
            self._plans.clear()
        self._plans[header] = plan


def decode_infer_request(
    body: bytes | bytearray | memoryview,
    header_length: int | None,
    model_name: str,
    model_version: str,
    cache: HeaderCache | None = None,
    shared_memory: SharedMemoryRegistry | None = None,
) -> tuple[InferRequest, OutputEncoding]:
    """Decode an inference request body.

    header_length None = the whole body is JSON; N > 0 = the first N bytes are JSON and the
    binary tensor chunks follow. With a cache, requests whose tensors are all binary or in
    shared memory reuse decoded headers (a pure JSON body only when it is small: one whose
    tensors are in shared memory is). Inputs in shared memory are read from `shared_memory`'s
    regions (a request naming a region without a registry is refused).
    """
    view = memoryview(body).cast("B")
    if header_length is None:
        header_length = len(view)
    elif header_length <= 0:
        raise invalid(f"Inference-Header-Content-Length must be positive, got {header_length}")
    elif header_length > len(view):
        raise invalid(
            f"Inference-Header-Content-Length {header_length} exceeds the request body "
            f"size {len(view)}"
        )
    key = None
    if cache is not None and (header_length < len(view) or header_length <= _SMALL_JSON):
        key = bytes(view[:header_length])
        plan = cache.get(key)
        if plan is not None and plan.binary_size == len(view) - header_length:
            return _from_plan(plan, view, header_length, model_name, model_version, shared_memory)
    doc = _load_json_object(view[:header_length])

    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise invalid(f"request 'id' must be a string, got {_json_name(request_id)}")
    encoding = OutputEncoding()
    parameters = _request_parameters(doc.get("parameters"), encoding)
    inputs, binary, input_parameters = _decode_inputs(
        doc.get("inputs"), view, header_length, shared_memory, (model_name, request_id)
    )
    outputs = _decode_outputs(doc["outputs"], encoding) if "outputs" in doc else None
    request = InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        id=request_id,
        parameters=parameters,
        outputs=outputs,
        input_parameters=input_parameters,
    )
    if key is not None and binary is not None:
        assert cache is not None
        plan = _HeaderPlan(
            request_id,
            dict(parameters),
            None if outputs is None else tuple(outputs),
            encoding,
            tuple(binary),
            sum(b.size for b in binary),
        )
        cache.put(key, plan)
    return request, encoding


def _from_plan(
    plan: _HeaderPlan,
    view: memoryview,
    offset: int,
    model_name: str,
    model_version: str,
    shared: SharedMemoryRegistry | None,
) -> tuple[InferRequest, OutputEncoding]:
    inputs: dict[str, np.ndarray] = {}
    for spec in plan.inputs:
        if spec.shared is not None:
            inputs[spec.name] = _shared_input(
                shared, spec.shared, spec.name, spec.datatype, spec.shape
            )
            continue
        end = offset + spec.size
        if spec.datatype is DataType.BYTES:  # element lengths differ request by request
            inputs[spec.name] = tensor_from_bytes(
                view[offset:end], spec.name, spec.datatype, spec.shape
            )
        else:  # the size was checked against the shape when the plan was made
            inputs[spec.name] = np.frombuffer(
                view, spec.datatype.numpy, spec.size // spec.datatype.itemsize, offset
            ).reshape(spec.shape)
        offset = end
    request = InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        id=plan.request_id,
        parameters=dict(plan.parameters),
        outputs=None if plan.outputs is None else list(plan.outputs),
    )
    return request, plan.encoding


def _load_json_object(data: memoryview) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise invalid(f"failed to parse the request JSON: {e}") from None
    if not isinstance(doc, dict):
        raise invalid(f"the request JSON must be an object, got {_json_name(doc)}")
    return doc


def _request_parameters(raw: object, encoding: OutputEncoding) -> Params:
    params = _parameters_object(raw, "request")
    out: Params = {}
    for key, value in params.items():
        if key.startswith("triton_"):  # Triton 2.51's words (HTTP takes none of them)
            raise invalid(
                "parameter keys starting with 'triton_' are reserved for Triton usage and "
                "should not be specified."
            )
        if key == "binary_data_output":
            encoding.binary_default = _bool_param(value, "request parameter 'binary_data_output'")
        elif isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            raise invalid(
                f"request parameter '{key}' must be a boolean, number or string, "
                f"got {_json_name(value)}"
            )
    return out


def _decode_inputs(
    raw: object,
    view: memoryview,
    header_length: int,
    shared: SharedMemoryRegistry | None,
    sender: tuple[str, str],
) -> tuple[dict[str, np.ndarray], list[_BinaryInput] | None, dict[str, Params]]:
    """The inputs, their binary layout when every one of them is binary (and none has
    parameters of its own), and their own parameters. `sender`: the (model, request id)."""
    if not isinstance(raw, list):
        raise invalid("the request must have an 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    binary: list[_BinaryInput] | None = []
    input_parameters: dict[str, Params] = {}
    cursor = header_length  # next unread byte of the binary section
    for item in raw:
        if not isinstance(item, dict):
            raise invalid(f"each entry of 'inputs' must be an object, got {_json_name(item)}")
        name, datatype, shape, params = _tensor_header(item)
        if name in inputs:  # Triton 2.51's words
            raise refused(sender[1], f"input '{name}' already exists in request")
        own = own_parameters(params)
        if own:
            input_parameters[name] = own
            binary = None  # a cached header plan carries no per-input parameters
        size = params.get("binary_data_size")
        ref = shared_memory_ref(params, f"input '{name}'")
        if ref is not None:
            if "data" in item or size is not None:
                raise invalid(
                    f"input '{name}' must set only one of 'data', 'binary_data_size' or "
                    f"'shared_memory_region'"
                )
            inputs[name] = _shared_input(shared, ref, name, datatype, shape)
            if binary is not None:
                binary.append(_BinaryInput(name, datatype, shape, 0, ref))
            continue
        if size is None:
            if "data" not in item:
                raise invalid(f"input '{name}' has neither 'data' nor binary_data_size")
            inputs[name] = tensor_from_json(item["data"], name, datatype, shape)
            binary = None
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise invalid(f"input '{name}': binary_data_size must be a non-negative integer")
        if "data" in item:
            raise invalid(f"input '{name}' has both 'data' and binary_data_size")
        if cursor + size > len(view):
            raise invalid(
                f"binary data for input '{name}' extends past the end of the request body "
                f"({size} bytes at offset {cursor}, body is {len(view)} bytes)"
            )
        # Zero copy: fixed-size arrays view the request body.
        chunk = view[cursor : cursor + size]
        inputs[name] = tensor_from_bytes(chunk, name, datatype, shape, sender)
        if binary is not None:
            binary.append(_BinaryInput(name, datatype, shape, size))
        cursor += size
    if cursor != len(view):
        raise invalid(
            f"the request body has {len(view) - cursor} bytes after the last binary input"
        )
    return inputs, binary, input_parameters


def _shared_input(
    shared: SharedMemoryRegistry | None,
    ref: SharedMemoryRef,
    name: str,
    datatype: DataType,
    shape: tuple[int, ...],
) -> np.ndarray:
    if shared is None:
        raise unsupported(f"input '{name}': shared memory is not available here")
    return shared.read_input(ref, name, datatype, shape)


def _tensor_header(
    item: dict[str, Any],
) -> tuple[str, DataType, tuple[int, ...], dict[str, Any]]:
    """Validate one `inputs` entry's name, datatype, shape and parameters."""
    name = item.get("name")
    if not isinstance(name, str):
        raise invalid("an input is missing its 'name' (a string)")
    raw_type = item.get("datatype")
    if not isinstance(raw_type, str):
        raise invalid(f"input '{name}' is missing its 'datatype' (a string)")
    datatype = DATATYPES.get(raw_type)
    if datatype is None:
        raise invalid(f"input '{name}': unknown datatype '{raw_type}'")
    raw_shape = item.get("shape")
    if not isinstance(raw_shape, list) or not all(type(d) is int and d >= 0 for d in raw_shape):
        raise invalid(
            f"input '{name}': 'shape' must be a list of non-negative integers, got {raw_shape!r}"
        )
    params = _parameters_object(item.get("parameters"), f"input '{name}'")
    return name, datatype, check_rank(name, tuple(raw_shape)), params


def _decode_outputs(raw: object, encoding: OutputEncoding) -> list[RequestedOutput]:
    if not isinstance(raw, list):
        raise invalid(f"the request 'outputs' must be a list, got {_json_name(raw)}")
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid("each entry of 'outputs' must be an object with a 'name' string")
        name: str = item["name"]
        if name in seen:  # as Triton: answered once, as its first entry asks
            continue
        seen.add(name)
        what = f"output '{name}'"
        params = _parameters_object(item.get("parameters"), what)
        ref = shared_memory_ref(params, what)
        if ref is not None:  # tritonclient sends binary_data false along: that is fine
            for other in ("binary_data", "classification"):
                if params.get(other, False) not in (False, 0):
                    raise invalid(f"{what} can't set both 'shared_memory_region' and '{other}'")
        if "binary_data" in params:
            encoding.binary[name] = _bool_param(params["binary_data"], f"{what}: binary_data")
        classification = params.get("classification", 0)
        if type(classification) is not int or classification < 0:
            raise invalid(f"{what}: classification must be a non-negative integer")
        outputs.append(RequestedOutput(name, classification, ref))
    return outputs


def _parameters_object(raw: object, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise invalid(f"{what}: 'parameters' must be an object, got {_json_name(raw)}")
    return raw


def _bool_param(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(f"{what} must be a boolean, got {_json_name(value)}")
    return value


def _json_name(value: object) -> str:
    return _JSON_NAMES.get(type(value), "object")


# ---------------------------------------------------------------------------------------------
# Tensor data: JSON


def tensor_from_json(
    data: object, name: str, datatype: DataType, shape: tuple[int, ...]
) -> np.ndarray:
    """An input's JSON `data` (nested lists of any depth are read row-major) as an array of
    `shape`; refused (400) when the count or a value's type does not fit."""
    if not isinstance(data, list):
        raise invalid(f"input '{name}': 'data' must be a list, got {_json_name(data)}")
    types = set(map(type, data))
    if list in types:
        data = _flatten(data)
        types = set(map(type, data))
    count = math.prod(shape)
    if len(data) != count:
        raise invalid(
            f"input '{name}': 'data' has {len(data)} elements, expected {count} for shape "
            f"{list(shape)}"
        )
    if datatype is DataType.BYTES:
        _check_types(types, _BYTES_TYPES, name, datatype)
        return object_array([s.encode() for s in data]).reshape(shape)
    if datatype is DataType.BOOL:
        _check_types(types, _BOOL_TYPES, name, datatype)
        return np.asarray(data, dtype=np.bool_).reshape(shape)
    if datatype in _FLOATS:
        _check_types(types, _FLOAT_TYPES, name, datatype)
        with np.errstate(over="ignore"):  # overflow shows up as inf, checked below
            array = np.asarray(data, dtype=datatype.numpy)
        if not np.isfinite(array).all():
            raise invalid(f"input '{name}': a value is out of range for {datatype.value}")
        return array.reshape(shape)
    _check_types(types, _INT_TYPES, name, datatype)
    try:
        return np.asarray(data, dtype=datatype.numpy).reshape(shape)
    except OverflowError:
        raise invalid(f"input '{name}': a value is out of range for {datatype.value}") from None


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major flatten of nested lists of any depth."""
    flat: list[Any] = []
    for item in data:
        if type(item) is list:
            flat.extend(_flatten(item))
        else:
            flat.append(item)
    return flat


def _check_types(found: set[type], allowed: frozenset[type], name: str, datatype: DataType) -> None:
    wrong = found - allowed
    if wrong:
        kinds = " or ".join(sorted(_JSON_NAMES[t] for t in allowed))
        got = ", ".join(sorted({_JSON_NAMES.get(t, "object") for t in wrong}))
        raise invalid(
            f"input '{name}': {datatype.value} 'data' elements must be {kinds} values, got {got}"
        )


# ---------------------------------------------------------------------------------------------
# Raw binary request (Inference-Header-Content-Length: 0)


def decode_raw_input(
    body: bytes, name: str, datatype: DataType, dims: tuple[int, ...], max_batch_size: int
) -> np.ndarray:
    """Inference-Header-Content-Length: 0 — the body is the data of the model's only input.

    dims excludes the batch dim; if max_batch_size > 0 the result gets a leading batch dim of 1.
    At most one -1 in dims; it is solved from the byte length (BYTES: dims must resolve to one
    element, i.e. shape [1]; the body is one 4-byte-length-prefixed element).
    """
    if any(d < -1 for d in dims) or dims.count(-1) > 1:
        raise invalid(
            f"input '{name}': a raw binary request needs a shape with at most one variable "
            f"dimension, the model has {list(dims)}"
        )
    if datatype is DataType.BYTES:
        shape = _raw_bytes_shape(name, dims)
        array = bytes_elements(body, 1, name).reshape(shape)
    else:
        shape = _raw_numeric_shape(len(body), name, datatype, dims)
        array = np.frombuffer(body, datatype.numpy).reshape(shape)
    return array.reshape((1, *shape)) if max_batch_size > 0 else array


def _raw_bytes_shape(name: str, dims: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(1 if d == -1 else d for d in dims)
    if math.prod(shape) != 1:
        raise invalid(
            f"input '{name}': a raw binary BYTES input must have exactly one element, "
            f"the model shape is {list(dims)}"
        )
    return shape


def _raw_numeric_shape(
    nbytes: int, name: str, datatype: DataType, dims: tuple[int, ...]
) -> tuple[int, ...]:
    fixed = math.prod(d for d in dims if d != -1) * datatype.itemsize
    if -1 not in dims:
        if nbytes != fixed:
            raise invalid(
                f"input '{name}': expected {fixed} bytes for shape {list(dims)} of "
                f"{datatype.value}, got {nbytes}"
            )
        return dims
    if fixed == 0 or nbytes % fixed:
        raise invalid(
            f"input '{name}': {nbytes} bytes do not fit shape {list(dims)} of {datatype.value}"
        )
    return tuple(nbytes // fixed if d == -1 else d for d in dims)


# ---------------------------------------------------------------------------------------------
# Response encoding


def encode_infer_response(
    response: InferResponse, encoding: OutputEncoding, headers: Mapping[str, str] | None = None
) -> tuple[bytes, int | None]:
    """Returns (body, json_header_length).

    json_header_length is None when every output is JSON (then body is pure JSON), else the
    length of the JSON header that precedes the binary chunks. `headers` go in the
    parameters (an MLServer stream's events, which carry no HTTP headers of their own).
    """
    header: dict[str, Any] = {}
    if response.id:
        header["id"] = response.id
    header["model_name"] = response.model_name
    header["model_version"] = response.model_version
    if headers:
        header["parameters"] = {**response.parameters, "headers": headers}
    elif response.parameters:
        header["parameters"] = response.parameters
    entries: list[dict[str, Any]] = []
    chunks: list[memoryview] = []
    any_binary = False
    shared = response.in_shared_memory
    own = response.output_parameters
    for name, datatype, array in response.outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype.value, "shape": array.shape}
        if own and name in own:
            entry["parameters"] = own[name]
        if shared and name in shared:
            pass  # the data is in the client's region already
        elif encoding.binary.get(name, encoding.binary_default):
            any_binary = True
            chunk = _to_binary(name, datatype, array)
            entry["parameters"] = {**entry.get("parameters", {}), "binary_data_size": chunk.nbytes}
            if chunk.nbytes:
                chunks.append(chunk)
        else:
            entry["data"] = _to_json(name, datatype, array)
        entries.append(entry)
    header["outputs"] = entries
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not any_binary:
        return head, None
    return b"".join([head, *chunks]), len(head)


def _to_binary(name: str, datatype: DataType, array: np.ndarray) -> memoryview:
    """The output's wire bytes (a view of the array when no conversion is needed)."""
    if datatype is DataType.BYTES:
        return memoryview(pack_bytes(name, array))
    # Native little-endian, row-major; no copy when the array already is.
    wire = datatype.numpy
    if array.dtype is wire and array.flags.c_contiguous and array.size and datatype in _BUFFERS:
        return array.data.cast("B")  # the common case, without numpy's conversion calls
    return np.ascontiguousarray(array, dtype=wire).reshape(-1).view(np.uint8).data


_WIDENED = frozenset({DataType.FP16, DataType.BF16, DataType.FP32})


def _to_json(name: str, datatype: DataType, array: np.ndarray) -> object:
    if datatype is DataType.BYTES:
        return [_element_text(name, item) for item in array.ravel().tolist()]
    # orjson serializes flat native contiguous arrays directly. Floats go as the doubles they
    # widen to, as Triton (and MLServer) print them: 0.1 in FP32 is 0.10000000149011612, and a
    # client that reads the JSON as doubles gets Triton's values.
    wire = np.float64 if datatype in _WIDENED else datatype.numpy
    return np.ascontiguousarray(array, dtype=wire).reshape(-1)


def _element_text(name: str, item: object) -> str:
    if isinstance(item, str):
        return item
    try:
        return element_bytes(name, item).decode()
    except UnicodeDecodeError:
        raise invalid(
            f"output '{name}' holds bytes that are not valid UTF-8; request it with "
            f"binary_data=true"
        ) from None


def encode_error(message: str) -> bytes:
    return orjson.dumps({"error": message})
