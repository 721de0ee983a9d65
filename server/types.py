"""Protocol-neutral vocabulary of the data plane: datatypes, requests, responses.

Leaf module: front doors decode into these, backends only ever see numpy arrays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from inferd.server.errors import InferdError

# A request or response parameter value, as both protocols can carry it.
ParamValue = bool | int | float | str
Params = dict[str, ParamValue]

if TYPE_CHECKING:
    from inferd.batching.decoupled import SendCredits
    from inferd.server.tracing import Trace


class DataType(StrEnum):
    """The v2 protocol datatype names (HTTP and gRPC spell them the same)."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"
    BF16 = "BF16"

    @property
    def numpy(self) -> np.dtype[Any]:
        return _TO_NUMPY[self]

    @property
    def itemsize(self) -> int:
        """Bytes per element on the wire; 0 for BYTES (variable length)."""
        return 0 if self is DataType.BYTES else _TO_NUMPY[self].itemsize

    @property
    def config_name(self) -> str:
        """The `data_type` enum name used in config.pbtxt (TYPE_STRING for BYTES)."""
        return "TYPE_STRING" if self is DataType.BYTES else f"TYPE_{self.value}"

    @classmethod
    def from_config_name(cls, name: str) -> DataType:
        if name == "TYPE_STRING":
            return cls.BYTES
        return cls(name.removeprefix("TYPE_"))

    @classmethod
    def from_numpy(cls, dtype: np.dtype[Any]) -> DataType:
        try:
            return _FROM_NUMPY[np.dtype(dtype)]
        except KeyError:
            if dtype.kind in "OSU":
                return cls.BYTES
            raise


_TO_NUMPY: dict[DataType, np.dtype[Any]] = {
    DataType.BOOL: np.dtype(np.bool_),
    DataType.UINT8: np.dtype(np.uint8),
    DataType.UINT16: np.dtype(np.uint16),
    DataType.UINT32: np.dtype(np.uint32),
    DataType.UINT64: np.dtype(np.uint64),
    DataType.INT8: np.dtype(np.int8),
    DataType.INT16: np.dtype(np.int16),
    DataType.INT32: np.dtype(np.int32),
    DataType.INT64: np.dtype(np.int64),
    DataType.FP16: np.dtype(np.float16),
    DataType.FP32: np.dtype(np.float32),
    DataType.FP64: np.dtype(np.float64),
    DataType.BYTES: np.dtype(np.object_),
    DataType.BF16: np.dtype(ml_dtypes.bfloat16),
}
_FROM_NUMPY: dict[np.dtype[Any], DataType] = {
    dt: name for name, dt in _TO_NUMPY.items() if name is not DataType.BYTES
}

# Wire datatype string -> DataType, for decoders (faster and clearer than Enum lookup by value).
DATATYPES: dict[str, DataType] = {d.value: d for d in DataType}


@dataclass(frozen=True, slots=True)
class SharedMemoryRef:
    """Where a tensor lies in a registered shared-memory region (the shared-memory extension)."""

    region: str
    byte_size: int
    offset: int = 0


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for, with the protocol-neutral options."""

    name: str
    classification: int = 0  # top-k classification extension; 0 = return the tensor
    shared_memory: SharedMemoryRef | None = None  # write it there instead of answering it


@dataclass(slots=True)
class ComputeTimes:
    """The compute time of the batches some requests ran in, summed: an ensemble request's
    steps add theirs, since Triton reports an ensemble's compute time as its steps' sum."""

    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str  # "" = let the version policy choose
    inputs: dict[str, np.ndarray]
    id: str = ""
    parameters: Params = field(default_factory=dict)
    # None = every output of the model.
    outputs: list[RequestedOutput] | None = None
    arrival_ns: int = field(default_factory=time.monotonic_ns)
    trace: Trace | None = None  # when the trace extension sampled this request
    compute: ComputeTimes | None = None  # an ensemble step's: where its compute time adds up
    # An ensemble's decoupled step under max_inflight_requests: each of the model's sends
    # takes a credit, waiting while the steps after it are full (back-pressure).
    send_credits: SendCredits | None = None
    # Each input's own parameters beyond the protocol's (binary_data_size, shared memory):
    # MLServer models read them (a `content_type`); empty for most requests.
    input_parameters: dict[str, Params] = field(default_factory=dict)
    # The HTTP headers or gRPC metadata it came with (names in lower case), for a model that
    # reads them: an MLServer model's `parameters.headers`. None for any other.
    headers: dict[str, str] | None = None


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    # In the order of the model's Triton backend (OutputOrder); front doors emit them so.
    outputs: list[tuple[str, DataType, np.ndarray]]
    id: str = ""
    parameters: Params = field(default_factory=dict)
    # Outputs already written to the client's shared memory: answered without their data.
    in_shared_memory: frozenset[str] = frozenset()
    # Outputs' own parameters, by name (an MLServer model's content_type).
    output_parameters: Mapping[str, Params] = field(default_factory=dict)
    # Headers the model set for the answer (an MLServer model's `parameters.headers`).
    headers: Mapping[str, str] | None = None


# A streamed answer on the loop: a response, an error, or None (a decoupled model's final flag
# without a response); and whether it is the request's last.
OnStreamResponse = Callable[[InferResponse | InferdError | None, bool], None]
Cancel = Callable[[], None]  # drops a request whose client left


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: DataType
    shape: tuple[int, ...]  # full shape as clients see it: -1 for the batch dim and variable dims


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModelIndexEntry:
    name: str
    version: str = ""
    state: str = ""
    reason: str = ""
