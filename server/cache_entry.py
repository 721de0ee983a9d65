"""A cached response as bytes, in Triton's cache entry layout (core's cache_entry.cc), for
caches outside the server's memory.

Native little-endian and packed: u32 output count; then per output a u64 byte count of what
follows for it, u32 + name, u32 + datatype name ("FP32"), u32 + int64 shape, u64 + tensor bytes
(BYTES elements length-prefixed, as on the wire).
"""

from __future__ import annotations

import struct

import numpy as np

from inferd.server.tensor_codec import pack_bytes, tensor_from_bytes
from inferd.server.types import DATATYPES, DataType

Outputs = dict[str, np.ndarray]

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class EntryError(ValueError):
    """Bytes that are not a cache entry (written by something else, or cut short)."""


def encode_entry(outputs: Outputs) -> bytes:
    parts = [_U32.pack(len(outputs))]
    for name, array in outputs.items():
        datatype = DataType.from_numpy(array.dtype)
        if datatype is DataType.BYTES:
            data = pack_bytes(name, array)
        else:
            data = np.ascontiguousarray(array).tobytes()
        fields = b"".join(
            (
                _sized(name.encode()),
                _sized(datatype.value.encode()),
                _sized(np.asarray(array.shape, "<i8").tobytes()),
                _U64.pack(len(data)),
                data,
            )
        )
        parts.append(_U64.pack(len(fields)))
        parts.append(fields)
    return b"".join(parts)


def decode_entry(entry: bytes) -> Outputs:
    """The outputs an entry holds, read-only (answers that hits share must not change); the
    fixed-size tensors view `entry` without a copy."""
    reader = _Reader(entry)
    outputs: Outputs = {}
    for _ in range(reader.u32()):
        end = reader.u64() + reader.offset
        name = str(reader.sized(_U32), "utf-8")
        datatype = DATATYPES.get(str(reader.sized(_U32), "utf-8"))
        if datatype is None:
            raise EntryError("unknown datatype")
        shape = tuple(int(d) for d in np.frombuffer(reader.sized(_U32), "<i8"))
        try:
            array = tensor_from_bytes(reader.sized(_U64), name, datatype, shape)
        except Exception as exc:  # an InferdError worded for requests
            raise EntryError(str(exc)) from None
        if reader.offset != end:
            raise EntryError(f"output '{name}' is not the size its entry gives")
        array.flags.writeable = False
        outputs[name] = array
    if reader.offset != len(entry):
        raise EntryError("bytes after the last output")
    return outputs


def _sized(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self.offset = 0

    def u32(self) -> int:
        return int(self._unpack(_U32))

    def u64(self) -> int:
        return int(self._unpack(_U64))

    def sized(self, length: struct.Struct) -> memoryview:
        size = self._unpack(length)
        return self._take(size)

    def _unpack(self, field: struct.Struct) -> int:
        (value,) = field.unpack(self._take(field.size))
        return int(value)

    def _take(self, size: int) -> memoryview:
        start = self.offset
        if start + size > len(self._view):
            raise EntryError("entry cut short")
        self.offset = start + size
        return self._view[start : self.offset]
