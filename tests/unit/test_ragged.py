"""Ragged layouts: Triton's documented batch input values (model_config.proto,
ragged_batching.md) and the scatter of batch outputs."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.batching.ragged import RaggedLayout
from inferd.repository.batch_io_config import BatchInput, BatchInputKind, BatchOutput
from inferd.server.errors import InferdError
from inferd.server.types import DataType


def batch_input(kind: BatchInputKind, datatype: DataType = DataType.INT32) -> BatchInput:
    return BatchInput(kind, ("B",), datatype, "X")


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # ragged_batching.md: requests of shapes [1, 3], [1, 4], [1, 5]
        (BatchInputKind.ELEMENT_COUNT, [3, 4, 5]),
        (BatchInputKind.ACCUMULATED_ELEMENT_COUNT, [3, 7, 12]),
        (BatchInputKind.ACCUMULATED_ELEMENT_COUNT_WITH_ZERO, [0, 3, 7, 12]),
        (BatchInputKind.MAX_ELEMENT_COUNT_AS_SHAPE, [0, 0, 0, 0, 0]),
        (BatchInputKind.ITEM_SHAPE, [[3], [4], [5]]),
        (BatchInputKind.ITEM_SHAPE_FLATTEN, [3, 4, 5]),
    ],
)
def test_batch_inputs_of_the_documented_example(kind: BatchInputKind, expected: list[int]) -> None:
    layout = RaggedLayout(frozenset({"X"}), (batch_input(kind),))
    requests = [{"X": np.ones((1, n), np.float32)} for n in (3, 4, 5)]
    joined = layout.join(requests)
    assert joined["X"].shape == (12,)  # one 1-D tensor
    assert joined["B"].dtype == np.int32 and joined["B"].tolist() == expected


def test_item_shapes_have_a_row_per_batch_item() -> None:
    # model_config.proto: a batch-2 input of shape [3, 1] and a batch-1 one of shape [2, 2].
    requests = [{"X": np.zeros((2, 3, 1), np.float32)}, {"X": np.zeros((1, 2, 2), np.float32)}]
    for kind, expected in (
        (BatchInputKind.ITEM_SHAPE, [[3, 1], [3, 1], [2, 2]]),
        (BatchInputKind.ITEM_SHAPE_FLATTEN, [3, 1, 3, 1, 2, 2]),
    ):
        layout = RaggedLayout(frozenset({"X"}), (batch_input(kind, DataType.FP32),))
        assert layout.join(requests)["B"].tolist() == expected
    counts = RaggedLayout(frozenset({"X"}), (batch_input(BatchInputKind.ELEMENT_COUNT),))
    assert counts.join(requests)["B"].tolist() == [6, 4]  # the batch dim counts


def test_batch_outputs_are_scattered_by_the_source_shapes() -> None:
    layout = RaggedLayout(frozenset({"X"}), (), (BatchOutput(("Y",), "X"),))
    requests = [{"X": np.zeros((1, 2), np.float32)}, {"X": np.zeros((1, 3), np.float32)}]
    outputs = {"Y": np.arange(5, dtype=np.float32), "Z": np.array([[7], [8]], np.int32)}
    first, second = layout.split(outputs, requests, [1, 1])
    assert first["Y"].tolist() == [[0, 1]] and second["Y"].tolist() == [[2, 3, 4]]
    assert first["Z"].tolist() == [[7]] and second["Z"].tolist() == [[8]]  # split as usual
    with pytest.raises(InferdError, match="fewer than the 5"):
        layout.split({"Y": np.arange(4, dtype=np.float32)}, requests, [1, 1])
