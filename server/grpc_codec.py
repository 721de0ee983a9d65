"""gRPC wire codec for KServe v2 / Triton inference: protobuf messages <-> protocol-neutral types.

Pure functions, no I/O. Conventions (grpc_service.proto, Triton's infer handler):
- inputs carry their data either all in `raw_input_contents` (one entry per input, in input
  order, laid out as in the HTTP binary extension) or each in its typed `contents`; never mixed.
- answers carry one `raw_output_contents` entry per output, in output order: tritonclient reads
  outputs only from there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from inferd.server.errors import InferdError, invalid, unsupported
from inferd.server.shared_memory import (
    BYTE_SIZE,
    OFFSET,
    REGION,
    SharedMemoryRegistry,
    own_parameters,
    shared_memory_ref,
)
from inferd.server.tensor_codec import (
    EMPTY_FINAL_RESPONSE,
    check_rank,
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
    ParamValue,
    RequestedOutput,
)

# The InferTensorContents field that holds each datatype; FP16 and BF16 have none (raw only).
_TYPED_FIELDS: Mapping[DataType, str] = {
    DataType.BOOL: "bool_contents",
    DataType.INT8: "int_contents",
    DataType.INT16: "int_contents",
    DataType.INT32: "int_contents",
    DataType.INT64: "int64_contents",
    DataType.UINT8: "uint_contents",
    DataType.UINT16: "uint_contents",
    DataType.UINT32: "uint_contents",
    DataType.UINT64: "uint64_contents",
    DataType.FP32: "fp32_contents",
    DataType.FP64: "fp64_contents",
    DataType.BYTES: "bytes_contents",
}
# What Triton calls the data of each contents field when it is not the tensor's.
_FIELD_TYPES = {
    "bool_contents": "BOOL",
    "int_contents": "INT32",
    "int64_contents": "INT64",
    "uint_contents": "UINT32",
    "uint64_contents": "UINT64",
    "fp32_contents": "FP32",
    "fp64_contents": "FP64",
    "bytes_contents": "BYTES",
}
_INT64_MAX = 2**63 - 1
_NOT_YET = np.empty(0)  # an input slot filled once the inputs outside shared memory are read


# ---------------------------------------------------------------------------------------------
# Requests


def decode_infer_request(
    message: pb.ModelInferRequest, shared_memory: SharedMemoryRegistry | None = None
) -> InferRequest:
    """Inputs in shared memory are read from `shared_memory`'s regions (a request naming a
    region without a registry is refused)."""
    tensors = message.inputs
    raws = message.raw_input_contents
    input_parameters: dict[str, Params] = {}
    if any(tensor.parameters for tensor in tensors):
        inputs = _inputs(tensors, raws, (message.model_name, message.id), shared_memory)
        for tensor in tensors:
            own = own_parameters(_parameter_values(tensor.parameters))
            if own:
                input_parameters[tensor.name] = own
    elif raws:
        inputs = _raw_inputs(tensors, raws, (message.model_name, message.id))
    else:
        inputs = _typed_inputs(tensors, message.model_name)
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        inputs=inputs,
        id=message.id,
        parameters=_decode_parameters(message.parameters) if message.parameters else {},
        # No requested outputs means every output, as over HTTP without an 'outputs' key.
        outputs=_requested_outputs(message.outputs) if message.outputs else None,
        input_parameters=input_parameters,
    )


def _raw_inputs(
    tensors: Sequence[Any], raws: Sequence[bytes], sender: tuple[str, str]
) -> dict[str, np.ndarray]:
    """`sender`: the (model, request id) the tensors are for."""
    model = sender[0]
    inputs: dict[str, np.ndarray] = {}
    # Input by input, as Triton reads them: an input that also has `contents` is refused
    # before the entries are counted.
    for index, tensor in enumerate(tensors):
        name, datatype, shape = _tensor_header(tensor, inputs)
        if tensor.HasField("contents"):
            raise invalid(
                f"contents field must not be specified when using raw_input_contents for "
                f"'{name}' for model '{model}'"
            )
        if index == len(raws):
            raise _raw_count_error(tensors, len(raws), model)
        # Zero copy: fixed-size arrays view the message's bytes.
        inputs[name] = tensor_from_bytes(raws[index], name, datatype, shape, sender)
    if len(raws) > len(tensors):
        raise _raw_count_error(tensors, len(raws), model)
    return inputs


def _inputs(
    tensors: Sequence[Any],
    raws: Sequence[bytes],
    sender: tuple[str, str],
    shared: SharedMemoryRegistry | None,
) -> dict[str, np.ndarray]:
    """The general case, inputs with parameters: `raw_input_contents` then holds one entry
    per input that is not in shared memory, in input order."""
    model = sender[0]
    inputs: dict[str, np.ndarray] = {}
    unshared: list[Any] = []
    for tensor in tensors:
        name, datatype, shape = _tensor_header(tensor, inputs)
        _check_shared_memory_parameters(tensor.parameters, name)
        ref = shared_memory_ref(_parameter_values(tensor.parameters), f"input '{name}'")
        if ref is None:
            inputs[name] = _NOT_YET  # keeps the input order
            unshared.append(tensor)
            continue
        if tensor.HasField("contents"):
            raise invalid(
                f"unexpected 'content' provided when using shared memory for input '{name}' "
                f"for model '{model}'"
            )
        if shared is None:
            raise unsupported(f"input '{name}': shared memory is not available here")
        inputs[name] = shared.read_input(ref, name, datatype, shape)
    if raws and len(raws) != len(unshared):
        raise invalid(
            f"the request has {len(raws)} raw_input_contents entries for {len(unshared)} "
            f"inputs not in shared memory"
        )
    inputs.update(_raw_inputs(unshared, raws, sender) if raws else _typed_inputs(unshared, model))
    return inputs


def _raw_count_error(tensors: Sequence[Any], count: int, model: str) -> InferdError:
    if count < len(tensors):  # Triton 2.51's words, then why
        return invalid(
            f"unable to find data for input tensor '{tensors[count].name}' for model "
            f"'{model}' in request: the request has {len(tensors)} inputs but {count} "
            "raw_input_contents entries"
        )
    return invalid(
        f"the request has {count} raw_input_contents entries but only {len(tensors)} inputs"
    )


def _typed_inputs(tensors: Sequence[Any], model: str) -> dict[str, np.ndarray]:
    inputs: dict[str, np.ndarray] = {}
    for tensor in tensors:
        name, datatype, shape = _tensor_header(tensor, inputs)
        inputs[name] = _from_contents(tensor.contents, name, datatype, shape, model)
    return inputs


def _tensor_header(
    tensor: Any, seen: Mapping[str, object]
) -> tuple[str, DataType, tuple[int, ...]]:
    name: str = tensor.name
    if name in seen:
        raise invalid(f"input '{name}' already exists in request")
    datatype = DATATYPES.get(tensor.datatype)
    if datatype is None:
        raise invalid(f"input '{name}': unknown datatype '{tensor.datatype}'")
    shape = tuple(tensor.shape)
    if min(shape, default=0) < 0:
        raise invalid(f"input '{name}': 'shape' must be non-negative integers, got {list(shape)}")
    return name, datatype, check_rank(name, shape)


def _from_contents(
    contents: Any, name: str, datatype: DataType, shape: tuple[int, ...], model: str
) -> np.ndarray:
    field = _TYPED_FIELDS.get(datatype)
    for given, _ in contents.ListFields():
        if given.name != field:  # Triton 2.51's words
            raise invalid(
                f"unexpected explicit tensor data for input tensor '{name}' for model "
                f"'{model}' of type '{_FIELD_TYPES[given.name]}', expected datatype "
                f"'{datatype.value}'"
            )
    if field is None:
        raise invalid(
            f"input '{name}': {datatype.value} has no typed contents field; send it in "
            f"raw_input_contents"
        )
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise invalid(
            f"input '{name}': expected {count} values in contents.{field} for shape "
            f"{list(shape)}, got {len(values)}"
        )
    if datatype is DataType.BYTES:
        return object_array(list(values)).reshape(shape)
    try:
        return np.array(values, dtype=datatype.numpy).reshape(shape)
    except OverflowError:  # e.g. 300 in int_contents for an INT8 input
        raise invalid(f"input '{name}': a value is out of range for {datatype.value}") from None


def _requested_outputs(outputs: Sequence[Any]) -> list[RequestedOutput]:
    requested: list[RequestedOutput] = []
    seen: set[str] = set()
    for output in outputs:
        name: str = output.name
        if name in seen:  # as Triton: answered once, as its first entry asks
            continue
        seen.add(name)
        classification = 0
        ref = None
        params = output.parameters
        if params:
            what = f"output '{name}'"
            _check_shared_memory_parameters(params, name)
            ref = shared_memory_ref(_parameter_values(params), what)
            if "classification" in params:
                if ref is not None:
                    raise invalid(
                        f"{what} can't set both 'shared_memory_region' and 'classification'"
                    )
                classification = _classification(params["classification"])
        requested.append(RequestedOutput(name, classification, ref))
    return requested


def _classification(param: pb.InferParameter) -> int:
    if param.WhichOneof("parameter_choice") != "int64_param":  # Triton 2.51's words
        raise invalid("invalid value type for 'classification' parameter, expected int64_param")
    if param.int64_param < 0:
        raise invalid("invalid value for 'classification' parameter, expected >= 0")
    return int(param.int64_param)


def _check_shared_memory_parameters(params: Mapping[str, pb.InferParameter], tensor: str) -> None:
    """Triton 2.51's gRPC rules and words for a tensor's shared-memory parameters."""
    region = params.get(REGION)
    if region is None:
        for key in (BYTE_SIZE, OFFSET):
            if key in params:
                raise invalid(
                    f"'{key}' can not be specified without '{REGION}' parameter for tensor "
                    f"'{tensor}'"
                )
        return
    if region.WhichOneof("parameter_choice") != "string_param":
        raise invalid(
            f"invalid value type for '{REGION}' parameter for tensor '{tensor}', expected "
            "string_param."
        )
    if BYTE_SIZE not in params:
        raise invalid(
            f"'{BYTE_SIZE}' must be specified along with '{REGION}' parameter for tensor '{tensor}'"
        )


def _parameter_values(params: Mapping[str, pb.InferParameter]) -> dict[str, ParamValue]:
    """A tensor's parameters as plain values (unset ones left out)."""
    values: dict[str, ParamValue] = {}
    for key, param in params.items():
        kind = param.WhichOneof("parameter_choice")
        if kind is not None:
            values[key] = getattr(param, kind)
    return values


