"""inferd's `triton_python_backend_utils`: the API that Triton python-backend models import as
`pb_utils`, implemented over numpy so that their model.py runs unchanged.

The python backend (python.py) registers this module under Triton's name when a python model
loads; nothing here runs at import time and nothing here holds state, so one module serves
every model. A BLS call (`InferenceRequest(...).exec()`) finds the server through a context
variable that the calling instance sets around its own `execute()`: the value lives in that
call's context only; custom metrics find the instance's holder the same way. What inferd
cannot do raises TritonModelException naming the feature, never an AttributeError.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import ml_dtypes
import numpy as np

from inferd.backends.base import ModelCalls
from inferd.backends.python_autocomplete import AutoCompleteConfig
from inferd.backends.python_dlpack import DLPackError, from_dlpack, to_dlpack
from inferd.backends.python_metrics import (
    CustomMetrics,
    MetricError,
    MetricKind,
    MetricsHolder,
    Series,
)
from inferd.server.errors import ErrorCode, InferdError, ModelError
from inferd.server.model_calls import AnswerStream
from inferd.server.repository_codec import FILE_PREFIX
from inferd.server.types import InferRequest, InferResponse, ParamValue, RequestedOutput

if TYPE_CHECKING:
    from inferd.server.tracing import Trace

__all__ = [
    "TRITONSERVER_MEMORY_CPU",
    "TRITONSERVER_MEMORY_GPU",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_REQUEST_RELEASE_ALL",
    "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "InferenceRequest",
    "InferenceResponse",
    "InferenceTrace",
    "LogLevel",
    "Logger",
    "MemoryType",
    "Metric",
    "MetricFamily",
    "ModelConfig",
    "PreferredMemory",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "deserialize_bytes_tensor",
    "get_input_config_by_name",
    "get_input_tensor_by_name",
    "get_model_dir",
    "get_output_config_by_name",
    "get_output_tensor_by_name",
    "is_model_ready",
    "load_model",
    "numpy_to_triton_type",
    "serialize_byte_tensor",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
    "unload_model",
    "using_decoupled_model_transaction_policy",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# The object a model's auto_complete_config() receives, under the name Triton gives it.
ModelConfig = AutoCompleteConfig

# Request flags (TRITONSERVER_RequestFlag) and the final-response flag of Triton's C API.
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
# Release flags (TRITONSERVER_RequestReleaseFlag): done with the request, or run it again.
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2


def triton_json(value: Any) -> str:
    """JSON as Triton's C++ side writes what it hands a model: compact, text as UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class MemoryType(IntEnum):
    """Where a BLS caller would like its outputs (TRITONSERVER_MemoryType's values)."""

    TRITONSERVER_MEMORY_GPU = 0
    TRITONSERVER_MEMORY_CPU = 1


TRITONSERVER_MEMORY_GPU = MemoryType.TRITONSERVER_MEMORY_GPU
TRITONSERVER_MEMORY_CPU = MemoryType.TRITONSERVER_MEMORY_CPU


class PreferredMemory:
    """`InferenceRequest(..., preferred_memory=PreferredMemory(TRITONSERVER_MEMORY_GPU, 0))`:
    a hint; python models hold host memory here, so BLS outputs always come on the CPU."""

    def __init__(self, preferred_memory_type: MemoryType, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = MemoryType(preferred_memory_type)
        self.preferred_device_id = int(preferred_device_id)


class InferenceTrace:
    """`request.trace()`: what a BLS request passes on as `trace=`, to be traced as a child of
    the request (when the trace extension sampled it)."""

    def __init__(self, trace: Trace | None = None) -> None:
        self._trace = trace

    def get_context(self) -> str | None:
        """In the OpenTelemetry trace mode, the request's W3C trace context as JSON
        (`{"traceparent": ...}`) for the model's own calls; None otherwise, as in Triton."""
        if self._trace is None:
            return None
        traceparent = self._trace.traceparent()
        return None if traceparent is None else json.dumps({"traceparent": traceparent})

    def _child(self, model_name: str) -> Trace | None:
        return None if self._trace is None else self._trace.child(model_name)


UNTRACED = InferenceTrace()  # what untraced requests share (most of them)


# config.pbtxt data_type names -> numpy scalar types, as models look them up.
TRITON_STRING_TO_NUMPY: Mapping[str, type[Any]] = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
    "TYPE_BF16": ml_dtypes.bfloat16,
}

