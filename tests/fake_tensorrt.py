"""A fake `tensorrt` module with TensorRT 10's runtime API (the calls inferd makes), for machines
without TensorRT or a GPU.

A "plan" is JSON made by `make_plan`: the engine's I/O tensors (name, mode, dtype, shape with
-1 for dynamic dims), its optimization profiles (min/opt/max per dynamic input), and for each
output the input it is computed from and a scale. `execute_async_v3` reads the inputs from the
addresses it was given (host memory, under the fake cupy), computes, and writes the outputs,
checking what real TensorRT checks: shapes within the active profile, every address set. An
output marked `data_dependent` holds its input's positive elements (scaled), a shape only the
data decides: as real TensorRT, it asks the output's IOutputAllocator for memory of that size,
then tells it the shape, and fails the enqueue when the output has none.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64}


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass

    def log(self, severity: int, msg: str) -> None:
        raise NotImplementedError


class IOutputAllocator:
    def __init__(self) -> None:
        pass


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


DataType = enum.Enum(
    "DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64"]
)


def make_plan(
    tensors: Sequence[Mapping[str, Any]],
    profiles: Sequence[Mapping[str, Sequence[Sequence[int]]]] = (),
    shape_tensors: Sequence[str] = (),
) -> bytes:
    """tensors: {"name", "mode": INPUT|OUTPUT, "dtype", "shape", and for outputs "of" (an
    input name), "scale"}; profiles: {input name: [min, opt, max]}."""
    plan = {"tensors": list(tensors), "profiles": list(profiles), "shape": list(shape_tensors)}
    return b"FAKEPLAN" + json.dumps(plan).encode()


@dataclass
class Calls:
    """What the code asked of TensorRT, for tests to check."""

    contexts: list[ExecutionContext] = field(default_factory=list)


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        assert isinstance(logger, ILogger)
        self._logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
        if not data.startswith(b"FAKEPLAN"):
            self._logger.log(Severity.ERROR, "IRuntime::deserializeCudaEngine: magic tag mismatch")
            return None
        return Engine(json.loads(data[len(b"FAKEPLAN") :]))


class Engine:
    def __init__(self, plan: dict[str, Any]) -> None:
        self._tensors = {t["name"]: t for t in plan["tensors"]}
        self._names = [t["name"] for t in plan["tensors"]]
        self._profiles: list[dict[str, list[list[int]]]] = plan["profiles"] or [{}]
        self._shape_tensors = set(plan["shape"])
        self.num_io_tensors = len(self._names)
        self.num_optimization_profiles = len(self._profiles)

    def get_tensor_name(self, index: int) -> str:
        return str(self._names[index])

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode[self._tensors[name]["mode"]]

    def get_tensor_dtype(self, name: str) -> Any:
        return DataType[self._tensors[name]["dtype"]]

    def get_tensor_shape(self, name: str) -> list[int]:
        return list(self._tensors[name]["shape"])

    def is_shape_inference_io(self, name: str) -> bool:
        return name in self._shape_tensors

    def get_tensor_profile_shape(self, name: str, index: int) -> list[list[int]]:
        return [list(s) for s in self._profiles[index][name]]

    def create_execution_context(self) -> ExecutionContext:
        context = ExecutionContext(self)
        CALLS.contexts.append(context)
        return context


class ExecutionContext:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.profile = 0
        self.profile_switches: list[int] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.allocators: dict[str, IOutputAllocator] = {}
        self.executions = 0

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        assert stream != 0
        self.profile = index
        self.profile_switches.append(index)
        self.shapes.clear()  # switching invalidates the input shapes, as in TensorRT
        return True

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        engine_shape = self.engine.get_tensor_shape(name)
        if len(shape) != len(engine_shape) or any(
            e != -1 and e != s for e, s in zip(engine_shape, shape, strict=True)
        ):
            return False
        if -1 in engine_shape:
            low, _, high = self.engine.get_tensor_profile_shape(name, self.profile)
            if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)):
                return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> list[int]:
        tensor = self.engine._tensors[name]
        if tensor["mode"] == "INPUT":
            return list(self.shapes.get(name, tensor["shape"]))
        if tensor.get("data_dependent"):
            return [-1 if d == -1 else d for d in tensor["shape"]]
        return list(self.shapes.get(tensor["of"], tensor["shape"]))

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def set_output_allocator(self, name: str, allocator: IOutputAllocator) -> bool:
        assert isinstance(allocator, IOutputAllocator)
        if self.engine.get_tensor_mode(name) != TensorIOMode.OUTPUT:
            return False
        self.allocators[name] = allocator
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        assert stream_handle != 0
        if set(self.addresses) != set(self.engine._names):
            return False
        inputs = {}
        for name, tensor in self.engine._tensors.items():
            if tensor["mode"] == "INPUT":
                if name not in self.shapes:
                    return False
                inputs[name] = _view(self.addresses[name], self.shapes[name], tensor["dtype"])
        for name, tensor in self.engine._tensors.items():
            if tensor["mode"] != "OUTPUT":
                continue
            source = inputs[tensor["of"]]
            result = source * tensor.get("scale", 1)
            address = self.addresses[name]
            if tensor.get("data_dependent"):
                result = result[source > 0]
                allocator: Any = self.allocators.get(name)
                if allocator is None:
                    return False  # TensorRT: such an output needs an allocator
                nbytes = result.size * np.dtype(_NUMPY[tensor["dtype"]]).itemsize
                address = allocator.reallocate_output_async(name, address, nbytes, 256, 1)
                if address is None:
                    return False
                allocator.notify_shape(name, list(result.shape))
            out = _view(address, result.shape, tensor["dtype"])
            out[...] = result
        self.executions += 1
        return True


def _view(address: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    numpy_type = np.dtype(_NUMPY[dtype])
    count = int(np.prod(shape)) if shape else 1
    raw = (ctypes.c_uint8 * (count * numpy_type.itemsize)).from_address(address)
    view: np.ndarray = np.frombuffer(memoryview(raw).cast("B"), dtype=numpy_type)
    return view.reshape(shape)


CALLS = Calls()


def install(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Put this fake in sys.modules as `tensorrt` for the test; what it was asked."""
    module = types.ModuleType("tensorrt")
    module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # find_spec() reads it
    calls = Calls()
    monkeypatch.setattr(sys.modules[__name__], "CALLS", calls)
    for name in ("ILogger", "IOutputAllocator", "Runtime", "TensorIOMode", "DataType"):
        setattr(module, name, globals()[name])
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return calls