# The value kinds Triton 2.51's gRPC front end takes for the request parameters it reads
# itself; any other parameter may be of any kind but uint64.
_KINDS = {
    "sequence_id": ("int64_param", "string_param"),
    "sequence_start": ("bool_param",),
    "sequence_end": ("bool_param",),
    "priority": ("int64_param", "uint64_param"),
    "timeout": ("int64_param",),
    EMPTY_FINAL_RESPONSE: ("bool_param",),
}
_ANY_KIND = ("int64_param", "bool_param", "string_param", "double_param")


def _decode_parameters(params: Mapping[str, pb.InferParameter]) -> Params:
    """Request parameters as plain values (uint64 becomes int), refused in Triton 2.51's words
    where its rules refuse them; the empty-final-response flag is left out."""
    decoded: Params = {}
    for key, param in params.items():
        if key.startswith("triton_") and key != EMPTY_FINAL_RESPONSE:
            raise invalid(
                "parameter keys starting with 'triton_' are reserved for Triton usage. Only the "
                f"following keys starting with 'triton_' are allowed: {EMPTY_FINAL_RESPONSE}"
            )
        kind = param.WhichOneof("parameter_choice")
        kinds = _KINDS.get(key)
        if kind not in (kinds or _ANY_KIND):
            expected = " or ".join(kinds) if kinds else "int64_param, bool_param, or string_param"
            raise invalid(f"invalid value type for '{key}' parameter, expected {expected}.")
        if key != EMPTY_FINAL_RESPONSE:
            decoded[key] = getattr(param, kind)
    return decoded


