"""The classification extension: replace an output with its top-k "value:index[:label]" strings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inferd.server.errors import invalid
from inferd.server.types import DataType


def classify(array: np.ndarray, k: int, labels: Sequence[str], *, batched: bool) -> np.ndarray:
    """Top-k per batch item (or over the whole tensor for non-batching models), as BYTES.
    Integers, FP32 and FP64 only, as in Triton."""
    if array.dtype.kind not in "iu" and array.dtype not in (np.float32, np.float64):
        raise invalid(
            "class result not available for output due to unsupported type "
            f"'{DataType.from_numpy(array.dtype).value}'"
        )
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    k = min(k, rows.shape[1])
    # Stable descending order: ties keep the lower index first, as a sort by value would.
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    result = np.empty((rows.shape[0], k), dtype=object)
    is_float = rows.dtype.kind == "f"
    for r, row_order in enumerate(order):
        for c, index in enumerate(row_order):
            value = rows[r, index]
            text = f"{float(value):f}" if is_float else str(int(value))
            label = labels[index] if index < len(labels) else ""
            result[r, c] = (f"{text}:{index}:{label}" if label else f"{text}:{index}").encode()
    return result if batched else result.reshape(k)
