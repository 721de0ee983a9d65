"""Config auto-complete and checking against what a model file says about its tensors, shared
by the backends that can read their model's inputs and outputs (ONNX graphs, TensorRT engines)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as pb

from inferd.repository.config import ModelConfigProto
from inferd.repository.sequence_config import generated_names
from inferd.server.errors import invalid, unsupported
from inferd.server.types import DataType


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output as the model file declares it."""

    name: str
    type_name: str  # the framework's own name for the type, for messages
    datatype: DataType | None  # None: a type inferd cannot serve (an error only if used)
    shape: tuple[int, ...]  # full shape, batch dim included; -1 = variable

    def checked_datatype(self, model_file: Path) -> DataType:
        if self.datatype is None:
            raise unsupported(
                f"{model_file}: tensor '{self.name}' has unsupported type {self.type_name}"
            )
        return self.datatype


def complete_max_batch_size(
    config: ModelConfigProto, specs: Sequence[TensorSpec], max_batch_size: int
) -> None:
    """As Triton: a model whose every input and output starts with a variable dim can batch;
    when the config leaves tensors to auto-complete, batch up to `max_batch_size`."""
    if config.max_batch_size != 0 or config.input or config.output:
        return
    can_batch = all(len(s.shape) > 0 and s.shape[0] == -1 for s in specs)
    if can_batch and max_batch_size > 0:
        config.max_batch_size = max_batch_size
        if config.max_batch_size > 1 and not config.HasField("dynamic_batching"):
            config.dynamic_batching.SetInParent()


def regular_tensors(
    config: ModelConfigProto, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's inputs and outputs less the sequence batcher's control and state tensors
    and the batch inputs, which the server makes and reads: they are not the config's inputs
    and outputs."""
    skip_inputs, skip_outputs = generated_names(config)
    skip_inputs |= {target for item in config.batch_input for target in item.target_name}
    if not skip_inputs and not skip_outputs:
        return list(inputs), list(outputs)
    return (
        [s for s in inputs if s.name not in skip_inputs],
        [s for s in outputs if s.name not in skip_outputs],
    )


def complete_tensors(
    tensors: Any, specs: Sequence[TensorSpec], max_batch_size: int, model_file: Path
) -> None:
    """Add tensors the config leaves out (all of them, if it names none); fill missing
    data types and dims of the ones it names."""
    named = {t.name: t for t in tensors}
    fill_all = not named
    for spec in specs:
        tensor = named.get(spec.name)
        if tensor is None:
            if not fill_all:
                continue
            tensor = tensors.add()
            tensor.name = spec.name
        if tensor.data_type == pb.TYPE_INVALID:
            datatype = spec.checked_datatype(model_file)
            tensor.data_type = pb.DataType.Value(datatype.config_name)
        if not tensor.dims:
            dims = list(spec.shape)
            tensor.dims.extend((dims[1:] if max_batch_size > 0 else dims) or [1])


def model_dims_of(tensor: Any) -> list[int]:
    """A config tensor's dims on the model's side: with `reshape`, the reshape shape."""
    return list(tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims)


def check_batch_inputs(
    config: ModelConfigProto, specs: Sequence[TensorSpec], model_file: Path
) -> None:
    """Every batch input's targets must be inputs of the model."""
    names = {s.name for s in specs}
    for item in config.batch_input:
        for target in item.target_name:
            if target not in names:
                raise invalid(
                    f"batch_input target '{target}' is not an input of the model {model_file}; "
                    f"the model's inputs are: {', '.join(sorted(names))}"
                )


def check_tensors(
    kind: str,
    tensors: Any,
    specs: Sequence[TensorSpec],
    batched: bool,
    model_file: Path,
    flat: Collection[str] = (),
) -> None:
    """Every configured tensor must exist in the model with the same type and a compatible shape.
    Ragged inputs and the `flat` tensors (batch outputs) are 1-D in the model: the whole
    batch's elements in one."""
    by_name = {s.name: s for s in specs}
    for tensor in tensors:
        spec = by_name.get(tensor.name)
        if spec is None:
            raise invalid(
                f"{kind} '{tensor.name}' in the config is not in the model {model_file}; "
                f"the model's {kind}s are: {', '.join(sorted(by_name))}"
            )
        want = DataType.from_config_name(pb.DataType.Name(tensor.data_type))
        have = spec.checked_datatype(model_file)
        if want is not have:
            raise invalid(
                f"{kind} '{tensor.name}': config data_type {want.config_name} does not match "
                f"the model's {have.config_name}"
            )
        model_dims = list(spec.shape)
        if getattr(tensor, "allow_ragged_batch", False) or tensor.name in flat:
            if len(model_dims) != 1:
                raise invalid(
                    f"{kind} '{tensor.name}' holds a ragged batch, so the model must have it as "
                    f"a 1-D tensor; the model's shape is {model_dims}"
                )
            continue
        if batched:
            if not model_dims or model_dims[0] != -1:
                raise invalid(
                    f"{kind} '{tensor.name}': max_batch_size > 0 needs a variable first dim in "
                    f"the model, which has shape {model_dims}"
                )
            model_dims = model_dims[1:]
        config_dims = model_dims_of(tensor)
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


def scalar_items(
    config_tensors: Sequence[Any], specs: Sequence[TensorSpec], batched: bool
) -> frozenset[str]:
    """Tensors whose config writes a per-item scalar as dims [1] while the model has one rank
    less: they are reshaped on the way in and out. `config_tensors` are TensorConfigs."""
    extra = 1 if batched else 0
    ranks = {t.name: len(t.dims) + extra for t in config_tensors if not t.allow_ragged_batch}
    return frozenset(s.name for s in specs if len(s.shape) == ranks.get(s.name, len(s.shape)) - 1)


def restore_item_dims(outputs: dict[str, np.ndarray], scalar: frozenset[str]) -> None:
    """Give the model's per-item scalar outputs back the trailing [1] their config declares."""
    for name in scalar.intersection(outputs):
        outputs[name] = outputs[name].reshape((*outputs[name].shape, 1))
