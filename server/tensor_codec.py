"""Tensor bytes shared by the HTTP binary extension and gRPC `raw_*_contents`.

Both wire formats lay a tensor out the same way: row-major, native little-endian, no padding;
BYTES elements are each a 4-byte little-endian length followed by the raw bytes.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from inferd.server.errors import internal, invalid, refused
from inferd.server.types import DataType

_LENGTH = struct.Struct("<I")
# numpy's limit on dimensions (NPY_MAXDIMS): no tensor of more can exist, so no model has one.
MAX_RANK = 64


def check_rank(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """`shape`, refused (400) when no array can have it."""
    if len(shape) > MAX_RANK:
        raise invalid(
            f"input '{name}': shape has {len(shape)} dimensions, at most {MAX_RANK} are supported"
        )
    return shape


def tensor_from_bytes(
    data: bytes | memoryview,
    name: str,
    datatype: DataType,
    shape: tuple[int, ...],
    sender: tuple[str, str] | None = None,
) -> np.ndarray:
    """The input tensor held in `data`; fixed-size types view `data` without a copy.
    `sender`: the (model, request id) a client's tensor is for, to word a wrong size as
    Triton words it to the client."""
    count = math.prod(shape)
    if datatype is DataType.BYTES:
        return bytes_elements(data, count, name).reshape(shape)
    expected = count * datatype.itemsize
    if len(data) != expected:
        if sender is not None:
            model, request_id = sender
            raise refused(
                request_id,
                f"input byte size mismatch for input '{name}' for model '{model}'. Expected "
                f"{expected}, got {len(data)}",
            )
        raise invalid(
            f"input '{name}': expected {expected} bytes for shape {list(shape)} of "
            f"{datatype.value}, got {len(data)}"
        )
    return np.frombuffer(data, datatype.numpy, count).reshape(shape)


def bytes_elements(data: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Split `count` length-prefixed BYTES elements into a flat object array of `bytes`."""
    raw = bytes(data)  # no copy for bytes; slicing bytes is cheaper than memoryview slices
    end = len(raw)
    unpack = _LENGTH.unpack_from
    elements: list[bytes] = []
    offset = 0
    for index in range(count):
        if offset + 4 > end:
            raise invalid(f"input '{name}': BYTES data holds {index} elements, expected {count}")
        (length,) = unpack(raw, offset)
        offset += 4
        if offset + length > end:
            raise invalid(
                f"input '{name}': BYTES element {index} has length {length}, which runs past "
                f"the end of its data"
            )
        elements.append(raw[offset : offset + length])
        offset += length
    if offset != end:
        raise invalid(
            f"input '{name}': BYTES data has {end - offset} bytes after its {count} elements"
        )
    return object_array(elements)


def object_array(items: list[bytes]) -> np.ndarray:
    # Filling a preallocated array keeps numpy from treating the items as sequences.
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array


def pack_bytes(name: str, array: np.ndarray) -> bytes:
    """A BYTES output tensor as length-prefixed elements."""
    parts: list[bytes] = []
    pack = _LENGTH.pack
    for item in array.ravel().tolist():
        data = element_bytes(name, item)
        parts.append(pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def element_bytes(name: str, item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    raise internal(f"output '{name}': BYTES element of type {type(item).__name__}")


# The one 'triton_' request parameter Triton accepts, over gRPC only (perf_analyzer sends it on
# every request). It asks decoupled models for an empty final response; the gRPC stream reads
# it from the message itself (grpc_app.py), so the decoded request drops it.
EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"
