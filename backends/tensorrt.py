"""TensorRT backend (`platform: tensorrt_plan`, file `model.plan`): per instance its own engine,
execution context and CUDA stream on one GPU; tensors bound by name, batch shapes matched to
the engine's optimization profiles.

Each instance deserializes its own engine, as Triton does for dynamic-shape engines: two
contexts must not use one profile of one engine at the same time.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from inferd.backends.autocomplete import (
    check_tensors,
    complete_max_batch_size,
    complete_tensors,
    restore_item_dims,
    scalar_items,
)
from inferd.backends.base import Backend, BackendSettings, Device, ModelInstance
from inferd.backends.cuda import CudaRuntime
from inferd.backends.gpu import GpuInfo
from inferd.backends.pinned_memory import PinnedMemoryPool
from inferd.backends.staging import IoStaging
from inferd.backends.trt_engine import (
    EngineIo,
    describe,
    load_engine,
    load_tensorrt,
    output_allocator,
)
from inferd.repository.config import ModelConfig, ModelConfigProto, OutputOrder
from inferd.server.errors import internal, invalid, unsupported


class TensorRtBackend(Backend):
    name = "tensorrt"
    output_order = OutputOrder.RETURNED  # the engine's order
    platforms = ("tensorrt_plan",)
    default_model_filename = "model.plan"

    @classmethod
    def complete_config(
        cls, config: ModelConfigProto, model_path: Path, settings: BackendSettings
    ) -> None:
        trt = load_tensorrt()
        io = describe(trt, load_engine(trt, model_path).engine, model_path)
        if not config.platform and not config.backend:
            config.platform = "tensorrt_plan"
        if settings.auto_complete:
            complete_max_batch_size(config, [*io.inputs, *io.outputs], io.max_batch_size)
            complete_tensors(config.input, io.inputs, config.max_batch_size, model_path)
            complete_tensors(config.output, io.outputs, config.max_batch_size, model_path)
        if config.max_batch_size > io.max_batch_size:
            raise invalid(
                f"max_batch_size {config.max_batch_size} is more than the engine {model_path} "
                f"takes: {io.max_batch_size} (the largest batch of its optimization profiles; "
                "0 when its first dims are fixed)"
            )
        batched = config.max_batch_size > 0
        check_tensors("input", config.input, io.inputs, batched, model_path)
        check_tensors("output", config.output, io.outputs, batched, model_path)

    @classmethod
    def gpu_unavailable_reason(cls, gpus: GpuInfo) -> str:
        missing = [m for m in ("tensorrt", "cupy") if importlib.util.find_spec(m) is None]
        if missing:
            return (
                f"{' and '.join(missing)} not installed (the inferd[gpu] and inferd[tensorrt] "
                "extras)"
            )
        return ""

    @classmethod
    def create_instance(
        cls, config: ModelConfig, model_path: Path, device: Device, settings: BackendSettings
    ) -> ModelInstance:
        if device.kind != "gpu":
            raise unsupported(
                f"model '{config.name}': TensorRT plans run only on GPUs, not on {device}"
            )
        trt = load_tensorrt()
        return TensorRtInstance(
            config, model_path, device, trt, CudaRuntime.load(), settings.pinned_memory
        )


class TensorRtInstance(ModelInstance):
    def __init__(
        self,
        config: ModelConfig,
        plan_file: Path,
        device: Device,
        trt: Any,
        cuda: CudaRuntime,
        pinned: PinnedMemoryPool,
    ) -> None:
        self._cuda, self._device = cuda, device.index
        cuda.use_device(device.index)  # the engine and its context live on the current device
        self._loaded = load_engine(trt, plan_file)
        self._io: EngineIo = describe(trt, self._loaded.engine, plan_file)
        self._context: Any = self._loaded.engine.create_execution_context()
        if self._context is None:
            raise invalid(f"{plan_file}: TensorRT cannot create an execution context on {device}")
        self._stream = cuda.stream(device.index)
        self._staging = IoStaging(cuda, device.index, self._stream, pinned)
        self._profile = 0  # a new context starts on profile 0
        self._batched = config.max_batch_size > 0
        self._scalar = scalar_items(
            (*config.inputs, *config.outputs), [*self._io.inputs, *self._io.outputs], self._batched
        )
        self._dtypes = {s.name: s.checked_datatype(plan_file).numpy for s in self._io.outputs}
        # The config's outputs, in the engine's order: the order answers list them in, as
        # Triton's TensorRT backend adds them by binding index.
        declared = {t.name for t in config.outputs}
        self._wanted = [s.name for s in self._io.outputs if s.name in declared]
        # Outputs whose shape only the batch's data decides get their memory from this once
        # TensorRT knows the size; made and set for such an output the first time it is seen.
        self._trt = trt
        self._allocator: Any = None
        self._data_dependent: set[str] = set()

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._cuda.use_device(self._device)  # the instance thread's current device
        context, stream = self._context, self._stream
        shapes = {
            name: array.shape[:-1] if name in self._scalar else array.shape
            for name, array in inputs.items()
        }
        missing = [s.name for s in self._io.inputs if s.name not in shapes]
        if missing:
            raise invalid(f"the TensorRT engine needs input(s) {', '.join(missing)}")
        profile = self._io.select_profile(shapes, self._profile)
        with self._staging.batch() as outputs:
            if profile != self._profile:
                context.set_optimization_profile_async(profile, stream.ptr)
                self._profile = profile
            for spec in self._io.inputs:
                if not context.set_input_shape(spec.name, shapes[spec.name]):
                    raise invalid(f"TensorRT refused shape {shapes[spec.name]} for '{spec.name}'")
                ptr = self._staging.upload(spec.name, inputs[spec.name])
                context.set_tensor_address(spec.name, ptr)
            bound = self._bind_outputs()
            if not context.execute_async_v3(stream.ptr):
                raise internal("TensorRT failed to enqueue the batch (see the server log)")
            for name in self._wanted:
                ptr, shape = bound[name] if name in bound else self._allocated(name)
                self._staging.download(name, ptr, shape, self._dtypes[name])
        restore_item_dims(outputs, self._scalar)
        return outputs

    def close(self) -> None:
        self._staging.close()
        self._context = None

    def _bind_outputs(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        """Every output needs an address, wanted or not; shapes follow from the input shapes,
        except those the data decides (-1 still): the allocator places those."""
        bound: dict[str, tuple[int, tuple[int, ...]]] = {}
        if self._allocator is not None:
            self._allocator.clear()
        for name, dtype in self._dtypes.items():
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                self._allocate_on_demand(name)
                # The address TensorRT hands the allocator as the current memory.
                self._context.set_tensor_address(name, self._staging.reserve(name, 0))
                continue
            ptr = self._staging.reserve(name, prod(shape) * dtype.itemsize)
            self._context.set_tensor_address(name, ptr)
            bound[name] = (ptr, shape)
        return bound

    def _allocate_on_demand(self, name: str) -> None:
        if name in self._data_dependent:
            return
        if self._allocator is None:
            self._allocator = output_allocator(self._trt, self._staging.reserve)
        if not self._context.set_output_allocator(name, self._allocator):
            raise unsupported(f"TensorRT refused an output allocator for '{name}'")
        self._data_dependent.add(name)

    def _allocated(self, name: str) -> tuple[int, tuple[int, ...]]:
        """Where a data-dependent output is, and its shape, as TensorRT told the allocator."""
        shape = self._allocator.shapes.get(name)
        if shape is None or any(d < 0 for d in shape):
            raise internal(f"TensorRT did not report the shape of output '{name}' ({shape})")
        ptr = self._allocator.addresses.get(name)
        return (self._staging.reserve(name, 0) if ptr is None else ptr), shape
