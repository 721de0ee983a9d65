"""ONNX Runtime backend (CPU): one InferenceSession per instance."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tritonclient.grpc import model_config_pb2 as pb

from inferd.backends.base import Backend, BackendSettings, Device, ModelInstance
from inferd.repository.config import ModelConfig, ModelConfigProto
from inferd.server.errors import invalid, unsupported
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

# Triton's onnxruntime backend parameter names (config `parameters`).
INTRA_OP_THREADS = "intra_op_thread_count"
INTER_OP_THREADS = "inter_op_thread_count"


def _datatype(node: Any, model_path: Path) -> DataType:
    try:
        return _ORT_TYPES[node.type]
    except KeyError:
        raise unsupported(
            f"{model_path}: tensor '{node.name}' has unsupported type {node.type}"
        ) from None


def _dims(shape: Sequence[Any]) -> list[int]:
    """ORT reports symbolic or unknown dims as str/None: those are variable (-1)."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _resolve_model_file(model_path: Path) -> Path:
    """Triton allows model.onnx to be a directory holding model.onnx (external weights)."""
    if model_path.is_dir():
        model_path = model_path / "model.onnx"
    if not model_path.is_file():
        raise invalid(f"model file {model_path} does not exist")
    return model_path


def _session_options(
    parameters: Mapping[str, str], settings: BackendSettings, *, probe: bool = False
) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if probe:  # only reading the graph's inputs and outputs
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        return options
    # Serving default: split the cores among this model's instances, keeping half of them for
    # the front doors; never spin, so idle pool threads do not steal the event loop's core.
    cores = os.cpu_count() or 1
    default = max(1, cores // (2 * max(1, settings.total_cpu_instances)))
    options.intra_op_num_threads = _int_param(parameters, INTRA_OP_THREADS, default)
    options.inter_op_num_threads = _int_param(parameters, INTER_OP_THREADS, 1)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _int_param(parameters: Mapping[str, str], key: str, default: int) -> int:
    raw = parameters.get(key, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"parameter '{key}' must be an integer, got '{raw}'") from None
    return value if value > 0 else default


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    platforms = ("onnxruntime_onnx",)
    default_model_filename = "model.onnx"

    @classmethod
    def complete_config(
        cls, config: ModelConfigProto, model_path: Path, settings: BackendSettings
    ) -> None:
        model_file = _resolve_model_file(model_path)
        try:
            session = ort.InferenceSession(
                str(model_file),
                sess_options=_session_options({}, settings, probe=True),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise invalid(f"failed to load {model_file}: {exc}") from None
        graph_inputs, graph_outputs = session.get_inputs(), session.get_outputs()
        if not config.platform and not config.backend:
            config.platform = "onnxruntime_onnx"
        if settings.auto_complete:
            _complete_max_batch_size(config, graph_inputs, graph_outputs, settings)
            _complete_tensors(config.input, graph_inputs, config.max_batch_size, model_file)
            _complete_tensors(config.output, graph_outputs, config.max_batch_size, model_file)
        batched = config.max_batch_size > 0
        _check_tensors("input", config.input, graph_inputs, batched, model_file)
        _check_tensors("output", config.output, graph_outputs, batched, model_file)

    @classmethod
    def create_instance(
        cls, config: ModelConfig, model_path: Path, device: Device, settings: BackendSettings
    ) -> ModelInstance:
        if device.kind != "cpu":
            raise unsupported("GPU execution with onnxruntime is not available in this build")
        return OnnxRuntimeInstance(config, _resolve_model_file(model_path), settings)


def _complete_max_batch_size(
    config: ModelConfigProto,
    inputs: Sequence[Any],
    outputs: Sequence[Any],
    settings: BackendSettings,
) -> None:
    """As Triton: a model whose every input and output starts with a variable dim can batch;
    when the config leaves tensors to auto-complete, batch up to the default max batch size."""
    if config.max_batch_size != 0 or config.input or config.output:
        return
    can_batch = all(len(n.shape) > 0 and _dims(n.shape)[0] == -1 for n in [*inputs, *outputs])
    if can_batch and settings.default_max_batch_size > 0:
        config.max_batch_size = settings.default_max_batch_size
        if config.max_batch_size > 1 and not config.HasField("dynamic_batching"):
            config.dynamic_batching.SetInParent()


def _complete_tensors(
    tensors: Any, graph_nodes: Sequence[Any], max_batch_size: int, model_file: Path
) -> None:
    """Add tensors the config leaves out (all of them, if it names none); fill missing
    data types and dims of the ones it names."""
    named = {t.name: t for t in tensors}
    fill_all = not named
    for node in graph_nodes:
        tensor = named.get(node.name)
        if tensor is None:
            if not fill_all:
                continue
            tensor = tensors.add()
            tensor.name = node.name
        if tensor.data_type == pb.TYPE_INVALID:
            datatype = _datatype(node, model_file)
            tensor.data_type = pb.DataType.Value(datatype.config_name)
        if not tensor.dims:
            dims = _dims(node.shape)
            tensor.dims.extend((dims[1:] if max_batch_size > 0 else dims) or [1])


def _check_tensors(
    kind: str, tensors: Any, graph_nodes: Sequence[Any], batched: bool, model_file: Path
) -> None:
    """Every configured tensor must exist in the model with the same type and a compatible shape."""
    nodes = {n.name: n for n in graph_nodes}
    for tensor in tensors:
        node = nodes.get(tensor.name)
        if node is None:
            raise invalid(
                f"{kind} '{tensor.name}' in the config is not in the model {model_file}; "
                f"the model's {kind}s are: {', '.join(sorted(nodes))}"
            )
        want = DataType.from_config_name(pb.DataType.Name(tensor.data_type))
        have = _datatype(node, model_file)
        if want is not have:
            raise invalid(
                f"{kind} '{tensor.name}': config data_type {want.config_name} does not match "
                f"the model's {have.config_name}"
            )
        model_dims = _dims(node.shape)
        if batched:
            if not model_dims or model_dims[0] != -1:
                raise invalid(
                    f"{kind} '{tensor.name}': max_batch_size > 0 needs a variable first dim in "
                    f"the model, which has shape {model_dims}"
                )
            model_dims = model_dims[1:]
        config_dims = list(tensor.dims)
        if model_dims == [] and config_dims == [1]:
            continue  # a scalar per batch item is written dims: [1] in Triton configs
        compatible = len(model_dims) == len(config_dims) and all(
            m == -1 or m == c for m, c in zip(model_dims, config_dims, strict=True)
        )
        if not compatible:
            shown = ["batch", *model_dims] if batched else model_dims
            raise invalid(
                f"{kind} '{tensor.name}': config dims {config_dims} do not match the model's "
                f"shape {shown}"
            )


class OnnxRuntimeInstance(ModelInstance):
    def __init__(self, config: ModelConfig, model_file: Path, settings: BackendSettings) -> None:
        options = _session_options(config.parameters, settings)
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise invalid(f"failed to load {model_file}: {exc}") from None
        self._output_names = [t.name for t in config.outputs]
        # ORT string tensors want str elements; the wire gives bytes.
        self._string_inputs = {t.name for t in config.inputs if t.datatype is DataType.BYTES}
        # Triton configs write a per-item scalar as dims [1]: such tensors differ in rank by one
        # between the config and the model, and are reshaped on the way in and out.
        extra = 1 if config.max_batch_size > 0 else 0
        config_ranks = {t.name: len(t.dims) + extra for t in (*config.inputs, *config.outputs)}
        graph = [*self._session.get_inputs(), *self._session.get_outputs()]
        self._scalar_items = {
            n.name for n in graph if len(n.shape) == config_ranks.get(n.name, len(n.shape)) - 1
        }

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None, "execute() after close()"
        feed: dict[str, np.ndarray] = {}
        for name, array in inputs.items():
            if name in self._string_inputs:
                array = _to_str_array(array)
            if name in self._scalar_items:
                array = array.reshape(array.shape[:-1])
            feed[name] = array
        results = self._session.run(self._output_names, feed)
        outputs = dict(zip(self._output_names, results, strict=True))
        for name in self._scalar_items.intersection(outputs):
            outputs[name] = outputs[name].reshape((*outputs[name].shape, 1))
        return outputs

    def close(self) -> None:
        self._session = None


def _to_str_array(array: np.ndarray) -> np.ndarray:
    if array.size and isinstance(array.flat[0], bytes):
        return np.array([b.decode("utf-8", "replace") for b in array.flat], dtype=object).reshape(
            array.shape
        )
    return array
