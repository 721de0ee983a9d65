"""Ragged batching, as Triton's ONNX Runtime, TensorFlow and TensorRT backends do it
(ragged_batching.md): requests whose `allow_ragged_batch` inputs differ in shape share a batch.

- A ragged input reaches the model as one 1-D tensor: every request's elements, concatenated.
- Each `batch_input` is made from the batch's requests, from its source input's shape with the
  batch dim (counts per request, not per batch item):
  BATCH_ELEMENT_COUNT [n] (n requests), BATCH_ACCUMULATED_ELEMENT_COUNT [n] (running total),
  ..._WITH_ZERO [n + 1] (0 first), BATCH_MAX_ELEMENT_COUNT_AS_SHAPE [largest count] (zeros:
  only its shape means something), BATCH_ITEM_SHAPE [batch items, rank] (each item's shape
  without the batch dim) and BATCH_ITEM_SHAPE_FLATTEN (the same, 1-D).
- A `batch_output` (BATCH_SCATTER_WITH_INPUT_SHAPE) is cut from the front of the model's output,
  one request after another, each part shaped as the request's source input. Other outputs are
  split along the batch dim as usual.

Used as the Worker's BatchLayout (batching/tensors.py), on the instance thread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from inferd.batching.tensors import split_outputs
from inferd.repository.batch_io_config import BatchInput, BatchInputKind, BatchOutput
from inferd.repository.config import ModelConfig
from inferd.server.errors import internal

Tensors = Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class RaggedLayout:
    ragged: frozenset[str]  # inputs concatenated as 1-D
    batch_inputs: tuple[BatchInput, ...] = ()
    batch_outputs: tuple[BatchOutput, ...] = ()

    def join(self, requests: Sequence[Tensors]) -> dict[str, np.ndarray]:
        merged: dict[str, np.ndarray] = {}
        for name in requests[0]:
            arrays = [r[name] for r in requests]
            if name in self.ragged:
                merged[name] = np.concatenate([a.reshape(-1) for a in arrays])
            else:
                merged[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        for batch_input in self.batch_inputs:
            shapes = [r[batch_input.source].shape for r in requests]
            tensor = _batch_input(batch_input.kind, shapes).astype(batch_input.datatype.numpy)
            for target in batch_input.targets:
                merged[target] = tensor
        return merged

    def split(
        self, outputs: Tensors, requests: Sequence[Tensors], batch_sizes: Sequence[int]
    ) -> list[dict[str, np.ndarray]]:
        scattered = {t for b in self.batch_outputs for t in b.targets}
        plain = {name: array for name, array in outputs.items() if name not in scattered}
        per_request = split_outputs(plain, batch_sizes)
        for batch_output in self.batch_outputs:
            shapes = [r[batch_output.source].shape for r in requests]
            for target in batch_output.targets:
                array = outputs.get(target)
                if array is not None:
                    for out, part in zip(per_request, _scatter(target, array, shapes), strict=True):
                        out[target] = part
        return per_request


def ragged_layout(config: ModelConfig) -> RaggedLayout | None:
    """The model's ragged layout; None when it has no ragged input, batch input or output."""
    ragged = frozenset(t.name for t in config.inputs if t.allow_ragged_batch)
    if not ragged and not config.batch_inputs and not config.batch_outputs:
        return None
    return RaggedLayout(ragged, config.batch_inputs, config.batch_outputs)


def _batch_input(kind: BatchInputKind, shapes: Sequence[tuple[int, ...]]) -> np.ndarray:
    counts = np.array([math.prod(shape) for shape in shapes], dtype=np.int64)
    if kind is BatchInputKind.ELEMENT_COUNT:
        return counts
    if kind is BatchInputKind.ACCUMULATED_ELEMENT_COUNT:
        return np.cumsum(counts)
    if kind is BatchInputKind.ACCUMULATED_ELEMENT_COUNT_WITH_ZERO:
        return np.concatenate(([0], np.cumsum(counts)))
    if kind is BatchInputKind.MAX_ELEMENT_COUNT_AS_SHAPE:
        return np.zeros(int(counts.max()), dtype=np.int64)
    # BATCH_ITEM_SHAPE(_FLATTEN): one row per batch item, its shape without the batch dim.
    rows = [shape[1:] for shape in shapes for _ in range(shape[0])]
    if len({len(row) for row in rows}) > 1:
        raise internal(f"{kind.value}: the source input's rank differs between requests")
    items = np.array(rows, dtype=np.int64).reshape(len(rows), -1)
    return items.reshape(-1) if kind is BatchInputKind.ITEM_SHAPE_FLATTEN else items


def _scatter(name: str, array: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    flat = array.reshape(-1)
    total = sum(math.prod(shape) for shape in shapes)
    if flat.size < total:
        raise internal(
            f"batch output '{name}' has {flat.size} elements, fewer than the {total} its "
            "requests' source inputs have"
        )
    parts: list[np.ndarray] = []
    start = 0
    for shape in shapes:
        end = start + math.prod(shape)
        parts.append(flat[start:end].reshape(shape))
        start = end
    return parts
