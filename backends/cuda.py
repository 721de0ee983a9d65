"""CUDA streams and memory for GPU instances, through cupy: the only place backends touch the
CUDA runtime. cupy is imported when the first GPU instance is created, never by CPU servers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from inferd.server.errors import unavailable


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """A device allocation: its address and size, and the cupy object that frees it."""

    ptr: int
    nbytes: int
    owner: Any


class CudaRuntime:
    """The few CUDA calls backends make. Every copy is queued on the caller's stream; the
    caller synchronizes that stream once per batch."""

    def __init__(self, cupy: Any, cupyx: Any) -> None:
        self._cupy = cupy
        self._cupyx = cupyx
        self._runtime = cupy.cuda.runtime

    @classmethod
    def load(cls) -> CudaRuntime:
        try:
            import cupy
            import cupyx
        except ImportError as exc:
            raise unavailable(
                f"GPU instances need cupy ({exc}): install the inferd[gpu] extra"
            ) from None
        return cls(cupy, cupyx)

    def use_device(self, device: int) -> None:
        """Make `device` current on the calling thread (instance threads start on device 0)."""
        self._runtime.setDevice(device)

    def stream(self, device: int) -> Any:
        """A new non-blocking stream on `device` (`.ptr`, `.synchronize()`); never the legacy
        default stream, which ORT reads as 'no stream' and graph capture refuses."""
        with self._cupy.cuda.Device(device):
            return self._cupy.cuda.Stream(non_blocking=True)

    def pinned(self, nbytes: int) -> np.ndarray:
        """A page-locked host buffer (uint8): copies from it run asynchronously, at full speed."""
        buffer: np.ndarray = self._cupyx.empty_pinned((nbytes,), dtype=np.uint8)
        return buffer

    def device_memory(self, device: int, nbytes: int) -> DeviceMemory:
        with self._cupy.cuda.Device(device):
            memory = self._cupy.cuda.memory.alloc(nbytes)
        return DeviceMemory(int(memory.ptr), nbytes, memory)

    def to_device(self, dst: int, src: np.ndarray, nbytes: int, stream: Any) -> None:
        kind = self._runtime.memcpyHostToDevice
        self._runtime.memcpyAsync(dst, src.ctypes.data, nbytes, kind, stream.ptr)

    def to_host(self, dst: np.ndarray, src: int, nbytes: int, stream: Any) -> None:
        kind = self._runtime.memcpyDeviceToHost
        self._runtime.memcpyAsync(dst.ctypes.data, src, nbytes, kind, stream.ptr)

    def device_tag(self, device: int) -> str:
        """The GPU model's compute capability, e.g. 'sm90': what built engines depend on."""
        return f"sm{self._cupy.cuda.Device(device).compute_capability}"
