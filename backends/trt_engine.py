"""TensorRT engines through the `tensorrt` Python API: deserialize a plan, describe its inputs,
outputs and optimization profiles, and pick the profile a batch fits.

Only the name-based tensor API of TensorRT 10 is used (`num_io_tensors`, `get_tensor_name`,
`get_tensor_mode`, `get_tensor_dtype`, `get_tensor_shape`, `get_tensor_profile_shape`);
TensorRT 11 keeps those names, and its removals (weak typing, builder precision flags) concern
building engines, which inferd does not do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferd.backends.autocomplete import TensorSpec
from inferd.server.errors import invalid, unavailable, unsupported
from inferd.server.types import DataType

log = logging.getLogger(__name__)

# TensorRT DataType member names -> inferd datatypes (FP8, INT4, FP4 have no wire type).
_TRT_TYPES: Mapping[str, DataType] = {
    "FLOAT": DataType.FP32,
    "HALF": DataType.FP16,
    "BF16": DataType.BF16,
    "INT8": DataType.INT8,
    "UINT8": DataType.UINT8,
    "INT32": DataType.INT32,
    "INT64": DataType.INT64,
    "BOOL": DataType.BOOL,
}

Shape = tuple[int, ...]


def load_tensorrt() -> Any:
    """The tensorrt module, imported on first use."""
    try:
        import tensorrt
    except ImportError as exc:
        raise unavailable(
            f"the tensorrt backend needs TensorRT's Python package ({exc}): install the "
            "inferd[tensorrt] extra (it comes from NVIDIA's package index; see the README)"
        ) from None
    return tensorrt


@dataclass(frozen=True, slots=True)
class Profile:
    """One optimization profile: the shape range each input accepts."""

    index: int
    min: Mapping[str, Shape]
    max: Mapping[str, Shape]

    def accepts(self, shapes: Mapping[str, Shape]) -> bool:
        for name, shape in shapes.items():
            low, high = self.min[name], self.max[name]
            if len(shape) != len(low) or not all(
                lo <= d <= hi for lo, d, hi in zip(low, shape, high, strict=True)
            ):
                return False
        return True

    def describe(self) -> str:
        ranges = ", ".join(f"{n} {list(self.min[n])}..{list(self.max[n])}" for n in self.min)
        return f"profile {self.index}: {ranges}"


@dataclass(frozen=True, slots=True)
class EngineIo:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profiles: tuple[Profile, ...]

    @property
    def max_batch_size(self) -> int:
        """The largest batch every profile-bounded input takes, when every tensor's first dim
        is dynamic (the engine batches); else 0."""
        tensors = (*self.inputs, *self.outputs)
        if not tensors or not all(t.shape and t.shape[0] == -1 for t in tensors):
            return 0
        return min(max(p.max[t.name][0] for p in self.profiles) for t in self.inputs)

    def select_profile(self, shapes: Mapping[str, Shape], current: int) -> int:
        """The current profile if it holds these shapes (switching costs), else the first
        whose min..max range does."""
        ordered = sorted(self.profiles, key=lambda p: p.index != current)
        for profile in ordered:
            if profile.accepts(shapes):
                return profile.index
        given = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
        ranges = "; ".join(p.describe() for p in self.profiles)
        raise invalid(f"no optimization profile of the engine accepts {given} ({ranges})")


@dataclass(slots=True)
class LoadedEngine:
    """An engine and what must outlive it (TensorRT wants the runtime kept alive)."""

    engine: Any
    runtime: Any
    logger: Any


def load_engine(trt: Any, plan_file: Path) -> LoadedEngine:
    """Deserialize a plan on the calling thread's current CUDA device."""
    try:
        plan = plan_file.read_bytes()
    except OSError as exc:
        raise invalid(f"cannot read {plan_file}: {exc}") from None
    logger = _logger(trt)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:  # TensorRT reports why through the logger, not an exception
        why = "; ".join(logger.errors) or "no reason given"
        raise invalid(f"TensorRT cannot deserialize {plan_file}: {why}")
    return LoadedEngine(engine, runtime, logger)


def describe(trt: Any, engine: Any, plan_file: Path) -> EngineIo:
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.is_shape_inference_io(name):
            raise unsupported(f"{plan_file}: shape tensor '{name}' is not supported")
        dtype = engine.get_tensor_dtype(name)
        spec = TensorSpec(
            name=name,
            type_name=f"TensorRT {dtype.name}",
            datatype=_TRT_TYPES.get(dtype.name),
            shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
        )
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        (inputs if is_input else outputs).append(spec)
    profiles = tuple(
        _profile(engine, index, inputs) for index in range(max(1, engine.num_optimization_profiles))
    )
    return EngineIo(tuple(inputs), tuple(outputs), profiles)


def _profile(engine: Any, index: int, inputs: list[TensorSpec]) -> Profile:
    low: dict[str, Shape] = {}
    high: dict[str, Shape] = {}
    for spec in inputs:
        if -1 in spec.shape:
            smallest, _, largest = engine.get_tensor_profile_shape(spec.name, index)
            low[spec.name] = tuple(int(d) for d in smallest)
            high[spec.name] = tuple(int(d) for d in largest)
        else:
            low[spec.name] = high[spec.name] = spec.shape
    return Profile(index, low, high)


def output_allocator(trt: Any, reserve: Callable[[str, int], int]) -> Any:
    """A TensorRT IOutputAllocator for outputs whose shape the batch's data decides (NonZero,
    NMS): TensorRT asks it for device memory once it knows how much (`reserve(name, bytes)`,
    the instance's staging buffers, kept across batches) and then tells it the shape. What
    it gave and was told is in `addresses` and `shapes`, per batch (`clear()` before one)."""

    class StagingAllocator(trt.IOutputAllocator):  # type: ignore[misc]  # untyped framework class
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.addresses: dict[str, int] = {}
            self.shapes: dict[str, Shape] = {}

        def clear(self) -> None:
            self.addresses.clear()
            self.shapes.clear()

        def reallocate_output(
            self, tensor_name: str, memory: Any, size: int, alignment: int
        ) -> Any:
            try:
                address = reserve(tensor_name, int(size))
            except Exception:  # TensorRT fails the enqueue on None: the batch fails, not this
                log.exception("no device memory for TensorRT output '%s'", tensor_name)
                return None
            self.addresses[tensor_name] = address
            return address

        def reallocate_output_async(
            self, tensor_name: str, memory: Any, size: int, alignment: int, stream: Any
        ) -> Any:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

    return StagingAllocator()


def _logger(trt: Any) -> Any:
    """A TensorRT logger that keeps error messages (for the load failure's reason) and
    forwards warnings to the server log."""
    severity = trt.ILogger.Severity

    class CollectingLogger(trt.ILogger):  # type: ignore[misc]  # untyped framework class
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level: Any, message: str) -> None:
            if level in (severity.INTERNAL_ERROR, severity.ERROR):
                self.errors.append(message)
                log.error("TensorRT: %s", message)
            elif level == severity.WARNING:
                log.warning("TensorRT: %s", message)

    return CollectingLogger()
