"""Running an ONNX Runtime session through IO binding, for GPU instances.

Inputs are staged to device buffers and bound by address; outputs go to device memory that ORT
allocates from its arena (its shape is known only after the run), and all come back with one
wait per batch. Optional CUDA graphs (config `optimization { cuda { graphs: true } }`) are
captured per batch size at load, on buffers allocated once at the largest batch (graphs replay
fixed addresses), and a batch runs on the smallest graph that holds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import onnxruntime as ort

from inferd.backends.autocomplete import restore_item_dims, scalar_items
from inferd.backends.onnxruntime import tensor_specs
from inferd.backends.ort_options import add_run_config
from inferd.backends.staging import IoStaging
from inferd.repository.config import ModelConfig
from inferd.server.errors import invalid, unsupported
from inferd.server.types import DataType

# Triton's TensorRT backend default graph batch sizes when the model has no dynamic batching.
_DEFAULT_GRAPH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)
# ORT captures a graph on the second run of its id (the first one allocates).
_RUNS_TO_CAPTURE = 2


def graph_batch_sizes(config: ModelConfig) -> tuple[int, ...]:
    """The batch sizes to capture CUDA graphs for: () when the config does not ask for graphs,
    (0,) for a model without a batch dim. As Triton: {1, preferred sizes, max} with dynamic
    batching, else {1, 2, 3, 4, 6, 8, 12, 16, max}."""
    if not config.proto.optimization.cuda.graphs:
        return ()
    where = f"model '{config.name}': optimization.cuda.graphs"
    if config.sequence_batching is not None:  # its control and state inputs have no buffers
        raise invalid(f"{where} is not supported with sequence_batching")
    for tensor in (*config.inputs, *config.outputs):
        if tensor.variable:
            raise invalid(f"{where} needs fixed dims ('{tensor.name}')")
        if tensor.optional:
            raise invalid(f"{where} cannot serve optional inputs ('{tensor.name}')")
    largest = config.max_batch_size
    if largest == 0:
        return (0,)
    if config.dynamic_batching is not None:
        return tuple(sorted({1, *config.dynamic_batching.preferred_batch_sizes, largest}))
    return tuple(sorted({s for s in _DEFAULT_GRAPH_SIZES if s < largest} | {largest}))


@dataclass(frozen=True, slots=True)
class _Output:
    name: str
    dtype: np.dtype[Any]
    item_shape: tuple[int, ...]  # the model's shape without the batch dim (used by graphs)


def _run_options(graph_id: int | None, config: ModelConfig) -> ort.RunOptions:
    options = add_run_config(ort.RunOptions(), config)
    # No stream sync at the end of Run: the output copies are queued on the same stream and
    # the batch waits once, after them.
    options.add_run_config_entry("disable_synchronize_execution_providers", "1")
    if graph_id is not None:
        options.add_run_config_entry("gpu_graph_id", str(graph_id))
    return options


class IoBindingRunner:
    """One session, its binding and its staging buffers; used by one thread at a time."""

    def __init__(
        self,
        session: ort.InferenceSession,
        staging: IoStaging,
        ort_device: str,
        device_id: int,
        config: ModelConfig,
        graph_sizes: Sequence[int] = (),
    ) -> None:
        ragged = any(t.allow_ragged_batch for t in config.inputs)
        if ragged or config.batch_inputs or config.batch_outputs:
            # The bound buffers are shaped per batch item; a ragged batch has no such shape.
            raise unsupported(
                f"model '{config.name}': ragged batching (allow_ragged_batch, batch_input, "
                "batch_output) is not supported on GPU instances (run it with KIND_CPU)"
            )
        for tensor in (*config.inputs, *config.outputs):
            # IO binding takes neither strings nor a numpy bfloat16 type.
            if tensor.datatype in (DataType.BYTES, DataType.BF16):
                raise unsupported(
                    f"model '{config.name}': {tensor.datatype.value} tensor '{tensor.name}' is "
                    "not supported on GPU instances (run it with KIND_CPU)"
                )
        self._session = session
        self._binding = session.io_binding()
        self._staging = staging
        self._device = (ort_device, device_id)
        self._batched = config.max_batch_size > 0
        specs = tensor_specs([*session.get_inputs(), *session.get_outputs()])
        self._scalar = scalar_items((*config.inputs, *config.outputs), specs, self._batched)
        self._inputs = {t.name: t for t in config.inputs}
        self._outputs = [
            _Output(t.name, t.datatype.numpy, self._model_dims(t.name, t.dims))
            for t in config.outputs
        ]
        sequence = config.sequence_batching
        if sequence is not None:  # the sequence batcher reads the implicit state outputs
            for control in sequence.controls:
                if control.datatype is DataType.BYTES:
                    raise unsupported(
                        f"model '{config.name}': the string CORRID control '{control.name}' is "
                        "not supported on GPU instances (run it with KIND_CPU)"
                    )
            known = {o.name for o in self._outputs}
            self._outputs += [
                _Output(s.output_name, s.datatype.numpy, s.dims)
                for s in sequence.states
                if s.output_name not in known
            ]
        self._bound_inputs: frozenset[str] = frozenset()
        # (batch size, options) per captured graph, smallest first; -1 = never capture.
        self._graphs = [(size, _run_options(i, config)) for i, size in enumerate(graph_sizes)]
        self._plain = _run_options(-1 if graph_sizes else None, config)
        if graph_sizes:
            self._reserve_fixed_buffers(max(graph_sizes))

    def capture_graphs(self) -> None:
        """Run every graph batch size on zeros, so that capture happens at load, not on the
        first requests of each size."""
        for size, _ in self._graphs:
            inputs = {
                name: np.zeros((size, *t.dims) if self._batched else t.dims, t.datatype.numpy)
                for name, t in self._inputs.items()
            }
            for _ in range(_RUNS_TO_CAPTURE):
                self.run(inputs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = next(iter(inputs.values())).shape[0] if self._batched and inputs else 0
        rows, options = self._graph_for(batch)
        with self._staging.batch() as outputs:
            self._bind_inputs(inputs, rows)
            self._bind_outputs(rows)
            self._session.run_with_iobinding(self._binding, options)
            self._download(batch, rows)
        restore_item_dims(outputs, self._scalar)
        return outputs

    def close(self) -> None:
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self._staging.close()

    def _graph_for(self, batch: int) -> tuple[int, ort.RunOptions]:
        """The rows to run (the batch, padded up to a graph's size) and the run options."""
        for size, options in self._graphs:
            if batch <= size:
                return size, options
        return batch, self._plain

    def _bind_inputs(self, inputs: Mapping[str, np.ndarray], rows: int) -> None:
        binding = self._binding
        if frozenset(inputs) != self._bound_inputs:  # an optional input came or went
            binding.clear_binding_inputs()
            self._bound_inputs = frozenset(inputs)
        for name, array in inputs.items():
            shape = array.shape[:-1] if name in self._scalar else array.shape
            if self._batched:
                shape = (rows, *shape[1:])  # graph padding: rows past the batch are stale
            ptr = self._staging.upload(name, array)
            binding.bind_input(name, *self._device, array.dtype, list(shape), ptr)

    def _bind_outputs(self, rows: int) -> None:
        binding = self._binding
        for out in self._outputs:  # always in this order: get_outputs() follows it
            if not self._graphs:
                binding.bind_output(out.name, *self._device)
                continue
            shape = (rows, *out.item_shape) if self._batched else out.item_shape
            ptr = self._staging.reserve(out.name, prod(shape) * out.dtype.itemsize)
            binding.bind_output(out.name, *self._device, out.dtype, list(shape), ptr)

    def _download(self, batch: int, rows: int) -> None:
        for out, value in zip(self._outputs, self._binding.get_outputs(), strict=True):
            shape = tuple(value.shape())
            if rows != batch:
                shape = (batch, *shape[1:])  # leave the graph's padding rows behind
            self._staging.download(out.name, value.data_ptr(), shape, out.dtype)

    def _model_dims(self, name: str, dims: tuple[int, ...]) -> tuple[int, ...]:
        """Config dims as the model has them: a per-item scalar [1] has no dim in the model."""
        return dims[:-1] if name in self._scalar else dims

    def _reserve_fixed_buffers(self, rows: int) -> None:
        """Allocate every buffer at its largest up front: captured graphs keep addresses."""
        lead = (rows,) if self._batched else ()
        for t in self._inputs.values():
            nbytes = prod((*lead, *t.dims)) * t.datatype.itemsize
            self._staging.reserve(t.name, nbytes, is_input=True)
        for out in self._outputs:
            self._staging.reserve(out.name, prod((*lead, *out.item_shape)) * out.dtype.itemsize)