# TRITONSERVER_DataType codes, in enum order (0 is TRITONSERVER_TYPE_INVALID).
_TYPE_CODES: tuple[type[Any], ...] = (
    np.bool_,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
    np.object_,
    ml_dtypes.bfloat16,
)
_BYTES_CODE = 13
_LENGTH = struct.Struct("<I")


def triton_string_to_numpy(triton_type_string: str) -> type[Any]:
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int) -> type[Any] | None:
    return _TYPE_CODES[data_type - 1] if 1 <= data_type <= len(_TYPE_CODES) else None


def numpy_to_triton_type(data_type: Any) -> int | None:
    """The TRITONSERVER_DataType code of a numpy dtype or scalar type (None when it has none)."""
    dtype = np.dtype(data_type)
    if dtype.kind in "OS":
        return _BYTES_CODE
    for code, scalar in enumerate(_TYPE_CODES, start=1):
        if dtype == np.dtype(scalar):
            return code
    return None


def serialize_byte_tensor(input_tensor: np.ndarray) -> bytes:
    """BYTES elements, row-major, each as a 4-byte little-endian length and its bytes."""
    parts: list[bytes] = []
    for item in input_tensor.ravel().tolist():
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts += (_LENGTH.pack(len(data)), data)
    return b"".join(parts)


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    """The inverse of serialize_byte_tensor: a flat object array of bytes."""
    data = bytes(encoded_tensor)
    items: list[bytes] = []
    offset = 0
    while offset < len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += 4
        items.append(data[offset : offset + length])
        offset += length
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array


def _dlpack_call(call: Callable[[], _T]) -> _T:
    try:
        return call()
    except DLPackError as exc:
        raise TritonModelException(str(exc)) from None


@dataclass(slots=True)
class BlsContext:
    """What a call to the server from model code needs: the way to the server, the calling
    model (which may not call itself: its instance would wait for itself) and the method that
    runs (`execute`, `initialize` or `finalize`): models may be called during execute() only,
    loaded and unloaded during all three, as in Triton. `called`: the model has made a call
    from this method (one that waits for the server: never from the event loop's thread)."""

    calls: ModelCalls
    model_name: str
    method: str = "execute"
    called: bool = False


# Set by the python backend around initialize(), execute() (and copied into its coroutines)
# and finalize(); unset elsewhere.
BLS_CONTEXT: ContextVar[BlsContext] = ContextVar("inferd_bls_context")
# The execute() context of each loaded instance, by its model.py's globals (each instance
# loads its own module): for calls from threads the model started, which see no context.
_MODEL_GLOBALS: dict[int, BlsContext] = {}


def register_model_globals(model_globals: dict[str, Any], context: BlsContext) -> None:
    _MODEL_GLOBALS[id(model_globals)] = context


def unregister_model_globals(model_globals: dict[str, Any]) -> None:
    _MODEL_GLOBALS.pop(id(model_globals), None)


def _calling_context() -> BlsContext | None:
    """The context of the method that runs, or, on a thread the model started (Triton lets
    those call: a decoupled model answers from them), the execute() context of the instance
    whose model.py code is on the stack."""
    context = BLS_CONTEXT.get(None)
    if context is not None or not _MODEL_GLOBALS:
        return context
    frame = sys._getframe(1)
    while frame is not None:
        found = _MODEL_GLOBALS.get(id(frame.f_globals))
        if found is not None:
            return found
        frame = frame.f_back  # type: ignore[assignment]
    return None


