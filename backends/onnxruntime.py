"""ONNX Runtime backend: one InferenceSession per instance, on the CPU here and on CUDA in
ort_gpu.py."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inferd.backends.autocomplete import (
    TensorSpec,
    check_batch_inputs,
    check_tensors,
    complete_max_batch_size,
    complete_tensors,
    regular_tensors,
    restore_item_dims,
    scalar_items,
)
from inferd.backends.base import Backend, BackendSettings, Device, ModelInstance
from inferd.backends.gpu import GpuInfo
from inferd.backends.ort_options import (
    INTER_OP_THREADS,
    INTRA_OP_THREADS,
    add_run_config,
    apply_config,
    int_param,
    register_op_libraries,
)
from inferd.backends.ort_providers import (
    cuda_start_problem,
    cuda_unavailable_reason,
    ort_cuda_version,
)
from inferd.repository.config import ModelConfig, ModelConfigProto, OutputOrder
from inferd.server.errors import invalid
from inferd.server.types import DataType

_ORT_TYPES: dict[str, DataType] = {
    "tensor(bool)": DataType.BOOL,
    "tensor(uint8)": DataType.UINT8,
    "tensor(uint16)": DataType.UINT16,
    "tensor(uint32)": DataType.UINT32,
    "tensor(uint64)": DataType.UINT64,
    "tensor(int8)": DataType.INT8,
    "tensor(int16)": DataType.INT16,
    "tensor(int32)": DataType.INT32,
    "tensor(int64)": DataType.INT64,
    "tensor(float16)": DataType.FP16,
    "tensor(float)": DataType.FP32,
    "tensor(double)": DataType.FP64,
    "tensor(string)": DataType.BYTES,
    "tensor(bfloat16)": DataType.BF16,
}


def tensor_specs(nodes: Sequence[Any]) -> list[TensorSpec]:
    """ORT's NodeArgs as specs; symbolic or unknown dims (str/None) are variable (-1)."""
    return [
        TensorSpec(
            name=node.name,
            type_name=node.type,
            datatype=_ORT_TYPES.get(node.type),
            shape=tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape),
        )
        for node in nodes
    ]


def resolve_model_file(model_path: Path) -> Path:
    """Triton allows model.onnx to be a directory holding model.onnx (external weights)."""
    if model_path.is_dir():
        model_path = model_path / "model.onnx"
    if not model_path.is_file():
        raise invalid(f"model file {model_path} does not exist")
    return model_path


def _session_options(
    config: ModelConfig | None, settings: BackendSettings, *, probe: bool = False
) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if probe or config is None:  # only reading the graph's inputs and outputs
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        return options
    apply_config(options, config)
    # Serving default: split the cores among this model's instances, keeping half of them for
    # the front doors; never spin, so idle pool threads do not steal the event loop's core.
    cores = os.cpu_count() or 1
    default = max(1, cores // (2 * max(1, settings.total_cpu_instances)))
    options.intra_op_num_threads = int_param(config.parameters, INTRA_OP_THREADS, default)
    options.inter_op_num_threads = int_param(config.parameters, INTER_OP_THREADS, 1)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    output_order = OutputOrder.NAME
    platforms = ("onnxruntime_onnx",)
    default_model_filename = "model.onnx"

    @classmethod
    def complete_config(
        cls, config: ModelConfigProto, model_path: Path, settings: BackendSettings
    ) -> None:
        model_file = resolve_model_file(model_path)
        options = _session_options(None, settings, probe=True)
        register_op_libraries(options, config, config.name)  # the graph may need its ops
        try:
            session = ort.InferenceSession(
                str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise invalid(f"failed to load {model_file}: {exc}") from None
        inputs, outputs = tensor_specs(session.get_inputs()), tensor_specs(session.get_outputs())
        if not config.platform and not config.backend:
            config.platform = "onnxruntime_onnx"
        if settings.auto_complete:
            limit = settings.default_max_batch_size
            complete_max_batch_size(config, [*inputs, *outputs], limit)
            regular_inputs, regular_outputs = regular_tensors(config, inputs, outputs)
            complete_tensors(config.input, regular_inputs, config.max_batch_size, model_file)
            complete_tensors(config.output, regular_outputs, config.max_batch_size, model_file)
        batched = config.max_batch_size > 0
        check_tensors("input", config.input, inputs, batched, model_file)
        scattered = {target for item in config.batch_output for target in item.target_name}
        check_tensors("output", config.output, outputs, batched, model_file, scattered)
        check_batch_inputs(config, inputs, model_file)

    @classmethod
    def gpu_unavailable_reason(cls, gpus: GpuInfo) -> str:
        available = ort.get_available_providers()
        return (
            cuda_unavailable_reason(available, ort_cuda_version(), gpus.driver_cuda)
            or cuda_start_problem()
        )

    @classmethod
    def create_instance(
        cls, config: ModelConfig, model_path: Path, device: Device, settings: BackendSettings
    ) -> ModelInstance:
        model_file = resolve_model_file(model_path)
        if device.kind == "gpu":
            # Imported here: CPU-only servers never load the GPU path or cupy.
            from inferd.backends.ort_gpu import OrtGpuInstance

            return OrtGpuInstance(config, model_file, device, settings)
        return OnnxRuntimeInstance(config, model_file, settings)


class OnnxRuntimeInstance(ModelInstance):
    runs_on_any_thread = True  # a CPU session may be run from any thread

    def __init__(self, config: ModelConfig, model_file: Path, settings: BackendSettings) -> None:
        options = _session_options(config, settings)
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise invalid(f"failed to load {model_file}: {exc}") from None
        self._run_options = add_run_config(ort.RunOptions(), config)
        self._output_names = [t.name for t in config.outputs]
        # ORT string tensors want str elements; the wire gives bytes.
        self._string_inputs = {t.name for t in config.inputs if t.datatype is DataType.BYTES}
        sequence = config.sequence_batching
        if sequence is not None:  # the sequence batcher feeds controls and reads the states
            self._output_names += [
                s.output_name for s in sequence.states if s.output_name not in self._output_names
            ]
            self._string_inputs |= {
                c.name for c in sequence.controls if c.datatype is DataType.BYTES
            }
        self._scalar_items = scalar_items(
            (*config.inputs, *config.outputs),
            tensor_specs([*self._session.get_inputs(), *self._session.get_outputs()]),
            config.max_batch_size > 0,
        )

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None, "execute() after close()"
        feed: dict[str, np.ndarray] = {}
        for name, array in inputs.items():
            if name in self._string_inputs:
                array = to_str_array(array)
            if name in self._scalar_items:
                array = array.reshape(array.shape[:-1])
            feed[name] = array
        results = self._session.run(self._output_names, feed, self._run_options)
        outputs = dict(zip(self._output_names, results, strict=True))
        restore_item_dims(outputs, self._scalar_items)
        return outputs

    def close(self) -> None:
        self._session = None


def to_str_array(array: np.ndarray) -> np.ndarray:
    if array.size and isinstance(array.flat[0], bytes):
        return np.array([b.decode("utf-8", "replace") for b in array.flat], dtype=object).reshape(
            array.shape
        )
    return array
