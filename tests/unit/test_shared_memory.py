"""The shared-memory registry on plain files: a file in a folder maps exactly as a POSIX
shared-memory object in /dev/shm does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inferd.server.errors import ErrorCode, InferdError
from inferd.server.shared_memory import SharedMemoryRegistry, shared_memory_ref
from inferd.server.tensor_codec import pack_bytes
from inferd.server.types import DataType, SharedMemoryRef


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "data").write_bytes(bytes(256))
    return tmp_path


@pytest.fixture
def registry(folder: Path) -> SharedMemoryRegistry:
    registry = SharedMemoryRegistry(allow_client=True, directory=folder)
    registry.register_system("r", "/data", 64, 128)  # bytes 64..191 of the object
    return registry


def fails(code: ErrorCode, *fragments: str) -> pytest.RaisesExc[InferdError]:
    return pytest.raises(
        InferdError, check=lambda e: e.code is code and all(f in e.message for f in fragments)
    )


def test_inputs_are_read_in_place_from_the_registered_window(
    folder: Path, registry: SharedMemoryRegistry
) -> None:
    x = np.arange(8, dtype=np.float32)
    with (folder / "data").open("r+b") as f:
        f.seek(64 + 16)
        f.write(x.tobytes())
    array = registry.read_input(SharedMemoryRef("r", 32, 16), "x", DataType.FP32, (2, 4))
    np.testing.assert_array_equal(array, x.reshape(2, 4))
    assert not array.flags.writeable  # a model cannot scribble on the client's memory


def test_outputs_are_written_at_their_offset(folder: Path, registry: SharedMemoryRegistry) -> None:
    y = np.arange(6, dtype=np.int64).reshape(2, 3)[:, ::2]  # not contiguous
    registry.write_output(SharedMemoryRef("r", 40, 8), "y", DataType.INT32, y)
    data = (folder / "data").read_bytes()
    np.testing.assert_array_equal(np.frombuffer(data[72:88], np.int32), [0, 2, 3, 5])


def test_bytes_tensors_round_trip_through_a_region(registry: SharedMemoryRegistry) -> None:
    words = np.array([b"alpha", b"", b"\xff"], dtype=np.object_)
    size = len(pack_bytes("w", words))
    registry.write_output(SharedMemoryRef("r", 64), "w", DataType.BYTES, words)
    read = registry.read_input(SharedMemoryRef("r", size), "w", DataType.BYTES, (3,))
    assert read.tolist() == words.tolist()


def test_a_window_past_the_region_is_refused(registry: SharedMemoryRegistry) -> None:
    with fails(ErrorCode.INVALID_ARG, "Invalid offset + byte size", "'r'"):
        registry.read_input(SharedMemoryRef("r", 64, 96), "x", DataType.UINT8, (64,))
    with fails(ErrorCode.INVALID_ARG, "expected 16 bytes", "got 8"):
        registry.read_input(SharedMemoryRef("r", 8), "x", DataType.FP32, (4,))


def test_an_output_larger_than_its_window_is_refused(registry: SharedMemoryRegistry) -> None:
    with fails(ErrorCode.INVALID_ARG, "output 'y' (8 bytes)", "at least 16 bytes"):
        registry.write_output(SharedMemoryRef("r", 8), "y", DataType.FP32, np.zeros(4, np.float32))


def test_registration_checks_the_object_before_mapping_it(
    folder: Path, registry: SharedMemoryRegistry
) -> None:
    # A mapping past the object's end would crash the server on first touch (SIGBUS).
    with fails(ErrorCode.INVALID_ARG, "does not fit", "256 bytes"):
        registry.register_system("big", "/data", 200, 100)
    with fails(ErrorCode.INVALID_ARG, "Unable to open shared memory region: '/missing'"):
        registry.register_system("m", "/missing", 0, 8)
    with fails(ErrorCode.ALREADY_EXISTS, "'r' already in manager"):
        registry.register_system("r", "/data", 0, 8)
    with fails(ErrorCode.INVALID_ARG, "byte_size must be positive"):
        registry.register_system("z", "/data", 0, 0)


@pytest.mark.parametrize("key", ["/../etc/passwd", "/a/b", "/", "/..", ""])
def test_keys_cannot_leave_the_shared_memory_folder(
    registry: SharedMemoryRegistry, key: str
) -> None:
    with fails(ErrorCode.INVALID_ARG, "invalid shared memory key"):
        registry.register_system("k", key, 0, 8)


def test_status_and_unregister(registry: SharedMemoryRegistry) -> None:
    registry.register_system("s", "data", 0, 8)  # the leading '/' is optional, as for shm_open
    registry.register_system("a", "data", 8, 8)  # listed by name, as Triton lists them
    assert [s.name for s in registry.system_status()] == ["a", "r", "s"]
    registry.unregister_system("a")
    assert [(s.name, s.key, s.offset, s.byte_size) for s in registry.system_status()] == [
        ("r", "/data", 64, 128),
        ("s", "data", 0, 8),
    ]
    with fails(ErrorCode.NOT_FOUND, "Unable to find system shared memory region: 'x'"):
        registry.system_status("x")
    registry.unregister_system("s")
    registry.unregister_system("s")  # already gone: not an error, as in Triton
    assert [s.name for s in registry.system_status()] == ["r"]
    registry.unregister_system()
    assert registry.system_status() == []
    with fails(ErrorCode.NOT_FOUND, "Unable to find shared memory region: 'r'"):
        registry.region(SharedMemoryRef("r", 8))


def test_a_view_in_use_outlives_its_unregistered_region(
    folder: Path, registry: SharedMemoryRegistry
) -> None:
    (folder / "data").write_bytes(bytes(range(256)))
    array = registry.read_input(SharedMemoryRef("r", 4), "x", DataType.UINT8, (4,))
    registry.unregister_system("r")
    assert array.tolist() == [64, 65, 66, 67]  # still mapped: no crash, same bytes


def test_a_registry_that_does_not_allow_clients_refuses_them(folder: Path) -> None:
    registry = SharedMemoryRegistry(allow_client=False, directory=folder)
    for call in (
        lambda: registry.register_system("r", "/data", 0, 8),
        lambda: registry.unregister_system(),
        lambda: registry.region(SharedMemoryRef("r", 8)),
    ):
        with fails(ErrorCode.UNSUPPORTED, "--allow-client-shm=true"):
            call()
    assert registry.system_status() == []


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, None),
        ({"shared_memory_region": "r", "shared_memory_byte_size": 8}, SharedMemoryRef("r", 8)),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": 4},
            SharedMemoryRef("r", 8, 4),
        ),
    ],
)
def test_parameters_name_a_location(params: dict[str, object], expected: object) -> None:
    assert shared_memory_ref(params, "input 'x'") == expected


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"shared_memory_offset": 4}, "needs"),
        ({"shared_memory_byte_size": 8}, "together"),
        ({"shared_memory_region": 3, "shared_memory_byte_size": 8}, "region name"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": True}, "non-negative"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": 8.0}, "non-negative"),
    ],
)
def test_malformed_parameters_are_refused(params: dict[str, object], fragment: str) -> None:
    with fails(ErrorCode.INVALID_ARG, "input 'x'", fragment):
        shared_memory_ref(params, "input 'x'")