# The custom metrics of the instance whose initialize(), execute() or finalize() is running.
METRICS_CONTEXT: ContextVar[MetricsHolder] = ContextVar("inferd_metrics_context")
# The folder of that instance's model.py (its version folder), for get_model_dir().
MODEL_DIR: ContextVar[str] = ContextVar("inferd_model_dir")


def get_model_dir() -> str:
    """The folder of the calling model's model.py (its version folder), as Triton gives it."""
    model_dir = MODEL_DIR.get(None)
    if model_dir is None:
        raise TritonModelException(
            "get_model_dir() can only be called from the model's own methods"
        )
    return model_dir


# ---- errors ------------------------------------------------------------------------------------


class TritonError(Exception):
    """An error a model reports, for one response (`InferenceResponse(error=...)`) or raised.
    The code decides the protocol status the client sees."""

    UNKNOWN: ClassVar[int] = 0
    INTERNAL: ClassVar[int] = 1
    NOT_FOUND: ClassVar[int] = 2
    INVALID_ARG: ClassVar[int] = 3
    UNAVAILABLE: ClassVar[int] = 4
    UNSUPPORTED: ClassVar[int] = 5
    ALREADY_EXISTS: ClassVar[int] = 6
    CANCELLED: ClassVar[int] = 7

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


# TritonError codes as the error codes of inferd's data plane; UNKNOWN and INTERNAL (and codes
# inferd does not know) are internal errors.
ERROR_CODES: Mapping[int, ErrorCode] = {
    TritonError.INVALID_ARG: ErrorCode.INVALID_ARG,
    TritonError.NOT_FOUND: ErrorCode.NOT_FOUND,
    TritonError.UNAVAILABLE: ErrorCode.UNAVAILABLE,
    TritonError.UNSUPPORTED: ErrorCode.UNSUPPORTED,
    TritonError.ALREADY_EXISTS: ErrorCode.ALREADY_EXISTS,
    TritonError.CANCELLED: ErrorCode.CANCELLED,
}


_TRITON_CODES = {ours: theirs for theirs, ours in ERROR_CODES.items()}


class TritonModelException(Exception):
    """Raised by the API (and by models) for a failure; an internal error for the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._message = message

    def message(self) -> str:
        return self._message


# ---- tensors, requests, responses --------------------------------------------------------------


class Tensor:
    """A named tensor in CPU memory, holding a numpy array (no copy)."""

    __slots__ = ("_array", "_name")

    def __init__(self, name: str, numpy_array: Any) -> None:
        # Anything numpy can view as an array is accepted, as Triton's binding does.
        array = np.asarray(numpy_array)
        if array.dtype.kind in "UV" and array.dtype != ml_dtypes.bfloat16:
            raise TritonModelException(
                f"tensor '{name}': numpy dtype {array.dtype} is not supported; hold strings as "
                "bytes in an np.object_ array"
            )
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def is_cpu(self) -> bool:
        return True  # inferd hands python models host memory only

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int | None:
        return numpy_to_triton_type(self._array.dtype)

    def to_dlpack(self) -> Any:
        """A DLPack capsule over this tensor's memory (no copy)."""
        return _dlpack_call(lambda: to_dlpack(self._array))

    def __dlpack__(
        self, *, stream: Any = None, max_version: tuple[int, int] | None = None, **_: Any
    ) -> Any:
        # Host memory: no stream to order against (the array API asks for None on CPU).
        return _dlpack_call(lambda: to_dlpack(self._array, max_version))

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU, device 0

    @staticmethod
    def from_dlpack(name: str, dlpack_tensor: Any) -> Tensor:
        """A tensor over a DLPack capsule or an object with `__dlpack__` (a PyTorch, JAX or CuPy
        tensor): the same memory for a host tensor, a host copy for a CUDA one."""
        if not name:
            raise TritonModelException("Tensor name cannot be an empty string.")
        return Tensor(name, _dlpack_call(lambda: from_dlpack(dlpack_tensor)))

    @classmethod
    def handed_over(cls, name: str, array: np.ndarray) -> Tensor:
        """A tensor the server gives the model (a request's input, a BLS call's output): the
        model's to change in place, as in Triton, whose stub gets its own copy in shared memory.
        Read-only arrays (views of a request's bytes or of a client's shared-memory region,
        answers shared with the response cache) are copied; the rest are the model's already."""
        return cls(name, array if array.flags.writeable else array.copy())

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={self.shape()}, dtype={self._array.dtype})"


