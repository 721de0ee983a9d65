"""Cached answers as bytes, in Triton's cache entry layout, and back."""

from __future__ import annotations

import struct

import ml_dtypes
import numpy as np
import pytest

from inferd.server.cache_entry import EntryError, decode_entry, encode_entry
from inferd.server.tensor_codec import object_array


def test_every_datatype_round_trips() -> None:
    outputs: dict[str, np.ndarray] = {
        "F": np.arange(6, dtype=np.float32).reshape(2, 3),
        "I": np.array([[-1], [2**40]], np.int64),
        "B": np.array([True, False]),
        "H": np.ones((1, 2), ml_dtypes.bfloat16),
        "S": object_array([b"", b"abc", "d\u00e9".encode()]).reshape(3, 1),
        "SCALAR": np.array(7, np.uint8),
        "EMPTY": np.zeros((0, 4), np.float16),
    }
    decoded = decode_entry(encode_entry(outputs))
    assert list(decoded) == list(outputs)
    for name, array in outputs.items():
        assert decoded[name].dtype == array.dtype, name
        assert decoded[name].shape == array.shape, name
        np.testing.assert_array_equal(decoded[name], array)
        assert not decoded[name].flags.writeable  # answers that hits share must not change


def test_strided_and_unicode_outputs_are_stored_as_they_read() -> None:
    outputs = {
        "T": np.arange(6, dtype=np.int32).reshape(2, 3).T,
        "U": np.array(["x", "yz"]),  # a python model's str array answers as BYTES
    }
    decoded = decode_entry(encode_entry(outputs))
    np.testing.assert_array_equal(decoded["T"], outputs["T"])
    assert decoded["U"].tolist() == [b"x", b"yz"]


def test_the_layout_is_tritons() -> None:
    entry = encode_entry({"Y": np.array([1.5], np.float32)})
    count, packed = struct.unpack_from("<IQ", entry)
    assert count == 1 and packed == len(entry) - 12
    expected = (
        struct.pack("<I", 1) + b"Y"
        + struct.pack("<I", 4) + b"FP32"
        + struct.pack("<I", 8) + struct.pack("<q", 1)
        + struct.pack("<Q", 4) + struct.pack("<f", 1.5)
    )  # fmt: skip
    assert entry[12:] == expected


@pytest.mark.parametrize(
    "entry",
    [
        b"",
        b"\x01\x00\x00\x00",  # one output, then nothing
        encode_entry({"Y": np.zeros(2, np.float32)})[:-1],  # cut short
        encode_entry({"Y": np.zeros(2, np.float32)}) + b"x",  # trailing bytes
        encode_entry({"Y": np.zeros(2, np.float32)}).replace(b"FP32", b"FP99"),
    ],
)
def test_bytes_that_are_not_an_entry_are_refused(entry: bytes) -> None:
    with pytest.raises(EntryError):
        decode_entry(entry)
