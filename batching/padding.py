"""Shape buckets: requests whose variable dims differ share a batch by padding to the largest.

Opt-in per model through config `parameters`, because only the model author knows where padding
is safe (e.g. token ids with an attention mask):

- `inferd.pad_inputs`: inputs whose variable (-1) dims may be padded;
- `inferd.pad_value`: the fill value (default 0; BYTES inputs always pad with b"");
- `inferd.pad_outputs`: `OUTPUT:INPUT` pairs; the output's i-th variable dim follows the input's
  i-th variable dim, and is cut back to each request's own size after execution;
- `inferd.pad_buckets`: ascending sizes that padded dims are rounded up to, which bounds the
  number of distinct shapes the model sees (beyond the last bucket: the batch's largest size).

Padding runs on the instance thread; the spec is built and validated once, at load.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferd.batching.tensors import split_outputs
from inferd.repository.config import ModelConfig, TensorConfig
from inferd.server.errors import InferdError, invalid
from inferd.server.types import DataType

PAD_INPUTS = "inferd.pad_inputs"
PAD_VALUE = "inferd.pad_value"
PAD_OUTPUTS = "inferd.pad_outputs"
PAD_BUCKETS = "inferd.pad_buckets"


@dataclass(frozen=True, slots=True)
class PaddedInput:
    name: str
    axes: tuple[int, ...]  # the variable dims, as axes of the batched array (0 = batch)
    value: Any  # fill value, already suited to the input's datatype


@dataclass(frozen=True, slots=True)
class CutOutput:
    name: str
    axes: tuple[int, ...]  # the output's variable dims, as batched axes
    source: str  # the padded input whose sizes they follow
    source_axes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PaddingSpec:
    inputs: tuple[PaddedInput, ...]
    outputs: tuple[CutOutput, ...] = ()
    buckets: tuple[int, ...] = ()  # ascending; empty = pad to the batch's largest size
    by_name: Mapping[str, PaddedInput] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {p.name: p for p in self.inputs})

    # As a BatchLayout (batching/tensors.py):
    def join(self, requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return pad_batch(self, requests)

    def split(
        self,
        outputs: Mapping[str, np.ndarray],
        requests: Sequence[Mapping[str, np.ndarray]],
        batch_sizes: Sequence[int],
    ) -> list[dict[str, np.ndarray]]:
        per_request = split_outputs(outputs, batch_sizes)
        return [unpad(self, out, req) for out, req in zip(per_request, requests, strict=True)]


def pad_batch(
    spec: PaddingSpec, requests: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Concatenate the requests along the batch dim, padding the padded inputs' variable dims to
    the batch's largest size (or its bucket). One request without buckets is not copied."""
    if len(requests) == 1 and not spec.buckets:
        return dict(requests[0])
    merged: dict[str, np.ndarray] = {}
    for name, first in requests[0].items():
        arrays = [r[name] for r in requests]
        padded = spec.by_name.get(name)
        if padded is not None:
            merged[name] = _pad(arrays, padded, spec.buckets)
        else:
            merged[name] = first if len(arrays) == 1 else np.concatenate(arrays)
    return merged


