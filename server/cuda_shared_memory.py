"""CUDA shared memory: device allocations a client exported with cudaIpcGetMemHandle and
registered by handle (Triton's CUDA shared-memory extension).

The backends take host arrays, so an input is copied from the client's allocation to host
memory once per request, and an output back into it; the client still sends no tensor bytes.
cupy is imported when the first CUDA region is registered, never by a server that has none.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferd.backends.gpu import LibCuda
from inferd.server.errors import invalid, unsupported

CUDA_IPC_HANDLE_SIZE = 64  # sizeof(cudaIpcMemHandle_t)


@dataclass(frozen=True, slots=True)
class CudaRegionStatus:
    name: str
    device_id: int
    byte_size: int


class CudaIpc:
    """The CUDA calls CUDA shared memory makes: open and close IPC handles, and copy."""

    def __init__(self, cupy: Any, address_range: Callable[[int], tuple[int, int]]) -> None:
        self._cupy = cupy
        self._runtime = cupy.cuda.runtime
        self._address_range = address_range  # pointer -> (base, size) of its allocation

    @classmethod
    def load(cls) -> CudaIpc:
        try:
            import cupy
        except ImportError as exc:
            raise unsupported(
                f"CUDA shared memory needs cupy ({exc}): install the inferd[gpu] extra"
            ) from None
        try:
            driver = LibCuda(ctypes.CDLL("libcuda.so.1"))
        except OSError:
            raise unsupported(
                "CUDA shared memory needs the NVIDIA driver (libcuda.so.1), which is not found"
            ) from None
        return cls(cupy, driver.address_range)

    def open(self, handle: bytes, device: int) -> tuple[int, int]:
        """Map the exported allocation on `device`: its address here, and how many bytes
        of it lie at and after that address."""
        with self._cupy.cuda.Device(device):
            pointer = int(self._runtime.ipcOpenMemHandle(handle))
            try:
                base, size = self._address_range(pointer)
            except Exception:
                self._runtime.ipcCloseMemHandle(pointer)
                raise
        return pointer, base + size - pointer

    def close(self, pointer: int, device: int) -> None:
        with self._cupy.cuda.Device(device):
            self._runtime.ipcCloseMemHandle(pointer)

    def to_host(self, device: int, source: int, nbytes: int) -> memoryview:
        host = np.empty(nbytes, np.uint8)
        with self._cupy.cuda.Device(device):
            kind = self._runtime.memcpyDeviceToHost
            self._runtime.memcpy(host.ctypes.data, source, nbytes, kind)
        return host.data

    def to_device(self, device: int, target: int, data: memoryview) -> None:
        host = np.frombuffer(data, np.uint8)
        with self._cupy.cuda.Device(device):
            kind = self._runtime.memcpyHostToDevice
            self._runtime.memcpy(target, host.ctypes.data, host.nbytes, kind)


class CudaRegion:
    """A registered CUDA region: `byte_size` bytes at the start of an exported allocation."""

    def __init__(self, status: CudaRegionStatus, handle: bytes, ipc: CudaIpc) -> None:
        if len(handle) != CUDA_IPC_HANDLE_SIZE:
            raise invalid(
                f"'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t "
                f"({CUDA_IPC_HANDLE_SIZE} bytes), got {len(handle)} bytes"
            )
        self.status = status
        self.byte_size = status.byte_size
        self._ipc = ipc
        try:
            self._pointer, available = ipc.open(handle, status.device_id)
        except Exception as exc:  # a stale handle, a wrong device: the client's mistake
            raise invalid(
                f"failed to register CUDA shared memory region '{status.name}' on device "
                f"{status.device_id}: {exc}"
            ) from None
        if status.byte_size > available:
            ipc.close(self._pointer, status.device_id)
            raise invalid(
                f"CUDA shared memory region '{status.name}' ({status.byte_size} bytes) is "
                f"larger than the {available} bytes of the exported allocation"
            )

    def read(self, offset: int, byte_size: int) -> memoryview:
        return self._ipc.to_host(self.status.device_id, self._pointer + offset, byte_size)

    def write(self, offset: int, data: memoryview) -> None:
        self._ipc.to_device(self.status.device_id, self._pointer + offset, data)

    def close(self) -> None:
        self._ipc.close(self._pointer, self.status.device_id)