# ---------------------------------------------------------------------------------------------
# Responses


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse()
    _fill_response(message, response)
    return message


# Set on every response of a ModelStreamInfer call: whether it is its request's last.
FINAL_RESPONSE = "triton_final_response"


def encode_stream_response(
    response: InferResponse, final: bool = True
) -> pb.ModelStreamInferResponse:
    message = pb.ModelStreamInferResponse()
    infer_response = message.infer_response
    _fill_response(infer_response, response)  # in place: no copy of the tensors
    infer_response.parameters[FINAL_RESPONSE].bool_param = final
    return message


def encode_empty_final(request_id: str, model: str) -> pb.ModelStreamInferResponse:
    """A decoupled request's final flag without a response, when the client asked for it
    (Triton sends the model name and id, no version, no outputs)."""
    message = pb.ModelStreamInferResponse()
    infer_response = message.infer_response
    infer_response.model_name = model
    infer_response.id = request_id
    infer_response.parameters[FINAL_RESPONSE].bool_param = True
    return message


def encode_stream_error(request_id: str, message: str) -> pb.ModelStreamInferResponse:
    """A failed request on a stream: the error text, and of the response only the id."""
    return pb.ModelStreamInferResponse(
        error_message=message, infer_response=pb.ModelInferResponse(id=request_id)
    )


def encode_stream_response_error(
    request_id: str, model: str, message: str, final: bool
) -> pb.ModelStreamInferResponse:
    """An error response of a request the model took (its execution failed, or a decoupled
    model sent an error): Triton adds the model name and the final-response flag."""
    reply = encode_stream_error(request_id, message)
    reply.infer_response.model_name = model
    reply.infer_response.parameters[FINAL_RESPONSE].bool_param = final
    return reply


def _fill_response(message: pb.ModelInferResponse, response: InferResponse) -> None:
    message.model_name = response.model_name
    message.model_version = response.model_version
    if response.id:
        message.id = response.id
    add_output = message.outputs.add
    add_raw = message.raw_output_contents.append
    shared = response.in_shared_memory
    own = response.output_parameters
    for name, datatype, array in response.outputs:
        output = add_output(name=name, datatype=datatype.value, shape=array.shape)
        if own and name in own:
            for key, value in own[name].items():
                _encode_parameter(output.parameters[key], value)
        # An output in the client's shared memory keeps its (empty) entry, as in Triton.
        add_raw(b"" if shared and name in shared else _tensor_bytes(name, datatype, array))
    for key, value in response.parameters.items():
        _encode_parameter(message.parameters[key], value)


def _tensor_bytes(name: str, datatype: DataType, array: np.ndarray) -> bytes:
    if datatype is DataType.BYTES:
        return pack_bytes(name, array)
    # Row-major, native little-endian; one copy, into the message.
    return array.astype(datatype.numpy, copy=False).tobytes()


def _encode_parameter(param: pb.InferParameter, value: ParamValue) -> None:
    if isinstance(value, bool):  # before int: bool is an int subclass
        param.bool_param = value
    elif isinstance(value, int):
        if value > _INT64_MAX:
            param.uint64_param = value
        else:
            param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = value