def unpad(
    spec: PaddingSpec, outputs: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """One request's outputs with the listed outputs cut back to its own input sizes (views)."""
    result = dict(outputs)
    for cut in spec.outputs:
        array = result.get(cut.name)
        source = inputs.get(cut.source)
        if array is None or source is None:
            continue
        index = [slice(None)] * array.ndim
        for axis, source_axis in zip(cut.axes, cut.source_axes, strict=True):
            index[axis] = slice(0, source.shape[source_axis])
        result[cut.name] = array[tuple(index)]
    return result


def bucket(size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `size`; `size` itself beyond the last bucket."""
    at = bisect.bisect_left(buckets, size)
    return buckets[at] if at < len(buckets) else size


def _pad(arrays: Sequence[np.ndarray], padded: PaddedInput, buckets: Sequence[int]) -> np.ndarray:
    first = arrays[0]
    shape = list(first.shape)
    shape[0] = sum(a.shape[0] for a in arrays)
    for axis in padded.axes:
        shape[axis] = bucket(max(a.shape[axis] for a in arrays), buckets)
    if all(a.shape[1:] == tuple(shape[1:]) for a in arrays):
        return first if len(arrays) == 1 else np.concatenate(arrays)
    out = np.full(shape, padded.value, dtype=first.dtype)
    start = 0
    for array in arrays:
        end = start + array.shape[0]
        out[(slice(start, end), *(slice(0, n) for n in array.shape[1:]))] = array
        start = end
    return out


# ---- building the spec from a model config (at load) -----------------------------------------


def padding_spec(config: ModelConfig) -> PaddingSpec | None:
    """The model's padding spec, or None when it does not opt in; invalid settings fail the
    load with a reason that names the model and the parameter."""
    params = config.parameters
    names = _names(params.get(PAD_INPUTS, ""))
    if not names:
        for other in (PAD_VALUE, PAD_OUTPUTS, PAD_BUCKETS):
            if params.get(other, "").strip():
                raise _error(config, other, f"needs {PAD_INPUTS} to name the padded inputs")
        return None
    if config.max_batch_size <= 0:
        raise _error(config, PAD_INPUTS, "the model does not batch (max_batch_size is 0)")
    value = _pad_value(config, params.get(PAD_VALUE, ""))
    inputs = {t.name: t for t in config.inputs}
    padded: list[PaddedInput] = []
    for name in names:
        tensor = _variable_tensor(config, PAD_INPUTS, "input", inputs, name)
        if tensor.allow_ragged_batch or tensor.optional:
            kind = "allow_ragged_batch" if tensor.allow_ragged_batch else "optional"
            raise _error(config, PAD_INPUTS, f"input '{name}' is {kind} and cannot be padded")
        padded.append(PaddedInput(name, _axes(tensor), _fill(config, tensor, value)))
    return PaddingSpec(
        tuple(padded),
        _cut_outputs(config, params.get(PAD_OUTPUTS, ""), set(names)),
        _buckets(config, params.get(PAD_BUCKETS, "")),
    )


def _cut_outputs(config: ModelConfig, text: str, padded: set[str]) -> tuple[CutOutput, ...]:
    outputs = {t.name: t for t in config.outputs}
    inputs = {t.name: t for t in config.inputs}
    cuts: dict[str, CutOutput] = {}
    for pair in _names(text):
        output_name, sep, input_name = (s.strip() for s in pair.partition(":"))
        if not sep or not output_name or not input_name:
            raise _error(config, PAD_OUTPUTS, f"'{pair}' is not of the form OUTPUT:INPUT")
        if output_name in cuts:
            raise _error(config, PAD_OUTPUTS, f"output '{output_name}' is listed twice")
        if input_name not in padded:
            raise _error(config, PAD_OUTPUTS, f"input '{input_name}' is not in {PAD_INPUTS}")
        output = _variable_tensor(config, PAD_OUTPUTS, "output", outputs, output_name)
        out_axes, in_axes = _axes(output), _axes(inputs[input_name])
        if len(out_axes) != len(in_axes):
            raise _error(
                config,
                PAD_OUTPUTS,
                f"output '{output_name}' has {len(out_axes)} variable dims but input "
                f"'{input_name}' has {len(in_axes)}",
            )
        cuts[output_name] = CutOutput(output_name, out_axes, input_name, in_axes)
    return tuple(cuts.values())


def _buckets(config: ModelConfig, text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in _names(text))
    except ValueError:
        sizes = (0,)
    if any(s <= 0 for s in sizes) or any(a >= b for a, b in itertools.pairwise(sizes)):
        raise _error(config, PAD_BUCKETS, f"'{text}' must be positive ascending integers")
    return sizes


def _pad_value(config: ModelConfig, text: str) -> float:
    if not text.strip():
        return 0
    try:
        return float(text)
    except ValueError:
        raise _error(config, PAD_VALUE, f"'{text}' is not a number") from None


def _fill(config: ModelConfig, tensor: TensorConfig, value: float) -> Any:
    """The fill value in the input's own type: integer inputs reject 0.5, unsigned ones -1."""
    if tensor.datatype is DataType.BYTES:
        return b""
    dtype = tensor.datatype.numpy
    if dtype.kind in "iub":
        low, high = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
        if not (math.isfinite(value) and value == int(value) and low <= value <= high):
            raise _error(
                config, PAD_VALUE, f"{value:g} does not fit input '{tensor.name}' ({dtype})"
            )
    return dtype.type(value)


def _variable_tensor(
    config: ModelConfig, param: str, kind: str, tensors: Mapping[str, TensorConfig], name: str
) -> TensorConfig:
    tensor = tensors.get(name)
    if tensor is None:
        raise _error(config, param, f"the model has no {kind} '{name}'")
    if not tensor.variable:
        raise _error(config, param, f"{kind} '{name}' has no variable (-1) dims")
    return tensor


def _axes(tensor: TensorConfig) -> tuple[int, ...]:
    return tuple(i + 1 for i, d in enumerate(tensor.dims) if d == -1)


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _error(config: ModelConfig, param: str, problem: str) -> InferdError:
    return invalid(f"model '{config.name}': parameter {param}: {problem}")