def _text(value: str | bytes) -> str:
    """A name given as bytes, as a BYTES tensor's element is (Triton's std::string arguments
    take both; its BLS example passes `as_numpy()[0]` of a model-name input)."""
    return value.decode() if isinstance(value, bytes) else value


class InferenceRequest:
    """A request handed to `execute()`, or one a model builds to call another model of this
    server (BLS): `exec()` runs it and returns its InferenceResponse."""

    def __init__(
        self,
        model_name: str = "",
        inputs: Sequence[Tensor] = (),
        requested_output_names: Sequence[str] = (),
        correlation_id: int | str = 0,
        request_id: str = "",
        flags: int = 0,
        timeout: int = 0,
        parameters: Mapping[str, Any] | str | None = None,
        model_version: int = -1,
        trace: InferenceTrace | None = None,
        **_bls_options: Any,  # preferred_memory: a hint with no effect here
    ) -> None:
        self._trace = trace if trace is not None else UNTRACED
        self._model_name = _text(model_name)
        self._model_version = model_version
        self._inputs = list(inputs)
        self._requested = [_text(name) for name in requested_output_names]
        self._correlation_id = correlation_id
        self._request_id = _text(request_id)
        self._flags = flags
        self._timeout = timeout
        self._parameters = parameters or {}

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        if not isinstance(flags, int):
            raise TypeError(f"set_flags(): flags must be an int, not {type(flags).__name__}")
        self._flags = flags

    def trace(self) -> InferenceTrace:
        return self._trace

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        """The request's own parameters as a JSON object (Triton's reserved ones left out)."""
        if isinstance(self._parameters, str):
            return self._parameters
        return triton_json(dict(self._parameters))

    def requested_output_names(self) -> set[str]:
        """A set, as Triton's is (a model may test membership or use set operations)."""
        return set(self._requested)

    def model_name(self) -> str:
        return self._model_name

    def is_cancelled(self) -> bool:
        return False  # a request that reached execute() is answered

    # The requests the python backend hands to execute() have a response sender
    # (python_sender.py): set up front for decoupled models, made on first use otherwise.
    _response_sender: Any = None

    def get_response_sender(self) -> Any:
        sender = self._response_sender
        if sender is None:
            sender = self._response_sender = self._new_response_sender()
        return sender

    def _new_response_sender(self) -> Any:
        raise TritonModelException(
            "InferenceRequest.get_response_sender(): only the requests handed to execute() "
            "have a response sender"
        )

    def exec(self, decoupled: bool = False) -> Any:
        """Run this request on its model and wait for the answer (BLS). A failure comes back as
        the response's error, as in Triton. With `decoupled`, an iterator of the responses as
        they come (for any model; a decoupled one may send 0..n)."""
        context = self._bls_context()
        if decoupled:
            return ResponseIterator(context.calls.stream(self._as_infer_request()))
        try:
            answer = context.calls.infer(self._as_infer_request())
        except InferdError as error:
            return _bls_error(error)
        return _bls_response(answer)

    async def async_exec(self, decoupled: bool = False) -> Any:
        """exec() for `async def execute()`: several calls may run at once (asyncio.gather)."""
        context = self._bls_context()
        if decoupled:
            return ResponseIterator(context.calls.stream(self._as_infer_request()))
        try:
            answer = await context.calls.infer_async(self._as_infer_request())
        except InferdError as error:
            return _bls_error(error)
        return _bls_response(answer)

    def _bls_context(self) -> BlsContext:
        context = _calling_context()
        if context is None or context.method != "execute":  # Triton's words
            raise TritonModelException("BLS is only supported during the 'execute' function.")
        context.called = True
        if self._model_name == context.model_name:
            raise TritonModelException(
                f"model '{self._model_name}' cannot call itself: its instance would wait for itself"
            )
        return context

    def _as_infer_request(self) -> InferRequest:
        params = self._parameters
        # Checked as Triton checks a BLS request's parameters (it does when building it).
        parameters = _checked_parameters(json.loads(params) if isinstance(params, str) else params)
        if self._timeout:
            parameters["timeout"] = self._timeout  # µs in the queue, Triton's request timeout
        if self._correlation_id:  # a request of a sequence, to a stateful model
            parameters["sequence_id"] = self._correlation_id
            flags = self._flags
            parameters["sequence_start"] = bool(flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_START)
            parameters["sequence_end"] = bool(flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_END)
        return InferRequest(
            model_name=self._model_name,
            model_version="" if self._model_version < 0 else str(self._model_version),
            inputs={tensor.name(): tensor.as_numpy() for tensor in self._inputs},
            id=self._request_id,
            parameters=parameters,
            outputs=[RequestedOutput(name) for name in self._requested] or None,
            trace=self._trace._child(self._model_name),
        )

    # How execute() releases the request: RESCHEDULE runs it again in a later batch (an
    # iterative sequence model's; read by the python backend once execute() returned).
    _release_flags: int = TRITONSERVER_REQUEST_RELEASE_ALL

    def set_release_flags(self, flags: int) -> None:
        if flags not in (TRITONSERVER_REQUEST_RELEASE_ALL, TRITONSERVER_REQUEST_RELEASE_RESCHEDULE):
            raise TritonModelException(
                f"set_release_flags(): unknown release flags {flags!r} (expected "
                "TRITONSERVER_REQUEST_RELEASE_ALL or TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)"
            )
        self._release_flags = flags


