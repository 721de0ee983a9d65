"""Merge the inputs of a batch along the batch dim, and cut the outputs back per request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from inferd.server.errors import internal

Tensors = Mapping[str, np.ndarray]


class BatchLayout(Protocol):
    """How a model wants a batch laid out when plain concatenation along the batch dim is not
    it (shape buckets: padding.py; ragged inputs and batch inputs: ragged.py). Both run on the
    instance thread."""

    def join(self, requests: Sequence[Tensors]) -> dict[str, np.ndarray]:
        """The batch's inputs from the requests' inputs."""
        ...

    def split(
        self, outputs: Tensors, requests: Sequence[Tensors], batch_sizes: Sequence[int]
    ) -> list[dict[str, np.ndarray]]:
        """Each request's outputs from the batch's."""
        ...


def concat_inputs(requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One request passes through untouched (no copy); several are concatenated per input."""
    if len(requests) == 1:
        return dict(requests[0])
    return {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}


def split_outputs(
    outputs: Mapping[str, np.ndarray], batch_sizes: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """Views into the batch outputs, one dict per request, in batch order. An output with
    fewer rows than the batch (one whose shape the data decides) fails the batch: cut, it
    would answer requests with other requests' rows or none."""
    if len(batch_sizes) == 1:
        return [dict(outputs)]
    rows = sum(batch_sizes)
    for name, array in outputs.items():
        if array.ndim == 0 or len(array) < rows:
            given = "no batch dim" if array.ndim == 0 else f"{len(array)} rows"
            raise internal(
                f"output '{name}' has {given} for a batch of {rows} rows: its first dim must "
                "be the batch's"
            )
    result: list[dict[str, np.ndarray]] = []
    start = 0
    for size in batch_sizes:
        end = start + size
        result.append({name: array[start:end] for name, array in outputs.items()})
        start = end
    return result
