"""CUDA shared memory against a fake cupy (no GPU here): registration by IPC handle, bounds
from the exported allocation, copies in and out, and closing handles on unregister."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import pytest

from inferd.server.cuda_shared_memory import CudaIpc
from inferd.server.errors import ErrorCode, InferdError
from inferd.server.shared_memory import SharedMemoryRegistry
from inferd.server.types import DataType, SharedMemoryRef
from tests import fake_cupy

HANDLE = bytes(range(64))


@pytest.fixture
def record(monkeypatch: pytest.MonkeyPatch) -> fake_cupy.Record:
    return fake_cupy.install(monkeypatch)


def cuda_of(record: fake_cupy.Record) -> Callable[[], CudaIpc]:
    return lambda: CudaIpc(sys.modules["cupy"], record.address_range)


@pytest.fixture
def registry(record: fake_cupy.Record) -> SharedMemoryRegistry:
    return SharedMemoryRegistry(allow_client=True, cuda=cuda_of(record))


def fails(code: ErrorCode, *fragments: str) -> pytest.RaisesExc[InferdError]:
    return pytest.raises(
        InferdError, check=lambda e: e.code is code and all(f in e.message for f in fragments)
    )


def test_inputs_are_copied_out_and_outputs_back(
    record: fake_cupy.Record, registry: SharedMemoryRegistry
) -> None:
    memory = record.export(HANDLE, 1, 128)
    memory[16:32] = np.arange(4, dtype=np.float32).view(np.uint8)
    registry.register_cuda("g", HANDLE, 1, 128)
    assert record.opened == {memory.ctypes.data: 1}  # opened on the client's device

    array = registry.read_input(SharedMemoryRef("g", 16, 16), "x", DataType.FP32, (4,))
    np.testing.assert_array_equal(array, [0, 1, 2, 3])
    memory[16:32] = 0  # a host copy: later writes by the client do not change the request
    np.testing.assert_array_equal(array, [0, 1, 2, 3])

    registry.write_output(SharedMemoryRef("g", 8, 64), "y", DataType.INT32, np.array([7, 9]))
    np.testing.assert_array_equal(memory[64:72].view(np.int32), [7, 9])

    [status] = registry.cuda_status()
    assert (status.name, status.device_id, status.byte_size) == ("g", 1, 128)
    registry.unregister_cuda("g")
    assert record.opened == {}  # the handle is closed
    assert registry.cuda_status() == []


def test_a_region_larger_than_its_allocation_is_refused(
    record: fake_cupy.Record, registry: SharedMemoryRegistry
) -> None:
    record.export(HANDLE, 0, 64)
    with fails(ErrorCode.INVALID_ARG, "'g' (65 bytes)", "64 bytes of the exported allocation"):
        registry.register_cuda("g", HANDLE, 0, 65)
    assert record.opened == {}


def test_bad_handles_and_devices_are_client_errors(
    record: fake_cupy.Record, registry: SharedMemoryRegistry
) -> None:
    record.export(HANDLE, 0, 64)
    with fails(ErrorCode.INVALID_ARG, "cudaIpcMemHandle_t", "got 3 bytes"):
        registry.register_cuda("g", b"abc", 0, 64)
    with fails(ErrorCode.INVALID_ARG, "'g' on device 0", "invalid resource handle"):
        registry.register_cuda("g", bytes(64), 0, 64)
    with fails(ErrorCode.INVALID_ARG, "'g' on device 2", "invalid device ordinal"):
        registry.register_cuda("g", HANDLE, 2, 64)


def test_system_and_cuda_regions_share_one_namespace(
    record: fake_cupy.Record, registry: SharedMemoryRegistry, tmp_path: object
) -> None:
    record.export(HANDLE, 0, 64)
    registry.register_cuda("g", HANDLE, 0, 64)
    with fails(ErrorCode.ALREADY_EXISTS, "'g' already in manager"):
        registry.register_system("g", "/anything", 0, 8)
    with fails(ErrorCode.NOT_FOUND, "Unable to find cuda shared memory region: 'h'"):
        registry.cuda_status("h")
    registry.close()
    assert record.opened == {}


def test_without_a_gpu_cuda_regions_are_refused() -> None:
    registry = SharedMemoryRegistry(allow_client=True)
    assert not registry.supports_cuda
    with fails(ErrorCode.UNSUPPORTED, "CUDA shared memory needs a GPU"):
        registry.register_cuda("g", HANDLE, 0, 64)
    assert registry.cuda_status() == []