class InferenceResponse:
    """The answer to one request: output tensors, or an error for that request alone."""

    def __init__(
        self,
        output_tensors: Sequence[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: dict[str, bool | int | str] | None = None,
    ) -> None:
        if output_tensors is not None and not isinstance(output_tensors, list | tuple):
            raise TritonModelException('"output_tensors" must be a list.')
        if error is not None and not isinstance(error, TritonError):  # Triton: a TypeError
            raise TypeError(
                f"InferenceResponse(error=...) takes a pb_utils.TritonError, got "
                f"{type(error).__name__}"
            )
        self._outputs = list(output_tensors or ())
        self._error = error
        self._parameters: dict[str, ParamValue] = _checked_parameters(parameters)

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        """The response's parameters as a JSON object."""
        return json.dumps(self._parameters)


def response_parameters(response: InferenceResponse) -> dict[str, ParamValue]:
    """What the server sends as the response's parameters."""
    return response._parameters


def _checked_parameters(parameters: object) -> dict[str, ParamValue]:
    """A model's response parameters, checked as Triton does (its messages): a dict of str
    keys and bool, int or str values, the types the protocol carries."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise TritonModelException(f"Expect parameters to have type dict, got {type(parameters)}")
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise TritonModelException(
                f"Expect parameters keys to have type str, found type {type(key)}"
            )
        if not isinstance(value, bool | int | str):
            raise TritonModelException(
                f"Expect parameters values to have type bool/int/str, found type {type(value)}"
            )
    return dict(parameters)


def _bls_response(answer: InferResponse) -> InferenceResponse:
    response = InferenceResponse(
        [Tensor.handed_over(name, array) for name, _, array in answer.outputs]
    )
    response._parameters = dict(answer.parameters)  # the called model's, as its client sees them
    return response


def _bls_error(error: InferdError) -> InferenceResponse:
    # As in Triton, a call the server failed is the caller's internal error (a model that passes
    # it on must not tell its client 404 or 400), but for a cancelled one. An error the called
    # model answered with keeps its code, as Triton's python backend passes it on since the fix
    # of server#7804 (its examples/bls_error_code).
    if isinstance(error, ModelError):
        code = _TRITON_CODES.get(error.code, TritonError.INTERNAL)
    elif error.code is ErrorCode.CANCELLED:
        code = TritonError.CANCELLED
    else:
        code = TritonError.INTERNAL
    return InferenceResponse(error=TritonError(error.message, code))


class ResponseIterator:
    """What exec(decoupled=True) returns: the called model's responses in the order it sent
    them, each read as it arrives (iterating blocks until the next one is in). When the model
    ends with the final flag alone, the last response has no outputs, as in Triton."""

    def __init__(self, stream: AnswerStream) -> None:
        self._stream = stream
        self._done = False

    def __iter__(self) -> ResponseIterator:
        return self

    def __next__(self) -> InferenceResponse:
        if self._done:
            raise StopIteration
        answer, self._done = self._stream.get()
        if answer is None:
            return InferenceResponse([])
        if isinstance(answer, InferdError):
            return _bls_error(answer)
        return _bls_response(answer)

    def cancel(self) -> None:
        """Ask the called model to stop: a request still queued never runs, a decoupled model
        sees is_cancelled(). The responses in so far still come, then a CANCELLED error."""
        self._stream.cancel()


# ---- model control (Triton's model loading API) --------------------------------------------


def load_model(model_name: str, config: str = "", files: Mapping[str, bytes] | None = None) -> None:
    """Load or reload a model of this server (explicit model control mode only) and wait
    until it serves. `config`: a JSON model config used instead of config.pbtxt; `files`:
    `"file:<path>"` -> content, the whole model folder (with `config`), as the repository
    API takes them. A model reloading itself from execute() is reloaded after it returns."""
    _check_str("load_model", model_name=model_name, config=config)
    folder = _model_files(files or {})
    context, own = _control_context(model_name)
    try:
        # A model reloading itself does not wait for it: it is no requester to wait for.
        requester = "" if own else context.model_name
        context.calls.load(model_name, config or None, folder, not own, requester)
    except InferdError as error:
        raise TritonModelException(f"Failed to load model: {error.message}") from None


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    """Unload every version of a model (explicit model control mode only) and wait until its
    requests are done. A model unloading itself from execute() goes after it returns."""
    _check_str("unload_model", model_name=model_name)
    context, own = _control_context(model_name)
    try:
        context.calls.unload(model_name, bool(unload_dependents), wait=not own)
    except InferdError as error:
        raise TritonModelException(f"Failed to unload model: {error.message}") from None


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    """Whether the model serves (the version asked for, or any)."""
    _check_str("is_model_ready", model_name=model_name, model_version=model_version)
    context = _server_context()
    try:
        return context.calls.ready(model_name, model_version)
    except InferdError as error:
        raise TritonModelException(f"Failed to check model readiness: {error.message}") from None


def _check_str(function: str, **arguments: object) -> None:
    for name, value in arguments.items():
        if not isinstance(value, str):
            raise TypeError(f"{function}(): {name} must be a str, not {type(value).__name__}")


def _model_files(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The `file:` entries as paths in the model folder; other keys mean nothing, as on the
    repository API."""
    folder: dict[str, bytes] = {}
    for key, content in files.items():
        if not isinstance(content, bytes):  # Triton's words
            raise TypeError(
                f"Object of type '{type(content).__name__}' is not an instance of 'bytes'"
            )
        if isinstance(key, str) and key.startswith(FILE_PREFIX):
            folder[key.removeprefix(FILE_PREFIX)] = content
    return folder


def _server_context() -> BlsContext:
    context = _calling_context()
    if context is None:
        raise TritonModelException(
            "the model loading API can only be used during initialize(), execute() or finalize()"
        )
    context.called = True
    return context


def _control_context(model_name: str) -> tuple[BlsContext, bool]:
    """The caller's context, and whether it asks about itself: from execute(), the change is
    made once execute() has returned (unloading waits for it); it is refused elsewhere."""
    context = _server_context()
    own = model_name == context.model_name
    if own and context.method != "execute":
        raise TritonModelException(
            f"model '{model_name}' cannot load or unload itself during {context.method}()"
        )
    return context, own


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in inference_request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in inference_response.output_tensors() if t.name() == name), None)


# ---- the model config (a dict parsed from args["model_config"]) -------------------------------


def get_input_config_by_name(model_config: Mapping[str, Any], name: str) -> Any:
    return next((t for t in model_config.get("input", ()) if t["name"] == name), None)


def get_output_config_by_name(model_config: Mapping[str, Any], name: str) -> Any:
    return next((t for t in model_config.get("output", ()) if t["name"] == name), None)


def using_decoupled_model_transaction_policy(model_config: Mapping[str, Any]) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


# ---- logging and metrics -----------------------------------------------------------------------


class LogLevel(IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


_LogLevel = LogLevel  # the name again, for use inside Logger (whose LogLevel shadows it)

_LOGGING_LEVELS = {
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
    LogLevel.VERBOSE: logging.DEBUG,
}


class Logger:
    """Triton's model logger, writing to Python logging (the server's log)."""

    LogLevel: ClassVar[type[_LogLevel]] = _LogLevel
    INFO = LogLevel.INFO
    WARNING = LogLevel.WARNING
    ERROR = LogLevel.ERROR
    VERBOSE = LogLevel.VERBOSE

    @staticmethod
    def log(message: str, level: _LogLevel = _LogLevel.INFO) -> None:
        log.log(_LOGGING_LEVELS.get(_LogLevel(level), logging.INFO), "%s", message)

    @staticmethod
    def log_info(message: str) -> None:
        log.info("%s", message)

    @staticmethod
    def log_warn(message: str) -> None:
        log.warning("%s", message)

    @staticmethod
    def log_error(message: str) -> None:
        log.error("%s", message)

    @staticmethod
    def log_verbose(message: str) -> None:
        log.debug("%s", message)


class MetricFamily:
    """Custom metrics (Triton's API), exported by the server's metrics endpoint. Families and
    metrics are made in initialize(), execute() or finalize(); metrics are updated from any
    thread. They disappear when the instance that made them unloads."""

    COUNTER: ClassVar[int] = MetricKind.COUNTER
    GAUGE: ClassVar[int] = MetricKind.GAUGE
    HISTOGRAM: ClassVar[int] = MetricKind.HISTOGRAM

    def __init__(self, name: str, description: str, kind: int) -> None:
        holder = METRICS_CONTEXT.get(None)
        if holder is None:
            raise TritonModelException(
                "pb_utils.MetricFamily can be made in initialize(), execute() or finalize() "
                "only (not from a thread of the model's own)"
            )
        self._holder = holder
        self._family = _metric_call(lambda: holder.family(name, description, kind))

    def Metric(
        self, labels: Mapping[str, str] | None = None, buckets: Sequence[float] | None = None
    ) -> Metric:
        series = _metric_call(lambda: self._holder.metric(self._family, labels, buckets))
        return Metric(self._holder.registry, series)


class Metric:
    """One metric of a family (made by MetricFamily.Metric)."""

    def __init__(self, registry: CustomMetrics, series: Series) -> None:
        self._registry = registry
        self._series = series

    def increment(self, value: float) -> None:
        _metric_call(lambda: self._registry.increment(self._series, value))

    def set(self, value: float) -> None:
        _metric_call(lambda: self._registry.set(self._series, value))

    def observe(self, value: float) -> None:
        _metric_call(lambda: self._registry.observe(self._series, value))

    def value(self) -> float:
        return _metric_call(lambda: self._registry.value(self._series))


def _metric_call(call: Callable[[], _T]) -> _T:
    try:
        return call()
    except MetricError as error:
        raise TritonModelException(str(error)) from None
